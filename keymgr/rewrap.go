package keymgr

// rewrap.go: moving wrapped keys to the current version of the
// filesystem's CMK, or to another CMK, with ReEncrypt: the DEK never leaves
// the KMS and no content is rewritten.
//
// The engine works on a list of cipher files the caller gives (keymgr does
// not know the tree layout; fs/cipherdir walks it). For each file:
//
//  1. read the header mirror from the file itself (the mirror is the
//     truth, not the index);
//  2. if its one wrapped key is already under the target
//     (RewrapTarget.Current, and for an epoch target only on a resumed
//     run), make sure the index entry agrees and stop;
//  3. else ReEncrypt the EDK to the target key, write the new header into
//     the *other* slot with generation+1 and fsync (cipherfile.WriteHeader:
//     a torn write leaves the old slot valid), then put it in the index.
//
// A names-key head (kmsfs.names and its copy, file ID crypto.NamesKeyID)
// goes through the same steps: FileContext gives it the names context, and
// it has no index entry to agree with.
//
// At every moment the file opens: before the fsync its old slot holds the
// old EDK (whose key version is still there), after it the new slot wins;
// an index entry one generation behind unwraps too (same DEK) and the next
// run, or the next open that fails, heals it from the mirror. Killed at any
// point, a rerun finds the done files current and finishes the others.
//
// Key versions. The local provider shows them (1, 2, ...). AWS KMS hides
// its backing keys, so for a provider that reports version 0 kmsfs keeps
// its own marker in the key-version field: the rewrap epoch of kmsfs.conf
// (docs/format.md, "Rewrap epoch"). A full rewrap raises the epoch, every
// ReEncrypt stamps it, and a file below it has not been moved yet.
//
// What "already current" may trust. The header is not authenticated: a
// writer of the cipher directory can put any key version into it, and a
// file that looks current is never moved while rewrap reports success.
// The local provider's EDK names its key and version inside the blob,
// bound by its AAD, so Current reads them there and a header whose field
// disagrees is moved. An epoch is kmsfs's own marker, authenticated by
// nothing: a new full rewrap (RewrapOptions.Resume unset) re-encrypts
// every file whatever its header says, and only a resumed run skips files
// at exactly its epoch. The window left: a writer acting while a run is
// interrupted can make files skip the resumed run; the next full rewrap
// moves them.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// DefaultRewrapJobs is the number of files rewrapped at once.
const DefaultRewrapJobs = 4

// maxRewrapFailures bounds the failures a RewrapStats lists one by one.
const maxRewrapFailures = 100

// RewrapTarget is where a rewrap moves wrapped keys.
type RewrapTarget struct {
	KeyARN string
	// Version is the key's current version (local), or the filesystem's
	// rewrap epoch when Epoch is set (aws).
	Version uint32
	// Epoch: the provider shows no key versions; Version is a kmsfs
	// rewrap epoch, stamped into every key the rewrap writes.
	Epoch bool
}

// ResolveRewrapTarget describes keyRef and returns the target a rewrap to
// it aims at: its ARN and current version, or, for a provider that shows
// no versions, epoch. A key that is not enabled is refused (wrapping errors
// ErrKeyDisabled or ErrKeyInvalidState).
func ResolveRewrapTarget(ctx context.Context, p Provider, keyRef string, epoch uint32) (RewrapTarget, KeyMetadata, error) {
	md, err := p.DescribeKey(ctx, keyRef)
	if err != nil {
		return RewrapTarget{}, md, fmt.Errorf("rewrap target %s: %w", keyRef, err)
	}
	switch md.State {
	case KeyEnabled:
	case KeyDisabled:
		return RewrapTarget{}, md, fmt.Errorf("rewrap target %s: %w", keyRef, ErrKeyDisabled)
	default:
		return RewrapTarget{}, md, fmt.Errorf("rewrap target %s: %w: state %s", keyRef, ErrKeyInvalidState, md.State)
	}
	if md.ARN == "" {
		return RewrapTarget{}, md, fmt.Errorf("rewrap target %s: the KMS named no key ARN", keyRef)
	}
	t := RewrapTarget{KeyARN: md.ARN, Version: md.CurrentVersion}
	if md.CurrentVersion == 0 {
		t.Version, t.Epoch = epoch, true
	}
	return t, md, nil
}

