package keymgr

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// rwEnv is a cipher tree of real cipher files, made by a real Manager over
// the real local provider (audited), a real badger index and DEK cache.
type rwEnv struct {
	dir    string // the cipher files
	layout crypto.Layout
	kr     *Keyring
	prov   Provider // audited local provider
	audit  string   // audit log path
	ix     *Index
	m      *Manager
	keyA   KeyMetadata
	keyB   KeyMetadata
	log    *stLog
	files  []string
	sums   map[string][32]byte
}

func newRWEnv(t testing.TB, prov func(t testing.TB) (Provider, string)) *rwEnv {
	t.Helper()
	e := &rwEnv{dir: filepath.Join(t.TempDir(), "cipher"), layout: crypto.DefaultLayout(), sums: map[string][32]byte{}}
	logger := slog.New(slog.DiscardHandler)
	if tt, ok := t.(*testing.T); ok {
		logger, e.log = newStLog(tt)
	}
	var raw Provider
	arn := ""
	if prov == nil {
		e.kr, _ = newTestKeyring(t)
		e.keyA = mustCreateKey(t, e.kr, "rewrap a", "alias/rw-a")
		e.keyB = mustCreateKey(t, e.kr, "rewrap b", "alias/rw-b")
		mustSave(t, e.kr)
		raw, arn = NewLocalProvider(e.kr), e.keyA.ARN
	} else {
		raw, arn = prov(t)
	}
	e.audit = filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAuditLog(e.audit, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	e.prov = NewAuditingProvider(raw, a, nil)
	e.ix, err = OpenIndex(filepath.Join(t.TempDir(), "index"), IndexOptions{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ix.Close() })
	cache, err := NewCache(CacheOptions{MaxEntries: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	e.m, err = NewManager(ManagerOptions{FilesystemID: stFilesystemID, KeyARN: arn, Provider: e.prov,
		Index: e.ix, Cache: cache, PoolSize: 4, Layout: e.layout, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.m.Close() })
	return e
}

// create makes n cipher files of 0..3 KiB of random content in 10
// directories.
func (e *rwEnv) create(t testing.TB, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		p := filepath.Join(e.dir, fmt.Sprintf("d%d", i%10), fmt.Sprintf("f%05d", len(e.files)))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		h, cc, err := e.m.NewFile(ctx)
		if err != nil {
			t.Fatalf("NewFile: %v", err)
		}
		if err := cipherfile.Create(f, e.layout, h); err != nil {
			t.Fatal(err)
		}
		cf, err := cipherfile.New(f, cc)
		if err != nil {
			t.Fatal(err)
		}
		content := make([]byte, (i*397)%3000+1)
		rand.Read(content)
		if _, err := cf.WriteAt(content, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		e.files = append(e.files, p)
		e.sums[p] = sha256.Sum256(content)
	}
}

// readBack opens p as a fresh process would (no cache, no index: the
// header mirror and the KMS) and returns its plain content.
func (e *rwEnv) readBack(t testing.TB, p string) ([]byte, crypto.Header, error) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		return nil, crypto.Header{}, err
	}
	defer f.Close()
	h, _, err := cipherfile.ReadHeader(f, e.layout)
	if err != nil {
		return nil, h, err
	}
	dek, err := e.prov.Decrypt(context.Background(), h.Keys[0].KeyARN, h.Keys[0].EDK, FileContext(stFilesystemID, h.FileID))
	if err != nil {
		return nil, h, err
	}
	defer crypto.Zero(dek)
	cc, err := crypto.NewContentCipher(dek, h.FileID, e.layout, nil)
	if err != nil {
		return nil, h, err
	}
	cf, err := cipherfile.New(f, cc)
	if err != nil {
		return nil, h, err
	}
	size, err := cf.PlainSize()
	if err != nil {
		return nil, h, err
	}
	buf := make([]byte, size)
	if _, err := cf.ReadAt(buf, 0); err != nil {
		return nil, h, err
	}
	return buf, h, nil
}

// checkAll reads every file back, compares its sha256, and checks that
// the index entry equals the header mirror and that want accepts it.
func (e *rwEnv) checkAll(t testing.TB, want func(h crypto.Header) bool) {
	t.Helper()
	for _, p := range e.files {
		b, h, err := e.readBack(t, p)
		if err != nil {
			t.Fatalf("read back %s: %v", p, err)
		}
		if sha256.Sum256(b) != e.sums[p] {
			t.Fatalf("read back %s: content differs", p)
		}
		if want != nil && !want(h) {
			t.Fatalf("%s: header %s gen %d version %d not as wanted", p, h.Keys[0].KeyARN, h.Generation, h.Keys[0].KeyVersion)
		}
		ih, err := e.ix.Get(h.FileID)
		if err != nil || !ih.Equal(h) {
			t.Fatalf("%s: index entry (%v) differs from the header mirror (generation %d vs %d)", p, err, ih.Generation, h.Generation)
		}
	}
}

func (e *rwEnv) auditCount(t testing.TB, op string) int {
	t.Helper()
	f, err := os.Open(e.audit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := ReadAudit(f)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Op == op {
			n++
		}
	}
	return n
}

func (e *rwEnv) opts(t RewrapTarget, jobs int) RewrapOptions {
	return RewrapOptions{FilesystemID: stFilesystemID, Provider: e.prov, Index: e.ix, Target: t, Jobs: jobs, Open: e.open}
}

// open is the tests' RewrapOptions.Open: a plain open and the cipherfile
// codec. What the command's opener adds (no symlink followed on the way,
// write permission lent to a read-only file, second hard links skipped) is
// tested with it in cmd/kmsfs.
func (e *rwEnv) open(path string, write bool) (RewrapFile, error) {
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		f.Close()
		return nil, ErrRewrapSkip
	}
	return &testRewrapFile{f: f, layout: e.layout}, nil
}

