package keymgr

// rewrap.go: moving wrapped keys to the current version of the
// filesystem's CMK, or to another CMK, with ReEncrypt: the DEK never leaves
// the KMS and no content is rewritten.
//
// The engine works on a list of cipher files the caller gives, and the
// caller does every file I/O (RewrapOptions.Open, RewrapFile): keymgr
// knows neither the tree layout nor the cipher-file format, and imports
// nothing under fs/ (the command's opener walks the tree with fs/cipherdir,
// reads and writes header slots with fs/cipherfile, lends a read-only file
// its owner's write permission, and skips second hard links). For each
// file:
//
//  1. read the header mirror from the file itself (the mirror is the
//     truth, not the index);
//  2. if its one wrapped key is already under the target
//     (RewrapTarget.Current, and for an epoch target only on a resumed
//     run), make sure the index entry agrees and stop;
//  3. else ReEncrypt the EDK to the target key, write the new header into
//     the *other* slot with generation+1 and fsync (RewrapFile.WriteHeader:
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
	"strings"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
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

// RewrapFile is one cipher file a rewrap's caller opened for it
// (RewrapOptions.Open). Calls on one file are never concurrent.
type RewrapFile interface {
	// ReadHeader reads the file's header mirror: the valid slot with the
	// highest generation.
	ReadHeader() (crypto.Header, error)
	// WriteHeader writes h (the header ReadHeader returned, generation
	// plus one) into the slot ReadHeader did not pick, and fsyncs: until
	// it returns, a crash leaves the old slot valid.
	WriteHeader(h crypto.Header) error
	// Unlinked reports whether the file has lost its last name (deleted
	// while a mounted filesystem's rewrap worked on it).
	Unlinked() bool
	Close() error
}

// ErrRewrapSkip is what RewrapOptions.Open returns for a path with nothing
// to rewrap: not a regular file, empty (no header yet: it gets the current
// key when first written), or another hard link of a file already opened.
// The path counts as skipped, as does one that no longer exists
// (os.ErrNotExist).
var ErrRewrapSkip = errors.New("rewrap: nothing to rewrap")

// RewrapOptions configures Rewrap.
type RewrapOptions struct {
	FilesystemID string   // part of every encryption context
	Provider     Provider // its ReEncrypt moves the keys
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
	// Open opens one of the paths given to Rewrap for reading and, when
	// write is set (not a dry run), writing; or returns ErrRewrapSkip.
	// It is called from Jobs goroutines at once. Required: the caller's
	// cipher tree knows how to reach a path without following a symlink
	// and how a cipher file's header is laid out.
	Open func(path string, write bool) (RewrapFile, error)
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
	case o.Open == nil:
		return RewrapStats{}, errors.New("rewrap: no file opener")
	}
	if o.Jobs == 0 {
		o.Jobs = DefaultRewrapJobs
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &rewrapRun{o: o, total: len(paths)}

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

// file rewraps one cipher file.
func (r *rewrapRun) file(ctx context.Context, path string) fileResult {
	if ctx.Err() != nil {
		return fileResult{out: outSkipped} // stopped: the next run does it
	}
	f, err := r.o.Open(path, !r.o.DryRun)
	if errors.Is(err, ErrRewrapSkip) || errors.Is(err, os.ErrNotExist) {
		return fileResult{out: outSkipped} // nothing to do, or deleted since the walk
	}
	if err != nil {
		return fileResult{out: outFailed, err: err}
	}
	defer f.Close()
	h, err := f.ReadHeader()
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
	if err := f.WriteHeader(nh); err != nil {
		return fileResult{out: outFailed, id: id, err: err}
	}
	if ix != nil {
		if err := ix.Put(nh); err != nil {
			return fileResult{out: outFailed, id: id, err: fmt.Errorf("header rewritten, index not updated (a rerun fixes it): %w", err)}
		}
		// Unlinked while we worked (a mounted filesystem): the entry we
		// just wrote would be an orphan.
		if f.Unlinked() {
			_ = ix.Delete(h.FileID)
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
	if err == nil && ih.Equal(h) {
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