// Current reports whether h needs no rewrap by a run that may skip done
// files: it holds exactly one wrapped key, under the target key, and
//   - for a version target (local, Epoch unset): the EDK itself names the
//     target key at the target version or later (localEDKWrapper: both are
//     authenticated by the EDK's AAD), and the header's KeyVersion field
//     says the same; an EDK that is not a local one is never current;
//   - for an epoch target (aws): the header's field equals the target
//     epoch exactly. It is unauthenticated, so Rewrap consults Current for
//     an epoch target only on a resumed run (RewrapOptions.Resume).
func (t RewrapTarget) Current(h crypto.Header) bool {
	if len(h.Keys) != 1 || h.Keys[0].KeyARN != t.KeyARN {
		return false
	}
	wk := h.Keys[0]
	if t.Epoch {
		return wk.KeyVersion == t.Version
	}
	keyID, version, err := localEDKWrapper(wk.EDK)
	if err != nil || version != wk.KeyVersion || version < t.Version {
		return false
	}
	return strings.HasSuffix(t.KeyARN, ":key/"+keyID)
}

// RewrapOptions configures Rewrap.
type RewrapOptions struct {
	FilesystemID string        // part of every encryption context
	Layout       crypto.Layout // the filesystem's geometry
	Provider     Provider      // its ReEncrypt moves the keys
	// Index gets each new header; nil updates no index. A read-only index
	// is only read (dry runs).
	Index  *Index
	Target RewrapTarget
	Jobs   int  // files in parallel; 0: DefaultRewrapJobs
	DryRun bool // change nothing; count what would change
	// Resume continues an interrupted run to the same epoch target: files
	// whose header is at exactly the target epoch are skipped. Unset, an
	// epoch target counts nothing as current and re-encrypts every file:
	// a header's epoch is not authenticated, so a writer could stamp the
	// new epoch into it to make the file skip the rewrap (see the file
	// comment for the window a resumed run leaves). Version targets
	// (local) ignore it: their versions are read from the EDK.
	Resume bool
	// Progress, if set, is called after each file with the files done so
	// far and the total. Calls are serialised.
	Progress func(done, total int)
	Logger   *slog.Logger // nil: discard
	// Open opens one of the paths given to Rewrap with flags (O_NOFOLLOW
	// is always among them; O_PATH asks for a handle on the entry
	// itself). The caller's cipher tree knows how to reach a path without
	// following a symlink or building a path longer than PATH_MAX; nil:
	// os.OpenFile.
	Open func(path string, flags int) (*os.File, error)
}

// RewrapFailure is one file a rewrap could not move.
type RewrapFailure struct {
	Path   string
	FileID string // "" when the header did not read
	Err    error
}

// RewrapStats is what a Rewrap did (or, dry, would do).
type RewrapStats struct {
	Files      int // cipher files looked at
	Rewrapped  int // headers rewritten (dry run: that would be)
	Current    int // already under the target
	IndexFixed int // index entries rewritten to agree with the file's header
	Skipped    int // vanished, empty (no key yet), another link of a file already seen, or left when ctx ended
	Failed     int
	Failures   []RewrapFailure // the first maxRewrapFailures failures
	Elapsed    time.Duration
}

// Add accumulates o into s (several passes).
func (s *RewrapStats) Add(o RewrapStats) {
	s.Files += o.Files
	s.Rewrapped += o.Rewrapped
	s.Current += o.Current
	s.IndexFixed += o.IndexFixed
	s.Skipped += o.Skipped
	s.Failed += o.Failed
	for _, f := range o.Failures {
		if len(s.Failures) < maxRewrapFailures {
			s.Failures = append(s.Failures, f)
		}
	}
	s.Elapsed += o.Elapsed
}