type testRewrapFile struct {
	f      *os.File
	layout crypto.Layout
	slot   int // the slot ReadHeader picked
}

func (c *testRewrapFile) ReadHeader() (crypto.Header, error) {
	h, slot, err := cipherfile.ReadHeader(c.f, c.layout)
	c.slot = slot
	return h, err
}

func (c *testRewrapFile) WriteHeader(h crypto.Header) error {
	return cipherfile.WriteHeader(c.f, c.layout, h, c.slot)
}

func (c *testRewrapFile) Unlinked() bool {
	fi, err := c.f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 0
}

func (c *testRewrapFile) Close() error { return c.f.Close() }

func (e *rwEnv) target(t testing.TB, ref string, epoch uint32) RewrapTarget {
	t.Helper()
	tg, _, err := ResolveRewrapTarget(context.Background(), e.prov, ref, epoch)
	if err != nil {
		t.Fatalf("ResolveRewrapTarget(%s): %v", ref, err)
	}
	return tg
}

func TestRewrapAfterRotation(t *testing.T) {
	e := newRWEnv(t, nil)
	e.create(t, 60)
	if _, err := e.kr.Rotate("alias/rw-a"); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	tg := e.target(t, "alias/rw-a", 0)
	if tg.KeyARN != e.keyA.ARN || tg.Version != 2 || tg.Epoch {
		t.Fatalf("target: got %+v, want %s version 2, no epoch", tg, e.keyA.ARN)
	}
	decrypts := e.auditCount(t, AuditDecrypt)
	var calls atomic.Int64
	o := e.opts(tg, 4)
	o.Progress = func(done, total int) {
		calls.Add(1)
		if total != 60 || done < 1 || done > 60 {
			t.Errorf("progress: got %d/%d, want 1..60/60", done, total)
		}
	}
	st, err := Rewrap(context.Background(), o, e.files)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if st.Files != 60 || st.Rewrapped != 60 || st.Current != 0 || st.Failed != 0 {
		t.Fatalf("first run: got %+v, want 60 rewrapped", st)
	}
	if calls.Load() != 60 {
		t.Errorf("progress calls: got %d, want 60", calls.Load())
	}
	if got := e.auditCount(t, AuditReEncrypt); got != 60 {
		t.Errorf("audit ReEncrypt lines: got %d, want 60", got)
	}
	if got := e.auditCount(t, AuditDecrypt); got != decrypts {
		t.Errorf("audit Decrypt lines: got %d, want %d (rewrap must not Decrypt)", got, decrypts)
	}
	e.checkAll(t, func(h crypto.Header) bool {
		return h.Generation == 2 && len(h.Keys) == 1 && h.Keys[0].KeyARN == e.keyA.ARN && h.Keys[0].KeyVersion == 2
	})

	// Idempotent: a second run finds everything current and calls no KMS.
	st, err = Rewrap(context.Background(), e.opts(tg, 4), e.files)
	if err != nil || st.Current != 60 || st.Rewrapped != 0 || st.IndexFixed != 0 {
		t.Fatalf("second run: got %+v, %v; want 60 current", st, err)
	}
	if got := e.auditCount(t, AuditReEncrypt); got != 60 {
		t.Errorf("audit ReEncrypt lines after the second run: got %d, want 60", got)
	}
}

