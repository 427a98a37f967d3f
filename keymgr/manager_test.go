package keymgr

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// stEnv is a Manager over a real badger index, a real DEK cache and the
// real local provider (behind a call counter).
type stEnv struct {
	m     *Manager
	ix    *Index
	cache *Cache
	kms   *stKMS
	log   *stLog
}

func newStEnv(t *testing.T, tweak func(*ManagerOptions)) *stEnv {
	t.Helper()
	kms := newStKMS(t)
	logger, tl := newStLog(t)
	ix := openStIndex(t, stIndexDir(t), IndexOptions{Logger: logger})
	cache := newStCache(t, CacheOptions{MaxEntries: 1000})
	o := ManagerOptions{
		FilesystemID: stFilesystemID,
		KeyARN:       kms.arn,
		Provider:     kms.prov,
		Index:        ix,
		Cache:        cache,
		PoolSize:     8,
		Layout:       crypto.DefaultLayout(),
		Logger:       logger,
	}
	if tweak != nil {
		tweak(&o)
	}
	m, err := NewManager(o)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Manager.Close: %v", err)
		}
	})
	return &stEnv{m: m, ix: ix, cache: cache, kms: kms, log: tl}
}

// newFile creates a file and returns its header and one sealed chunk.
func (e *stEnv) newFile(t *testing.T) (crypto.Header, []byte) {
	t.Helper()
	h, c, err := e.m.NewFile(context.Background())
	if err != nil {
		t.Fatalf("NewFile: %v", err)
	}
	sealed, err := c.SealChunk(nil, 0, true, []byte("hello, "+h.FileID.String()))
	if err != nil {
		t.Fatalf("SealChunk: %v", err)
	}
	return h, sealed
}

// opens checks that c opens the chunk sealed for h.
func opens(t *testing.T, c *crypto.ContentCipher, h crypto.Header, sealed []byte) {
	t.Helper()
	if c == nil {
		t.Fatal("nil cipher")
	}
	got, err := c.OpenChunk(nil, 0, true, sealed)
	if err != nil {
		t.Fatalf("OpenChunk with the reopened key of %s: %v", h.FileID, err)
	}
	if want := "hello, " + h.FileID.String(); string(got) != want {
		t.Fatalf("OpenChunk: got %q, want %q", got, want)
	}
}

// mirror is a readHeader callback that counts its calls.
type mirror struct {
	h     crypto.Header
	err   error
	calls atomic.Int64
}

func (m *mirror) read() (crypto.Header, error) {
	m.calls.Add(1)
	return m.h, m.err
}

func noMirror(t *testing.T) func() (crypto.Header, error) {
	return func() (crypto.Header, error) {
		t.Errorf("readHeader called, want the index (or cache) to answer")
		return crypto.Header{}, errors.New("no mirror in this test")
	}
}

func TestManagerNewFileThenOpen(t *testing.T) {
	e := newStEnv(t, nil)
	ctx := context.Background()
	h, sealed := e.newFile(t)

	if h.Generation != 1 || len(h.Keys) != 1 {
		t.Fatalf("header: got generation %d with %d keys, want 1 with 1", h.Generation, len(h.Keys))
	}
	if got := h.Keys[0].KeyARN; got != e.kms.arn {
		t.Errorf("key ARN: got %q, want %q", got, e.kms.arn)
	}
	if got := h.Keys[0].KeyVersion; got != 1 {
		t.Errorf("key version: got %d, want 1", got)
	}
	if got, err := e.ix.Get(h.FileID); err != nil || !reflect.DeepEqual(got, h) {
		t.Fatalf("index entry: got %+v, %v, want %+v", got, err, h)
	}
	if got := e.cache.Len(); got != 1 {
		t.Fatalf("cache entries after NewFile: got %d, want 1", got)
	}

	// Cached: no KMS call, no mirror read.
	c, err := e.m.OpenFile(ctx, h.FileID, noMirror(t))
	if err != nil {
		t.Fatalf("OpenFile (cached): %v", err)
	}
	opens(t, c, h, sealed)
	if got := e.kms.prov.decrypt.Load(); got != 0 {
		t.Fatalf("Decrypt calls for a cached key: got %d, want 0", got)
	}

	// Uncached: one Decrypt via the index entry, then cached again.
	e.cache.Purge()
	c, err = e.m.OpenFile(ctx, h.FileID, noMirror(t))
	if err != nil {
		t.Fatalf("OpenFile (via index): %v", err)
	}
	opens(t, c, h, sealed)
	if got := e.kms.prov.decrypt.Load(); got != 1 {
		t.Fatalf("Decrypt calls via the index: got %d, want 1", got)
	}
	if _, err := e.m.OpenFile(ctx, h.FileID, noMirror(t)); err != nil {
		t.Fatal(err)
	}
	if got := e.kms.prov.decrypt.Load(); got != 1 {
		t.Fatalf("Decrypt calls after a second open: got %d, want 1", got)
	}

	st := e.m.Stats()
	if st.KMSCalls.Decrypt != 1 || st.KMSCalls.Errors != 0 || st.CacheEntries != 1 || st.PoolTaken != 1 || st.IndexHeals != 0 {
		t.Fatalf("stats: got %+v", st)
	}
	if st.KMSCalls.GenerateDataKey != uint64(e.kms.prov.generate.Load()) {
		t.Fatalf("stats GenerateDataKey: got %d, want %d", st.KMSCalls.GenerateDataKey, e.kms.prov.generate.Load())
	}
	if st.CacheLockedBytes <= 0 || st.CacheHits < 2 {
		t.Fatalf("cache stats: got %+v", st)
	}
}

