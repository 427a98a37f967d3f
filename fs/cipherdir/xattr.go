package cipherdir

// xattr.go: reading a cipher file's extended attributes, for the mount
// (fs/xattr.go) and the offline readers (cat, export, verify) alike. The
// size of a value or list is asked first and the read may then find it
// grown (ERANGE): the read is tried again, a bounded number of times,
// since whoever can write the cipher directory may keep growing it.

import (
	"errors"
	"strings"

	"golang.org/x/sys/unix"
)

// xattrTries bounds the reads of one value or list that keeps growing
// between the size query and the read.
const xattrTries = 16

// GetXattrFd returns the value of the extended attribute name of the open
// file fd. Errors are the syscall's errno (ENODATA: no such attribute).
func GetXattrFd(fd int, name string) ([]byte, error) {
	return readGrowing(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

// ListXattrFd returns the extended attribute names of the open file fd.
func ListXattrFd(fd int) ([]string, error) {
	raw, err := readGrowing(func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) })
	return splitXattrNames(raw), err
}

// ListXattrPath is ListXattrFd for a path: the ProcPath of an O_PATH
// handle, which the f*xattr calls refuse.
func ListXattrPath(path string) ([]string, error) {
	raw, err := readGrowing(func(buf []byte) (int, error) { return unix.Listxattr(path, buf) })
	return splitXattrNames(raw), err
}

// readGrowing asks read for the size (a nil buffer), then reads into a
// buffer of that size, again while what is read has grown in between.
func readGrowing(read func(buf []byte) (int, error)) ([]byte, error) {
	for range xattrTries {
		size, err := read(nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		n, err := read(buf)
		if errors.Is(err, unix.ERANGE) || n > len(buf) {
			// Grown in between (into an empty buffer, the
			// call answers the size instead of ERANGE).
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, unix.ERANGE
}

// splitXattrNames splits a list of NUL-terminated names.
func splitXattrNames(raw []byte) []string {
	var names []string
	for name := range strings.SplitSeq(string(raw), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	return names
}