func TestRewrapToAnotherKeyThenDisableOld(t *testing.T) {
	e := newRWEnv(t, nil)
	e.create(t, 30)
	tg := e.target(t, "alias/rw-b", 0)
	st, err := Rewrap(context.Background(), e.opts(tg, 16), e.files)
	if err != nil || st.Rewrapped != 30 || st.Failed != 0 {
		t.Fatalf("Rewrap to B: %+v, %v", st, err)
	}
	if _, err := e.kr.SetEnabled(e.keyA.ARN, false); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == e.keyB.ARN && h.Keys[0].KeyVersion == 1 })

	// The audit log names source and destination of every ReEncrypt.
	f, _ := os.Open(e.audit)
	recs, _ := ReadAudit(f)
	f.Close()
	n := 0
	for _, r := range recs {
		if r.Op == AuditReEncrypt {
			n++
			if r.KeyARN != e.keyA.ARN || r.DestKeyARN != e.keyB.ARN || r.Outcome != "ok" {
				t.Errorf("audit ReEncrypt: got %s -> %s (%s), want %s -> %s ok", r.KeyARN, r.DestKeyARN, r.Outcome, e.keyA.ARN, e.keyB.ARN)
			}
		}
	}
	if n != 30 {
		t.Errorf("ReEncrypt records: got %d, want 30", n)
	}
}

func TestRewrapDryRunChangesNothing(t *testing.T) {
	e := newRWEnv(t, nil)
	e.create(t, 20)
	before := map[string][]byte{}
	for _, p := range e.files {
		b, _ := os.ReadFile(p)
		before[p] = b
	}
	o := e.opts(e.target(t, "alias/rw-b", 0), 4)
	o.DryRun = true
	st, err := Rewrap(context.Background(), o, e.files)
	if err != nil || st.Rewrapped != 20 || st.Current != 0 {
		t.Fatalf("dry run: %+v, %v; want 20 to rewrap", st, err)
	}
	for _, p := range e.files {
		b, _ := os.ReadFile(p)
		if !bytes.Equal(b, before[p]) {
			t.Fatalf("dry run changed %s", p)
		}
	}
	if got := e.auditCount(t, AuditReEncrypt); got != 0 {
		t.Errorf("dry run made %d ReEncrypt calls", got)
	}
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == e.keyA.ARN && h.Generation == 1 })
}

// TestRewrapOddFiles: every state a killed rewrap may leave, a file that
// is not a cipher file, and the paths the opener skips.
func TestRewrapOddFiles(t *testing.T) {
	e := newRWEnv(t, nil)
	e.log.expectWarnings() // the failures are logged
	e.create(t, 8)
	ctx := context.Background()
	tg := e.target(t, "alias/rw-b", 0)
	f0, f1, f2, f3 := e.files[0], e.files[1], e.files[2], e.files[3]

	// f0: rewrapped, then "killed" before the index update: the mirror
	// is ahead of the index.
	st, err := Rewrap(ctx, e.opts(tg, 1), []string{f0})
	if err != nil || st.Rewrapped != 1 {
		t.Fatalf("rewrap f0: %+v %v", st, err)
	}
	h0 := e.header(t, f0)
	old := h0
	old.Generation--
	old.Keys = []crypto.WrappedKey{{KeyARN: "arn:kmsfs:local:x:key/y", KeyVersion: 1, EDK: []byte{1}}}
	if err := e.ix.Put(old); err != nil {
		t.Fatal(err)
	}
	// f1: no index entry at all.
	if err := e.ix.Delete(e.header(t, f1).FileID); err != nil {
		t.Fatal(err)
	}
	// f2: the other slot torn (a write cut short).
	tear(t, f2, e.layout)
	// f3: open when its last name goes (a mounted filesystem's unlink):
	// it is rewrapped, and its index entry, an orphan, is dropped.
	id3 := e.header(t, f3).FileID
	o := e.opts(tg, 4)
	o.Open = func(path string, write bool) (RewrapFile, error) {
		f, err := e.open(path, write)
		if path == f3 && err == nil {
			if err := os.Remove(f3); err != nil {
				t.Error(err)
			}
		}
		return f, err
	}
	// An empty file and a fifo (the opener skips them), a vanished path,
	// a file that is not a cipher file.
	fifo := filepath.Join(e.dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(e.dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	junk := filepath.Join(e.dir, "junk")
	os.WriteFile(junk, []byte("not a cipher file at all, no magic"), 0o644)
	gone := filepath.Join(e.dir, "gone")

	list := append(append([]string{}, e.files...), fifo, empty, junk, gone)
	st, err = Rewrap(ctx, o, list)
	if err != nil {
		t.Fatal(err)
	}
	want := RewrapStats{Files: 12, Rewrapped: 7, Current: 1, IndexFixed: 1, Skipped: 3, Failed: 1}
	if st.Files != want.Files || st.Rewrapped != want.Rewrapped || st.Current != want.Current ||
		st.IndexFixed != want.IndexFixed || st.Skipped != want.Skipped || st.Failed != want.Failed {
		t.Fatalf("got %+v, want %+v", st, want)
	}
	if len(st.Failures) != 1 || st.Failures[0].Path != junk || !errors.Is(st.Failures[0].Err, crypto.ErrNotCipherFile) {
		t.Errorf("failures: got %+v, want junk as not a cipher file", st.Failures)
	}
	if _, err := e.ix.Get(id3); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("index entry of the file unlinked during the rewrap: got %v, want %v", err, ErrNotIndexed)
	}
	e.files = slices.DeleteFunc(e.files, func(p string) bool { return p == f3 })
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == e.keyB.ARN })
}

