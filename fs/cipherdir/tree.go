package cipherdir

// tree.go: the cipher tree as the mount and every offline command see it.
// A Tree holds a handle on the cipher directory root and the filesystem's
// name mapping; everything below the root is reached one component at a
// time through directory handles (at.go), so no path is ever longer than
// one name and no symlink in the cipher directory is ever followed.
//
// Names (docs/format.md, "Names"): with plaintext names an entry is stored
// under its own name, and kmsfs.conf, kmsfs.names, kmsfs.dirid and .kmsfs
// in the root are kmsfs's own. With encrypted names every directory holds
// kmsfs.dirid (its 16-byte ID), each name is AES-SIV-encrypted under the
// names key with that ID as associated data and base64url-encoded, and an
// encoding longer than 255 bytes is stored as kmsfs.long.<hash> with a side
// file kmsfs.long.<hash>.name holding the full encoding. No encoding
// contains a '.', so every entry with one is kmsfs's own.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
)

// DirIDName is the file holding a directory's ID in an encrypted-names
// cipher directory; dirIDXattr is the copy of the ID kept as an extended
// attribute of the directory where the filesystem has them (journaled with
// the directory itself, so a power cut that loses the file's unsynced data
// leaves the ID readable; see ReadDirID).
const (
	DirIDName  = "kmsfs.dirid"
	dirIDXattr = "user.kmsfs.dirid"
	dirIDMode  = 0o444
	sideMode   = 0o444
)

// Errors of the name mapping. Each is wrapped with the entry concerned.
var (
	// ErrBadDirID: a directory's kmsfs.dirid is missing or not 16 bytes.
	ErrBadDirID = errors.New("directory ID missing or damaged")
	// ErrLongName: a long-name side file is missing or does not match its
	// entry (deleted, damaged or swapped with another).
	ErrLongName = errors.New("long-name side file missing or does not match")
)

// Tree is an open cipher directory. It is safe for concurrent use; the
// caller closes it.
type Tree struct {
	dir   string // the path it was opened by, for messages
	root  int    // O_RDONLY directory handle on the root
	names *crypto.NameCipher
	rand  io.Reader
}

// OpenTree opens the cipher directory at dir. names is nil for a
// plaintext-names filesystem.
func OpenTree(dir string, names *crypto.NameCipher) (*Tree, error) {
	fd, err := OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open cipher directory %s: %w", dir, err)
	}
	return &Tree{dir: dir, root: fd, names: names, rand: rand.Reader}, nil
}

// Close closes the root handle.
func (t *Tree) Close() error { return unix.Close(t.root) }

// Root is the handle on the root directory; it stays the Tree's.
func (t *Tree) Root() int { return t.root }

// Dir is the path the Tree was opened by.
func (t *Tree) Dir() string { return t.dir }

// Encrypted reports whether names are encrypted.
func (t *Tree) Encrypted() bool { return t.names != nil }

// Names is the name cipher, nil with plaintext names.
func (t *Tree) Names() *crypto.NameCipher { return t.names }

// Reserved reports whether plain, a name in the root (isRoot) or another
// directory, cannot be a file of the plain view: with plaintext names the
// root's own entries; with encrypted names nothing (every plain name is
// stored encoded).
func (t *Tree) Reserved(plain string, isRoot bool) bool {
	return t.names == nil && isRoot && IsMeta(plain)
}

// Own reports whether entry, an entry of a cipher directory (the root when
// isRoot), is kmsfs's own rather than a file of the plain view.
func (t *Tree) Own(entry string, isRoot bool) bool {
	if isRoot && IsMeta(entry) {
		return true
	}
	return t.names != nil && strings.ContainsRune(entry, '.')
}

// ReadDirID reads the ID of the directory behind dirfd: nil with plaintext
// names. The kmsfs.dirid file is the ID; when it is missing or not 16 bytes
// and the directory's extended attribute holds one, that is used (a power
// cut between mkdir and the file's data reaching the disk); otherwise the
// error wraps ErrBadDirID.
func (t *Tree) ReadDirID(dirfd int) ([]byte, error) {
	if t.names == nil {
		return nil, nil
	}
	id, ferr := ReadSmallFileAt(dirfd, DirIDName, crypto.DirIDSize)
	if ferr == nil && len(id) == crypto.DirIDSize {
		return id, nil
	}
	if ferr == nil {
		ferr = fmt.Errorf("%d bytes, want %d", len(id), crypto.DirIDSize)
	}
	if x, err := readDirIDXattr(dirfd); err == nil {
		return x, nil
	}
	return nil, fmt.Errorf("%s: %v: %w", DirIDName, ferr, ErrBadDirID)
}

