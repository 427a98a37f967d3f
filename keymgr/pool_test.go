package keymgr

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

const stFilesystemID = "4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12"

// stKMS is a real local provider over a fresh keyring with one key.
type stKMS struct {
	kr   *Keyring
	arn  string
	prov *stCountingProvider
}

func newStKMS(t *testing.T) *stKMS {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	kr, err := CreateKeyring(path, []byte("store test passphrase"), KeyringOptions{ArgonTime: 1, ArgonMemoryKiB: 64, ArgonThreads: 1})
	if err != nil {
		t.Fatalf("CreateKeyring: %v", err)
	}
	t.Cleanup(func() { _ = kr.Close() })
	md, err := kr.CreateKey("store tests", "alias/kmsfs/store-test")
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if err := kr.Save(); err != nil {
		t.Fatalf("Save: %v", err)
	}
	return &stKMS{kr: kr, arn: md.ARN, prov: &stCountingProvider{Provider: NewLocalProvider(kr)}}
}

func (k *stKMS) setEnabled(t *testing.T, enabled bool) {
	t.Helper()
	if _, err := k.kr.SetEnabled(k.arn, enabled); err != nil {
		t.Fatalf("SetEnabled(%v): %v", enabled, err)
	}
	if err := k.kr.Save(); err != nil {
		t.Fatalf("Save: %v", err)
	}
}

// stCountingProvider forwards to a real provider and counts calls. When
// decryptGate is set, Decrypt signals decryptEntered and waits for the gate.
// generateDelay adds a network's worth of latency to GenerateDataKey, and
// generateInflight/maxGenerateInflight count the calls under way.
type stCountingProvider struct {
	Provider
	generate, decrypt atomic.Int64
	decryptGate       chan struct{}
	decryptEntered    chan struct{}

	generateDelay                         time.Duration
	generateInflight, maxGenerateInflight atomic.Int64
	// generateGate, when set, holds every GenerateDataKey until it can
	// receive from it (one call per value sent; all once it is closed);
	// gateWaiting counts the calls it holds, gatePassed those it let
	// through (each updated just after the gate, not atomically with it).
	generateGate chan struct{}
	gateWaiting  atomic.Int64
	gatePassed   atomic.Int64
}

func (p *stCountingProvider) GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error) {
	p.generate.Add(1)
	n := p.generateInflight.Add(1)
	defer p.generateInflight.Add(-1)
	for {
		m := p.maxGenerateInflight.Load()
		if n <= m || p.maxGenerateInflight.CompareAndSwap(m, n) {
			break
		}
	}
	if p.generateDelay > 0 {
		time.Sleep(p.generateDelay)
	}
	if p.generateGate != nil {
		p.gateWaiting.Add(1)
		select {
		case <-p.generateGate:
			p.gateWaiting.Add(-1)
			p.gatePassed.Add(1)
		case <-ctx.Done():
			p.gateWaiting.Add(-1)
			return DataKey{}, ctx.Err()
		}
	}
	return p.Provider.GenerateDataKey(ctx, keyRef, ec)
}

