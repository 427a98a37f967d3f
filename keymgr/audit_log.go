package keymgr

// audit_log.go: the audit log's writer (the line format is in audit.go,
// the readers in audit_read.go).
//
// Files, all in one directory (CIPHERDIR/.kmsfs), mode 0600:
//
//	audit.log       the current log, appended to
//	audit.log.1     the log before the last rotation (newest kept)
//	...
//	audit.log.Keep  the oldest kept; the one before it was dropped
//
// Rotation: before a line that would take audit.log past MaxSize, the
// writer shifts audit.log.(i) to audit.log.(i+1) for i = Keep-1 .. 1
// (renaming onto audit.log.Keep drops the oldest), renames audit.log to
// audit.log.1 and creates a new audit.log. A line is never split, so a
// log holds at most MaxSize bytes unless one line alone is larger (it is
// then the file's only line) or other processes appended between this
// writer's size checks.
//
// The directory is untrusted (its writer may plant symlinks, FIFOs or
// directories under any of these names), so every open, stat and rename
// is relative to one handle of the directory, opened without following a
// symlink, and never follows a symlink itself: renameat moves or replaces
// a planted link, it never writes through it. A name that cannot be
// shifted (a planted directory) fails the rotation, and the write with it
// (the log fails closed), with an error naming it.
//
// Several processes may append to the same log (a mount, `kmsfs rewrap`).
// A rotation holds flock(LOCK_EX) on the log it rotates and first checks
// that audit.log still names that inode: one that lost the race reopens
// audit.log instead of rotating a second time.
//
// Durability: a write is one write(2) and never waits for the disk. A
// flusher goroutine fsyncs the log once a second when lines were written
// since its last fsync (and a rotated-away log, and the directory after a
// rotation), so a crash loses at most the last second of lines. Close
// fsyncs what is left. An fsync error is returned by the next Write (the
// KMS call it records fails: lines may have been lost).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// DefaultAuditMaxSize is the size past which the audit log rotates.
	DefaultAuditMaxSize = 16 << 20
	// DefaultAuditKeep is how many rotated logs are kept.
	DefaultAuditKeep = 4
	// MinAuditMaxSize and MaxAuditKeep bound AuditOptions: a cap below a
	// few lines would rotate on every call; readers look for at most
	// MaxAuditKeep rotated logs.
	MinAuditMaxSize = 4 << 10
	MaxAuditKeep    = 99

	// auditSyncEvery is the flusher's period: lines reach the disk at most
	// this long after they were written.
	auditSyncEvery = time.Second
	// auditRotateTries bounds the rotations lost to other processes.
	auditRotateTries = 4
)

// AuditOptions tunes an audit log. The zero value is the defaults.
type AuditOptions struct {
	// MaxSize is the size in bytes the log may reach before it is rotated
	// to audit.log.1 (0: DefaultAuditMaxSize; else at least
	// MinAuditMaxSize).
	MaxSize int64
	// Keep is how many rotated logs are kept, audit.log.1 (newest) to
	// audit.log.Keep (oldest) (0: DefaultAuditKeep; at most MaxAuditKeep).
	Keep int

	// Test hooks: the flusher's period (0: auditSyncEvery) and its fsync
	// (nil: (*os.File).Sync).
	syncEvery time.Duration
	sync      func(*os.File) error
}

// AuditSize is AuditOptions.MaxSize as a command-line flag value
// (flag.Value, and pflag.Value with Type): a byte count, with an optional
// K, M or G suffix (powers of 1024, "16M" = 16 MiB; "KiB", "MB" and the
// like read the same).
type AuditSize int64

