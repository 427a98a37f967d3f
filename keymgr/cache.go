package keymgr

// The DEK cache keeps plaintext data keys of recently opened files so that a
// second open of a file needs no KMS call. Keys live in one LockedSlab of
// MaxEntries x 32 bytes (mlock'ed, MADV_DONTDUMP, outside the Go heap); the
// bookkeeping (file ID -> slot, LRU order, expiry) lives in the Go heap in
// index-linked arrays, so a hit allocates nothing and holds no pointer into
// the slab.
//
// Sizes: 100,000 entries (the default) lock 3,203,072 bytes (3.2 MB rounded
// up to whole pages), well inside a typical 8 MiB RLIMIT_MEMLOCK; the Go-heap
// side costs about 40 bytes per entry plus the map.
//
// Expiry is counted from Put, not from the last access: a cached key is
// re-unwrapped at least once per TTL, so disabling the CMK (or revoking
// access) reaches every file within one TTL. A hit checks the expiry; Sweep
// removes every expired entry and is called periodically by the Manager.
//
// Invariant (inherited from LockedSlab): every slot not holding a live key
// is zero. Eviction, expiry, Drop, Purge and Close zero the slot.
//
// Invariant (what a key under a file ID is): the key cached under file ID
// X is X's own DEK, whatever cipher file claimed X. The cache is keyed by
// file ID alone, and a writer of the cipher directory can plant a file
// claiming a known ID (with the index deleted, it may be opened first), so
// this rests on three facts, none of them costing anything on a hit:
//   - a Cache serves one filesystem: the first Manager binds it to its
//     filesystem ID and a Manager of another filesystem is refused (bind),
//     so two filesystems' equal file IDs never meet here;
//   - the Manager puts a key under X only when it was generated for X or
//     unwrapped from a header whose FileID is X, under the encryption
//     context {filesystem ID, X} (Manager.unwrapFile): an EDK made for
//     another file or filesystem does not unwrap there;
//   - the provider is pinned (PinnedProvider): a header may only name keys
//     the user trusts, so the only EDKs that unwrap under {filesystem, X}
//     are the ones kmsfs made for X with those keys. A planted copy of X's
//     header yields X's own DEK; any other planted header yields an error
//     and caches nothing.

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// Cache defaults.
const (
	DefaultCacheEntries = 100000
	DefaultCacheTTL     = time.Hour
)

// noSlot marks the end of the LRU list and an unused link.
const noSlot = -1

// CacheOptions configures NewCache. Zero values take the defaults.
type CacheOptions struct {
	MaxEntries int              // 0: DefaultCacheEntries
	TTL        time.Duration    // 0: DefaultCacheTTL
	Now        func() time.Time // nil: time.Now
}

// CacheStats counts cache activity since NewCache.
type CacheStats struct {
	Entries, Capacity int
	LockedBytes       int
	Hits, Misses      uint64
	Evictions         uint64 // removed to make room (LRU)
	Expirations       uint64 // removed because their TTL passed
}

// Cache is a bounded LRU of plaintext DEKs in locked memory, keyed by file
// ID. It is safe for concurrent use.
type Cache struct {
	mu   sync.Mutex
	slab *LockedSlab
	ttl  time.Duration
	now  func() time.Time

	slots   map[crypto.FileID]int32
	ids     []crypto.FileID // slot -> file ID, valid when the slot is in use
	expires []int64         // slot -> expiry, Unix nanoseconds
	prev    []int32         // LRU links; head is the most recently used
	next    []int32
	head    int32
	tail    int32
	free    []int32 // stack of unused slots

	hits, misses, evictions, expirations uint64
	closed                               bool
	// fsID is the one filesystem whose keys the cache holds; "" until a
	// Manager binds it (bind).
	fsID string
}

