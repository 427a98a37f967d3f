package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// fileKey names a cipher inode. The open-file table is keyed by inode, not
// path, so hard links, renames and unlinked-but-open files all reach the
// one entry of their inode.
type fileKey struct{ dev, ino uint64 }

// openTable holds one openFile per open cipher inode, shared by every
// handle (and every node-level operation that needs the content).
type openTable struct {
	mu sync.Mutex
	m  map[fileKey]*openFile
}

// openFile is the state of one open cipher inode. refs is guarded by the
// table's mutex; f, writable, cf, cc are guarded by mu (reads hold RLock,
// writes, truncates and fd swaps hold Lock). ready is closed once the entry
// is initialised; err is set before that when it could not be.
type openFile struct {
	key fileKey
	gen uint64 // the inode's generation (birth time), for fileIDs
	// suid: the cipher file's mode has set-user/group-ID bits, which a
	// write must clear (the kernel leaves that to us: see killSetID).
	suid  atomic.Bool
	ready chan struct{}
	err   error
	refs  int

	mu       sync.RWMutex
	f        *os.File
	writable bool
	tmp      bool                  // made by O_TMPFILE: forget its key if never linked
	cc       *crypto.ContentCipher // nil: a 0-byte file not yet initialised
	cf       *cipherfile.File
}

// fileID is the file's ID for logs ("" when not initialised). Caller holds mu.
func (of *openFile) fileID() string {
	if of.cc == nil {
		return ""
	}
	return of.cc.FileID().String()
}

// openCipher opens a cipher file for an open of the plain file: O_RDWR when
// it can (so later writable handles share the fd), O_RDONLY on a read-only
// mount or when only reading is allowed.
func (r *root) openCipher(l loc, write bool) (*os.File, bool, syscall.Stat_t, uint64, error) {
	var st syscall.Stat_t
	const base = syscall.O_NONBLOCK
	fd := -1
	writable := false
	var err error
	if !r.ro {
		fd, err = openNoatime(l.d.fd, l.entry, syscall.O_RDWR|base)
		if err == syscall.EACCES && write {
			fd, err = openWriteOnly(l.d.fd, l.entry, base)
		}
		writable = err == nil
		if err != nil && (write || !(err == syscall.EACCES || err == syscall.EPERM || err == syscall.EROFS || err == syscall.ETXTBSY)) {
			return nil, false, st, 0, err
		}
	} else if write {
		return nil, false, st, 0, syscall.EROFS
	}
	if fd < 0 {
		fd, err = openNoatime(l.d.fd, l.entry, syscall.O_RDONLY|base)
		if err != nil {
			return nil, false, st, 0, err
		}
	}
	gen, err := fstatGen(fd, &st)
	if err != nil {
		syscall.Close(fd)
		return nil, false, st, 0, err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		syscall.Close(fd)
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return nil, false, st, 0, syscall.EISDIR
		}
		return nil, false, st, 0, syscall.EINVAL
	}
	// O_NONBLOCK only kept open(2) from blocking on a fifo swapped in.
	if err := setBlocking(fd); err != nil {
		syscall.Close(fd)
		return nil, false, st, 0, err
	}
	// The name shows up in error texts: an inode number, never a path.
	return os.NewFile(uintptr(fd), fmt.Sprintf("cipher inode %d", st.Ino)), writable, st, gen, nil
}

// openWriteOnly opens a file its owner may write but not read (mode
// u+w, u-r) for writing. Every write reads the cipher file (headers,
// partial chunks), so this process needs it open O_RDWR: the owner is lent
// read permission for the open(2) alone (cipherdir.OpenLending; the file's
// mode is as before, its ctime moves). Only the owner gets here: anyone
// else keeps the EACCES of the first open.
func openWriteOnly(dirfd int, entry string, flags int) (int, error) {
	return cipherdir.OpenLending(dirfd, entry, syscall.O_RDWR|syscall.O_NOATIME|flags, cipherdir.LendRead)
}

// openNoatime opens entry in dirfd (never following a symlink) with
// O_NOATIME when allowed (owner or root): reading a file's head at open
// must not touch its atime, or a stat before and after an open would
// differ. Content reads then leave atime alone as well, as on a noatime
// mount.
func openNoatime(dirfd int, entry string, flags int) (int, error) {
	fd, err := cipherdir.OpenAt(dirfd, entry, flags|syscall.O_NOATIME, 0)
	if err == syscall.EPERM {
		fd, err = cipherdir.OpenAt(dirfd, entry, flags, 0)
	}
	return fd, err
}

func setBlocking(fd int) error {
	return syscall.SetNonblock(fd, false)
}