// Set parses v.
func (s *AuditSize) Set(v string) error {
	num := strings.TrimSpace(v)
	shift := 0
	unit := strings.ToUpper(strings.TrimLeft(num, "0123456789"))
	num = num[:len(num)-len(unit)]
	switch strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I") {
	case "":
	case "K":
		shift = 10
	case "M":
		shift = 20
	case "G":
		shift = 30
	default:
		return fmt.Errorf("size %q: want a byte count with an optional K, M or G suffix, e.g. 16M", v)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return fmt.Errorf("size %q: want a byte count with an optional K, M or G suffix, e.g. 16M", v)
	}
	*s = AuditSize(n << shift)
	return nil
}

// String formats s as Set reads it, in the largest unit that divides it.
func (s AuditSize) String() string {
	for _, u := range []struct {
		shift  int
		suffix string
	}{{30, "G"}, {20, "M"}, {10, "K"}} {
		if s != 0 && s%(1<<u.shift) == 0 {
			return strconv.FormatInt(int64(s)>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// Type names the value in pflag's help.
func (AuditSize) Type() string { return "size" }

// withDefaults validates o and fills in its zero fields.
func (o AuditOptions) withDefaults() (AuditOptions, error) {
	switch {
	case o.MaxSize == 0:
		o.MaxSize = DefaultAuditMaxSize
	case o.MaxSize < MinAuditMaxSize:
		return o, fmt.Errorf("audit log size cap %d bytes is below the minimum of %d: pass --audit-max-size %d or more", o.MaxSize, MinAuditMaxSize, MinAuditMaxSize)
	}
	switch {
	case o.Keep == 0:
		o.Keep = DefaultAuditKeep
	case o.Keep < 0 || o.Keep > MaxAuditKeep:
		return o, fmt.Errorf("audit logs to keep: %d is outside 1..%d: pass --audit-keep within it", o.Keep, MaxAuditKeep)
	}
	if o.syncEvery <= 0 {
		o.syncEvery = auditSyncEvery
	}
	if o.sync == nil {
		o.sync = (*os.File).Sync
	}
	return o, nil
}

// AuditLog appends AuditRecords to a file, rotating it at a size cap and
// fsyncing it in the background. Safe for concurrent use.
type AuditLog struct {
	path string       // the log, as given (for messages)
	name string       // its base name in dir
	opts AuditOptions // with defaults
	dir  *os.File     // the log's directory, opened O_DIRECTORY|O_NOFOLLOW

	mu       sync.Mutex // guards the fields below; never held across an fsync
	f        *os.File   // the current log; nil once closed
	size     int64      // f's size at the last check or write
	dirty    bool       // f has lines the flusher has not fsync'd
	retired  []*os.File // rotated-away logs, for the flusher to fsync and close
	dirDirty bool       // dir has renames the flusher has not fsync'd
	syncErr  error      // the flusher's last fsync error, for the next Write

	stop      chan struct{} // closed by Close: the flusher returns
	done      chan struct{} // closed by the flusher when it returns
	closeOnce sync.Once
	closeErr  error
}

// OpenAuditLog opens path for appending (created 0600, its directory 0700)
// with o's size cap and count of rotated logs, and starts its flusher;
// Close stops it. Neither the log nor its directory may be a symlink: the
// log lives in the cipher directory, which its writer may change, and a
// log that is a symlink to (say) a shell start-up file must not get lines
// appended.
func OpenAuditLog(path string, o AuditOptions) (*AuditLog, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	dir, err := openAuditDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	a := &AuditLog{path: path, name: filepath.Base(path), opts: o, dir: dir,
		stop: make(chan struct{}), done: make(chan struct{})}
	if a.f, err = a.openAt(a.name, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, 0o600); err != nil {
		dir.Close()
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if a.size, err = a.f.Seek(0, io.SeekEnd); err != nil {
		a.f.Close()
		dir.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	go a.flusher()
	return a, nil
}

// openAuditDir opens dir for *at calls and fsync, refusing a symlink.
func openAuditDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			err = fmt.Errorf("a symlink or not a directory, never followed in a cipher directory: remove it: %w", err)
		}
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// openAt opens name in the log's directory without following a symlink.
func (a *AuditLog) openAt(name string, flags int, perm uint32) (*os.File, error) {
	return openAtNoFollow(a.dir, name, flags, perm)
}

// openAtNoFollow opens name relative to dir, never following a symlink
// and never blocking on a FIFO, and refuses anything but a regular file.
func openAtNoFollow(dir *os.File, name string, flags int, perm uint32) (*os.File, error) {
	path := filepath.Join(dir.Name(), name)
	fd, err := unix.Openat(int(dir.Fd()), name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, perm)
	if err != nil {
		if err == unix.ELOOP {
			return nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("a symlink, never followed in a cipher directory: remove it: %w", err)}
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not a regular file: remove it")}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openNoFollow opens path with neither its directory (the last directory
// component) nor the file itself followed if a symlink, and refuses
// anything but a regular file.
func openNoFollow(path string, flags int, perm uint32) (*os.File, error) {
	dir, err := openAuditDir(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	return openAtNoFollow(dir, filepath.Base(path), flags, perm)
}

// Path is the log file.
func (a *AuditLog) Path() string { return a.path }

// Write appends one record as one line, in one write, rotating the log
// first when the line would take it past the size cap.
func (a *AuditLog) Write(rec AuditRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	line = append(line, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return fmt.Errorf("audit log %s: closed", a.path)
	}
	if err := a.syncErr; err != nil {
		a.syncErr = nil
		return fmt.Errorf("audit log %s: fsync failed, lines may be lost: check the disk: %w", a.path, err)
	}
	// The size as the file has it now, other processes' lines included
	// (one fstat: cheaper than any KMS call).
	var st unix.Stat_t
	if err := unix.Fstat(int(a.f.Fd()), &st); err == nil {
		a.size = st.Size
	}
	if a.size > 0 && a.size+int64(len(line)) > a.opts.MaxSize {
		if err := a.rotateLocked(int64(len(line))); err != nil {
			return fmt.Errorf("audit log %s: rotate: %w", a.path, err)
		}
	}
	n, err := a.f.Write(line)
	if n > 0 {
		a.dirty = true
		a.size += int64(n)
	}
	if err != nil {
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	return nil
}

// rotateLocked rotates the log unless, once the sizes are checked under
// the rotation lock, the line fits after all or another process rotated
// it first (then the new audit.log is reopened). Called with a.mu held.
func (a *AuditLog) rotateLocked(lineLen int64) error {
	for range auditRotateTries {
		fd := int(a.f.Fd())
		if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
			return fmt.Errorf("lock %s: %w", a.path, err)
		}
		ours, size, err := a.stillCurrent()
		if err != nil {
			_ = unix.Flock(fd, unix.LOCK_UN)
			return err
		}
		if !ours {
			// Rotated (or removed) by someone else: append to audit.log
			// as it is now.
			_ = unix.Flock(fd, unix.LOCK_UN)
			if err := a.reopenLocked(); err != nil {
				return err
			}
			if a.size == 0 || a.size+lineLen <= a.opts.MaxSize {
				return nil
			}
			continue
		}
		a.size = size
		if size == 0 || size+lineLen <= a.opts.MaxSize {
			_ = unix.Flock(fd, unix.LOCK_UN)
			return nil
		}
		err = a.shiftLocked()
		if err == nil {
			err = a.reopenLocked()
		}
		_ = unix.Flock(fd, unix.LOCK_UN)
		return err
	}
	return fmt.Errorf("%s kept being rotated by another process: retry", a.path)
}

// stillCurrent reports whether a.name in a.dir is still the file a.f has
// open, and a.f's size.
func (a *AuditLog) stillCurrent() (bool, int64, error) {
	var mine, named unix.Stat_t
	if err := unix.Fstat(int(a.f.Fd()), &mine); err != nil {
		return false, 0, fmt.Errorf("stat %s: %w", a.path, err)
	}
	err := unix.Fstatat(int(a.dir.Fd()), a.name, &named, unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.ENOENT {
		return false, mine.Size, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("stat %s: %w", a.path, err)
	}
	return mine.Dev == named.Dev && mine.Ino == named.Ino, mine.Size, nil
}

// shiftLocked renames audit.log.(Keep-1) .. audit.log.1 one up (onto
// audit.log.Keep, dropping the oldest) and audit.log to audit.log.1.
func (a *AuditLog) shiftLocked() error {
	dirfd := int(a.dir.Fd())
	for i := a.opts.Keep - 1; i >= 1; i-- {
		from, to := a.rotated(i), a.rotated(i+1)
		if err := unix.Renameat(dirfd, from, dirfd, to); err != nil && err != unix.ENOENT {
			return fmt.Errorf("rename %s to %s: %w: remove %s", from, to, err, filepath.Join(a.dir.Name(), to))
		}
	}
	if err := unix.Renameat(dirfd, a.name, dirfd, a.rotated(1)); err != nil {
		return fmt.Errorf("rename %s to %s: %w: remove %s", a.name, a.rotated(1), err, filepath.Join(a.dir.Name(), a.rotated(1)))
	}
	a.dirDirty = true
	return nil
}

// rotated is the name of the i-th rotated log.
func (a *AuditLog) rotated(i int) string { return a.name + "." + strconv.Itoa(i) }

// reopenLocked opens (creating) a.name and makes it the current log; the
// old handle goes to the flusher to be fsync'd and closed.
func (a *AuditLog) reopenLocked() error {
	f, err := a.openAt(a.name, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, 0o600)
	if err != nil {
		return err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return fmt.Errorf("seek %s: %w", a.path, err)
	}
	a.retired = append(a.retired, a.f) // its lines get their fsync there
	a.f, a.size, a.dirty = f, size, false
	return nil
}

// flusher fsyncs the log every opts.syncEvery while lines are written.
func (a *AuditLog) flusher() {
	defer close(a.done)
	t := time.NewTicker(a.opts.syncEvery)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		if err := a.flush(); err != nil {
			a.mu.Lock()
			a.syncErr = err
			a.mu.Unlock()
		}
	}
}

// flush fsyncs and closes the retired logs, fsyncs the directory after a
// rotation, and fsyncs the current log if it has unsynced lines. Only the
// flusher calls it, and Close once the flusher has returned; a rotation
// retires a log instead of closing it, so no file is closed while flush
// syncs it. The fsyncs run without a.mu: a Write never waits for the disk.
func (a *AuditLog) flush() error {
	a.mu.Lock()
	f, dirty, retired, dirDirty := a.f, a.dirty && a.f != nil, a.retired, a.dirDirty
	a.dirty, a.retired, a.dirDirty = false, nil, false
	a.mu.Unlock()
	var errs []error
	for _, r := range retired {
		if err := a.opts.sync(r); err != nil {
			errs = append(errs, fmt.Errorf("fsync %s: %w", r.Name(), err))
		}
		if err := r.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", r.Name(), err))
		}
	}
	if dirDirty {
		if err := a.dir.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("fsync %s: %w", a.dir.Name(), err))
		}
	}
	if dirty {
		if err := a.opts.sync(f); err != nil {
			errs = append(errs, fmt.Errorf("fsync %s: %w", a.path, err))
		}
	}
	return errors.Join(errs...)
}

// Close stops the flusher, fsyncs and closes the log. Calling it twice is
// harmless.
func (a *AuditLog) Close() error {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		f := a.f
		a.f = nil // from here on, Write fails
		a.mu.Unlock()
		close(a.stop)
		<-a.done
		a.mu.Lock()
		a.retired = append(a.retired, f)
		a.dirty = false
		a.mu.Unlock()
		err := a.flush() // syncs and closes f among the retired
		if cerr := a.dir.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			a.closeErr = fmt.Errorf("audit log %s: %w", a.path, err)
		}
	})
	return a.closeErr
}