// readDirIDXattr reads the copy of the ID kept on the directory itself.
func readDirIDXattr(dirfd int) ([]byte, error) {
	buf := make([]byte, crypto.DirIDSize+1)
	n, err := unix.Getxattr(ProcPath(dirfd), dirIDXattr, buf)
	if err != nil {
		return nil, err
	}
	if n != crypto.DirIDSize {
		return nil, syscall.EINVAL
	}
	return buf[:n], nil
}

// NewDirID gives the new, empty directory behind dirfd its ID: random
// bytes in kmsfs.dirid (mode 0444) and, where the filesystem allows, the
// same bytes in the directory's extended attribute. nil with plaintext
// names.
func (t *Tree) NewDirID(dirfd int) ([]byte, error) {
	if t.names == nil {
		return nil, nil
	}
	id := make([]byte, crypto.DirIDSize)
	if _, err := io.ReadFull(t.rand, id); err != nil {
		return nil, fmt.Errorf("new directory ID: %w", err)
	}
	if err := WriteDirID(dirfd, id); err != nil {
		return nil, err
	}
	return id, nil
}

// WriteDirID writes id as the ID of the directory behind dirfd, which has
// none (fsck --repair, restoring an ID it could verify).
func WriteDirID(dirfd int, id []byte) error {
	if err := WriteNewFileAt(dirfd, DirIDName, dirIDMode, id); err != nil {
		return fmt.Errorf("write %s: %w", DirIDName, err)
	}
	// Best effort: a filesystem without user xattrs (some NFS, tmpfs
	// without them) keeps the file only.
	_ = unix.Setxattr(ProcPath(dirfd), dirIDXattr, id, 0)
	return nil
}

// CipherName maps plain, a name in the directory whose ID is dirID, to the
// entry it is stored under and its full encoding (equal to the entry
// unless it is a long name). With plaintext names both are plain.
func (t *Tree) CipherName(dirID []byte, plain string) (entry, encoded string, err error) {
	if t.names == nil {
		return plain, plain, nil
	}
	encoded, err = t.names.EncryptName(dirID, plain)
	if err != nil {
		return "", "", err
	}
	if len(encoded) > crypto.MaxEncodedName {
		return crypto.LongName(encoded), encoded, nil
	}
	return encoded, encoded, nil
}

// IsLong reports whether entry is a long-name entry (its encoding is in a
// side file).
func IsLong(entry, encoded string) bool { return entry != encoded }

// PrepareEntry makes what an entry about to be created (or renamed or
// linked into place) as entry in dirfd needs first: the side file of a
// long name. An existing side file with the same content is kept (the
// encoding is deterministic); a different one is replaced.
func (t *Tree) PrepareEntry(dirfd int, entry, encoded string) error {
	if !IsLong(entry, encoded) {
		return nil
	}
	side := entry + crypto.LongNameSuffix
	err := WriteNewFileAt(dirfd, side, sideMode, []byte(encoded))
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("write long-name side file: %w", err)
	}
	if got, rerr := ReadSmallFileAt(dirfd, side, 4096); rerr == nil && string(got) == encoded {
		return nil
	}
	// A stale or damaged side file: replace it through a temporary name.
	tmp := side + ".tmp"
	unix.Unlinkat(dirfd, tmp, 0)
	if err := WriteNewFileAt(dirfd, tmp, sideMode, []byte(encoded)); err != nil {
		return fmt.Errorf("write long-name side file: %w", err)
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, side); err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return fmt.Errorf("write long-name side file: %w", err)
	}
	return nil
}

// RemoveEntrySide removes the side file of entry once the entry itself is
// gone (unlinked, removed or renamed away). Errors are ignored: a left-over
// side file is an orphan fsck removes.
func (t *Tree) RemoveEntrySide(dirfd int, entry, encoded string) {
	if IsLong(entry, encoded) {
		unix.Unlinkat(dirfd, entry+crypto.LongNameSuffix, 0)
	}
}

// PlainName maps entry, an entry of the directory behind dirfd whose ID is
// dirID, to its plain name. own is true for kmsfs's own entries (skip
// them). An entry that should be a name but does not decrypt (moved from
// another directory, damaged, a long name whose side file is missing or
// swapped) is an error naming why.
func (t *Tree) PlainName(dirfd int, dirID []byte, entry string, isRoot bool) (plain string, own bool, err error) {
	if t.names == nil {
		if isRoot && IsMeta(entry) {
			return "", true, nil
		}
		return entry, false, nil
	}
	encoded := entry
	if crypto.IsLongName(entry) {
		b, err := ReadSmallFileAt(dirfd, entry+crypto.LongNameSuffix, 4096)
		if err != nil {
			return "", false, fmt.Errorf("%s: %v: %w", entry, err, ErrLongName)
		}
		if crypto.LongName(string(b)) != entry {
			return "", false, fmt.Errorf("%s: side file holds another name: %w", entry, ErrLongName)
		}
		encoded = string(b)
	} else if t.Own(entry, isRoot) {
		return "", true, nil
	}
	plain, err = t.names.DecryptName(dirID, encoded)
	if err != nil {
		return "", false, fmt.Errorf("name %.40s: %w", entry, err)
	}
	return plain, false, nil
}