func TestManagerWarmPoolCreatesWithoutKMSCall(t *testing.T) {
	e := newStEnv(t, nil)
	e.m.Start(context.Background())
	waitFor(t, "a warm pool", func() bool { return e.m.Stats().PoolReady == 8 })
	before := e.kms.prov.generate.Load()
	for range 3 { // 8 -> 5 keys: above size/2, so no refill either
		_, _ = e.newFile(t)
	}
	if got := e.kms.prov.generate.Load(); got != before {
		t.Fatalf("GenerateDataKey calls for 3 warm creates: got %d, want 0", got-before)
	}
	st := e.m.Stats()
	if st.PoolSyncFallbacks != 0 || st.PoolTaken != 3 {
		t.Fatalf("pool stats: got fallbacks %d taken %d, want 0 and 3", st.PoolSyncFallbacks, st.PoolTaken)
	}
}

func TestManagerHealsIndex(t *testing.T) {
	tests := []struct {
		name        string
		damage      func(t *testing.T, e *stEnv, h crypto.Header)
		wantDecrypt int64
	}{
		{
			name: "entry deleted",
			damage: func(t *testing.T, e *stEnv, h crypto.Header) {
				if err := e.ix.Delete(h.FileID); err != nil {
					t.Fatal(err)
				}
			},
			wantDecrypt: 1,
		},
		{
			name: "value corrupt",
			damage: func(t *testing.T, e *stEnv, h crypto.Header) {
				if err := e.ix.putRaw(h.FileID, []byte{1, 2, 3}); err != nil {
					t.Fatal(err)
				}
			},
			wantDecrypt: 1,
		},
		{
			name: "value of another file",
			damage: func(t *testing.T, e *stEnv, h crypto.Header) {
				other := stHeader(7, 1)
				b, _ := other.Marshal()
				if err := e.ix.putRaw(h.FileID, b); err != nil {
					t.Fatal(err)
				}
			},
			wantDecrypt: 1,
		},
		{
			name: "EDK does not unwrap",
			damage: func(t *testing.T, e *stEnv, h crypto.Header) {
				bad := cloneHeader(h)
				bad.Keys[0].EDK[len(bad.Keys[0].EDK)-1] ^= 1
				if err := e.ix.Put(bad); err != nil {
					t.Fatal(err)
				}
			},
			wantDecrypt: 2, // the index's, then the mirror's
		},
		{
			name: "stale entry of an older generation",
			damage: func(t *testing.T, e *stEnv, h crypto.Header) {
				stale := cloneHeader(h)
				stale.Generation = 1
				stale.Keys[0].EDK = bytes.Repeat([]byte{0x01}, 81)
				if err := e.ix.Put(stale); err != nil {
					t.Fatal(err)
				}
			},
			wantDecrypt: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newStEnv(t, nil)
			h, sealed := e.newFile(t)
			h.Generation = 2 // the mirror after a rewrap: same DEK, newer header
			if err := e.ix.Put(h); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, e, h)
			e.cache.Purge()
			mir := &mirror{h: h}

			c, err := e.m.OpenFile(context.Background(), h.FileID, mir.read)
			if err != nil {
				t.Fatalf("OpenFile: %v", err)
			}
			opens(t, c, h, sealed)
			if got := mir.calls.Load(); got != 1 {
				t.Errorf("mirror reads: got %d, want 1", got)
			}
			if got := e.kms.prov.decrypt.Load(); got != tt.wantDecrypt {
				t.Errorf("Decrypt calls: got %d, want %d", got, tt.wantDecrypt)
			}
			if got, err := e.ix.Get(h.FileID); err != nil || !reflect.DeepEqual(got, h) {
				t.Errorf("healed index entry: got %+v, %v, want %+v", got, err, h)
			}
			if got := e.m.Stats().IndexHeals; got != 1 {
				t.Errorf("index heals: got %d, want 1", got)
			}
			if msgs := e.log.messages(slog.LevelInfo); !containsMsg(msgs, "healed header index entry") {
				t.Errorf("no info line about the heal in %q", msgs)
			}

			// Healed: the next miss needs neither the mirror nor a second try.
			e.cache.Purge()
			before := e.kms.prov.decrypt.Load()
			if _, err := e.m.OpenFile(context.Background(), h.FileID, noMirror(t)); err != nil {
				t.Fatalf("OpenFile after the heal: %v", err)
			}
			if got := e.kms.prov.decrypt.Load() - before; got != 1 {
				t.Errorf("Decrypt calls after the heal: got %d, want 1", got)
			}
		})
	}
}

