package cipherdir

// nameskey.go: the two copies of a filesystem's wrapped names key,
// CIPHERDIR/kmsfs.names and CIPHERDIR/.kmsfs/names. Each is the head of a
// cipher file with no content (fs/cipherfile, docs/format.md):
//
//	0       32  preamble, file ID crypto.NamesKeyID (all zero)
//	32      S   header slot 0
//	32+S    S   header slot 1
//
// so it is read and rewrapped like any cipher file's head (a rewrap writes
// the other slot). Two copies, so that losing one file never loses every
// name; the copy in .kmsfs is out of the way of tools that copy only the
// visible tree. The key itself is unwrapped by keymgr (Manager.OpenNamesKey)
// from the headers these readers return.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/internal/atomicfile"
)

// namesKeyMode is the mode of both copies: nothing writes them but a
// rewrap, which makes a file owner-writable for the open.
const namesKeyMode = 0o444

// namesKeyCopies are where the copies are, in the order they are read:
// the directory below the root ("" for the root itself) and the name.
var namesKeyCopies = []struct{ sub, name string }{
	{"", NamesName},
	{MetaName, "names"},
}

// NamesKeyPaths are the copies of the names-key head, in the order they
// are read: CIPHERDIR/kmsfs.names, then CIPHERDIR/.kmsfs/names.
func NamesKeyPaths(dir string) []string {
	out := make([]string, len(namesKeyCopies))
	for i, c := range namesKeyCopies {
		out[i] = filepath.Join(dir, c.sub, c.name)
	}
	return out
}

// WriteNamesKey writes h, the names key's header (file ID
// crypto.NamesKeyID), as a new head of layout l into both copies. Each is
// written to a temporary file in its own directory (O_EXCL|O_NOFOLLOW),
// fsynced, made mode 0444, renamed into place and its directory fsynced,
// so a crash leaves either the whole copy or none. .kmsfs must exist and
// is not followed if it is a symlink. A copy already in place is
// replaced. On an error the first copy may have been written: init
// removes the whole directory.
func WriteNamesKey(dir string, l crypto.Layout, h crypto.Header) error {
	if h.FileID != crypto.NamesKeyID {
		return fmt.Errorf("write names key: header of file %s, want the names key's (%s): %w", h.FileID, crypto.NamesKeyID, crypto.ErrBadHeader)
	}
	for i, c := range namesKeyCopies {
		if err := writeNamesKeyCopy(dir, c.sub, c.name, l, h); err != nil {
			return fmt.Errorf("write names key %s: %w", NamesKeyPaths(dir)[i], err)
		}
	}
	return nil
}

func writeNamesKeyCopy(dir, sub, name string, l crypto.Layout, h crypto.Header) error {
	d, err := openNamesDir(dir, sub)
	if err != nil {
		return err
	}
	defer d.Close()
	p, err := atomicfile.CreateAt(int(d.Fd()), name, namesKeyMode, atomicfile.TempPrefix("."+name+".tmp-"))
	if err != nil {
		return err
	}
	defer p.Abort()
	if err := cipherfile.Create(p.File(), l, h); err != nil {
		return err
	}
	return p.Commit()
}

// openNamesDir opens the directory of a copy O_RDONLY (so it can be
// fsynced): the root as given, or sub below it without following a
// symlink.
func openNamesDir(dir, sub string) (*os.File, error) {
	root, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil || sub == "" {
		return root, err
	}
	defer root.Close()
	path := filepath.Join(dir, sub)
	fd, err := OpenAt(int(root.Fd()), sub, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err == unix.ENOTDIR || err == unix.ELOOP {
		return nil, fmt.Errorf("%s is not a directory (a symlink?): %w", path, err)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// NamesKeyReaders returns one header reader per copy of the names key
// (NamesKeyPaths order), for keymgr's Manager.OpenNamesKey. A reader opens
// its copy O_RDONLY|O_NOFOLLOW (a symlink at the copy or at .kmsfs, or
// anything but a regular file, is refused), reads the head with layout l
// and checks that the preamble names crypto.NamesKeyID. Errors name the
// file.
func NamesKeyReaders(dir string, l crypto.Layout) []func() (crypto.Header, error) {
	paths := NamesKeyPaths(dir)
	out := make([]func() (crypto.Header, error), len(namesKeyCopies))
	for i, c := range namesKeyCopies {
		out[i] = func() (crypto.Header, error) {
			h, err := readNamesKey(dir, c.sub, c.name, l)
			if err != nil {
				return crypto.Header{}, fmt.Errorf("names key %s: %w", paths[i], err)
			}
			return h, nil
		}
	}
	return out
}

func readNamesKey(dir, sub, name string, l crypto.Layout) (crypto.Header, error) {
	d, err := openNamesDir(dir, sub)
	if err != nil {
		return crypto.Header{}, err
	}
	defer d.Close()
	fd, err := OpenAt(int(d.Fd()), name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err == unix.ELOOP {
		return crypto.Header{}, errors.New("is a symlink, not a names-key file")
	}
	if err != nil {
		return crypto.Header{}, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return crypto.Header{}, err
	}
	if !fi.Mode().IsRegular() {
		return crypto.Header{}, fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
	}
	p, err := cipherfile.ReadPreamble(f)
	if err != nil {
		return crypto.Header{}, err
	}
	if p.FileID != crypto.NamesKeyID {
		return crypto.Header{}, fmt.Errorf("preamble names file %s, not the names key (%s): %w", p.FileID, crypto.NamesKeyID, crypto.ErrBadHeader)
	}
	h, _, err := cipherfile.ReadHeader(f, l)
	if err != nil {
		return crypto.Header{}, err
	}
	return h, nil
}
