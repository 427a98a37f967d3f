package keymgr

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
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
// generateInflight/maxGenerateInflight count the GenerateDataKey calls
// under way.
type stCountingProvider struct {
	Provider
	generate, decrypt atomic.Int64
	decryptGate       chan struct{}
	decryptEntered    chan struct{}

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

// stTimers is a manual clock for the pool's backoff (poolOptions.afterFunc):
// each timer the pool schedules arrives on scheduled and runs only when the
// test fires it.
type stTimers struct{ scheduled chan *stTimer }

type stTimer struct {
	d time.Duration
	f func()

	mu             sync.Mutex
	fired, stopped bool
}

func newStTimers() *stTimers { return &stTimers{scheduled: make(chan *stTimer, 64)} }

// afterFunc is called with the pool's lock held: it must not block.
func (ts *stTimers) afterFunc(d time.Duration, f func()) poolTimer {
	tm := &stTimer{d: d, f: f}
	ts.scheduled <- tm
	return tm
}

// next waits for the pool to schedule a timer.
func (ts *stTimers) next(t *testing.T) *stTimer {
	t.Helper()
	select {
	case tm := <-ts.scheduled:
		return tm
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the pool to schedule a backoff timer")
		return nil
	}
}

// none checks no timer is scheduled and not yet taken by next.
func (ts *stTimers) none(t *testing.T, when string) {
	t.Helper()
	if n := len(ts.scheduled); n != 0 {
		t.Fatalf("%s: %d backoff timers scheduled, want none", when, n)
	}
}

func (tm *stTimer) Stop() bool {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if tm.fired || tm.stopped {
		return false
	}
	tm.stopped = true
	return true
}

// fire runs the timer's function as its expiry would.
func (tm *stTimer) fire(t *testing.T) {
	t.Helper()
	tm.mu.Lock()
	if tm.fired || tm.stopped {
		tm.mu.Unlock()
		t.Fatalf("fire a timer already fired (%v) or stopped (%v)", tm.fired, tm.stopped)
	}
	tm.fired = true
	tm.mu.Unlock()
	tm.f()
}

// poolState reads the fields the backoff tests check, under the lock.
func poolState(p *dekPool) (filling int, failing bool, backoff time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.filling, p.failing, p.backoff
}

// TestPoolRefillBacksOff: a failing KMS is retried with backoff doubling
// from MinBackoff up to MaxBackoff, one probe at a time however many
// refills may run (a probe per refiller would multiply the calls against a
// KMS that is down), with one warning per backoff; a take meanwhile fails
// with the KMS's error, and the first probe that succeeds fills the pool
// and resets the backoff. The backoff timers run on a manual clock, so
// every call is counted exactly.
func TestPoolRefillBacksOff(t *testing.T) {
	for _, refillers := range []int{1, 4} {
		t.Run(fmt.Sprintf("refillers=%d", refillers), func(t *testing.T) {
			const size = 4
			kms := newStKMS(t)
			kms.setEnabled(t, false)
			timers := newStTimers()
			p, tl := newStPool(t, kms, size, func(o *poolOptions) {
				o.MinBackoff = time.Second
				o.MaxBackoff = 4 * time.Second
				o.Refillers = refillers
				o.afterFunc = timers.afterFunc
			})
			tl.expectWarnings()
			p.start(context.Background())

			// The first refills all fail; the first failure schedules the
			// backoff, the others add no timer and no warning.
			tm := timers.next(t)
			waitFor(t, "the first refills to end", func() bool { filling, _, _ := poolState(p); return filling == 0 })
			timers.none(t, "after the first refills")
			calls := int64(refillers)
			if got := kms.prov.generate.Load(); got != calls {
				t.Fatalf("GenerateDataKey calls by the first refills: got %d, want %d", got, calls)
			}
			if got := p.refillErrors.Load(); got != uint64(refillers) {
				t.Fatalf("refill errors: got %d, want %d", got, refillers)
			}
			warnings := 1
			if got := len(tl.messages(slog.LevelWarn)); got != warnings {
				t.Fatalf("refill warnings: got %d, want %d", got, warnings)
			}

			for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
				if tm.d != want {
					t.Fatalf("backoff %d: got %v, want %v", i, tm.d, want)
				}
				tm.fire(t) // one probe, which fails and schedules the next backoff
				tm = timers.next(t)
				calls++
				warnings++
				if filling, failing, _ := poolState(p); filling != 0 || !failing {
					t.Fatalf("after probe %d: %d refills under way, failing %v; want 0, true", i, filling, failing)
				}
				timers.none(t, fmt.Sprintf("after probe %d", i))
				if got := kms.prov.generate.Load(); got != calls {
					t.Fatalf("GenerateDataKey calls after probe %d: got %d, want %d (one per probe)", i, got, calls)
				}
				if got := len(tl.messages(slog.LevelWarn)); got != warnings {
					t.Fatalf("refill warnings after probe %d: got %d, want %d", i, got, warnings)
				}
			}

			// Meanwhile a take generates synchronously and fails with the
			// KMS's error; it starts no refill and no timer.
			_, err := p.take(context.Background(), make([]byte, crypto.DEKSize))
			if !errors.Is(err, ErrKeyDisabled) {
				t.Fatalf("take with the key disabled: got %v, want %v", err, ErrKeyDisabled)
			}
			calls++
			if got := kms.prov.generate.Load(); got != calls {
				t.Fatalf("GenerateDataKey calls after a take: got %d, want %d", got, calls)
			}
			if got := p.fallbacks.Load(); got != 1 {
				t.Fatalf("synchronous fallbacks: got %d, want 1", got)
			}
			timers.none(t, "after the take")

			kms.setEnabled(t, true)
			tm.fire(t)
			waitFor(t, "the pool to fill once the key is enabled", func() bool { return p.readyCount() == size })
			if _, failing, backoff := poolState(p); failing || backoff != time.Second {
				t.Fatalf("after a probe succeeded: failing %v, backoff %v; want false, %v", failing, backoff, time.Second)
			}
			timers.none(t, "after the pool filled")
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

// TestPoolClose: close zeroes and drops the waiting keys, ends a refill
// under way (its key is not parked), is idempotent, and afterwards no take
// or top-up reaches the KMS.
func TestPoolClose(t *testing.T) {
	kms := newStKMS(t)
	gate := make(chan struct{})
	kms.prov.generateGate = gate
	p, _ := newStPool(t, kms, 4, nil)
	p.start(context.Background())
	for range 4 {
		gate <- struct{}{}
	}
	waitFor(t, "a full pool", func() bool { return p.readyCount() == 4 })
	// Takes leaving 3 and 2 of 4 start no refill; the third leaves 1,
	// below half: a refill (one refiller) starts and waits at the gate.
	dek := make([]byte, crypto.DEKSize)
	for range 3 {
		if _, err := p.take(context.Background(), dek); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "a refill at the gate", func() bool { return kms.prov.gateWaiting.Load() == 1 })
	if err := p.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	// close waited for the refill: it is past the gate (canceled) and
	// parked nothing.
	if got := kms.prov.gateWaiting.Load(); got != 0 {
		t.Fatalf("GenerateDataKey calls still waiting after close: %d", got)
	}
	if err := p.close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if got := p.readyCount(); got != 0 {
		t.Fatalf("ready after close: got %d, want 0", got)
	}
	before := kms.prov.generate.Load()
	if _, err := p.take(context.Background(), dek); !errors.Is(err, errPoolClosed) {
		t.Fatalf("take after close: got %v, want %v", err, errPoolClosed)
	}
	p.mu.Lock()
	p.target = 4
	p.topUpLocked() // what a take would do
	filling := p.filling
	p.mu.Unlock()
	if filling != 0 {
		t.Fatalf("refills started after close: %d", filling)
	}
	p.refills.Wait() // nothing to wait for; any refill would have counted its call by now
	if got := kms.prov.generate.Load(); got != before {
		t.Fatalf("GenerateDataKey calls after close: got %d, want %d", got, before)
	}
}

// TestNewDEKPoolOptions: a pool needs a positive size; every other option
// has a default, and a Start outside 1..Size means Size.
func TestNewDEKPoolOptions(t *testing.T) {
	minute := poolMaxBackoff
	tests := []struct {
		name string
		o    poolOptions
		// want: the options as the pool keeps them (zero: an error)
		wantStart, wantRefillers int
		wantMin, wantMax         time.Duration
	}{
		{name: "size 0", o: poolOptions{Size: 0}},
		{name: "negative size", o: poolOptions{Size: -1, Start: 1}},
		{name: "defaults", o: poolOptions{Size: 8},
			wantStart: 8, wantRefillers: 1, wantMin: poolMinBackoff, wantMax: minute},
		{name: "all set", o: poolOptions{Size: 8, Start: 2, Refillers: 3, MinBackoff: time.Millisecond, MaxBackoff: time.Second},
			wantStart: 2, wantRefillers: 3, wantMin: time.Millisecond, wantMax: time.Second},
		{name: "start above size", o: poolOptions{Size: 8, Start: 9},
			wantStart: 8, wantRefillers: 1, wantMin: poolMinBackoff, wantMax: minute},
		{name: "negative start and refillers", o: poolOptions{Size: 8, Start: -1, Refillers: -1},
			wantStart: 8, wantRefillers: 1, wantMin: poolMinBackoff, wantMax: minute},
		{name: "max below min", o: poolOptions{Size: 1, MinBackoff: 2 * time.Minute, MaxBackoff: time.Second},
			wantStart: 1, wantRefillers: 1, wantMin: 2 * time.Minute, wantMax: 2 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := newDEKPool(tc.o)
			if tc.wantStart == 0 {
				if err == nil {
					_ = p.close()
					t.Fatalf("newDEKPool(%+v): got no error, want one", tc.o)
				}
				return
			}
			if err != nil {
				t.Fatalf("newDEKPool(%+v): %v", tc.o, err)
			}
			defer p.close()
			if got := p.currentTarget(); got != tc.wantStart {
				t.Errorf("first target: got %d, want %d", got, tc.wantStart)
			}
			if got := p.o.Refillers; got != tc.wantRefillers {
				t.Errorf("refillers: got %d, want %d", got, tc.wantRefillers)
			}
			if p.o.MinBackoff != tc.wantMin || p.o.MaxBackoff != tc.wantMax {
				t.Errorf("backoff: got %v..%v, want %v..%v", p.o.MinBackoff, p.o.MaxBackoff, tc.wantMin, tc.wantMax)
			}
			if p.o.Counters == nil || p.o.afterFunc == nil {
				t.Errorf("counters or timer left nil")
			}
			if got := len(p.free); got != tc.o.Size {
				t.Errorf("free slots: got %d, want %d", got, tc.o.Size)
			}
		})
	}
}

// TestPoolRefillsConcurrently: a refill keeps Refillers GenerateDataKey
// calls in flight (a slow KMS fills the pool that many times faster) and
// never generates more keys than the pool holds.
func TestPoolRefillsConcurrently(t *testing.T) {
	for _, refillers := range []int{1, 4} {
		t.Run(fmt.Sprintf("refillers=%d", refillers), func(t *testing.T) {
			kms := newStKMS(t)
			gate := make(chan struct{})
			kms.prov.generateGate = gate
			const size = 16
			p, _ := newStPool(t, kms, size, func(o *poolOptions) { o.Refillers = refillers })
			p.start(context.Background())
			// Every call waits at the gate: the pool has started all it
			// will start before any lands.
			waitFor(t, "the refills at the gate", func() bool { return kms.prov.gateWaiting.Load() == int64(refillers) })
			p.mu.Lock()
			filling := p.filling
			p.mu.Unlock()
			if filling != refillers {
				t.Errorf("refills under way: got %d, want %d", filling, refillers)
			}
			close(gate)
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
			// Full with no call under way: nothing can start another
			// before the next take, so the count is final.
			waitFor(t, "the refill", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				return len(p.ready) == size && p.filling == 0
			})
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
		wantErr error
	}{
		{name: "a key lands", end: func(_ *dekPool, _ context.CancelFunc, gate chan struct{}) { gate <- struct{}{} }},
		{name: "context canceled", end: func(_ *dekPool, cancel context.CancelFunc, _ chan struct{}) { cancel() }, wantErr: context.Canceled},
		{name: "pool closed", end: func(p *dekPool, _ context.CancelFunc, _ chan struct{}) { _ = p.close() }, wantErr: errPoolClosed},
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
			if tc.wantErr != nil {
				if !errors.Is(r.err, tc.wantErr) {
					t.Fatalf("take: got %v, want %v", r.err, tc.wantErr)
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