func containsMsg(msgs []string, sub string) bool {
	for _, m := range msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

func cloneHeader(h crypto.Header) crypto.Header {
	c := h
	c.Keys = make([]crypto.WrappedKey, len(h.Keys))
	for i, k := range h.Keys {
		k.EDK = append([]byte(nil), k.EDK...)
		c.Keys[i] = k
	}
	return c
}

func TestManagerOpenFailures(t *testing.T) {
	errRead := errors.New("read header: input/output error")
	tests := []struct {
		name       string
		setup      func(t *testing.T, e *stEnv, h crypto.Header) func() (crypto.Header, error)
		wantErr    []error
		wantInText []string
	}{
		{
			name: "not indexed and no mirror",
			setup: func(t *testing.T, e *stEnv, h crypto.Header) func() (crypto.Header, error) {
				_ = e.ix.Delete(h.FileID)
				return nil
			},
			wantErr: []error{ErrNotIndexed},
		},
		{
			name: "not indexed and the mirror fails",
			setup: func(t *testing.T, e *stEnv, h crypto.Header) func() (crypto.Header, error) {
				_ = e.ix.Delete(h.FileID)
				return (&mirror{err: errRead}).read
			},
			wantErr: []error{ErrNotIndexed, errRead},
		},
		{
			name: "mirror of another file",
			setup: func(t *testing.T, e *stEnv, h crypto.Header) func() (crypto.Header, error) {
				_ = e.ix.Delete(h.FileID)
				return (&mirror{h: stHeader(9, 1)}).read
			},
			wantErr: []error{crypto.ErrBadHeader},
		},
		{
			name: "index and mirror both tampered",
			setup: func(t *testing.T, e *stEnv, h crypto.Header) func() (crypto.Header, error) {
				bad := cloneHeader(h)
				bad.Keys[0].EDK[0] ^= 0x80
				if err := e.ix.Put(bad); err != nil {
					t.Fatal(err)
				}
				return (&mirror{h: bad}).read
			},
			wantErr:    []error{ErrInvalidCiphertext},
			wantInText: []string{"unwrap DEK of file", "with arn:kmsfs:local:"},
		},
		{
			name: "EDK of another file",
			setup: func(t *testing.T, e *stEnv, h crypto.Header) func() (crypto.Header, error) {
				other, _ := e.newFile(t)
				swapped := cloneHeader(h)
				swapped.Keys = cloneHeader(other).Keys
				if err := e.ix.Put(swapped); err != nil {
					t.Fatal(err)
				}
				return nil
			},
			wantErr: []error{ErrInvalidCiphertext},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newStEnv(t, nil)
			h, _ := e.newFile(t)
			readHeader := tt.setup(t, e, h)
			e.cache.Purge()
			c, err := e.m.OpenFile(context.Background(), h.FileID, readHeader)
			if err == nil {
				t.Fatalf("OpenFile: got cipher %v, want an error", c)
			}
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("OpenFile error %q: errors.Is(%v) = false, want true", err, want)
				}
			}
			for _, want := range append(tt.wantInText, h.FileID.String()) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("OpenFile error %q lacks %q", err, want)
				}
			}
			if got := e.cache.Len(); got != 0 {
				t.Errorf("cache entries after a failed open: got %d, want 0", got)
			}
		})
	}
}