// outcome of one file.
type rewrapOutcome int

const (
	outRewrapped rewrapOutcome = iota
	outCurrent
	outSkipped
	outFailed
)

// Rewrap moves the wrapped key of every file in paths to o.Target. A file
// that fails is counted and listed, and the others go on; the error is
// only for a rewrap that could not run at all, or ctx ending (the stats
// then count the files finished before).
func Rewrap(ctx context.Context, o RewrapOptions, paths []string) (RewrapStats, error) {
	start := time.Now()
	switch {
	case o.FilesystemID == "":
		return RewrapStats{}, errors.New("rewrap: filesystem ID is empty")
	case o.Provider == nil:
		return RewrapStats{}, errors.New("rewrap: no provider")
	case o.Target.KeyARN == "":
		return RewrapStats{}, errors.New("rewrap: no target key")
	case o.Jobs < 0:
		return RewrapStats{}, fmt.Errorf("rewrap: %d jobs", o.Jobs)
	}
	if err := o.Layout.Validate(); err != nil {
		return RewrapStats{}, fmt.Errorf("rewrap: %w", err)
	}
	if o.Jobs == 0 {
		o.Jobs = DefaultRewrapJobs
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &rewrapRun{o: o, total: len(paths), seen: map[[2]uint64]bool{}}

	work := make(chan string)
	var wg sync.WaitGroup
	for range min(o.Jobs, max(len(paths), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				r.record(p, r.file(ctx, p))
			}
		}()
	}
feed:
	for _, p := range paths {
		select {
		case <-ctx.Done():
			break feed
		case work <- p:
		}
	}
	close(work)
	wg.Wait()

	r.mu.Lock()
	st := r.stats
	r.mu.Unlock()
	st.Elapsed = time.Since(start)
	if err := ctx.Err(); err != nil {
		return st, fmt.Errorf("rewrap stopped after %d of %d files: %w", st.Files, len(paths), err)
	}
	return st, nil
}

type rewrapRun struct {
	o     RewrapOptions
	total int

	mu    sync.Mutex
	stats RewrapStats
	seen  map[[2]uint64]bool // (dev, inode) of files already taken
}

// fileResult is what file returns.
type fileResult struct {
	out        rewrapOutcome
	id         string
	indexFixed bool
	err        error
}

func (r *rewrapRun) record(path string, res fileResult) {
	r.mu.Lock()
	s := &r.stats
	s.Files++
	if res.indexFixed {
		s.IndexFixed++
	}
	switch res.out {
	case outRewrapped:
		s.Rewrapped++
	case outCurrent:
		s.Current++
	case outSkipped:
		s.Skipped++
	case outFailed:
		s.Failed++
		if len(s.Failures) < maxRewrapFailures {
			s.Failures = append(s.Failures, RewrapFailure{Path: path, FileID: res.id, Err: res.err})
		}
		r.o.Logger.Warn("rewrap failed", "path", path, "file_id", res.id, "err", res.err)
	}
	done := s.Files
	if r.o.Progress != nil {
		r.o.Progress(done, r.total)
	}
	r.mu.Unlock()
}

// claim reports whether this is the first time the inode is seen (a
// second hard link of a file is skipped).
func (r *rewrapRun) claim(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	key := [2]uint64{uint64(st.Dev), st.Ino}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[key] {
		return false
	}
	r.seen[key] = true
	return true
}

