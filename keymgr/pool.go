package keymgr

// The DEK pool keeps fresh (file ID, DEK, EDK) triples ready so that
// creat(2) does not wait on a KMS round trip: background goroutines call
// GenerateDataKey (with the encryption context of the file ID each drew)
// and park the results. The DEKs wait in their own LockedSlab (Size x 32
// bytes: two pages for the default 256); the EDKs and IDs are not secret
// and live in the Go heap.
//
// The pool aims for a target number of ready keys: Start at first (so a
// mount that never creates a file makes few calls), doubled up to Size each
// time a take finds the pool empty. Once the keys ready plus those under
// way fall below half the target, refill calls start, up to Refillers at
// once, and each refill that lands a key starts the next until the target
// is reached. A remote KMS answers each GenerateDataKey after a network
// round trip of several milliseconds, so hiding it from a burst of creates
// takes (create rate x round trip) calls under way: about 30 for 3,000
// creates/s and 10 ms (docs/performance.md measures it through a delaying
// proxy).
//
// A take that finds the pool empty while refills are under way waits for
// the next key to land (a fraction of a round trip) rather than adding a
// call of its own. With no refill under way, or while refills are failing,
// it generates synchronously: creates still work, just slower, and fail
// with the KMS's error if it is really down. A failed refill backs off
// exponentially (one warning per backoff, never a spin); after the backoff
// a single refill probes the KMS, and a success lets them all run again.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// DefaultPoolSize is the most ready keys the pool aims for, after bursts of
// creates have grown its target.
const DefaultPoolSize = 256

// DefaultPoolStart is the pool's first target.
const DefaultPoolStart = 32

// DefaultPoolRefillers is how many GenerateDataKey calls a refill keeps in
// flight at most (never more than the keys missing).
const DefaultPoolRefillers = 64

// Backoff bounds for a failing refill.
const (
	poolMinBackoff = time.Second
	poolMaxBackoff = time.Minute
)

// errPoolClosed is what a take on a closed pool returns.
var errPoolClosed = errors.New("DEK pool: closed")

// poolTimer is the backoff timer's one method the pool uses.
type poolTimer interface{ Stop() bool }

// realAfterFunc is time.AfterFunc as a poolTimer.
func realAfterFunc(d time.Duration, f func()) poolTimer { return time.AfterFunc(d, f) }

// pooledKey is a fresh key without its DEK (Take copies the DEK out to the
// caller's buffer).
type pooledKey struct {
	ID         crypto.FileID
	EDK        []byte
	KeyARN     string
	KeyVersion uint32
}

type poolEntry struct {
	key  pooledKey
	slot int
}

// kmsCounters counts the provider calls the Manager makes.
type kmsCounters struct {
	generate, decrypt, errors atomic.Uint64
}

type poolOptions struct {
	Size         int // slab slots: the largest target
	Start        int // first target, 1..Size; 0: Size
	FilesystemID string
	KeyARN       string
	Provider     Provider
	Rand         io.Reader // must be safe for concurrent use
	Logger       *slog.Logger
	Counters     *kmsCounters
	Refillers    int           // most GenerateDataKey calls in flight while refilling; 0: 1
	MinBackoff   time.Duration // 0: poolMinBackoff
	MaxBackoff   time.Duration // 0: poolMaxBackoff
	// afterFunc schedules the backoff retry (nil: time.AfterFunc); tests
	// put a manual clock here to fire it when they decide.
	afterFunc func(time.Duration, func()) poolTimer
}

// dekPool is the pool; safe for concurrent use.
type dekPool struct {
	o poolOptions

	mu      sync.Mutex
	slab    *LockedSlab
	ready   []poolEntry
	free    []int // unused slab slots
	filling int   // refill calls under way (each holds no slot yet)
	target  int   // ready keys aimed for: Start, doubled up to Size by empty takes
	// refilling: a refill cycle runs, from when fewer than half the target
	// are ready or under way until the target is.
	refilling bool
	landed    *sync.Cond // on mu: a key landed, a refill ended, or the pool closed
	closed    bool
	started   bool
	ctx       context.Context // the refills'; ends at close
	cancel    context.CancelFunc
	refills   sync.WaitGroup // refill goroutines and the backoff timer's
	// failing: the last refill failed; until one succeeds, takes generate
	// synchronously and at most one refill (a probe) runs at a time.
	// backoff is the wait before the next probe; retry, while set, waits it.
	failing bool
	backoff time.Duration
	retry   poolTimer

	generated, taken, fallbacks, waits, refillErrors atomic.Uint64
}