func TestManagerTriesEveryWrappedKey(t *testing.T) {
	e := newStEnv(t, nil)
	h, sealed := e.newFile(t)
	two := cloneHeader(h)
	broken := cloneHeader(h).Keys[0]
	broken.EDK[5] ^= 0xff
	two.Keys = []crypto.WrappedKey{broken, h.Keys[0]}
	if err := e.ix.Put(two); err != nil {
		t.Fatal(err)
	}
	e.cache.Purge()
	c, err := e.m.OpenFile(context.Background(), h.FileID, noMirror(t))
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	opens(t, c, h, sealed)
	if got := e.kms.prov.decrypt.Load(); got != 2 {
		t.Fatalf("Decrypt calls: got %d, want 2", got)
	}
	if st := e.m.Stats(); st.KMSCalls.Errors != 1 || st.IndexHeals != 0 {
		t.Fatalf("stats: got %+v, want 1 KMS error and no heal", st.KMSCalls)
	}
}

func TestManagerConcurrentOpenDecryptsOnce(t *testing.T) {
	e := newStEnv(t, nil)
	h, sealed := e.newFile(t)
	e.cache.Purge()
	e.kms.prov.decryptGate = make(chan struct{})
	e.kms.prov.decryptEntered = make(chan struct{}, 1)

	const n = 16
	var wg sync.WaitGroup
	ciphers := make([]*crypto.ContentCipher, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ciphers[i], errs[i] = e.m.OpenFile(context.Background(), h.FileID, noMirror(t))
		}()
	}
	<-e.kms.prov.decryptEntered
	// Every other open must have joined the one in-flight call before
	// the KMS answers (none may arrive late and be served by the cache).
	waitFor(t, "the other opens to join the in-flight unwrap", func() bool {
		e.m.mu.Lock()
		defer e.m.mu.Unlock()
		call := e.m.inflight[h.FileID]
		return len(e.m.inflight) == 1 && call != nil && call.waiters == n-1
	})
	close(e.kms.prov.decryptGate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("open %d: %v", i, errs[i])
		}
		opens(t, ciphers[i], h, sealed)
	}
	if got := e.kms.prov.decrypt.Load(); got != 1 {
		t.Fatalf("Decrypt calls for %d concurrent opens: got %d, want 1", n, got)
	}
}

func TestManagerConcurrentOpenWaiterCancelled(t *testing.T) {
	e := newStEnv(t, nil)
	h, _ := e.newFile(t)
	e.cache.Purge()
	e.kms.prov.decryptGate = make(chan struct{})
	e.kms.prov.decryptEntered = make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		_, err := e.m.OpenFile(context.Background(), h.FileID, noMirror(t))
		done <- err
	}()
	<-e.kms.prov.decryptEntered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := e.m.OpenFile(ctx, h.FileID, noMirror(t)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting open with a deadline: got %v, want %v", err, context.DeadlineExceeded)
	}
	close(e.kms.prov.decryptGate)
	if err := <-done; err != nil {
		t.Fatalf("leading open: %v", err)
	}
}

func TestManagerDisabledKey(t *testing.T) {
	e := newStEnv(t, nil)
	ctx := context.Background()
	hCached, sealedCached := e.newFile(t)
	hCold, _ := e.newFile(t)
	e.cache.Drop(hCold.FileID)

	e.kms.setEnabled(t, false)

	c, err := e.m.OpenFile(ctx, hCached.FileID, noMirror(t))
	if err != nil {
		t.Fatalf("OpenFile of a cached file with the key disabled: %v", err)
	}
	opens(t, c, hCached, sealedCached)

	mir := &mirror{h: hCold}
	_, err = e.m.OpenFile(ctx, hCold.FileID, mir.read)
	if !errors.Is(err, ErrKeyDisabled) {
		t.Fatalf("OpenFile of an uncached file with the key disabled: got %v, want %v", err, ErrKeyDisabled)
	}
	for _, want := range []string{hCold.FileID.String(), e.kms.arn} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if got := mir.calls.Load(); got != 0 {
		t.Errorf("mirror reads for a disabled key: got %d, want 0 (the mirror cannot help)", got)
	}

	e.kms.setEnabled(t, true)
	if _, err := e.m.OpenFile(ctx, hCold.FileID, noMirror(t)); err != nil {
		t.Fatalf("OpenFile after re-enabling the key: %v", err)
	}
}