// TestRewrapOpenErrors: without an opener Rewrap does not run; a path the
// opener fails on is a failure with the opener's error, and the others go on.
func TestRewrapOpenErrors(t *testing.T) {
	e := newRWEnv(t, nil)
	e.log.expectWarnings()
	e.create(t, 3)
	tg := e.target(t, "alias/rw-b", 0)
	o := e.opts(tg, 2)
	o.Open = nil
	if _, err := Rewrap(context.Background(), o, e.files); err == nil {
		t.Fatal("Rewrap without an opener: got no error")
	}
	refused := errors.New("refused by the opener")
	o.Open = func(path string, write bool) (RewrapFile, error) {
		if path == e.files[1] {
			return nil, refused
		}
		return e.open(path, write)
	}
	st, err := Rewrap(context.Background(), o, e.files)
	if err != nil || st.Files != 3 || st.Rewrapped != 2 || st.Failed != 1 {
		t.Fatalf("got %+v, %v; want 3 files, 2 rewrapped, 1 failed", st, err)
	}
	if len(st.Failures) != 1 || st.Failures[0].Path != e.files[1] || !errors.Is(st.Failures[0].Err, refused) {
		t.Errorf("failures: got %+v, want %s refused by the opener", st.Failures, e.files[1])
	}
}

func (e *rwEnv) header(t testing.TB, p string) crypto.Header {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, _, err := cipherfile.ReadHeader(f, e.layout)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// tear writes half a header over the slot that is not current.
func tear(t testing.TB, p string, l crypto.Layout) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, slot, err := cipherfile.ReadHeader(f, l)
	if err != nil {
		t.Fatal(err)
	}
	junk := bytes.Repeat([]byte{0xa5}, int(l.SlotSize()/2))
	if _, err := f.WriteAt(junk, l.SlotOffset(1-slot)); err != nil {
		t.Fatal(err)
	}
}

func TestRewrapSourceKeyDisabledFails(t *testing.T) {
	e := newRWEnv(t, nil)
	e.log.expectWarnings()
	e.create(t, 5)
	if _, err := e.kr.SetEnabled(e.keyA.ARN, false); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	st, err := Rewrap(context.Background(), e.opts(e.target(t, "alias/rw-b", 0), 2), e.files)
	if err != nil || st.Failed != 5 || st.Rewrapped != 0 {
		t.Fatalf("got %+v, %v; want 5 failed", st, err)
	}
	if !errors.Is(st.Failures[0].Err, ErrKeyDisabled) {
		t.Errorf("failure: got %v, want %v", st.Failures[0].Err, ErrKeyDisabled)
	}
	// Nothing changed: every header is still generation 1 under A.
	if _, err := e.kr.SetEnabled(e.keyA.ARN, true); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	e.checkAll(t, func(h crypto.Header) bool { return h.Generation == 1 && h.Keys[0].KeyARN == e.keyA.ARN })

	if _, _, err := ResolveRewrapTarget(context.Background(), e.prov, "alias/nope", 0); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("target alias/nope: got %v, want %v", err, ErrKeyNotFound)
	}
	if _, err := e.kr.SetEnabled(e.keyB.ARN, false); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	if _, _, err := ResolveRewrapTarget(context.Background(), e.prov, e.keyB.ARN, 0); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("disabled target: got %v, want %v", err, ErrKeyDisabled)
	}
}

