package cipherdir

// walk.go: walks of the cipher tree that need no names key: the cipher
// files a rewrap, an index restore, status and fsck read, and the
// directories fsck checks. As in tree.go, every directory is opened from
// its parent's handle by one name with O_NOFOLLOW, so no symlink is ever
// followed and a tree deeper than PATH_MAX walks.
//
// Which entries are kmsfs's own (never cipher files, never descended), the
// rule of docs/format.md "kmsfs's own entries":
//   - in the root: kmsfs.conf, .kmsfs, kmsfs.names and kmsfs.dirid;
//   - with encrypted names, in every directory: every entry whose name
//     holds a '.', except a long-name entry kmsfs.long.H, which is a file
//     of the plain view stored under its long name. So kmsfs.dirid, the
//     side files kmsfs.long.H.name and a crash's left-over temporary
//     files are passed over.
//
// Whether names are encrypted is kmsfs.conf's to say; WalkFiles, whose
// callers pass only a path, reads it off the directory (HasEncryptedNames).

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
)

// OwnEntry reports whether name, an entry of a cipher directory (the root
// when isRoot), is kmsfs's own rather than an entry of the plain view.
// Unlike Tree.Own, a long-name entry is not kmsfs's own: it is a plain
// entry stored under its long name.
func OwnEntry(name string, isRoot, encryptedNames bool) bool {
	if isRoot && IsMeta(name) {
		return true
	}
	return encryptedNames && strings.ContainsRune(name, '.') && !crypto.IsLongName(name)
}

// HasEncryptedNames tells from the cipher directory alone, with no names
// key and no kmsfs.conf, whether its names are encrypted: the root of an
// encrypted-names cipher directory holds its directory ID (kmsfs.dirid of
// exactly 16 bytes, or the user.kmsfs.dirid attribute) or a names-key head
// (kmsfs.names or .kmsfs/names whose preamble holds the all-zero file ID).
// A plaintext-names root has none of these: a cipher file is empty or
// longer than 16 bytes, and its file ID is random.
func HasEncryptedNames(rootfd int) bool {
	if id, err := ReadSmallFileAt(rootfd, DirIDName, crypto.DirIDSize); err == nil && len(id) == crypto.DirIDSize {
		return true
	}
	if _, err := readDirIDXattr(rootfd); err == nil {
		return true
	}
	if isNamesHead(rootfd, NamesName) {
		return true
	}
	meta, err := OpenDirAt(rootfd, MetaName)
	if err != nil {
		return false
	}
	defer unix.Close(meta)
	return isNamesHead(meta, "names")
}

