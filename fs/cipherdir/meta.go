package cipherdir

// meta.go: kmsfs's own files in a cipher directory (kmsfs.conf, and the
// audit log, mount log, names key copy and index under .kmsfs) reached
// through directory handles like every cipher file: the root as given,
// .kmsfs with O_DIRECTORY|O_NOFOLLOW, the file with O_NOFOLLOW. A writer of
// the cipher directory who makes .kmsfs, or a file in it, a symlink to a
// file elsewhere (a shell start-up file, say) gets an error, never a mount
// that appends to that file.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// openMetaDir opens CIPHERDIR/.kmsfs as an O_PATH handle, refusing a
// symlink.
func openMetaDir(dir string) (int, error) {
	root, err := OpenRoot(dir)
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	fd, err := OpenDirAt(root, MetaName)
	if err == unix.ENOTDIR || err == unix.ELOOP {
		return -1, fmt.Errorf("%s is not a directory (a symlink?): %w", MetaDir(dir), err)
	}
	return fd, err
}

// OpenMeta opens CIPHERDIR/.kmsfs/name (name one component) with flags
// and perm, without following a symlink at .kmsfs or at name, and refuses
// anything but a regular file.
func OpenMeta(dir, name string, flags int, perm uint32) (*os.File, error) {
	path := filepath.Join(MetaDir(dir), name)
	mfd, err := openMetaDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(mfd)
	fd, err := OpenAt(mfd, name, flags|unix.O_NONBLOCK, perm)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("open %s: it is a symlink, which kmsfs never follows in a cipher directory: remove it: %w", path, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: not a regular file: %w", path, syscall.EINVAL)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// ErrUnsafeIndex: the header index directory is a symlink or holds one.
// The index is a cache of the files' header mirrors: callers treat it as
// corrupt (moved aside, rebuilt).
var ErrUnsafeIndex = errors.New("header index is or holds a symlink, which kmsfs never follows in a cipher directory")

// CheckIndexDir verifies, before the header index is handed to badger
// (which opens its files by path), that CIPHERDIR/.kmsfs/index is a
// directory reached without a symlink and holds no symlink: badger would
// follow one and write where it points. A missing index is fine (it is
// created). A symlinked .kmsfs is an error of its own (nothing can be
// created under it safely: remove it).
func CheckIndexDir(dir string) error {
	path := IndexDir(dir)
	mfd, err := openMetaDir(dir)
	if err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("header index %s: %w", path, err)
	}
	defer unix.Close(mfd)
	ifd, err := OpenDirAt(mfd, "index")
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		var st unix.Stat_t
		if serr := unix.Fstatat(mfd, "index", &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Errorf("header index %s: %w", path, ErrUnsafeIndex)
		}
		return nil // not a directory, not a symlink: the index's own open says what is wrong
	}
	defer unix.Close(ifd)
	ents, err := ReadDirNames(ifd)
	if err != nil {
		return fmt.Errorf("header index %s: %w", path, err)
	}
	for _, e := range ents {
		if e.Type == os.ModeSymlink {
			return fmt.Errorf("header index %s: %s: %w", path, e.Name, ErrUnsafeIndex)
		}
	}
	return nil
}