func TestRewrapCancel(t *testing.T) {
	e := newRWEnv(t, nil)
	e.create(t, 40)
	ctx, cancel := context.WithCancel(context.Background())
	o := e.opts(e.target(t, "alias/rw-b", 0), 2)
	o.Progress = func(done, _ int) {
		if done == 10 {
			cancel()
		}
	}
	st, err := Rewrap(ctx, o, e.files)
	if !errors.Is(err, context.Canceled) || st.Files >= 40 {
		t.Fatalf("cancelled run: %+v, %v", st, err)
	}
	// Every file still reads; a second run finishes the job.
	e.checkAllContent(t)
	st, err = Rewrap(context.Background(), e.opts(e.target(t, "alias/rw-b", 0), 2), e.files)
	if err != nil || st.Rewrapped+st.Current != 40 || st.Failed != 0 {
		t.Fatalf("rerun: %+v, %v", st, err)
	}
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == e.keyB.ARN })
}

// checkAllContent reads every file back without looking at the index.
func (e *rwEnv) checkAllContent(t testing.TB) {
	t.Helper()
	for _, p := range e.files {
		b, _, err := e.readBack(t, p)
		if err != nil || sha256.Sum256(b) != e.sums[p] {
			t.Fatalf("read back %s: %v (or content differs)", p, err)
		}
	}
}

// TestRewrapWhileWriting: content writes through open files (the cached
// DEK) go on while the headers are rewrapped; content and headers are
// disjoint, so both survive.
func TestRewrapWhileWriting(t *testing.T) {
	e := newRWEnv(t, nil)
	e.create(t, 40)
	ctx := context.Background()
	type open struct {
		f  *os.File
		cf *cipherfile.File
	}
	var opens []open
	for _, p := range e.files[:8] {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h, _, err := cipherfile.ReadHeader(f, e.layout)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := e.m.OpenFile(ctx, h.FileID, nil)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := cipherfile.New(f, cc)
		if err != nil {
			t.Fatal(err)
		}
		opens = append(opens, open{f, cf})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	final := make([][]byte, len(opens))
	for i, o := range opens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 10000)
			for n := 0; ; n++ {
				select {
				case <-stop:
					final[i] = buf
					return
				default:
				}
				rand.Read(buf)
				if _, err := o.cf.WriteAt(buf, 0); err != nil {
					t.Errorf("write during rewrap: %v", err)
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	st, err := Rewrap(ctx, e.opts(e.target(t, "alias/rw-b", 0), 4), e.files)
	close(stop)
	wg.Wait()
	if err != nil || st.Rewrapped != 40 {
		t.Fatalf("Rewrap: %+v, %v", st, err)
	}
	for i, o := range opens {
		e.sums[e.files[i]] = sha256.Sum256(final[i])
		_ = o
	}
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == e.keyB.ARN })
}

// TestManagerSetWrapKey: after a rotation (or a migration) the Manager's
// new files wrap under the new version at once, not after its pool drains.
func TestManagerSetWrapKey(t *testing.T) {
	e := newRWEnv(t, nil)
	e.m.Start(context.Background())
	waitFor(t, "pool filled", func() bool { return e.m.Stats().PoolReady == 4 })
	if _, err := e.kr.Rotate(e.keyA.ARN); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	if err := e.kr.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := e.m.SetWrapKey(e.keyA.ARN, 0); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		h, _, err := e.m.NewFile(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if h.Keys[0].KeyVersion != 2 {
			t.Fatalf("new file after rotation: version %d, want 2", h.Keys[0].KeyVersion)
		}
	}
	if err := e.m.SetWrapKey(e.keyB.ARN, 7); err != nil {
		t.Fatal(err)
	}
	h, _, err := e.m.NewFile(context.Background())
	if err != nil || h.Keys[0].KeyARN != e.keyB.ARN || h.Keys[0].KeyVersion != 1 {
		t.Fatalf("new file after SetWrapKey(B): %+v, %v; want B version 1 (a real version beats the epoch)", h.Keys, err)
	}
	if arn, epoch := e.m.WrapKey(); arn != e.keyB.ARN || epoch != 7 {
		t.Errorf("WrapKey: got %s %d", arn, epoch)
	}
	e.m.Close()
	if err := e.m.SetWrapKey(e.keyA.ARN, 0); err == nil {
		t.Errorf("SetWrapKey after Close: no error")
	}
}