// isNamesHead reports whether name in dirfd is a regular file that starts
// with a preamble of the names key's file ID.
func isNamesHead(dirfd int, name string) bool {
	fd, err := OpenAt(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	b := make([]byte, crypto.PreambleSize)
	if n, err := unix.Pread(fd, b, 0); err != nil || n != len(b) {
		return false
	}
	p, err := crypto.ParsePreamble(b)
	return err == nil && p.FileID == crypto.NamesKeyID
}

// CipherDir is one directory of a cipher-tree walk.
type CipherDir struct {
	Fd      int           // O_PATH handle on the directory, valid during the callback only
	Cipher  string        // its path relative to the root, '/'-separated ("." for the root)
	Root    bool          // the root of the cipher directory
	Entries []CipherEntry // every entry but "." and "..", sorted by name
}

// CipherEntry is one entry of a CipherDir.
type CipherEntry struct {
	Name string
	Type os.FileMode // type bits (0 for a regular file, os.ModeDir, os.ModeSymlink, ...)
	Own  bool        // kmsfs's own (OwnEntry)
}

// IsCipherFile reports whether e is a cipher file: a regular file of the
// plain view.
func (e CipherEntry) IsCipherFile() bool { return !e.Own && e.Type == 0 }

// Path is the path of name in d relative to the root.
func (d *CipherDir) Path(name string) string {
	if d.Cipher == "." {
		return name
	}
	return d.Cipher + "/" + name
}

// WalkCipherDirs calls fn for every directory of the cipher tree below the
// root handle rootfd, the root first, parents before children, subdirectories
// in name order, passing over kmsfs's own entries' subtrees (.kmsfs) and
// never following a symlink. fn returning SkipDir skips the directory's
// subdirectories; any other error stops the walk. A directory removed while
// the walk runs is passed over; one that cannot be opened or listed stops
// the walk with an error naming it.
func WalkCipherDirs(rootfd int, encryptedNames bool, fn func(d *CipherDir) error) error {
	fd, err := OpenDirAt(rootfd, ".")
	if err != nil {
		return fmt.Errorf("walk the cipher directory: %w", err)
	}
	defer unix.Close(fd)
	return walkCipherDir(fd, ".", true, encryptedNames, fn)
}

func walkCipherDir(fd int, cipher string, isRoot, encryptedNames bool, fn func(*CipherDir) error) error {
	ents, err := ReadDirNames(fd)
	if err != nil {
		return fmt.Errorf("walk %s: list: %w", cipher, err)
	}
	d := &CipherDir{Fd: fd, Cipher: cipher, Root: isRoot, Entries: make([]CipherEntry, 0, len(ents))}
	for _, e := range ents {
		ce := CipherEntry{Name: e.Name, Type: e.Type, Own: OwnEntry(e.Name, isRoot, encryptedNames)}
		if ce.Type == os.ModeIrregular { // DT_UNKNOWN: ask the inode
			var st unix.Stat_t
			if err := unix.Fstatat(fd, e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
				ce.Type = modeType(st.Mode)
			}
		}
		d.Entries = append(d.Entries, ce)
	}
	sortItems(d.Entries, func(e CipherEntry) string { return e.Name })
	if err := fn(d); err != nil {
		if err == SkipDir {
			return nil
		}
		return err
	}
	for _, e := range d.Entries {
		if e.Own || e.Type != os.ModeDir {
			continue
		}
		sub, err := OpenDirAt(fd, e.Name)
		if errors.Is(err, syscall.ENOENT) {
			continue // removed since the listing
		}
		if err != nil {
			return fmt.Errorf("walk %s: %w", d.Path(e.Name), err)
		}
		err = walkCipherDir(sub, d.Path(e.Name), false, encryptedNames, fn)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// WalkCipherFiles calls fn for every cipher file below the root handle
// rootfd (CipherEntry.IsCipherFile), in WalkCipherDirs order, each
// directory's files in name order. It stops at fn's first error.
func WalkCipherFiles(rootfd int, encryptedNames bool, fn func(d *CipherDir, e CipherEntry) error) error {
	return WalkCipherDirs(rootfd, encryptedNames, func(d *CipherDir) error {
		for _, e := range d.Entries {
			if !e.IsCipherFile() {
				continue
			}
			if err := fn(d, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// WalkCipherDirs walks t's cipher directories (the package function).
func (t *Tree) WalkCipherDirs(fn func(d *CipherDir) error) error {
	return WalkCipherDirs(t.root, t.Encrypted(), fn)
}

// WalkCipherFiles walks t's cipher files (the package function).
func (t *Tree) WalkCipherFiles(fn func(d *CipherDir, e CipherEntry) error) error {
	return WalkCipherFiles(t.root, t.Encrypted(), fn)
}

// WalkFiles calls fn for every cipher file of the cipher directory dir
// (WalkCipherFiles, with HasEncryptedNames deciding which entries are
// kmsfs's own). path is the file's full path, rel its path relative to dir
// (OS separators); d.Info stats the file, during fn only. It stops at fn's
// first error and returns it; a directory that cannot be read stops the
// walk with an error naming it.
func WalkFiles(dir string, fn func(path, rel string, d fs.DirEntry) error) error {
	root, err := OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, err)
	}
	defer unix.Close(root)
	return WalkCipherFiles(root, HasEncryptedNames(root), func(d *CipherDir, e CipherEntry) error {
		rel := filepath.FromSlash(d.Path(e.Name))
		return fn(filepath.Join(dir, rel), rel, dirEntry{dirfd: d.Fd, e: e})
	})
}

// dirEntry is a CipherEntry as an fs.DirEntry.
type dirEntry struct {
	dirfd int
	e     CipherEntry
}

func (d dirEntry) Name() string      { return d.e.Name }
func (d dirEntry) IsDir() bool       { return d.e.Type == os.ModeDir }
func (d dirEntry) Type() os.FileMode { return d.e.Type }
func (d dirEntry) Info() (fs.FileInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.dirfd, d.e.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: d.e.Name, Err: err}
	}
	return StatInfo(d.e.Name, &st), nil
}

// StatInfo is st, the stat of an entry called name, as an fs.FileInfo
// whose Sys is st (a *unix.Stat_t, not the *syscall.Stat_t of os.Lstat).
func StatInfo(name string, st *unix.Stat_t) fs.FileInfo {
	return statInfo{name: name, st: st}
}

type statInfo struct {
	name string
	st   *unix.Stat_t
}

func (s statInfo) Name() string       { return s.name }
func (s statInfo) Size() int64        { return s.st.Size }
func (s statInfo) IsDir() bool        { return s.Mode().IsDir() }
func (s statInfo) Sys() any           { return s.st }
func (s statInfo) ModTime() time.Time { return time.Unix(s.st.Mtim.Unix()) }
func (s statInfo) Mode() os.FileMode {
	m := modeType(s.st.Mode) | os.FileMode(s.st.Mode&0o777)
	if s.st.Mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if s.st.Mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if s.st.Mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// ListFiles returns the full paths of every cipher file below dir, in
// WalkFiles order.
func ListFiles(dir string) ([]string, error) {
	var out []string
	err := WalkFiles(dir, func(path, _ string, _ fs.DirEntry) error {
		out = append(out, path)
		return nil
	})
	return out, err
}