func newDEKPool(o poolOptions) (*dekPool, error) {
	if o.Size <= 0 {
		return nil, fmt.Errorf("DEK pool: size %d must be positive", o.Size)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = poolMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(poolMaxBackoff, o.MinBackoff)
	}
	if o.Counters == nil {
		o.Counters = new(kmsCounters)
	}
	if o.afterFunc == nil {
		o.afterFunc = realAfterFunc
	}
	if o.Refillers <= 0 {
		o.Refillers = 1
	}
	if o.Start <= 0 || o.Start > o.Size {
		o.Start = o.Size
	}
	slab, err := NewLockedSlab(o.Size, crypto.DEKSize)
	if err != nil {
		return nil, fmt.Errorf("DEK pool of %d keys: %w", o.Size, err)
	}
	p := &dekPool{
		o:       o,
		slab:    slab,
		ready:   make([]poolEntry, 0, o.Size),
		free:    make([]int, o.Size),
		target:  o.Start,
		backoff: o.MinBackoff,
	}
	p.landed = sync.NewCond(&p.mu)
	for i := range p.free {
		p.free[i] = o.Size - 1 - i
	}
	return p, nil
}

// start fills the pool in the background, until close or until ctx ends.
// A second start does nothing.
func (p *dekPool) start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	p.ctx, p.cancel = context.WithCancel(ctx)
	p.topUpLocked()
}

// topUpLocked, with p.mu held, starts refill calls while a refill cycle
// runs (see refilling), keys are missing from the target and fewer than
// Refillers calls (one while failing) are under way; none before start,
// after close, or while backing off.
func (p *dekPool) topUpLocked() {
	if !p.started || p.closed || p.retry != nil || p.ctx.Err() != nil {
		return
	}
	have := len(p.ready) + p.filling
	switch {
	case have >= p.target:
		p.refilling = false
		return
	case have < (p.target+1)/2:
		p.refilling = true
	}
	if !p.refilling {
		return // a few keys taken from a full pool: wait until half are gone
	}
	limit := p.o.Refillers
	if p.failing {
		limit = 1
	}
	for p.filling < limit && len(p.ready)+p.filling < p.target {
		p.filling++
		p.refills.Add(1)
		go p.refill()
	}
}

// take returns a fresh key and copies its DEK into dek (DEKSize bytes),
// which the caller must zero. A warm pool answers without a KMS call. An
// empty one doubles its target, then waits for a refill under way to land
// a key, or generates synchronously when none is (see the file comment).
func (p *dekPool) take(ctx context.Context, dek []byte) (pooledKey, error) {
	if len(dek) != crypto.DEKSize {
		return pooledKey{}, fmt.Errorf("DEK pool: buffer of %d bytes, want %d", len(dek), crypto.DEKSize)
	}
	p.mu.Lock()
	if len(p.ready) == 0 && !p.closed {
		p.target = min(2*p.target, p.o.Size)
		p.refilling = true
		p.topUpLocked()
		if p.filling > 0 && !p.failing {
			p.waitLanded(ctx)
		}
	}
	if p.closed {
		p.mu.Unlock()
		return pooledKey{}, errPoolClosed
	}
	if err := ctx.Err(); err != nil {
		p.mu.Unlock()
		return pooledKey{}, fmt.Errorf("DEK pool: %w", err)
	}
	if n := len(p.ready); n > 0 {
		e := p.ready[n-1]
		p.ready[n-1] = poolEntry{}
		p.ready = p.ready[:n-1]
		copy(dek, p.slab.Slot(e.slot))
		p.slab.Clear(e.slot)
		p.free = append(p.free, e.slot)
		p.topUpLocked()
		p.mu.Unlock()
		p.taken.Add(1)
		return e.key, nil
	}
	p.mu.Unlock()

	p.fallbacks.Add(1)
	k, plain, err := p.generate(ctx)
	if err != nil {
		return pooledKey{}, err
	}
	copy(dek, plain)
	crypto.Zero(plain)
	p.taken.Add(1)
	return k, nil
}