// EncryptTarget maps a plain symlink target to what is stored.
func (t *Tree) EncryptTarget(plain []byte) ([]byte, error) {
	if t.names == nil {
		return plain, nil
	}
	s, err := t.names.EncryptTarget(plain, t.rand)
	return []byte(s), err
}

// DecryptTarget maps a stored symlink target to the plain one.
func (t *Tree) DecryptTarget(stored []byte) ([]byte, error) {
	if t.names == nil {
		return stored, nil
	}
	return t.names.DecryptTarget(string(stored))
}

// Readlinkat reads the symlink name in dirfd as stored.
func Readlinkat(dirfd int, name string) ([]byte, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return nil, err
		}
		if n < size {
			return buf[:n], nil
		}
	}
}

// SplitPlain checks p, a plain path relative to the plain view's root
// ("/" and "" are the root), and returns its components. ".." is refused,
// "." components are dropped.
func SplitPlain(p string) ([]string, error) {
	if strings.ContainsRune(p, 0) {
		return nil, fmt.Errorf("path %q contains a NUL byte", p)
	}
	var out []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("path %s leaves the filesystem: give a path relative to the mount root, e.g. docs/a.txt", p)
		}
		out = append(out, c)
	}
	return out, nil
}

// Location is where a plain path lives in the cipher tree: the handle of
// its parent directory, that directory's ID, and its entry. The root is
// Parent = the root handle, Entry ".". Close releases the parent handle.
type Location struct {
	Parent   int
	ParentID []byte
	Entry    string // entry name in Parent ("." for the root)
	Encoded  string // full encoding (differs from Entry for a long name)
	Plain    string // plain path, cleaned ("" for the root)
	Cipher   string // cipher path relative to the root ("." for the root)
	owned    bool   // Parent is ours to close
}

// Close releases the parent handle.
func (l *Location) Close() {
	if l.owned {
		unix.Close(l.Parent)
		l.owned = false
	}
}

// Resolve finds plain path p in the tree, one directory handle at a time.
// Every component but the last must be a directory (a symlink there is
// refused: its target means something in the plain view, not in the
// cipher directory). The last need not exist.
func (t *Tree) Resolve(p string) (*Location, error) {
	parts, err := SplitPlain(p)
	if err != nil {
		return nil, err
	}
	if len(parts) == 0 {
		return &Location{Parent: t.root, Entry: ".", Cipher: "."}, nil
	}
	first := parts[0]
	if t.Reserved(first, true) {
		return nil, fmt.Errorf("%s is kmsfs's own metadata, not part of the plain view", p)
	}
	dirfd, owned := t.root, false
	var cipher []string
	closeDir := func() {
		if owned {
			unix.Close(dirfd)
		}
	}
	for i, part := range parts {
		id, err := t.ReadDirID(dirfd)
		if err != nil {
			closeDir()
			return nil, fmt.Errorf("%s: %w", strings.Join(parts[:i], "/"), err)
		}
		entry, encoded, err := t.CipherName(id, part)
		if err != nil {
			closeDir()
			return nil, fmt.Errorf("%s: %w", strings.Join(parts[:i+1], "/"), err)
		}
		cipher = append(cipher, entry)
		if i == len(parts)-1 {
			return &Location{Parent: dirfd, ParentID: id, Entry: entry, Encoded: encoded,
				Plain: strings.Join(parts, "/"), Cipher: strings.Join(cipher, "/"), owned: owned}, nil
		}
		next, err := OpenDirAt(dirfd, entry)
		closeDir()
		if err != nil {
			rel := strings.Join(parts[:i+1], "/")
			switch {
			case errors.Is(err, syscall.ENOENT):
				return nil, fmt.Errorf("%s: no such file or directory in the plain view", rel)
			case errors.Is(err, syscall.ENOTDIR):
				return nil, fmt.Errorf("%s is not a directory (a symlink or a file): give the path without it", rel)
			}
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		dirfd, owned = next, true
	}
	panic("unreachable")
}

// Lstat stats the entry of l without following it.
func (l *Location) Lstat() (unix.Stat_t, error) {
	var st unix.Stat_t
	flags := unix.AT_SYMLINK_NOFOLLOW
	name := l.Entry
	if name == "." {
		flags |= unix.AT_EMPTY_PATH
		name = ""
	}
	err := unix.Fstatat(l.Parent, name, &st, flags)
	return st, err
}

// Open opens the entry of l (O_NOFOLLOW added).
func (l *Location) Open(flags int) (*os.File, error) {
	fd, err := OpenAt(l.Parent, l.Entry, flags, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), l.Plain), nil
}

