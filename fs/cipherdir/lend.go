package cipherdir

// lend.go: opening a file whose owner lacks a permission this process
// needs, by lending the owner that permission bit for one open(2).
//
// kmsfs opens a cipher file O_RDWR to write it (every write reads headers
// and partial chunks: the mount, for a plain file opened write-only) and
// to rewrite its header (rewrap), but the plain file's mode is the cipher
// file's own: an owner who may write but not read (u+w, u-r) or read but
// not write (chmod 444) is refused that open. OpenLending takes an O_PATH
// handle on the entry, checks it there, lends the missing bit through that
// handle, opens the entry by name, checks that the file opened is the
// inode lent the bit (the name may change hands in between), and takes the
// bit back through the new fd. No /proc path is opened, no symlink
// followed. The mode is other than the owner set only for the span of one
// open(2); a crash in that span leaves the bit lent.

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The owner permission bits OpenLending lends.
const (
	LendRead  uint32 = 0o400 // the owner may write but not read
	LendWrite uint32 = 0o200 // the owner may read but not write
)

// OpenLending opens name in dirfd with flags (O_NOFOLLOW and O_CLOEXEC
// added; O_NOATIME dropped where refused) while its owner is lent the
// permission bit lend, LendRead or LendWrite. Only a regular file owned by
// the effective user, whose owner holds the other half of read-write and
// lacks lend, is lent anything: any other entry, or one that cannot be
// checked, is refused with EACCES before its mode changes. The mode is
// restored before OpenLending returns, whatever happens to the open.
func OpenLending(dirfd int, name string, flags int, lend uint32) (int, error) {
	if lend != LendRead && lend != LendWrite {
		return -1, unix.EINVAL
	}
	pfd, err := OpenAt(dirfd, name, unix.O_PATH, 0)
	if err != nil {
		return -1, unix.EACCES
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return -1, unix.EACCES
	}
	mode := st.Mode & 0o7777
	if st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != os.Geteuid() || mode&0o600 != 0o600&^lend {
		return -1, unix.EACCES
	}
	// Through the O_PATH handle, so the mode lent and the file opened
	// are the same inode even if the name changes in between.
	if err := ChmodFd(pfd, mode|lend); err != nil {
		return -1, unix.EACCES
	}
	fd, err := OpenAt(dirfd, name, flags, 0)
	if err == unix.EPERM && flags&unix.O_NOATIME != 0 {
		fd, err = OpenAt(dirfd, name, flags&^unix.O_NOATIME, 0)
	}
	if err != nil {
		ChmodFd(pfd, mode)
		return -1, err
	}
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil || fst.Dev != st.Dev || fst.Ino != st.Ino {
		unix.Close(fd)
		ChmodFd(pfd, mode)
		return -1, unix.EACCES
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("restore mode %o: %w", mode, err)
	}
	return fd, nil
}