// TestRewrapAWS runs the engine against local-kms: rewrap to the same key
// with a new epoch, then migrate to another key.
func TestRewrapAWS(t *testing.T) {
	lk := startLocalKMS(t)
	var p *awsProvider
	e := newRWEnv(t, func(t testing.TB) (Provider, string) {
		p, _ = newTestAWS(t, lk.url, nil)
		return p, lkKeyARN(lkKeyA)
	})
	e.create(t, 12)
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == lkKeyARN(lkKeyA) && h.Keys[0].KeyVersion == 0 })

	tg := e.target(t, lkAliasA, 1)
	if !tg.Epoch || tg.Version != 1 || tg.KeyARN != lkKeyARN(lkKeyA) {
		t.Fatalf("aws target: got %+v, want key A, epoch 1", tg)
	}
	st, err := Rewrap(context.Background(), e.opts(tg, 4), e.files)
	if err != nil || st.Rewrapped != 12 || st.Failed != 0 {
		t.Fatalf("aws rewrap: %+v, %v", st, err)
	}
	e.checkAll(t, func(h crypto.Header) bool {
		return h.Keys[0].KeyARN == lkKeyARN(lkKeyA) && h.Keys[0].KeyVersion == 1 && h.Generation == 2
	})
	resumed := e.opts(tg, 4)
	resumed.Resume = true // a full rerun would move them all again
	st, err = Rewrap(context.Background(), resumed, e.files)
	if err != nil || st.Current != 12 {
		t.Fatalf("aws resumed rerun: %+v, %v; want 12 current", st, err)
	}
	// New files of a Manager at epoch 1 are current at once.
	if err := e.m.SetWrapKey(lkKeyARN(lkKeyA), 1); err != nil {
		t.Fatal(err)
	}
	e.create(t, 2)
	st, err = Rewrap(context.Background(), resumed, e.files)
	if err != nil || st.Current != 14 {
		t.Fatalf("aws rerun with new files: %+v, %v; want 14 current", st, err)
	}

	tg = e.target(t, lkAliasB, 1)
	st, err = Rewrap(context.Background(), e.opts(tg, 4), e.files)
	if err != nil || st.Rewrapped != 14 {
		t.Fatalf("aws migration: %+v, %v", st, err)
	}
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == lkKeyARN(lkKeyB) && h.Keys[0].KeyVersion == 1 })
	if got := e.auditCount(t, AuditReEncrypt); got != 26 {
		t.Errorf("audit ReEncrypt lines: got %d, want 26", got)
	}
}

// BenchmarkRewrap measures rewrap throughput over 10,000 small files on
// the local provider: every iteration migrates all of them to the other
// key. make bench-rewrap runs it; docs/performance.md has the numbers.
func BenchmarkRewrap(b *testing.B) {
	n := benchRewrapFiles()
	e := newRWEnv(b, nil)
	e.create(b, n)
	benchRewrap(b, e, n, []string{"alias/rw-b", "alias/rw-a"}, false)
}

// BenchmarkRewrapAWS is BenchmarkRewrap on the aws provider against
// local-kms on 127.0.0.1: each file is one ReEncrypt round trip.
func BenchmarkRewrapAWS(b *testing.B) {
	n := benchRewrapFiles()
	lk := startLocalKMS(b)
	e := newRWEnv(b, func(t testing.TB) (Provider, string) {
		p, _ := newTestAWS(t, lk.url, nil)
		return p, lkKeyARN(lkKeyA)
	})
	e.create(b, n)
	benchRewrap(b, e, n, []string{lkAliasB, lkAliasA}, true)
}

func benchRewrapFiles() int {
	n := 10000
	if s := os.Getenv("KMSFS_BENCH_REWRAP_FILES"); s != "" {
		fmt.Sscan(s, &n)
	}
	return n
}