// WalkEntry is one entry of a tree walk.
type WalkEntry struct {
	Plain  string      // plain path relative to the root ("" for the root)
	Cipher string      // cipher path relative to the root ("." for the root)
	Type   os.FileMode // type bits (os.ModeDir, os.ModeSymlink, ...; 0 regular)
	Dir    int         // handle of the directory holding it (valid during fn only)
	Entry  string      // its entry name in Dir
}

// WalkError is a name the walk could not map (a name that fails to
// decrypt, a long name whose side file is wrong, a directory whose ID is
// damaged); the walk reports it to onErr and goes on.
type WalkError struct {
	Cipher string // cipher path of the entry or directory
	Plain  string // plain path of its directory
	Err    error
}

func (e *WalkError) Error() string { return fmt.Sprintf("%s: %v", e.Cipher, e.Err) }
func (e *WalkError) Unwrap() error { return e.Err }

// Walk calls fn for every entry at or below plain path start (the root
// when ""), parents before children, entries of a directory in plain-name
// order, without following symlinks and skipping kmsfs's own entries.
// Names that cannot be mapped go to onErr (nil: they stop the walk with
// that error). fn returning filepath.SkipDir (or SkipDir) for a directory
// skips it; any other error stops the walk.
func (t *Tree) Walk(start string, fn func(e WalkEntry) error, onErr func(*WalkError) error) error {
	if onErr == nil {
		onErr = func(e *WalkError) error { return e }
	}
	loc, err := t.Resolve(start)
	if err != nil {
		return err
	}
	defer loc.Close()
	st, err := loc.Lstat()
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("%s: no such file or directory in the plain view", start)
		}
		return fmt.Errorf("%s: %w", start, err)
	}
	typ := modeType(st.Mode)
	e := WalkEntry{Plain: loc.Plain, Cipher: loc.Cipher, Type: typ, Dir: loc.Parent, Entry: loc.Entry}
	if err := fn(e); err != nil {
		if err == SkipDir {
			return nil
		}
		return err
	}
	if typ != os.ModeDir {
		return nil
	}
	fd, err := OpenDirAt(loc.Parent, loc.Entry)
	if err != nil {
		return fmt.Errorf("%s: %w", start, err)
	}
	defer unix.Close(fd)
	return t.walkDir(fd, loc.Plain, loc.Cipher, loc.Cipher == ".", fn, onErr)
}

// SkipDir, returned by a Walk callback for a directory, skips its entries.
var SkipDir = errors.New("skip this directory")

