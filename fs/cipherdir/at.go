package cipherdir

// at.go: the *at system calls every access to a cipher directory goes
// through. Each takes a directory fd and one name (never a path with a
// '/'), and none follows a symlink stored in the cipher directory: a
// symlink where a directory is expected fails with ENOTDIR, where a file
// is expected with ELOOP, and a chmod of a symlink is refused.

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// checkName refuses a name that is not a single entry of a directory.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') || strings.ContainsRune(name, 0) {
		return syscall.EINVAL
	}
	return nil
}

// OpenDirAt opens the directory name in dirfd as an O_PATH handle: it
// needs no read permission, serves as the dirfd of *at calls, and
// refuses a symlink (ENOTDIR). name "." reopens dirfd itself.
func OpenDirAt(dirfd int, name string) (int, error) {
	if name != "." {
		if err := checkName(name); err != nil {
			return -1, err
		}
	}
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// OpenAt opens name in dirfd with flags plus O_NOFOLLOW and O_CLOEXEC:
// a symlink fails with ELOOP.
func OpenAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	if name != "." {
		if err := checkName(name); err != nil {
			return -1, err
		}
	}
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// OpenRoot opens the cipher directory root dir (a path the user gave,
// which may pass through symlinks of the user's own choosing) as a
// directory handle, O_RDONLY so it can also be listed.
func OpenRoot(dir string) (int, error) {
	for {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// ProcPath is the /proc path of an open fd: the kernel resolves it to the
// fd's own inode, never through a symlink stored on disk.
func ProcPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// ChmodAt changes the mode of name in dirfd without following a symlink:
// the entry is opened O_PATH|O_NOFOLLOW, a symlink is refused with
// EOPNOTSUPP (Linux symlinks have no mode of their own), and the mode is
// set through the fd. Regular files, directories and special files all
// work whatever their current mode.
func ChmodAt(dirfd int, name string, mode uint32) error {
	fd, err := OpenAt(dirfd, name, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return ChmodFd(fd, mode)
}

// ChmodFd changes the mode of the inode an O_PATH (or any) fd refers to.
func ChmodFd(fd int, mode uint32) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.EOPNOTSUPP
	}
	if err := unix.Fchmod(fd, mode); err != unix.EBADF {
		return err
	}
	// An O_PATH fd: chmod(2) through its /proc link, which names the
	// inode itself (checked above not to be a symlink).
	return unix.Chmod(ProcPath(fd), mode)
}

// ReadDirNames lists the directory behind dirfd (any fd of it, O_PATH
// included) without "." and "..": names and their type from getdents
// (os.ModeIrregular when the filesystem does not say: stat it).
func ReadDirNames(dirfd int) ([]DirEntry, error) {
	fd, err := OpenAt(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out []DirEntry
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		// struct linux_dirent64: ino 8, off 8, reclen 2, type 1, name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return out, syscall.EIO
			}
			typ := b[18]
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out = append(out, DirEntry{Name: s, Type: direntType(typ)})
			}
			b = b[reclen:]
		}
	}
}

// direntType is the type of a getdents d_type (DT_X is S_IFX >> 12);
// os.ModeIrregular for DT_UNKNOWN.
func direntType(t uint8) os.FileMode {
	if t == unix.DT_UNKNOWN {
		return os.ModeIrregular
	}
	return modeType(uint32(t) << 12)
}

// DirEntry is one entry of a cipher directory as getdents gives it.
type DirEntry struct {
	Name string
	Type os.FileMode // type bits only (os.ModeDir, os.ModeSymlink, 0 for regular, ...)
}

// ReadSmallFileAt reads name in dirfd, a regular file of at most max
// bytes (more is an error).
func ReadSmallFileAt(dirfd int, name string, max int) ([]byte, error) {
	fd, err := OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, syscall.EINVAL
	}
	if st.Size > int64(max) {
		return nil, syscall.EFBIG
	}
	buf := make([]byte, max+1)
	n := 0
	for n < len(buf) {
		got, err := unix.Pread(fd, buf[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if got == 0 {
			break
		}
		n += got
	}
	if n > max {
		return nil, syscall.EFBIG
	}
	return buf[:n], nil
}

// WriteNewFileAt creates name in dirfd (O_EXCL: it must not exist) with
// mode and content data. On a failure the entry is removed again.
func WriteNewFileAt(dirfd int, name string, mode uint32, data []byte) error {
	fd, err := OpenAt(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, mode)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); {
		n, err := unix.Write(fd, data[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			unix.Unlinkat(dirfd, name, 0)
			return err
		}
		off += n
	}
	if err := unix.Close(fd); err != nil {
		unix.Unlinkat(dirfd, name, 0)
		return err
	}
	return nil
}

// OpenDirPath opens rel, a '/'-separated path of directories below dirfd
// ("" or "." is dirfd itself), one component at a time with OpenDirAt: no
// symlink is followed and no syscall sees more than one name, so a path
// longer than PATH_MAX opens. The handle is O_PATH.
func OpenDirPath(dirfd int, rel string) (int, error) {
	fd, err := OpenDirAt(dirfd, ".")
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." {
			continue
		}
		next, err := OpenDirAt(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// OpenBeneath opens path, a path inside the cipher directory dir (as
// ListFiles gives them), one component at a time from dir's root: no
// symlink is followed on the way or at the end, and a path longer than
// PATH_MAX opens. flags get O_NOFOLLOW and O_CLOEXEC.
func OpenBeneath(dir, path string, flags int) (*os.File, error) {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.EINVAL}
	}
	root, err := OpenRoot(dir)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(root)
	parent, name := filepath.Split(filepath.ToSlash(rel))
	dirfd, err := OpenDirPath(root, parent)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(dirfd)
	fd, err := OpenAt(dirfd, name, flags, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