// benchRewrap migrates all n files back and forth between two keys with
// --jobs 1, 4 and 16 and reports files per second. With epochs (aws), each
// migration also takes the next rewrap epoch.
func benchRewrap(b *testing.B, e *rwEnv, n int, keys []string, epochs bool) {
	epoch := uint32(0)
	next := func(ref string) RewrapTarget {
		if epochs {
			epoch++
		}
		return e.target(b, ref, epoch)
	}
	for _, jobs := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("jobs=%d", jobs), func(b *testing.B) {
			files := 0
			var elapsed time.Duration
			for i := 0; b.Loop(); i++ {
				st, err := Rewrap(context.Background(), e.opts(next(keys[i%2]), jobs), e.files)
				if err != nil || st.Failed != 0 {
					b.Fatalf("Rewrap: %+v, %v", st, err)
				}
				if st.Rewrapped != n {
					// The previous sub-benchmark may have ended on this key.
					if st, err = Rewrap(context.Background(), e.opts(next(keys[(i+1)%2]), jobs), e.files); err != nil || st.Rewrapped != n {
						b.Fatalf("Rewrap: %+v, %v", st, err)
					}
				}
				files += st.Rewrapped
				elapsed += st.Elapsed
			}
			b.ReportMetric(float64(files)/elapsed.Seconds(), "files/s")
		})
	}
}

// forge rewrites the header of the cipher file p as a writer of the cipher
// directory could (the header is not authenticated): change edits it, the
// generation goes up, and the index entry follows.
func (e *rwEnv) forge(t testing.TB, p string, change func(h *crypto.Header)) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, slot, err := cipherfile.ReadHeader(f, e.layout)
	if err != nil {
		t.Fatal(err)
	}
	h.Keys = slices.Clone(h.Keys)
	change(&h)
	h.Generation++
	if err := cipherfile.WriteHeader(f, e.layout, h, slot); err != nil {
		t.Fatal(err)
	}
	if err := e.ix.Put(h); err != nil {
		t.Fatal(err)
	}
}

