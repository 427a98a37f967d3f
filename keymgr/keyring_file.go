package keymgr

// keyring_file.go: the keyring file on disk. It is JSON
// (keyring_envelope.go), mode 0600, in a directory of mode 0700. Opening
// checks both on the handles it reads through (openKeyringDir): the
// directory must be the caller's (or root's) and writable by no one else,
// and kmsfs's default directory readable by no one else; the file, opened
// relative to the directory without following a symlink, must be a
// regular file only its owner can read.
//
// Save rewrites the whole file atomically (internal/atomicfile: temp file
// 0600, fsync, rename, fsync of the directory). Reload re-reads a file
// changed by another process (`kmsfs keys rotate` while mounted) with the
// kept KEK.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/atomicfile"
)

const maxKeyringFileSize = 16 << 20

type fileIdentity struct {
	dev, ino uint64
	size     int64
	mtimeNS  int64
}

func identityOf(fi os.FileInfo) fileIdentity {
	id := fileIdentity{size: fi.Size(), mtimeNS: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev = uint64(st.Dev)
		id.ino = uint64(st.Ino)
	}
	return id
}

// DefaultKeyringPath is $KMSFS_KEYRING, else $XDG_CONFIG_HOME/kmsfs/keyring.json,
// else ~/.config/kmsfs/keyring.json.
func DefaultKeyringPath() string {
	if p := os.Getenv("KMSFS_KEYRING"); p != "" {
		return p
	}
	return filepath.Join(defaultKeyringDir(), "keyring.json")
}

// defaultKeyringDir is the directory kmsfs chooses (and creates 0700) for
// the keyring: $XDG_CONFIG_HOME/kmsfs, else ~/.config/kmsfs.
func defaultKeyringDir() string {
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "kmsfs")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".config", "kmsfs")
}

// readKeyringFile reads the keyring file after checking its directory
// (openKeyringDir) and that it is a regular file, not a symlink, that only
// its owner can read or write.
func readKeyringFile(path string) ([]byte, fileIdentity, error) {
	dir, err := openKeyringDir(filepath.Dir(path))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: run `kmsfs init` to create one, or pass --keyring PATH", path, ErrKeyringNotFound)
		}
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w", path, err)
	}
	defer dir.Close()
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case err == unix.ENOENT:
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: run `kmsfs init` to create one, or pass --keyring PATH", path, ErrKeyringNotFound)
	case err == unix.ELOOP:
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: a symlink, which kmsfs does not follow: pass --keyring with the file it points to", path, ErrKeyringInsecure)
	case err != nil:
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileIdentity{}, fmt.Errorf("open keyring: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: not a regular file: pass --keyring with the keyring file", path, ErrKeyringCorrupt)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w (mode %04o): run `chmod 600 %s`", path, ErrKeyringInsecure, perm, path)
	}
	if fi.Size() > maxKeyringFileSize {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: %d bytes is larger than any keyring: restore it from a backup", path, ErrKeyringCorrupt, fi.Size())
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w", path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyringFileSize+1))
	if err != nil {
		return nil, fileIdentity{}, fmt.Errorf("open keyring: %w", err)
	}
	return data, identityOf(fi), nil
}

// insecureDirError is ErrKeyringInsecure for the keyring's directory (the
// sentinel's own words are about the file).
type insecureDirError string

func (e insecureDirError) Error() string        { return string(e) }
func (e insecureDirError) Is(target error) bool { return target == ErrKeyringInsecure }

// openKeyringDir opens the keyring's directory and checks, on that handle
// (fstat, so a directory swapped after the check is not the one checked),
// that no one but the caller could replace the keyring in it or, for
// kmsfs's default directory, list it:
//
//   - owned by the effective user, or by root (who can do anything anyway);
//   - not writable by group or others (sticky or not);
//   - the default directory ($XDG_CONFIG_HOME/kmsfs, created 0700): no
//     group or other permission at all. A directory the user chose may be
//     readable by others (the file itself is 0600).
//
// Errors wrap ErrKeyringInsecure and name the fix.
func openKeyringDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	d := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.Close()
		return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	perm := st.Mode & 0o777
	euid := uint32(os.Geteuid())
	var why string
	switch {
	case st.Uid != euid && st.Uid != 0:
		why = fmt.Sprintf("keyring directory %s belongs to user %d, not to you (%d), who could replace the keyring: move the keyring to a directory of your own, mode 0700", dir, st.Uid, euid)
	case perm&0o022 != 0:
		why = fmt.Sprintf("keyring directory %s (mode %04o) is writable by group or others, who could replace the keyring: run `chmod 700 %s`", dir, perm, dir)
	case perm&0o077 != 0 && isDefaultKeyringDir(&st):
		why = fmt.Sprintf("keyring directory %s (mode %04o) is open to group or others, and kmsfs creates it 0700: run `chmod 700 %s`", dir, perm, dir)
	}
	if why != "" {
		d.Close()
		return nil, insecureDirError(why)
	}
	return d, nil
}