// openForRewrap opens a cipher file for reading and, unless dry, writing.
// A file without write permission for its owner (a read-only plain file,
// chmod 444) is opened by making it owner-writable for the open and
// putting the mode back at once, all through one handle on the entry, so
// the mode lent and the file opened are the same inode.
func openForRewrap(open func(string, int) (*os.File, error), path string, dry bool) (*os.File, error) {
	if open == nil {
		open = func(p string, flags int) (*os.File, error) { return os.OpenFile(p, flags, 0) }
	}
	flags := os.O_RDONLY
	if !dry {
		flags = os.O_RDWR
	}
	flags |= syscall.O_NOFOLLOW | syscall.O_CLOEXEC | syscall.O_NONBLOCK
	f, err := open(path, flags)
	if err == nil || dry || !errors.Is(err, os.ErrPermission) {
		return f, err
	}
	h, herr := open(path, unix.O_PATH|syscall.O_NOFOLLOW|syscall.O_CLOEXEC)
	if herr != nil {
		return nil, err
	}
	defer h.Close()
	var st unix.Stat_t
	if serr := unix.Fstat(int(h.Fd()), &st); serr != nil || st.Mode&unix.S_IFMT != unix.S_IFREG ||
		st.Mode&0o200 != 0 || int(st.Uid) != os.Geteuid() {
		return nil, err
	}
	perm := st.Mode & 0o7777
	proc := "/proc/self/fd/" + strconv.Itoa(int(h.Fd())) // names the inode, never a symlink (checked regular)
	if cerr := unix.Chmod(proc, perm|0o200); cerr != nil {
		return nil, err
	}
	f, err = os.OpenFile(proc, flags&^syscall.O_NOFOLLOW, 0)
	if cerr := unix.Chmod(proc, perm); cerr != nil && err == nil {
		f.Close()
		return nil, fmt.Errorf("restore mode %o of %s: %w", perm, path, cerr)
	}
	return f, err
}

// file rewraps one cipher file.
func (r *rewrapRun) file(ctx context.Context, path string) fileResult {
	if ctx.Err() != nil {
		return fileResult{out: outSkipped} // stopped: the next run does it
	}
	f, err := openForRewrap(r.o.Open, path, r.o.DryRun)
	if errors.Is(err, os.ErrNotExist) {
		return fileResult{out: outSkipped} // deleted since the walk
	}
	if err != nil {
		return fileResult{out: outFailed, err: fmt.Errorf("open: %w", err)}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileResult{out: outFailed, err: fmt.Errorf("stat: %w", err)}
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return fileResult{out: outSkipped} // no header yet: it gets the current key when first written
	}
	if !r.claim(fi) {
		return fileResult{out: outSkipped}
	}
	h, slot, err := cipherfile.ReadHeader(f, r.o.Layout)
	if err != nil {
		return fileResult{out: outFailed, err: fmt.Errorf("%w: run kmsfs fsck", err)}
	}
	id := h.FileID.String()
	ix := r.o.Index
	if h.FileID == crypto.NamesKeyID {
		ix = nil // the names key is in no index
	}
	if (!r.o.Target.Epoch || r.o.Resume) && r.o.Target.Current(h) {
		fixed, err := r.syncIndex(ix, h)
		if err != nil {
			return fileResult{out: outFailed, id: id, err: err}
		}
		return fileResult{out: outCurrent, id: id, indexFixed: fixed}
	}
	if r.o.DryRun {
		return fileResult{out: outRewrapped, id: id}
	}

	wk, err := r.reencrypt(ctx, h)
	if err != nil {
		if ctx.Err() != nil {
			return fileResult{out: outSkipped, id: id}
		}
		return fileResult{out: outFailed, id: id, err: err}
	}
	nh := crypto.Header{FileID: h.FileID, Generation: h.Generation + 1, Keys: []crypto.WrappedKey{wk}}
	if err := cipherfile.WriteHeader(f, r.o.Layout, nh, slot); err != nil {
		return fileResult{out: outFailed, id: id, err: err}
	}
	if ix != nil {
		if err := ix.Put(nh); err != nil {
			return fileResult{out: outFailed, id: id, err: fmt.Errorf("header rewritten, index not updated (a rerun fixes it): %w", err)}
		}
		// Unlinked while we worked (a mounted filesystem): the entry we
		// just wrote would be an orphan.
		if fi, err := f.Stat(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 0 {
				_ = ix.Delete(h.FileID)
			}
		}
	}
	r.o.Logger.Debug("rewrapped", "file_id", id, "generation", nh.Generation, "key_arn", wk.KeyARN, "key_version", wk.KeyVersion)
	return fileResult{out: outRewrapped, id: id}
}