func (t *Tree) walkDir(dirfd int, plain, cipher string, isRoot bool, fn func(WalkEntry) error, onErr func(*WalkError) error) error {
	join := func(a, b string) string {
		if a == "" || a == "." {
			return b
		}
		return a + "/" + b
	}
	id, err := t.ReadDirID(dirfd)
	if err != nil {
		return onErr(&WalkError{Cipher: cipher, Plain: plain, Err: err})
	}
	ents, err := ReadDirNames(dirfd)
	if err != nil {
		return onErr(&WalkError{Cipher: cipher, Plain: plain, Err: err})
	}
	type item struct {
		plain string
		ent   DirEntry
	}
	items := make([]item, 0, len(ents))
	for _, e := range ents {
		name, own, err := t.PlainName(dirfd, id, e.Name, isRoot)
		if own {
			continue
		}
		if err != nil {
			if werr := onErr(&WalkError{Cipher: join(cipher, e.Name), Plain: plain, Err: err}); werr != nil {
				return werr
			}
			continue
		}
		items = append(items, item{name, e})
	}
	sortItems(items, func(i item) string { return i.plain })
	for _, it := range items {
		e := WalkEntry{Plain: join(plain, it.plain), Cipher: join(cipher, it.ent.Name), Type: it.ent.Type, Dir: dirfd, Entry: it.ent.Name}
		if e.Type == os.ModeIrregular { // DT_UNKNOWN: ask the inode
			var st unix.Stat_t
			if err := unix.Fstatat(dirfd, it.ent.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
				e.Type = modeType(st.Mode)
			}
		}
		err := fn(e)
		if err == SkipDir {
			continue
		}
		if err != nil {
			return err
		}
		if e.Type != os.ModeDir {
			continue
		}
		sub, err := OpenDirAt(dirfd, it.ent.Name)
		if err != nil {
			if werr := onErr(&WalkError{Cipher: e.Cipher, Plain: e.Plain, Err: err}); werr != nil {
				return werr
			}
			continue
		}
		err = t.walkDir(sub, e.Plain, e.Cipher, false, fn, onErr)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

func sortItems[T any](s []T, key func(T) string) {
	slices.SortFunc(s, func(a, b T) int { return strings.Compare(key(a), key(b)) })
}

// modeType is the os.FileMode type bits of a stat mode.
func modeType(mode uint32) os.FileMode {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return os.ModeDir
	case unix.S_IFLNK:
		return os.ModeSymlink
	case unix.S_IFIFO:
		return os.ModeNamedPipe
	case unix.S_IFSOCK:
		return os.ModeSocket
	case unix.S_IFCHR:
		return os.ModeDevice | os.ModeCharDevice
	case unix.S_IFBLK:
		return os.ModeDevice
	}
	return 0
}

// DirIDOf returns, for fsck, the ID a directory's names decrypt under
// among candidates (other directories' IDs, the extended attribute), or
// nil: a swapped or damaged kmsfs.dirid can then be restored without
// guessing, since AES-SIV authenticates every name under its ID.
func (t *Tree) DirIDOf(dirfd int, names []string, candidates [][]byte) []byte {
	if t.names == nil || len(names) == 0 {
		return nil
	}
	for _, id := range candidates {
		if len(id) != crypto.DirIDSize {
			continue
		}
		ok := true
		for _, n := range names {
			if _, _, err := t.PlainName(dirfd, id, n, false); err != nil {
				ok = false
				break
			}
		}
		if ok {
			return bytes.Clone(id)
		}
	}
	return nil
}

// DirIDXattr reads the copy of the ID of the directory behind dirfd kept
// as its user.kmsfs.dirid attribute, for fsck to compare with the file.
// An error when there is none (or not 16 bytes).
func (t *Tree) DirIDXattr(dirfd int) ([]byte, error) { return readDirIDXattr(dirfd) }

// PlainPath maps cipher, a path relative to the root of the cipher tree
// ("" or "." for the root), to its plain path relative to the plain root
// ("" for the root): each component is decrypted under the ID of the
// directory that holds it, walking down one directory handle at a time.
// Every component but the last must be a directory (a symlink is refused,
// never followed); the last need not exist, unless it is a long name,
// whose encoding is in its side file. A component that cannot be mapped
// (a name that does not decrypt, a damaged directory ID, a wrong side
// file, kmsfs's own entry) is a *WalkError naming it and the plain path
// of its directory; for a damaged directory ID, as in Walk, the directory
// itself.
func (t *Tree) PlainPath(cipher string) (string, error) {
	var parts []string
	for _, c := range strings.Split(cipher, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("cipher path %s leaves the cipher directory", cipher)
		}
		parts = append(parts, c)
	}
	dirfd, owned := t.root, false
	defer func() {
		if owned {
			unix.Close(dirfd)
		}
	}()
	var plain []string
	for i, part := range parts {
		werr := func(err error) error {
			return &WalkError{Cipher: strings.Join(parts[:i+1], "/"), Plain: strings.Join(plain, "/"), Err: err}
		}
		id, err := t.ReadDirID(dirfd)
		if err != nil {
			// As in Walk: the directory's own paths.
			dir := strings.Join(parts[:i], "/")
			if dir == "" {
				dir = "."
			}
			return "", &WalkError{Cipher: dir, Plain: strings.Join(plain, "/"), Err: err}
		}
		name, own, err := t.PlainName(dirfd, id, part, i == 0)
		if err != nil {
			return "", werr(err)
		}
		if own {
			return "", werr(ErrOwnEntry)
		}
		plain = append(plain, name)
		if i == len(parts)-1 {
			break
		}
		next, err := OpenDirAt(dirfd, part)
		if err != nil {
			return "", werr(err)
		}
		if owned {
			unix.Close(dirfd)
		}
		dirfd, owned = next, true
	}
	return strings.Join(plain, "/"), nil
}

// ErrOwnEntry: a cipher path names one of kmsfs's own entries
// (kmsfs.conf, .kmsfs, kmsfs.dirid, a long name's side file, ...), which
// has no plain path.
var ErrOwnEntry = errors.New("kmsfs's own entry, not part of the plain view")