// acquire returns the open-file entry of the cipher file at l, opening
// and initialising it if it is not open yet, with a reference the caller
// drops with release. write asks for a writable entry: the fd is upgraded
// to O_RDWR and a 0-byte file (left by a crash mid-create, or made by
// mknod) gets its header.
func (r *root) acquire(ctx context.Context, l loc, write bool) (*openFile, error) {
	of, _, err := r.acquireKeep(ctx, l, write)
	return of, err
}

// acquireKeep is acquire that also reports whether the caller may let the
// kernel keep the file's cached pages: the caller made the entry, and found
// the cipher file as this mount left it at its last release (cacheStamps).
// A file already open may have changed behind the mount since the kernel
// cached its pages, so an opener that finds the entry gets false.
func (r *root) acquireKeep(ctx context.Context, l loc, write bool) (*openFile, bool, error) {
	for {
		of, keep, retry, err := r.tryAcquire(ctx, l, write)
		if retry && ctx.Err() == nil {
			continue
		}
		return of, keep, err
	}
}

func (r *root) tryAcquire(ctx context.Context, l loc, write bool) (of *openFile, keep, retry bool, err error) {
	f, writable, st, gen, err := r.openCipher(l, write)
	if err != nil {
		return nil, false, false, err
	}
	key := fileKey{uint64(st.Dev), st.Ino}
	t := &r.files
	t.mu.Lock()
	of = t.m[key]
	if of == nil {
		of = &openFile{key: key, gen: gen, ready: make(chan struct{}), refs: 1, f: f, writable: writable}
		of.suid.Store(hasSetID(st.Mode))
		keep = r.stamps.take(key, stampOf(&st))
		t.m[key] = of
		t.mu.Unlock()
		of.mu.Lock()
		err := r.initOpenFile(ctx, of, write, st.Size)
		of.mu.Unlock()
		if err != nil {
			of.err = err
			t.mu.Lock()
			if t.m[key] == of {
				delete(t.m, key)
			}
			t.mu.Unlock()
			close(of.ready)
			r.release(of)
			return nil, false, false, err
		}
		close(of.ready)
		return of, keep, false, nil
	}
	of.refs++
	t.mu.Unlock()

	select {
	case <-of.ready:
	case <-ctx.Done():
		f.Close()
		r.release(of)
		return nil, false, false, ctx.Err()
	}
	if of.err != nil {
		f.Close()
		r.release(of)
		// Another opener was interrupted while initialising: try
		// again with our own context.
		return nil, false, errors.Is(of.err, context.Canceled), of.err
	}
	if !write {
		f.Close()
		return of, keep, false, nil
	}
	// release may close the fd under of.mu: call it only after Unlock.
	of.mu.Lock()
	err = r.makeWritable(ctx, of, f, writable)
	of.mu.Unlock()
	if err != nil {
		r.release(of)
		return nil, false, false, err
	}
	return of, keep, false, nil
}

// makeWritable upgrades an entry for a writable handle: f, a new fd of the
// same inode (O_RDWR when writable), replaces a read-only fd for every
// handle, and a 0-byte file gets its header. It takes ownership of f.
// Caller holds of.mu.
func (r *root) makeWritable(ctx context.Context, of *openFile, f *os.File, writable bool) error {
	if of.writable || !writable {
		f.Close()
	} else {
		if of.cc != nil {
			// The same inode as of.f: its preamble is known.
			cf, err := cipherfile.Open(f, of.cc, crypto.NewPreamble(of.cc.Layout(), of.cc.FileID()))
			if err != nil {
				f.Close()
				return err
			}
			of.cf = cf
		}
		of.f.Close()
		of.f, of.writable = f, true
	}
	if !of.writable {
		return syscall.EROFS
	}
	if of.cc == nil {
		return r.initOpenFile(ctx, of, true, -1)
	}
	return nil
}