// NewCache maps and locks the slab. The error wraps ErrMemlock when the
// memory cannot be locked.
func NewCache(o CacheOptions) (*Cache, error) {
	if o.MaxEntries < 0 {
		return nil, fmt.Errorf("DEK cache: max entries %d is negative", o.MaxEntries)
	}
	if o.TTL < 0 {
		return nil, fmt.Errorf("DEK cache: TTL %v is negative", o.TTL)
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultCacheEntries
	}
	if o.MaxEntries > 1<<30 {
		return nil, fmt.Errorf("DEK cache: max entries %d is too large", o.MaxEntries)
	}
	if o.TTL == 0 {
		o.TTL = DefaultCacheTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	slab, err := NewLockedSlab(o.MaxEntries, crypto.DEKSize)
	if err != nil {
		return nil, fmt.Errorf("DEK cache of %d entries: %w", o.MaxEntries, err)
	}
	n := o.MaxEntries
	c := &Cache{
		slab:    slab,
		ttl:     o.TTL,
		now:     o.Now,
		slots:   make(map[crypto.FileID]int32),
		ids:     make([]crypto.FileID, n),
		expires: make([]int64, n),
		prev:    make([]int32, n),
		next:    make([]int32, n),
		head:    noSlot,
		tail:    noSlot,
		free:    make([]int32, n),
	}
	// Pop from the end: slot 0 is used first.
	for i := range c.free {
		c.free[i] = int32(n - 1 - i)
		c.prev[i], c.next[i] = noSlot, noSlot
	}
	return c, nil
}

// Put stores a copy of dek (crypto.DEKSize bytes) for id, replacing any
// previous key and restarting its TTL. When the cache is full the least
// recently used key is evicted and its slot zeroed. After Close, Put does
// nothing. A dek of the wrong size is a caller bug and panics.
func (c *Cache) Put(id crypto.FileID, dek []byte) {
	if len(dek) != crypto.DEKSize {
		panic(fmt.Sprintf("keymgr: Cache.Put with a %d-byte DEK", len(dek)))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	now := c.now()
	i, ok := c.slots[id]
	if ok {
		c.unlink(i)
	} else {
		if len(c.free) == 0 {
			victim := c.tail
			c.remove(victim)
			c.evictions++
		}
		i = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
		c.slots[id] = i
		c.ids[i] = id
	}
	copy(c.slab.Slot(int(i)), dek)
	c.expires[i] = now.Add(c.ttl).UnixNano()
	c.pushFront(i)
}

// bind ties the cache to filesystem fsID: the first call sets it, a later
// one for the same filesystem is harmless, and one for another filesystem
// is refused (its file IDs would share the cache's keys).
func (c *Cache) bind(fsID string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.fsID {
	case "":
		c.fsID = fsID
	case fsID:
	default:
		return fmt.Errorf("the DEK cache holds keys of filesystem %s, not of filesystem %s: give each filesystem a cache of its own", c.fsID, fsID)
	}
	return nil
}

// With runs fn with the cached DEK of id under the cache's lock, and reports
// whether there was one (an expired key counts as absent and is removed).
// fn must not retain dek nor call back into the cache; it should be quick
// (building an AES key schedule is the intended use).
func (c *Cache) With(id crypto.FileID, fn func(dek []byte) error) (hit bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, nil
	}
	i, ok := c.slots[id]
	if !ok {
		c.misses++
		return false, nil
	}
	if c.now().UnixNano() >= c.expires[i] {
		c.remove(i)
		c.expirations++
		c.misses++
		return false, nil
	}
	c.hits++
	if c.head != i {
		c.unlink(i)
		c.pushFront(i)
	}
	return true, fn(c.slab.Slot(int(i)))
}

// Drop removes and zeroes the key of id, if cached.
func (c *Cache) Drop(id crypto.FileID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if i, ok := c.slots[id]; ok {
		c.remove(i)
	}
}

// Sweep removes and zeroes every expired key and returns how many it removed.
func (c *Cache) Sweep() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0
	}
	now := c.now().UnixNano()
	n := 0
	for i := c.head; i != noSlot; {
		nxt := c.next[i]
		if now >= c.expires[i] {
			c.remove(i)
			c.expirations++
			n++
		}
		i = nxt
	}
	return n
}

// Purge removes and zeroes every key. The cache stays usable.
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for c.head != noSlot {
		c.remove(c.head)
	}
}

// Len is the number of cached keys (expired ones not yet removed included).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.slots)
}

// LockedBytes is the size of the locked slab (whole pages), 0 after Close.
func (c *Cache) LockedBytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0
	}
	return c.slab.Bytes()
}

// Stats reports the cache's size and counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := CacheStats{
		Entries:     len(c.slots),
		Capacity:    len(c.ids),
		Hits:        c.hits,
		Misses:      c.misses,
		Evictions:   c.evictions,
		Expirations: c.expirations,
	}
	if !c.closed {
		s.LockedBytes = c.slab.Bytes()
	}
	return s
}

// Close zeroes every key and releases the locked memory. The cache then
// behaves as an empty cache that stores nothing. Calling Close twice is
// harmless.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	clear(c.slots)
	c.head, c.tail = noSlot, noSlot
	c.free = c.free[:0]
	if err := c.slab.Close(); err != nil {
		return fmt.Errorf("DEK cache: %w", err)
	}
	return nil
}

// remove unlinks slot i, zeroes it and returns it to the free list.
func (c *Cache) remove(i int32) {
	c.unlink(i)
	delete(c.slots, c.ids[i])
	c.ids[i] = crypto.FileID{}
	c.expires[i] = 0
	c.slab.Clear(int(i))
	c.free = append(c.free, i)
}

func (c *Cache) unlink(i int32) {
	p, n := c.prev[i], c.next[i]
	if p != noSlot {
		c.next[p] = n
	} else {
		c.head = n
	}
	if n != noSlot {
		c.prev[n] = p
	} else {
		c.tail = p
	}
	c.prev[i], c.next[i] = noSlot, noSlot
}

func (c *Cache) pushFront(i int32) {
	c.prev[i] = noSlot
	c.next[i] = c.head
	if c.head != noSlot {
		c.prev[c.head] = i
	}
	c.head = i
	if c.tail == noSlot {
		c.tail = i
	}
}

// slotOf reports the slab slot of id (tests).
func (c *Cache) slotOf(id crypto.FileID) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.slots[id]
	return int(i), ok
}

// slabCopy returns a copy of the whole slab (tests: zeroing checks).
func (c *Cache) slabCopy() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("DEK cache closed")
	}
	return append([]byte(nil), c.slab.mem...), nil
}
