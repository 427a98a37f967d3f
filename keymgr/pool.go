package keymgr

// The DEK pool keeps fresh (file ID, DEK, EDK) triples ready so that
// creat(2) does not wait on a KMS round trip: a background goroutine calls
// GenerateDataKey (with the encryption context of the file ID it drew) and
// parks the result. The DEKs wait in their own LockedSlab (Size x 32 bytes:
// two pages for the default 256); the EDKs and IDs are not secret and live
// in the Go heap.
//
// The pool aims for a target number of ready keys: Start at first (so a
// mount that never creates a file makes few calls), doubled up to Size each
// time a take finds the pool empty. Refill starts at start and whenever a
// take leaves fewer than target/2 keys, and keeps up to Refillers calls in
// flight: a remote KMS answers each GenerateDataKey after a network round
// trip of several milliseconds, so hiding it from a burst of creates takes
// (create rate x round trip) calls under way, about 30 for 3,000 creates/s
// and 10 ms (docs/performance.md measures it through a delaying proxy).
//
// A take that finds the pool empty while refills are under way waits for
// the next key to land (a fraction of a round trip) rather than adding a
// call of its own. With no refill under way, or while refills are failing,
// it generates synchronously: creates still work, just slower, and fail
// with the KMS's error if it is really down. A failing KMS is retried with
// exponential backoff (a warning per failure, never a spin).

import (
	"context"
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
	Refillers    int           // GenerateDataKey calls in flight while refilling; 0: 1
	MinBackoff   time.Duration // 0: poolMinBackoff
	MaxBackoff   time.Duration // 0: poolMaxBackoff
}

// dekPool is the pool; safe for concurrent use.
type dekPool struct {
	o poolOptions

	mu      sync.Mutex
	slab    *LockedSlab
	ready   []poolEntry
	free    []int      // unused slab slots
	filling int        // refills reserved and not yet deposited (each holds no slot yet)
	target  int        // ready keys aimed for: Start, doubled up to Size by empty takes
	failing bool       // the last refill failed: takes generate synchronously
	landed  *sync.Cond // on mu: a key was deposited, a refill ended, or the pool closed
	closed  bool
	started bool
	cancel  context.CancelFunc
	done    chan struct{}

	kick chan struct{} // capacity 1: "refill, please"

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
		o:      o,
		slab:   slab,
		ready:  make([]poolEntry, 0, o.Size),
		free:   make([]int, o.Size),
		kick:   make(chan struct{}, 1),
		target: o.Start,
	}
	p.landed = sync.NewCond(&p.mu)
	for i := range p.free {
		p.free[i] = o.Size - 1 - i
	}
	return p, nil
}

// start launches the refill goroutine, which fills the pool at once and
// runs until close (or until ctx ends). A second start does nothing.
func (p *dekPool) start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	ctx, p.cancel = context.WithCancel(ctx)
	p.done = make(chan struct{})
	go p.refillLoop(ctx)
	p.signal()
}

// signal asks the refill goroutine to top up, without blocking.
func (p *dekPool) signal() {
	select {
	case p.kick <- struct{}{}:
	default:
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
		p.signal()
		if p.filling > 0 && !p.failing {
			p.waitLanded(ctx)
		}
	}
	if p.closed {
		p.mu.Unlock()
		return pooledKey{}, fmt.Errorf("DEK pool: closed")
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
		low := len(p.ready) < p.target/2 || len(p.ready) == 0
		p.mu.Unlock()
		p.taken.Add(1)
		if low {
			p.signal()
		}
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

func (p *dekPool) refillLoop(ctx context.Context) {
	defer close(p.done)
	backoff := p.o.MinBackoff
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		for {
			err := p.fill(ctx)
			p.mu.Lock()
			p.failing = err != nil
			p.landed.Broadcast()
			p.mu.Unlock()
			if err == nil {
				backoff = p.o.MinBackoff
				break
			}
			if ctx.Err() != nil {
				return
			}
			p.refillErrors.Add(1)
			p.o.Logger.Warn("DEK pool refill failed; creates generate keys synchronously meanwhile",
				"key_arn", p.o.KeyARN, "retry_in", backoff, "err", err)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, p.o.MaxBackoff)
		}
	}
}

// fill tops the pool up with up to Refillers calls in flight and returns
// the first error (the other refillers stop at their next key).
func (p *dekPool) fill(ctx context.Context) error {
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
		failed   atomic.Bool
	)
	for range p.o.Refillers {
		wg.Go(func() {
			for !failed.Load() && p.reserve() {
				if err := p.refillOne(ctx); err != nil {
					failed.Store(true)
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// reserve claims the right to add one key: the keys waiting plus those
// being generated stay within the pool's size.
func (p *dekPool) reserve() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.ready)+p.filling >= p.target {
		return false
	}
	p.filling++
	return true
}

// refillOne generates the key a reserve claimed and parks it.
func (p *dekPool) refillOne(ctx context.Context) error {
	k, plain, err := p.generate(ctx)
	if err != nil {
		p.mu.Lock()
		p.filling--
		p.landed.Broadcast()
		p.mu.Unlock()
		return err
	}
	defer crypto.Zero(plain)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.filling--
	if p.closed || len(p.free) == 0 {
		p.landed.Broadcast()
		return nil
	}
	slot := p.free[len(p.free)-1]
	p.free = p.free[:len(p.free)-1]
	copy(p.slab.Slot(slot), plain)
	p.ready = append(p.ready, poolEntry{key: k, slot: slot})
	if p.filling == 0 {
		p.landed.Broadcast() // the waiters beyond this key generate their own
	} else {
		p.landed.Signal()
	}
	return nil
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

// close stops the refill goroutine and zeroes every waiting key.
func (p *dekPool) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.landed.Broadcast()
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ready = nil
	p.free = nil
	if err := p.slab.Close(); err != nil {
		return fmt.Errorf("DEK pool: %w", err)
	}
	return nil
}