// initOpenFile gets the content cipher of an entry. cipherSize < 0 means
// fstat it. A 0-byte file reads as empty until a writable open gives it a
// header. Caller holds of.mu.
func (r *root) initOpenFile(ctx context.Context, of *openFile, write bool, cipherSize int64) error {
	if cipherSize < 0 {
		fi, err := of.f.Stat()
		if err != nil {
			return err
		}
		cipherSize = fi.Size()
	}
	if cipherSize == 0 {
		if !write || !of.writable {
			return nil
		}
		h, cc, err := r.keys.NewFile(keyContext(ctx))
		if err != nil {
			return fmt.Errorf("new file key for inode %d: %w", of.key.ino, err)
		}
		if err := cipherfile.Create(of.f, r.layout, h); err != nil {
			// (ENOSPC, say.) Leave the file as it was, empty and
			// uninitialised, and drop the key no file carries.
			if terr := of.f.Truncate(0); terr != nil {
				r.log.Warn("cannot empty a cipher file after a failed header write", "inode", of.key.ino, "err", terr.Error())
			}
			if ferr := r.keys.Forget(keyContext(ctx), h.FileID); ferr != nil {
				r.log.Warn("cannot forget the key of a file not created", "inode", of.key.ino, "file_id", h.FileID.String(), "err", ferr.Error())
			}
			return err
		}
		// The head just written: its preamble is known.
		cf, err := cipherfile.Open(of.f, cc, crypto.NewPreamble(r.layout, h.FileID))
		if err != nil {
			return err
		}
		r.setContent(of, cf)
		return nil
	}
	cf, err := cipherfile.OpenContent(of.f, r.layout, func(id crypto.FileID, header func() (crypto.Header, error)) (*crypto.ContentCipher, error) {
		return r.keys.OpenFile(keyContext(ctx), id, header)
	})
	var oe *cipherfile.OpenError
	switch {
	case errors.As(err, &oe) && oe.Key:
		r.log.Warn("cannot open file key", "op", "open", "inode", of.key.ino, "file_id", oe.Preamble.FileID.String(), "err", oe.Err.Error())
	case err != nil && ctx.Err() == nil:
		// A head that does not parse (bad magic, version, layout or
		// file ID): the open fails with EIO and the log names the file.
		r.log.Warn("cipher file does not open", "op", "open", "inode", of.key.ino, "err", err.Error())
	}
	if err != nil {
		return fmt.Errorf("inode %d: %w", of.key.ino, err)
	}
	r.setContent(of, cf)
	return nil
}

// setContent installs the content view of an entry. Caller holds of.mu.
func (r *root) setContent(of *openFile, cf *cipherfile.File) {
	of.cc, of.cf = cf.Cipher(), cf
	r.ids.put(of.key, of.gen, cf.FileID())
}

// newOpenFile registers the entry of a file just created (f holds its new
// empty cipher file), before its header is written, so that no concurrent
// open initialises it a second time. The caller then calls initOpenFile and
// finish.
func (r *root) newOpenFile(f *os.File, st *syscall.Stat_t, gen uint64) (*openFile, bool) {
	key := fileKey{uint64(st.Dev), st.Ino}
	t := &r.files
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[key] != nil {
		return nil, false
	}
	of := &openFile{key: key, gen: gen, ready: make(chan struct{}), refs: 1, f: f, writable: true}
	of.suid.Store(hasSetID(st.Mode))
	t.m[key] = of
	return of, true
}

// finish publishes an entry initialised by its creator.
func (r *root) finish(of *openFile, err error) {
	if err != nil {
		of.err = err
		r.files.mu.Lock()
		if r.files.m[of.key] == of {
			delete(r.files.m, of.key)
		}
		r.files.mu.Unlock()
	}
	close(of.ready)
	if err != nil {
		r.release(of)
	}
}

// peek returns the ready entry of key with a reference, or nil when the
// inode is not open (or still opening).
func (t *openTable) peek(key fileKey) *openFile {
	t.mu.Lock()
	defer t.mu.Unlock()
	of := t.m[key]
	if of == nil {
		return nil
	}
	select {
	case <-of.ready:
	default:
		return nil
	}
	if of.err != nil {
		return nil
	}
	of.refs++
	return of
}

// peekIno is peek by the inode number the mount reports (r.ino), for a
// node whose path is gone (unlinked while open). It scans the table, which
// holds only open files, and is used only on that path.
func (r *root) peekIno(ino uint64) *openFile {
	t := &r.files
	t.mu.Lock()
	var key fileKey
	found := false
	for k := range t.m {
		if r.ino(&syscall.Stat_t{Dev: k.dev, Ino: k.ino}) == ino {
			key, found = k, true
			break
		}
	}
	t.mu.Unlock()
	if !found {
		return nil
	}
	return t.peek(key)
}

// release drops a reference; the last one closes the fd.
func (r *root) release(of *openFile) {
	t := &r.files
	t.mu.Lock()
	of.refs--
	last := of.refs == 0
	if last && t.m[of.key] == of {
		delete(t.m, of.key)
	}
	t.mu.Unlock()
	if last {
		of.mu.Lock()
		var st syscall.Stat_t
		if syscall.Fstat(int(of.f.Fd()), &st) == nil {
			if of.tmp && of.cc != nil && st.Nlink == 0 {
				r.forget(context.Background(), "release", of.cc.FileID(), of.key)
			} else if of.cc != nil && st.Nlink > 0 {
				r.stamps.put(of.key, stampOf(&st))
			}
		}
		of.f.Close()
		of.mu.Unlock()
	}
}

// keyContext detaches a key operation from the FUSE request that started
// it. The kernel interrupts requests freely (a Go reader's preemption
// signals are enough), and other openers of the same inode may be waiting
// on this setup: a KMS call once started is worth finishing and caching.
// The providers bound every call with their own timeouts.
func keyContext(ctx context.Context) context.Context {
	return context.WithoutCancel(ctx)
}
