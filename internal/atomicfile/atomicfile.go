// Package atomicfile replaces a file whole or not at all: every kmsfs file
// that is rewritten in place (the local keyring, kmsfs.conf, mount records,
// trust records, index backups, exported files) goes through it.
//
// The order, and the crash window each step leaves:
//
//  1. a temporary file prefix+random in the target's directory, created
//     O_EXCL|O_NOFOLLOW (a name that exists, symlink or not, is never
//     opened: another name is tried), mode 0600 until the caller widens it;
//  2. the content, written by the caller (WriteFile: data, then perm);
//  3. fsync of the temporary file: a crash before this leaves the old file
//     and, at worst, a stray temporary file, never a short new one;
//  4. rename over the target (a symlink there is replaced, not followed),
//     or, with Exclusive, link to a name that must not exist;
//  5. fsync of the directory, so the new name survives a power cut.
//
// Any failure before the rename removes the temporary file and leaves the
// target as it was. Work goes through a handle of the directory, so a
// directory renamed meanwhile is still the one written to.
//
// It is a leaf: it imports only the standard library and x/sys, so keymgr,
// fs/... and cmd can all use it; it must import none of them.
package atomicfile

import (
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Option tunes a write.
type Option func(*options)

type options struct {
	exclusive  bool
	tempPrefix string
	rand       io.Reader
	sync       func(*os.File) error // fsync of the temporary file and of the directory
	noDirSync  bool
}

// Exclusive creates the target only if no entry of that name exists (link,
// not rename): otherwise Commit fails with an error that errors.Is
// os.ErrExist, and the existing entry is left alone.
func Exclusive() Option { return func(o *options) { o.exclusive = true } }

// CallerSyncsDir leaves the fsync of the directory to the caller, who
// writes many files into it and syncs it once after the last (export).
// The file itself is still fsynced before it takes the name.
func CallerSyncsDir() Option { return func(o *options) { o.noDirSync = true } }

// TempPrefix names the temporary file prefix+random (default:
// "."+name+".tmp-"), for callers whose leftovers others look for.
func TempPrefix(prefix string) Option { return func(o *options) { o.tempPrefix = prefix } }

// withRand and withSync are for tests: a fixed temporary name, an fsync
// that fails or is recorded.
func withRand(r io.Reader) Option             { return func(o *options) { o.rand = r } }
func withSync(fn func(*os.File) error) Option { return func(o *options) { o.sync = fn } }

// Pending is a temporary file that becomes its target on Commit. Write
// through File; end with Commit or Abort (Abort after Commit does nothing,
// so `defer p.Abort()` is the usual shape).
type Pending struct {
	o       options
	dirfd   int
	ownDir  bool   // dirfd opened by Create, closed by Commit or Abort
	dirName string // for messages; "" when the caller gave a handle
	tmp     string
	name    string
	f       *os.File
	closed  bool // f closed
	done    bool // committed or aborted
}

// WriteFile writes data to path atomically with mode perm (exactly: no
// umask). The directory is opened by its path, as the caller gave it.
func WriteFile(path string, data []byte, perm os.FileMode, opts ...Option) error {
	p, err := Create(path, 0o600, opts...)
	if err != nil {
		return err
	}
	return p.writeAll(data, perm)
}

// WriteFileAt is WriteFile for the entry name of the directory handle
// dirfd (O_PATH is enough). dirfd stays the caller's.
func WriteFileAt(dirfd int, name string, data []byte, perm os.FileMode, opts ...Option) error {
	p, err := CreateAt(dirfd, name, 0o600, opts...)
	if err != nil {
		return err
	}
	return p.writeAll(data, perm)
}

func (p *Pending) writeAll(data []byte, perm os.FileMode) error {
	defer p.Abort()
	if _, err := p.f.Write(data); err != nil {
		return err
	}
	// After the content, so a secret is never readable by more than its
	// owner while it is being written.
	if err := p.f.Chmod(perm); err != nil {
		return err
	}
	return p.Commit()
}

// Create starts an atomic write of path; the temporary file has mode perm
// (exactly) from the start, which the caller may change before Commit.
func Create(path string, perm os.FileMode, opts ...Option) (*Pending, error) {
	if strings.HasSuffix(path, "/") {
		return nil, fmt.Errorf("atomic write %s: not a file name", path)
	}
	dir := filepath.Dir(path)
	dirfd, err := openDir(dir)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	p, err := create(dirfd, dir, filepath.Base(path), perm, opts)
	if err != nil {
		unix.Close(dirfd)
		return nil, err
	}
	p.ownDir = true
	return p, nil
}

// CreateAt is Create for the entry name of the directory handle dirfd,
// which must stay open until Commit or Abort.
func CreateAt(dirfd int, name string, perm os.FileMode, opts ...Option) (*Pending, error) {
	return create(dirfd, "", name, perm, opts)
}

func openDir(dir string) (int, error) {
	for {
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func create(dirfd int, dirName, name string, perm os.FileMode, opts []Option) (*Pending, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("atomic write in %s: %q is not a file name", dirName, name)
	}
	p := &Pending{dirfd: dirfd, dirName: dirName, name: name}
	p.o = options{tempPrefix: "." + name + ".tmp-", rand: crand.Reader, sync: (*os.File).Sync}
	for _, opt := range opts {
		opt(&p.o)
	}
	for range 10000 {
		var b [8]byte
		if _, err := io.ReadFull(p.o.rand, b[:]); err != nil {
			return nil, fmt.Errorf("atomic write %s: %w", p.path(name), err)
		}
		tmp := p.o.tempPrefix + hex.EncodeToString(b[:])
		fd, err := unix.Openat(dirfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		switch {
		case err == unix.EEXIST || err == unix.EINTR:
			continue
		case err != nil:
			return nil, &os.PathError{Op: "create", Path: p.path(tmp), Err: err}
		}
		p.tmp, p.f = tmp, os.NewFile(uintptr(fd), p.path(tmp))
		if err := p.f.Chmod(perm); err != nil {
			p.Abort()
			return nil, err
		}
		return p, nil
	}
	return nil, fmt.Errorf("atomic write %s: every temporary name %s* is taken", p.path(name), p.o.tempPrefix)
}

func (p *Pending) path(name string) string {
	if p.dirName == "" {
		return name
	}
	return filepath.Join(p.dirName, name)
}

// File is the temporary file. Do not close it.
func (p *Pending) File() *os.File { return p.f }

// Commit fsyncs the temporary file, moves it into place and fsyncs the
// directory. On an error before the move, the temporary file is removed
// and the target is untouched; an error from the directory's fsync comes
// after the move.
func (p *Pending) Commit() error {
	if p.done {
		return errors.New("atomic write: already committed or aborted")
	}
	if err := p.o.sync(p.f); err != nil {
		p.Abort()
		return err
	}
	p.closed = true
	if err := p.f.Close(); err != nil {
		p.Abort()
		return err
	}
	if p.o.exclusive {
		if err := unix.Linkat(p.dirfd, p.tmp, p.dirfd, p.name, 0); err != nil {
			p.Abort()
			return &os.LinkError{Op: "link", Old: p.path(p.tmp), New: p.path(p.name), Err: err}
		}
		unix.Unlinkat(p.dirfd, p.tmp, 0)
	} else if err := unix.Renameat(p.dirfd, p.tmp, p.dirfd, p.name); err != nil {
		p.Abort()
		return &os.LinkError{Op: "rename", Old: p.path(p.tmp), New: p.path(p.name), Err: err}
	}
	p.done = true
	var err error
	if !p.o.noDirSync {
		err = p.syncDir()
	}
	if p.ownDir {
		unix.Close(p.dirfd)
	}
	return err
}

// syncDir fsyncs the directory through a new O_RDONLY handle of it (the
// caller's may be O_PATH, which cannot be fsynced). A directory that
// cannot be opened for reading is not fsynced: the move is done, and the
// old callers skipped it the same way.
func (p *Pending) syncDir() error {
	fd, err := unix.Openat(p.dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	d := os.NewFile(uintptr(fd), p.path("."))
	defer d.Close()
	if err := p.o.sync(d); err != nil {
		return fmt.Errorf("fsync directory of %s: %w", p.path(p.name), err)
	}
	return nil
}

// Abort removes the temporary file. After Commit, or twice, it does
// nothing.
func (p *Pending) Abort() {
	if p.done {
		return
	}
	p.done = true
	if !p.closed {
		p.closed = true
		p.f.Close()
	}
	unix.Unlinkat(p.dirfd, p.tmp, 0)
	if p.ownDir {
		unix.Close(p.dirfd)
	}
}
