package cipherdir

// open_regular.go: opening a cipher file for reading when the directory
// may have changed since it was listed. A writer of the cipher directory
// can swap a FIFO, a device node or a symlink in where a walk saw a
// regular file; the open must then neither block (a FIFO with no writer),
// nor follow the link, nor read the device.

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotRegular is the error of OpenRegularAt for an entry that is not a
// regular file (a symlink, FIFO, socket, device or directory).
var ErrNotRegular = errors.New("not a regular file")

// OpenRegularAt opens name in dirfd read-only as a regular file. The
// entry is stat'ed without following it and anything but a regular file
// is refused before any open; the open itself adds O_NOFOLLOW (a symlink
// swapped in fails), O_NONBLOCK (a FIFO swapped in does not wait for a
// writer) and O_NOCTTY, and the fd is fstat'ed again, so what is read is
// the regular file the fd holds, whatever the name points at by then.
// O_NONBLOCK is cleared before returning. A refused entry gives an error
// wrapping ErrNotRegular that says what it is. The file is named path.
func OpenRegularAt(dirfd int, name, path string) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := checkName(name); err != nil {
		return nil, st, err
	}
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, st, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, st, notRegular(&st)
	}
	fd, err := OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ELOOP) {
		// O_NOFOLLOW met a symlink swapped in since the stat above.
		return nil, st, fmt.Errorf("%w (a symlink)", ErrNotRegular)
	}
	if err != nil {
		return nil, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, st, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, st, notRegular(&st)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil && fl&unix.O_NONBLOCK != 0 {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, st, fmt.Errorf("clear O_NONBLOCK: %w", err)
	}
	return os.NewFile(uintptr(fd), path), st, nil
}

// notRegular says what st is instead of a regular file.
func notRegular(st *unix.Stat_t) error {
	what := fmt.Sprintf("file type %#o", st.Mode&unix.S_IFMT)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO:
		what = "a FIFO"
	case unix.S_IFLNK:
		what = "a symlink"
	case unix.S_IFDIR:
		what = "a directory"
	case unix.S_IFSOCK:
		what = "a socket"
	case unix.S_IFCHR:
		what = "a character device"
	case unix.S_IFBLK:
		what = "a block device"
	}
	return fmt.Errorf("%w (%s)", ErrNotRegular, what)
}