func (p *stCountingProvider) Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error) {
	p.decrypt.Add(1)
	if p.decryptGate != nil {
		select {
		case p.decryptEntered <- struct{}{}:
		default:
		}
		<-p.decryptGate
	}
	return p.Provider.Decrypt(ctx, keyRef, blob, ec)
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func newStPool(t *testing.T, kms *stKMS, size int, tweak func(*poolOptions)) (*dekPool, *stLog) {
	t.Helper()
	logger, tl := newStLog(t)
	o := poolOptions{
		Size:         size,
		FilesystemID: stFilesystemID,
		KeyARN:       kms.arn,
		Provider:     kms.prov,
		Rand:         randReader{},
		Logger:       logger,
	}
	if tweak != nil {
		tweak(&o)
	}
	p, err := newDEKPool(o)
	if err != nil {
		t.Fatalf("newDEKPool: %v", err)
	}
	t.Cleanup(func() {
		if err := p.close(); err != nil {
			t.Errorf("pool close: %v", err)
		}
	})
	return p, tl
}

// randReader is crypto/rand behind a type the pool does not special-case.
type randReader struct{}

func (randReader) Read(b []byte) (int, error) { return crand.Read(b) }

// checkPooledKey unwraps k's EDK with the real provider and compares.
func checkPooledKey(t *testing.T, kms *stKMS, k pooledKey, dek []byte) {
	t.Helper()
	if k.KeyARN != kms.arn {
		t.Errorf("key ARN: got %q, want %q", k.KeyARN, kms.arn)
	}
	if k.KeyVersion != 1 {
		t.Errorf("key version: got %d, want 1", k.KeyVersion)
	}
	got, err := kms.prov.Provider.Decrypt(context.Background(), k.KeyARN, k.EDK, FileContext(stFilesystemID, k.ID))
	if err != nil {
		t.Fatalf("Decrypt pooled EDK of %s: %v", k.ID, err)
	}
	if !bytes.Equal(got, dek) {
		t.Errorf("pooled DEK of %s does not match its EDK", k.ID)
	}
	if bytes.Equal(dek, make([]byte, crypto.DEKSize)) {
		t.Errorf("pooled DEK of %s is all zero", k.ID)
	}
}

func TestPoolWarmTakeMakesNoKMSCall(t *testing.T) {
	kms := newStKMS(t)
	const size = 8
	p, _ := newStPool(t, kms, size, nil)
	p.start(context.Background())
	waitFor(t, "a full pool", func() bool { return p.readyCount() == size })
	if got := kms.prov.generate.Load(); got != size {
		t.Fatalf("GenerateDataKey calls to fill: got %d, want %d", got, size)
	}

	seen := map[crypto.FileID]bool{}
	dek := make([]byte, crypto.DEKSize)
	// size - size/2 takes leave size/2 keys: no refill yet.
	for range size - size/2 {
		k, err := p.take(context.Background(), dek)
		if err != nil {
			t.Fatalf("take: %v", err)
		}
		if seen[k.ID] {
			t.Fatalf("file ID %s handed out twice", k.ID)
		}
		seen[k.ID] = true
		checkPooledKey(t, kms, k, dek)
	}
	if got := kms.prov.generate.Load(); got != size {
		t.Fatalf("GenerateDataKey calls after warm takes: got %d, want %d", got, size)
	}
	if got := p.fallbacks.Load(); got != 0 {
		t.Fatalf("synchronous fallbacks: got %d, want 0", got)
	}

	// One more drops below size/2 and triggers a refill back to size.
	if _, err := p.take(context.Background(), dek); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refill", func() bool { return p.readyCount() == size })
	if got, want := kms.prov.generate.Load(), int64(size+size/2+1); got != want {
		t.Fatalf("GenerateDataKey calls after refill: got %d, want %d", got, want)
	}
	if got, want := p.taken.Load(), uint64(size/2+1); got != want {
		t.Fatalf("taken: got %d, want %d", got, want)
	}
	if got, want := p.generated.Load(), uint64(size+size/2+1); got != want {
		t.Fatalf("generated: got %d, want %d", got, want)
	}
}

func TestPoolColdTakeGeneratesSynchronously(t *testing.T) {
	kms := newStKMS(t)
	p, _ := newStPool(t, kms, 4, nil) // never started: no refill goroutine
	dek := make([]byte, crypto.DEKSize)
	for i := range 3 {
		k, err := p.take(context.Background(), dek)
		if err != nil {
			t.Fatalf("take: %v", err)
		}
		checkPooledKey(t, kms, k, dek)
		if got := p.fallbacks.Load(); got != uint64(i+1) {
			t.Fatalf("fallbacks: got %d, want %d", got, i+1)
		}
	}
	if got := kms.prov.generate.Load(); got != 3 {
		t.Fatalf("GenerateDataKey calls: got %d, want 3", got)
	}
	if _, err := p.take(context.Background(), make([]byte, 16)); err == nil {
		t.Fatal("take with a 16-byte buffer: got no error")
	}
}

// TestPoolRefillBacksOff: a failing KMS is retried with backoff, one
// probe at a time however many refills may run (a probe per refiller
// would multiply the calls against a KMS that is down), and a take
// meanwhile fails with the KMS's error.
func TestPoolRefillBacksOff(t *testing.T) {
	for _, refillers := range []int{1, 4} {
		t.Run(fmt.Sprintf("refillers=%d", refillers), func(t *testing.T) {
			kms := newStKMS(t)
			kms.setEnabled(t, false)
			p, tl := newStPool(t, kms, 4, func(o *poolOptions) {
				o.MinBackoff = 20 * time.Millisecond
				o.MaxBackoff = 40 * time.Millisecond
				o.Refillers = refillers
			})
			tl.expectWarnings()
			p.start(context.Background())
			time.Sleep(300 * time.Millisecond)
			calls := kms.prov.generate.Load()
			// The first refills, then one probe per 20, 40, 40, ... ms:
			// about 8 probes in 300 ms.
			if calls < 2 || calls > int64(refillers)+12 {
				t.Fatalf("GenerateDataKey attempts in 300 ms with 20-40 ms backoff: got %d, want 2..%d", calls, refillers+12)
			}
			if got := len(tl.messages(slog.LevelWarn)); got < 2 {
				t.Fatalf("refill warnings: got %d, want >= 2", got)
			}
			if got := p.refillErrors.Load(); got < 2 {
				t.Fatalf("refill errors: got %d, want >= 2", got)
			}

			// Meanwhile a take fails with the KMS's error.
			_, err := p.take(context.Background(), make([]byte, crypto.DEKSize))
			if !errors.Is(err, ErrKeyDisabled) {
				t.Fatalf("take with the key disabled: got %v, want %v", err, ErrKeyDisabled)
			}

			kms.setEnabled(t, true)
			waitFor(t, "the pool to fill once the key is enabled", func() bool { return p.readyCount() == 4 })
		})
	}
}

func TestPoolTakeZeroesItsSlot(t *testing.T) {
	kms := newStKMS(t)
	// Not started: the test fills it by hand, and no refill races the check.
	p2, _ := newStPool(t, kms, 4, nil)
	for range 4 {
		k, plain, err := p2.generate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		p2.mu.Lock()
		parked := p2.parkLocked(k, plain)
		p2.mu.Unlock()
		crypto.Zero(plain)
		if !parked {
			t.Fatal("parkLocked: the pool refused a key")
		}
	}
	p2.mu.Lock()
	full := append([]byte(nil), p2.slab.mem[:4*crypto.DEKSize]...)
	p2.mu.Unlock()
	if bytes.Equal(full, make([]byte, len(full))) {
		t.Fatal("slab of a full pool is all zero")
	}
	dek := make([]byte, crypto.DEKSize)
	for range 4 {
		if _, err := p2.take(context.Background(), dek); err != nil {
			t.Fatal(err)
		}
	}
	p2.mu.Lock()
	empty := append([]byte(nil), p2.slab.mem...)
	p2.mu.Unlock()
	if !bytes.Equal(empty, make([]byte, len(empty))) {
		t.Fatal("slab of an emptied pool is not all zero")
	}
}

func TestPoolClose(t *testing.T) {
	kms := newStKMS(t)
	p, _ := newStPool(t, kms, 4, nil)
	p.start(context.Background())
	waitFor(t, "a full pool", func() bool { return p.readyCount() == 4 })
	if err := p.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := p.close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if got := p.readyCount(); got != 0 {
		t.Fatalf("ready after close: got %d, want 0", got)
	}
	if _, err := p.take(context.Background(), make([]byte, crypto.DEKSize)); err == nil {
		t.Fatal("take after close: got no error")
	}
	before := kms.prov.generate.Load()
	p.mu.Lock()
	p.target = 4
	p.topUpLocked() // what a take would do
	p.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	if got := kms.prov.generate.Load(); got != before {
		t.Fatalf("GenerateDataKey calls after close: got %d, want %d", got, before)
	}
}

func TestNewDEKPoolOptions(t *testing.T) {
	if _, err := newDEKPool(poolOptions{Size: 0}); err == nil {
		t.Fatal("size 0: got no error")
	}
}

// TestPoolRefillsConcurrently: a refill keeps Refillers GenerateDataKey
// calls in flight (a slow KMS fills the pool that many times faster) and
// never generates more keys than the pool holds.
func TestPoolRefillsConcurrently(t *testing.T) {
	for _, refillers := range []int{1, 4} {
		t.Run(fmt.Sprintf("refillers=%d", refillers), func(t *testing.T) {
			kms := newStKMS(t)
			kms.prov.generateDelay = 20 * time.Millisecond
			const size = 16
			p, _ := newStPool(t, kms, size, func(o *poolOptions) { o.Refillers = refillers })
			p.start(context.Background())
			waitFor(t, "a full pool", func() bool { return p.readyCount() == size })
			if got := kms.prov.maxGenerateInflight.Load(); got != int64(refillers) {
				t.Errorf("GenerateDataKey calls in flight at most: got %d, want %d", got, refillers)
			}
			// Drain below half: the refill brings it back to size exactly.
			dek := make([]byte, crypto.DEKSize)
			for range size/2 + 1 {
				if _, err := p.take(context.Background(), dek); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "the refill", func() bool { return p.readyCount() == size })
			time.Sleep(3 * kms.prov.generateDelay) // any extra call would land now
			if got, want := kms.prov.generate.Load(), int64(size+size/2+1); got != want {
				t.Errorf("GenerateDataKey calls: got %d, want %d (no key generated beyond the pool's size)", got, want)
			}
			if got := p.readyCount(); got != size {
				t.Errorf("ready keys: got %d, want %d", got, size)
			}
		})
	}
}

// TestPoolTargetGrowsWhenDrained: the pool aims for Start keys at first and
// doubles its target, up to Size, each time a take finds it empty; the
// refills under way then grow to the new target (not only to the keys
// missing when the refill began), and the pool never generates more keys
// than its target plus the keys taken. Every GenerateDataKey waits for a
// token, so the test decides when keys land.
func TestPoolTargetGrowsWhenDrained(t *testing.T) {
	kms := newStKMS(t)
	gate := make(chan struct{})
	kms.prov.generateGate = gate
	t.Cleanup(func() { close(gate) })
	// release lets n calls through the gate, and returns once they are
	// past it (their count updated).
	release := func(n int) {
		t.Helper()
		passed := kms.prov.gatePassed.Load()
		for i := range n {
			select {
			case gate <- struct{}{}:
			case <-time.After(10 * time.Second):
				t.Fatalf("GenerateDataKey calls: only %d of the %d expected came", i, n)
			}
		}
		waitFor(t, "the released calls", func() bool { return kms.prov.gatePassed.Load() == passed+int64(n) })
	}
	const start, size = 4, 16
	p, _ := newStPool(t, kms, size, func(o *poolOptions) { o.Start = start; o.Refillers = size })
	p.start(context.Background())
	release(start)
	waitFor(t, "the first fill", func() bool { return p.readyCount() == start })
	// settled: every refill under way waits at the gate, so no key can
	// land until the test releases one.
	settled := func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return int64(p.filling) == kms.prov.gateWaiting.Load()
	}
	dek := make([]byte, crypto.DEKSize)
	for _, want := range []int{8, 16, 16} {
		waitFor(t, "the refills to settle at the gate", settled)
		// Drain the pool: its refills wait at the gate, so no key lands.
		for n := p.readyCount(); n > 0; n-- {
			if _, err := p.take(context.Background(), dek); err != nil {
				t.Fatal(err)
			}
		}
		// This take finds it empty: it doubles the target, then waits
		// for a refill (or generates).
		done := make(chan error, 1)
		waits, fallbacks := p.waits.Load(), p.fallbacks.Load()
		go func() {
			_, err := p.take(context.Background(), make([]byte, crypto.DEKSize))
			done <- err
		}()
		waitFor(t, "the take on the empty pool", func() bool { return p.waits.Load() > waits || p.fallbacks.Load() > fallbacks })
		if got := p.currentTarget(); got != want {
			t.Fatalf("target after a take found the pool empty: got %d, want %d", got, want)
		}
		waitFor(t, fmt.Sprintf("%d refills under way", want), func() bool { return kms.prov.gateWaiting.Load() == int64(want) })
		release(want)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got, limit := kms.prov.generate.Load(), int64(p.taken.Load())+size; got > limit {
		t.Fatalf("GenerateDataKey calls: got %d, want at most %d (keys taken + the largest target)", got, limit)
	}
	if got := p.fallbacks.Load(); got != 0 {
		t.Fatalf("takes that generated their own key: got %d, want 0", got)
	}
}

// TestPoolEmptyTakeWaitsForRefill: a take that finds the pool empty while
// refills are under way gets the next key they land instead of calling
// the KMS itself; a take whose context ends or whose pool closes while it
// waits returns at once with that error.
func TestPoolEmptyTakeWaitsForRefill(t *testing.T) {
	tests := []struct {
		name    string
		end     func(p *dekPool, cancel context.CancelFunc, gate chan struct{})
		wantErr string
	}{
		{name: "a key lands", end: func(_ *dekPool, _ context.CancelFunc, gate chan struct{}) { gate <- struct{}{} }},
		{name: "context canceled", end: func(_ *dekPool, cancel context.CancelFunc, _ chan struct{}) { cancel() }, wantErr: "context canceled"},
		{name: "pool closed", end: func(p *dekPool, _ context.CancelFunc, _ chan struct{}) { _ = p.close() }, wantErr: "closed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kms := newStKMS(t)
			gate := make(chan struct{})
			kms.prov.generateGate = gate
			p, _ := newStPool(t, kms, 4, func(o *poolOptions) { o.Refillers = 4 })
			p.start(context.Background())
			waitFor(t, "4 refills under way", func() bool { return kms.prov.generateInflight.Load() == 4 })

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				k   pooledKey
				err error
			}
			got := make(chan result, 1)
			dek := make([]byte, crypto.DEKSize)
			go func() {
				k, err := p.take(ctx, dek)
				got <- result{k, err}
			}()
			waitFor(t, "the take to wait", func() bool { return p.waits.Load() == 1 })
			tc.end(p, cancel, gate)
			r := <-got
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Fatalf("take: got %v, want an error with %q", r.err, tc.wantErr)
				}
			} else {
				if r.err != nil {
					t.Fatalf("take: %v", r.err)
				}
				checkPooledKey(t, kms, r.k, dek)
			}
			if got := p.fallbacks.Load(); got != 0 {
				t.Fatalf("synchronous GenerateDataKey calls by takes: got %d, want 0", got)
			}
			close(gate)
		})
	}
}