// TestRewrapTargetCurrent: what "already current" may trust. A local key
// version is read from the EDK, where its AAD authenticates it; an epoch
// must match exactly.
func TestRewrapTargetCurrent(t *testing.T) {
	k := newPinKeys(t)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 5)
	gen := func(arn string) []byte {
		dk, err := k.local.GenerateDataKey(ctx, arn, ec)
		if err != nil {
			t.Fatal(err)
		}
		crypto.Zero(dk.Plaintext)
		return dk.Ciphertext
	}
	a1, b1 := gen(k.a.ARN), gen(k.b.ARN)
	if _, err := k.kr.Rotate(k.a.ARN); err != nil {
		t.Fatal(err)
	}
	mustSave(t, k.kr)
	a2 := gen(k.a.ARN)
	hdr := func(keys ...crypto.WrappedKey) crypto.Header {
		return crypto.Header{FileID: crypto.FileID{5}, Generation: 1, Keys: keys}
	}
	wk := func(arn string, version uint32, edk []byte) crypto.WrappedKey {
		return crypto.WrappedKey{KeyARN: arn, KeyVersion: version, EDK: edk}
	}
	local := RewrapTarget{KeyARN: k.a.ARN, Version: 2}
	epoch := RewrapTarget{KeyARN: k.a.ARN, Version: 3, Epoch: true}
	tests := []struct {
		name   string
		target RewrapTarget
		h      crypto.Header
		want   bool
	}{
		{"local: EDK and field at the target version", local, hdr(wk(k.a.ARN, 2, a2)), true},
		{"local: EDK past an older target", RewrapTarget{KeyARN: k.a.ARN, Version: 1}, hdr(wk(k.a.ARN, 2, a2)), true},
		{"local: forged field far above an old EDK", local, hdr(wk(k.a.ARN, 99, a1)), false},
		{"local: forged field at the target over an old EDK", local, hdr(wk(k.a.ARN, 2, a1)), false},
		{"local: field below its EDK", local, hdr(wk(k.a.ARN, 1, a2)), false},
		{"local: another key's EDK under the target's ARN", RewrapTarget{KeyARN: k.a.ARN, Version: 1}, hdr(wk(k.a.ARN, 1, b1)), false},
		{"local: not a local EDK", local, hdr(wk(k.a.ARN, 2, bytes.Repeat([]byte{1}, 140))), false},
		{"local: another key", local, hdr(wk(k.b.ARN, 2, a2)), false},
		{"local: two wrapped keys", local, hdr(wk(k.a.ARN, 2, a2), wk(k.a.ARN, 2, a2)), false},
		{"epoch: exactly the target epoch", epoch, hdr(wk(k.a.ARN, 3, a1)), true},
		{"epoch: above the target epoch (never >=)", epoch, hdr(wk(k.a.ARN, 4, a1)), false},
		{"epoch: below the target epoch", epoch, hdr(wk(k.a.ARN, 2, a1)), false},
		{"epoch: another key at the epoch", epoch, hdr(wk(k.b.ARN, 3, b1)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.target.Current(tc.h); got != tc.want {
				t.Errorf("Current: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRewrapForgedLocalVersion: a header claiming a newer key version than
// its EDK holds is rewrapped, not counted current, and a header whose
// field disagrees with its EDK is moved too.
func TestRewrapForgedLocalVersion(t *testing.T) {
	e := newRWEnv(t, nil)
	e.create(t, 6)
	if _, err := e.kr.Rotate("alias/rw-a"); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	tg := e.target(t, "alias/rw-a", 0)
	e.forge(t, e.files[0], func(h *crypto.Header) { h.Keys[0].KeyVersion = 99 })
	e.forge(t, e.files[1], func(h *crypto.Header) { h.Keys[0].KeyVersion = tg.Version })
	edkAt := func(version uint32) func(h crypto.Header) bool {
		return func(h crypto.Header) bool {
			_, v, err := localEDKWrapper(h.Keys[0].EDK)
			return err == nil && v == version && h.Keys[0].KeyVersion == version
		}
	}
	steps := []struct {
		name                     string
		before                   func()
		wantRewrapped, wantFresh int
	}{
		{"forged versions are moved with the rest", nil, 6, 0},
		{"a field lowered below its EDK is moved", func() {
			e.forge(t, e.files[2], func(h *crypto.Header) { h.Keys[0].KeyVersion = 1 })
		}, 1, 5},
		{"then everything is current", nil, 0, 6},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		st, err := Rewrap(context.Background(), e.opts(tg, 2), e.files)
		if err != nil || st.Rewrapped != s.wantRewrapped || st.Current != s.wantFresh || st.Failed != 0 {
			t.Fatalf("%s: got %+v, %v; want %d rewrapped, %d current", s.name, st, err, s.wantRewrapped, s.wantFresh)
		}
		e.checkAll(t, edkAt(2))
	}
}

// TestRewrapEpochResume: an epoch is kmsfs's own, unauthenticated marker.
// A full rewrap moves every file whatever its header claims; a resumed one
// skips only files at exactly its epoch (a header stamped with the target
// epoch by a writer is the documented window: the next full rewrap moves
// it).
func TestRewrapEpochResume(t *testing.T) {
	lk := startLocalKMS(t)
	e := newRWEnv(t, func(t testing.TB) (Provider, string) {
		p, _ := newTestAWS(t, lk.url, nil)
		return p, lkKeyARN(lkKeyA)
	})
	e.create(t, 6)
	tg := e.target(t, lkAliasA, 1)
	if !tg.Epoch || tg.Version != 1 {
		t.Fatalf("target: got %+v, want epoch 1", tg)
	}
	e.forge(t, e.files[0], func(h *crypto.Header) { h.Keys[0].KeyVersion = 1 })
	e.forge(t, e.files[1], func(h *crypto.Header) { h.Keys[0].KeyVersion = 7 })
	steps := []struct {
		name                       string
		resume                     bool
		wantRewrapped, wantCurrent int
	}{
		{"resumed: only the file at exactly the epoch is skipped", true, 5, 1},
		{"full: every file is re-encrypted", false, 6, 0},
		{"resumed after the full run: all current", true, 0, 6},
	}
	for _, s := range steps {
		o := e.opts(tg, 2)
		o.Resume = s.resume
		st, err := Rewrap(context.Background(), o, e.files)
		if err != nil || st.Rewrapped != s.wantRewrapped || st.Current != s.wantCurrent || st.Failed != 0 {
			t.Fatalf("%s: got %+v, %v; want %d rewrapped, %d current", s.name, st, err, s.wantRewrapped, s.wantCurrent)
		}
	}
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == lkKeyARN(lkKeyA) && h.Keys[0].KeyVersion == 1 })
	if got := e.auditCount(t, AuditReEncrypt); got != 11 {
		t.Errorf("audit ReEncrypt lines: got %d, want 11", got)
	}
}