// isDefaultKeyringDir reports whether st is the directory kmsfs creates
// for its keyring (by identity, whatever path reached it).
func isDefaultKeyringDir(st *unix.Stat_t) bool {
	var def unix.Stat_t
	if err := unix.Stat(defaultKeyringDir(), &def); err != nil {
		return false
	}
	return def.Dev == st.Dev && def.Ino == st.Ino
}

// Save writes the keyring to its file atomically, sealed with the kept KEK
// under a fresh nonce. It refuses to overwrite changes another process made
// to the file since this keyring read or wrote it.
func (k *Keyring) Save() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return fmt.Errorf("save keyring %s: %w", k.path, errKeyringClosed)
	}
	if err := k.saveLocked(false); err != nil {
		return fmt.Errorf("save keyring %s: %w", k.path, err)
	}
	return nil
}

func (k *Keyring) saveLocked(create bool) error {
	if !create {
		fi, err := os.Stat(k.path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err == nil && identityOf(fi) != k.disk {
			return errors.New("the file changed on disk since it was read (another kmsfs command?): reopen the keyring and repeat the change")
		}
	}
	data, err := k.sealLocked()
	if err != nil {
		return err
	}
	ident, err := writeKeyringFile(k.path, data, create)
	if err != nil {
		return err
	}
	k.disk = ident
	k.dirty = false
	return nil
}

// writeKeyringFile writes data to path atomically, mode 0600; create: only
// if no file is there (an exclusive link), so an existing keyring is
// never replaced. It returns the identity of the file written.
func writeKeyringFile(path string, data []byte, create bool) (fileIdentity, error) {
	var opts []atomicfile.Option
	if create {
		opts = append(opts, atomicfile.Exclusive())
	}
	if err := atomicfile.WriteFile(path, data, 0o600, opts...); err != nil {
		if create && errors.Is(err, os.ErrExist) {
			return fileIdentity{}, fmt.Errorf("%w: open it instead, or pass another --keyring path", ErrKeyringExists)
		}
		return fileIdentity{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileIdentity{}, err
	}
	return identityOf(fi), nil
}

// Reload re-reads the keyring file with the kept KEK if it changed on disk
// (identity, size or mtime) since this keyring last read or wrote it, so a
// running mount sees rotations and enable/disable done by the CLI. A keyring
// with unsaved changes is not reloaded.
func (k *Keyring) Reload() error {
	fi, err := os.Stat(k.path)
	if err != nil {
		return fmt.Errorf("reload keyring %s: %w", k.path, err)
	}
	k.mu.RLock()
	same, closed := identityOf(fi) == k.disk, k.closed
	k.mu.RUnlock()
	if closed {
		return fmt.Errorf("reload keyring %s: %w", k.path, errKeyringClosed)
	}
	if same {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return fmt.Errorf("reload keyring %s: %w", k.path, errKeyringClosed)
	}
	if k.dirty {
		return fmt.Errorf("reload keyring %s: this handle has unsaved changes: save or discard them first", k.path)
	}
	data, ident, err := readKeyringFile(k.path)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if ident == k.disk {
		return nil // another goroutine reloaded it meanwhile
	}
	kf, err := parseKeyringFile(data)
	if err != nil {
		return fmt.Errorf("reload keyring %s: %w", k.path, err)
	}
	if !k.kdf.equal(kdfParams{salt: kf.Salt, time: kf.Time, memoryKiB: kf.MemoryKiB, threads: kf.Threads}) {
		return fmt.Errorf("reload keyring %s: %w: it was re-sealed under a new passphrase or KDF parameters: restart to open it again", k.path, ErrWrongPassphrase)
	}
	var kek [kekSize]byte
	copy(kek[:], k.slab.Slot(0))
	defer clear(kek[:])
	if err := k.loadSealed(kf, kek[:], ident); err != nil {
		return fmt.Errorf("reload keyring %s: %w", k.path, err)
	}
	k.log.Info("keyring reloaded", "keyring", k.path, "keys", len(k.keys))
	return nil
}