// waitLanded waits, with p.mu held, until a key is ready, no refill is
// under way any more, refills fail, the pool closes or ctx ends.
func (p *dekPool) waitLanded(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.landed.Broadcast()
	})
	defer stop()
	p.waits.Add(1)
	for len(p.ready) == 0 && p.filling > 0 && !p.failing && !p.closed && ctx.Err() == nil {
		p.landed.Wait()
	}
}

// generate draws a file ID and asks the KMS for a data key bound to it.
// The caller must crypto.Zero the returned plaintext DEK.
func (p *dekPool) generate(ctx context.Context) (pooledKey, []byte, error) {
	id, err := crypto.NewFileID(p.o.Rand)
	if err != nil {
		return pooledKey{}, nil, fmt.Errorf("new file ID: %w", err)
	}
	p.o.Counters.generate.Add(1)
	dk, err := p.o.Provider.GenerateDataKey(ctx, p.o.KeyARN, FileContext(p.o.FilesystemID, id))
	if err != nil {
		p.o.Counters.errors.Add(1)
		return pooledKey{}, nil, fmt.Errorf("generate data key for file %s with %s: %w", id, p.o.KeyARN, err)
	}
	if len(dk.Plaintext) != crypto.DEKSize {
		crypto.Zero(dk.Plaintext)
		return pooledKey{}, nil, fmt.Errorf("generate data key for file %s with %s: provider %s returned a %d-byte key, want %d",
			id, p.o.KeyARN, p.o.Provider.Name(), len(dk.Plaintext), crypto.DEKSize)
	}
	if len(dk.Ciphertext) == 0 {
		crypto.Zero(dk.Plaintext)
		return pooledKey{}, nil, fmt.Errorf("generate data key for file %s with %s: provider %s returned an empty wrapped key",
			id, p.o.KeyARN, p.o.Provider.Name())
	}
	arn := dk.KeyARN
	if arn == "" {
		arn = p.o.KeyARN
	}
	p.generated.Add(1)
	return pooledKey{ID: id, EDK: dk.Ciphertext, KeyARN: arn, KeyVersion: dk.KeyVersion}, dk.Plaintext, nil
}

// refill generates one key for the pool (topUpLocked counted it in
// filling), parks it, and tops up again; a failure starts the backoff.
func (p *dekPool) refill() {
	defer p.refills.Done()
	k, plain, err := p.generate(p.ctx)
	defer crypto.Zero(plain)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.filling--
	defer p.landed.Broadcast() // waiters re-check: a key, or no refill left
	if err != nil {
		if p.closed || p.ctx.Err() != nil {
			return
		}
		p.refillErrors.Add(1)
		p.failing = true
		if p.retry == nil {
			p.o.Logger.Warn("DEK pool refill failed; creates generate keys synchronously meanwhile",
				"key_arn", p.o.KeyARN, "retry_in", p.backoff, "err", err)
			p.refills.Add(1)
			p.retry = p.o.afterFunc(p.backoff, func() {
				defer p.refills.Done()
				p.mu.Lock()
				defer p.mu.Unlock()
				p.retry = nil
				p.topUpLocked()
			})
			p.backoff = min(2*p.backoff, p.o.MaxBackoff)
		}
		return
	}
	p.failing = false
	p.backoff = p.o.MinBackoff
	if p.parkLocked(k, plain) {
		p.topUpLocked()
	}
}

// parkLocked, with p.mu held, copies a generated key into a free slot and
// queues it; false (the key is dropped) when the pool is closed or full.
func (p *dekPool) parkLocked(k pooledKey, plain []byte) bool {
	if p.closed || len(p.free) == 0 {
		return false
	}
	slot := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	copy(p.slab.Slot(slot), plain)
	p.ready = append(p.ready, poolEntry{key: k, slot: slot})
	return true
}

// currentTarget reports how many ready keys the pool aims for now.
func (p *dekPool) currentTarget() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// readyCount reports how many keys are waiting.
func (p *dekPool) readyCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// close stops the refills and zeroes every waiting key.
func (p *dekPool) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.landed.Broadcast()
	if p.cancel != nil {
		p.cancel()
	}
	if p.retry != nil && p.retry.Stop() {
		p.retry = nil
		p.refills.Done() // its func will not run
	}
	p.mu.Unlock()
	p.refills.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ready = nil
	p.free = nil
	if err := p.slab.Close(); err != nil {
		return fmt.Errorf("DEK pool: %w", err)
	}
	return nil
}