func TestManagerForget(t *testing.T) {
	e := newStEnv(t, nil)
	h, sealed := e.newFile(t)
	keep, _ := e.newFile(t)
	if err := e.m.Forget(context.Background(), h.FileID); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if _, err := e.ix.Get(h.FileID); !errors.Is(err, ErrNotIndexed) {
		t.Fatalf("index after Forget: got %v, want %v", err, ErrNotIndexed)
	}
	if _, ok := e.cache.slotOf(h.FileID); ok {
		t.Fatal("key still cached after Forget")
	}
	if _, ok := e.cache.slotOf(keep.FileID); !ok {
		t.Fatal("Forget dropped another file's key")
	}
	if err := e.m.Forget(context.Background(), h.FileID); err != nil {
		t.Fatalf("second Forget: %v", err)
	}
	// A file restored from a backup opens again from its own header.
	c, err := e.m.OpenFile(context.Background(), h.FileID, (&mirror{h: h}).read)
	if err != nil {
		t.Fatalf("OpenFile after Forget: %v", err)
	}
	opens(t, c, h, sealed)
}

func TestManagerClose(t *testing.T) {
	e := newStEnv(t, nil)
	e.m.Start(context.Background())
	waitFor(t, "a warm pool", func() bool { return e.m.Stats().PoolReady == 8 })
	h, _ := e.newFile(t)
	mem, err := e.cache.slabCopy()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(mem, make([]byte, len(mem))) {
		t.Fatal("cache slab all zero with a key cached")
	}
	if err := e.m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	stAssertSlabZero(t, e.cache)
	if st := e.m.Stats(); st.CacheEntries != 0 || st.PoolReady != 0 {
		t.Fatalf("after Close: got %d cached and %d pooled keys, want 0 and 0", st.CacheEntries, st.PoolReady)
	}
	if _, _, err := e.m.NewFile(context.Background()); err == nil {
		t.Fatal("NewFile after Close: got no error")
	}
	if _, err := e.m.OpenFile(context.Background(), h.FileID, noMirror(t)); err == nil {
		t.Fatal("OpenFile after Close: got no error")
	}
}

func TestManagerSweepsExpiredKeys(t *testing.T) {
	clk := newStClock()
	e := newStEnv(t, func(o *ManagerOptions) {
		c, err := NewCache(CacheOptions{MaxEntries: 16, TTL: 40 * time.Millisecond, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		o.Cache = c
	})
	e.cache = e.m.cache
	e.m.Start(context.Background())
	_, _ = e.newFile(t)
	if got := e.cache.Len(); got != 1 {
		t.Fatalf("cached keys: got %d, want 1", got)
	}
	clk.Advance(time.Second)
	waitFor(t, "the sweep", func() bool { return e.cache.Len() == 0 })
}

func TestNewManagerOptions(t *testing.T) {
	kms := newStKMS(t)
	ix := openStIndex(t, stIndexDir(t), IndexOptions{})
	cache := newStCache(t, CacheOptions{MaxEntries: 4})
	valid := func() ManagerOptions {
		return ManagerOptions{FilesystemID: stFilesystemID, KeyARN: kms.arn, Provider: kms.prov, Index: ix, Cache: cache, Layout: crypto.DefaultLayout()}
	}
	tests := []struct {
		name    string
		edit    func(o *ManagerOptions)
		wantErr bool
	}{
		{name: "valid", edit: func(*ManagerOptions) {}},
		{name: "no filesystem ID", edit: func(o *ManagerOptions) { o.FilesystemID = "" }, wantErr: true},
		{name: "no key", edit: func(o *ManagerOptions) { o.KeyARN = "" }, wantErr: true},
		{name: "no provider", edit: func(o *ManagerOptions) { o.Provider = nil }, wantErr: true},
		{name: "no index (offline reader)", edit: func(o *ManagerOptions) { o.Index = nil }},
		{name: "no cache", edit: func(o *ManagerOptions) { o.Cache = nil }, wantErr: true},
		{name: "negative pool", edit: func(o *ManagerOptions) { o.PoolSize = -1 }, wantErr: true},
		{name: "negative pool start", edit: func(o *ManagerOptions) { o.PoolStart = -1 }, wantErr: true},
		{name: "bad layout", edit: func(o *ManagerOptions) { o.Layout = crypto.Layout{ChunkShift: 3, SlotShift: 9} }, wantErr: true},
		{name: "zero layout", edit: func(o *ManagerOptions) { o.Layout = crypto.Layout{} }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid()
			tt.edit(&o)
			m, err := NewManager(o)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewManager error: got %v, want error %v", err, tt.wantErr)
			}
			if m != nil {
				if st := m.Stats(); st.PoolSize != DefaultPoolSize || st.PoolTarget != DefaultPoolStart {
					t.Errorf("pool size and target: got %d and %d, want %d and %d", st.PoolSize, st.PoolTarget, DefaultPoolSize, DefaultPoolStart)
				}
				_ = m.Close()
			}
		})
	}
}