// syncIndex puts h into ix (nil: none) unless the entry already equals it.
func (r *rewrapRun) syncIndex(ix *Index, h crypto.Header) (bool, error) {
	if ix == nil {
		return false, nil
	}
	ih, err := ix.Get(h.FileID)
	if err == nil && sameHeader(ih, h) {
		return false, nil
	}
	if r.o.DryRun || ix.ReadOnly() {
		return true, nil
	}
	if err := ix.Put(h); err != nil {
		return false, fmt.Errorf("index: %w", err)
	}
	return true, nil
}

// reencrypt moves the first of h's wrapped keys that the KMS accepts to
// the target.
func (r *rewrapRun) reencrypt(ctx context.Context, h crypto.Header) (crypto.WrappedKey, error) {
	ec := FileContext(r.o.FilesystemID, h.FileID)
	var errs []error
	for _, k := range h.Keys {
		dk, err := r.o.Provider.ReEncrypt(ctx, k.KeyARN, k.EDK, ec, r.o.Target.KeyARN)
		if err != nil {
			errs = append(errs, fmt.Errorf("ReEncrypt from %s: %w", k.KeyARN, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		crypto.Zero(dk.Plaintext) // a provider returns none; be sure
		wk := crypto.WrappedKey{KeyARN: dk.KeyARN, KeyVersion: dk.KeyVersion, EDK: dk.Ciphertext}
		switch wk.KeyARN {
		case "":
			wk.KeyARN = r.o.Target.KeyARN
		case r.o.Target.KeyARN:
		default:
			// Never write a header naming a key nobody asked for.
			return crypto.WrappedKey{}, fmt.Errorf("ReEncrypt from %s to %s: %w: the answer names key %s", k.KeyARN, r.o.Target.KeyARN, ErrKeyMismatch, wk.KeyARN)
		}
		if r.o.Target.Epoch && wk.KeyVersion == 0 {
			wk.KeyVersion = r.o.Target.Version
		}
		return wk, nil
	}
	return crypto.WrappedKey{}, errors.Join(errs...)
}

// WrapKey returns the key ARN and epoch new files are wrapped under.
func (m *Manager) WrapKey() (string, uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keyARN, m.epoch
}

// SetWrapKey makes new files wrap under keyARN, stamping epoch where the
// provider shows no key version. The DEK pool is replaced by a fresh one
// (its waiting keys are zeroed), so it also serves after a rotation of the
// same key: keys generated before it would carry the old version.
func (m *Manager) SetWrapKey(keyARN string, epoch uint32) error {
	if keyARN == "" {
		return errors.New("set wrap key: key ARN is empty")
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("set wrap key: %w", errManagerClosed)
	}
	old := m.pool
	o := old.o
	o.KeyARN = keyARN
	pool, err := newDEKPool(o)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("set wrap key %s: %w", keyARN, err)
	}
	if m.started {
		pool.start(m.startCtx)
	}
	m.pool, m.keyARN, m.epoch = pool, keyARN, epoch
	m.mu.Unlock()
	if err := old.close(); err != nil {
		m.log.Warn("close replaced DEK pool", "err", err)
	}
	m.log.Info("new files now wrap under", "key_arn", keyARN, "epoch", epoch)
	return nil
}

func (m *Manager) currentPool() *dekPool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pool
}

// takeKey takes a key from the current pool, stamping the epoch into a key
// without a version. A pool replaced under the call is retried.
func (m *Manager) takeKey(ctx context.Context, dek []byte) (pooledKey, error) {
	for try := 0; ; try++ {
		m.mu.Lock()
		p, epoch := m.pool, m.epoch
		m.mu.Unlock()
		k, err := p.take(ctx, dek)
		if err != nil {
			if try < 3 && m.currentPool() != p {
				continue
			}
			return k, err
		}
		if k.KeyVersion == 0 {
			k.KeyVersion = epoch
		}
		return k, nil
	}
}
