package keymgr

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// stClock is a settable clock for TTL tests.
type stClock struct {
	mu  sync.Mutex
	now time.Time
}

func newStClock() *stClock {
	return &stClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *stClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func stID(n int) crypto.FileID {
	var id crypto.FileID
	id[0] = 0xf1
	id[14] = byte(n >> 8)
	id[15] = byte(n)
	return id
}

// stDEK is a recognisable non-zero key for id n.
func stDEK(n int) []byte {
	k := make([]byte, crypto.DEKSize)
	for i := range k {
		k[i] = byte(n) ^ byte(i) ^ 0xa5
	}
	k[0] = 1 // never all zero
	return k
}

func newStCache(t *testing.T, o CacheOptions) *Cache {
	t.Helper()
	c, err := NewCache(o)
	if err != nil {
		t.Fatalf("NewCache(%+v): %v", o, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// stCachedKey returns a copy of the cached key of id, or nil on a miss.
func stCachedKey(t *testing.T, c *Cache, id crypto.FileID) []byte {
	t.Helper()
	var got []byte
	hit, err := c.With(id, func(dek []byte) error {
		got = append([]byte(nil), dek...)
		return nil
	})
	if err != nil {
		t.Fatalf("With(%s): %v", id, err)
	}
	if hit != (got != nil) {
		t.Fatalf("With(%s): hit %v but fn called %v", id, hit, got != nil)
	}
	return got
}

func TestCacheLRU(t *testing.T) {
	// Ops: "p N" put key N, "g N" get key N (touch), "d N" drop, "x" purge.
	tests := []struct {
		name     string
		ops      []string
		present  []int
		absent   []int
		wantLen  int
		evictedN uint64
	}{
		{name: "fill", ops: []string{"p1", "p2", "p3"}, present: []int{1, 2, 3}, wantLen: 3},
		{name: "evict oldest", ops: []string{"p1", "p2", "p3", "p4"}, present: []int{2, 3, 4}, absent: []int{1}, wantLen: 3, evictedN: 1},
		{name: "get protects", ops: []string{"p1", "p2", "p3", "g1", "p4"}, present: []int{1, 3, 4}, absent: []int{2}, wantLen: 3, evictedN: 1},
		{name: "re-put protects", ops: []string{"p1", "p2", "p3", "p1", "p4", "p5"}, present: []int{1, 4, 5}, absent: []int{2, 3}, wantLen: 3, evictedN: 2},
		{name: "drop frees a slot", ops: []string{"p1", "p2", "p3", "d2", "p4"}, present: []int{1, 3, 4}, absent: []int{2}, wantLen: 3},
		{name: "drop absent", ops: []string{"p1", "d9"}, present: []int{1}, absent: []int{9}, wantLen: 1},
		{name: "purge", ops: []string{"p1", "p2", "x"}, absent: []int{1, 2}, wantLen: 0},
		{name: "purge then reuse", ops: []string{"p1", "p2", "p3", "x", "p4", "p5", "p6", "p7"}, present: []int{5, 6, 7}, absent: []int{1, 2, 3, 4}, wantLen: 3, evictedN: 1},
		{name: "evict many", ops: []string{"p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"}, present: []int{6, 7, 8}, absent: []int{1, 2, 3, 4, 5}, wantLen: 3, evictedN: 5},
		{name: "get miss does not disturb", ops: []string{"p1", "p2", "p3", "g9", "p4"}, present: []int{2, 3, 4}, absent: []int{1}, wantLen: 3, evictedN: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newStCache(t, CacheOptions{MaxEntries: 3, TTL: time.Hour})
			for _, op := range tt.ops {
				n := 0
				if len(op) > 1 {
					n = int(op[1] - '0')
				}
				switch op[0] {
				case 'p':
					c.Put(stID(n), stDEK(n))
				case 'g':
					_ = stCachedKey(t, c, stID(n))
				case 'd':
					c.Drop(stID(n))
				case 'x':
					c.Purge()
				}
			}
			// Check length and evictions before the lookups below touch the LRU.
			if got := c.Len(); got != tt.wantLen {
				t.Errorf("Len() = %d, want %d", got, tt.wantLen)
			}
			if got := c.Stats().Evictions; got != tt.evictedN {
				t.Errorf("evictions: got %d, want %d", got, tt.evictedN)
			}
			for _, n := range tt.present {
				if got := stCachedKey(t, c, stID(n)); !bytes.Equal(got, stDEK(n)) {
					t.Errorf("key %d: got %x, want %x", n, got, stDEK(n))
				}
			}
			for _, n := range tt.absent {
				if got := stCachedKey(t, c, stID(n)); got != nil {
					t.Errorf("key %d: got %x, want a miss", n, got)
				}
			}
		})
	}
}

func TestCacheTTL(t *testing.T) {
	const ttl = 10 * time.Minute
	tests := []struct {
		name    string
		touchAt time.Duration // a hit at this age (0: none)
		checkAt time.Duration
		wantHit bool
	}{
		{name: "fresh", checkAt: 0, wantHit: true},
		{name: "just before expiry", checkAt: ttl - time.Nanosecond, wantHit: true},
		{name: "at expiry", checkAt: ttl, wantHit: false},
		{name: "long after", checkAt: 5 * ttl, wantHit: false},
		{name: "access does not extend", touchAt: ttl - time.Minute, checkAt: ttl + time.Minute, wantHit: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newStClock()
			c := newStCache(t, CacheOptions{MaxEntries: 4, TTL: ttl, Now: clk.Now})
			id := stID(1)
			c.Put(id, stDEK(1))
			slot, _ := c.slotOf(id)
			if tt.touchAt > 0 {
				clk.Advance(tt.touchAt)
				if stCachedKey(t, c, id) == nil {
					t.Fatalf("miss at age %v, want a hit", tt.touchAt)
				}
				clk.Advance(tt.checkAt - tt.touchAt)
			} else {
				clk.Advance(tt.checkAt)
			}
			got := stCachedKey(t, c, id)
			if (got != nil) != tt.wantHit {
				t.Fatalf("hit at age %v: got %v, want %v", tt.checkAt, got != nil, tt.wantHit)
			}
			if !tt.wantHit {
				if c.Len() != 0 {
					t.Errorf("Len() after expiry = %d, want 0", c.Len())
				}
				stAssertSlotZero(t, c, slot)
				if got := c.Stats().Expirations; got != 1 {
					t.Errorf("expirations: got %d, want 1", got)
				}
			}
		})
	}
}

func TestCachePutRestartsTTL(t *testing.T) {
	clk := newStClock()
	c := newStCache(t, CacheOptions{MaxEntries: 4, TTL: time.Minute, Now: clk.Now})
	id := stID(1)
	c.Put(id, stDEK(1))
	clk.Advance(50 * time.Second)
	c.Put(id, stDEK(2))
	clk.Advance(50 * time.Second)
	if got := stCachedKey(t, c, id); !bytes.Equal(got, stDEK(2)) {
		t.Fatalf("got %x, want the replaced key %x", got, stDEK(2))
	}
	if got := c.Len(); got != 1 {
		t.Fatalf("Len() = %d, want 1", got)
	}
}

func TestCacheSweep(t *testing.T) {
	clk := newStClock()
	c := newStCache(t, CacheOptions{MaxEntries: 8, TTL: time.Minute, Now: clk.Now})
	for n := 1; n <= 3; n++ {
		c.Put(stID(n), stDEK(n))
	}
	clk.Advance(30 * time.Second)
	for n := 4; n <= 5; n++ {
		c.Put(stID(n), stDEK(n))
	}
	_ = stCachedKey(t, c, stID(1)) // the oldest is the most recently used: order must not matter
	clk.Advance(40 * time.Second)
	if got := c.Sweep(); got != 3 {
		t.Fatalf("Sweep() = %d, want 3", got)
	}
	if got := c.Len(); got != 2 {
		t.Fatalf("Len() = %d, want 2", got)
	}
	mem, err := c.slabCopy()
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 3; n++ {
		if bytes.Contains(mem, stDEK(n)) {
			t.Errorf("key %d still in the slab after Sweep", n)
		}
	}
	for n := 4; n <= 5; n++ {
		if got := stCachedKey(t, c, stID(n)); !bytes.Equal(got, stDEK(n)) {
			t.Errorf("key %d: got %x, want %x", n, got, stDEK(n))
		}
	}
	if got := c.Sweep(); got != 0 {
		t.Fatalf("second Sweep() = %d, want 0", got)
	}
}

func stAssertSlotZero(t *testing.T, c *Cache, slot int) {
	t.Helper()
	mem, err := c.slabCopy()
	if err != nil {
		t.Fatal(err)
	}
	got := mem[slot*crypto.DEKSize : (slot+1)*crypto.DEKSize]
	if !bytes.Equal(got, make([]byte, crypto.DEKSize)) {
		t.Errorf("slot %d: got %x, want zeros", slot, got)
	}
}

func stAssertSlabZero(t *testing.T, c *Cache) {
	t.Helper()
	mem, err := c.slabCopy()
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range mem {
		if b != 0 {
			t.Fatalf("slab byte %d (slot %d): got %#x, want 0", i, i/crypto.DEKSize, b)
		}
	}
}

func TestCacheZeroing(t *testing.T) {
	tests := []struct {
		name   string
		remove func(c *Cache) // removes key 1
	}{
		{name: "eviction", remove: func(c *Cache) {
			for n := 2; n <= 4; n++ { // capacity 3: the fourth put evicts key 1
				c.Put(stID(n), stDEK(n))
			}
		}},
		{name: "drop", remove: func(c *Cache) { c.Drop(stID(1)) }},
		{name: "purge", remove: func(c *Cache) { c.Purge() }},
		{name: "replace", remove: func(c *Cache) { c.Put(stID(1), stDEK(7)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newStCache(t, CacheOptions{MaxEntries: 3})
			c.Put(stID(1), stDEK(1))
			slot, ok := c.slotOf(stID(1))
			if !ok {
				t.Fatal("key 1 not cached after Put")
			}
			mem, err := c.slabCopy()
			if err != nil {
				t.Fatal(err)
			}
			if got := mem[slot*crypto.DEKSize : (slot+1)*crypto.DEKSize]; !bytes.Equal(got, stDEK(1)) {
				t.Fatalf("slot %d before removal: got %x, want %x", slot, got, stDEK(1))
			}
			tt.remove(c)
			mem, err = c.slabCopy()
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(mem, stDEK(1)) {
				t.Errorf("key 1 still in the slab")
			}
		})
	}
	t.Run("purge zeroes everything", func(t *testing.T) {
		c := newStCache(t, CacheOptions{MaxEntries: 200})
		for n := range 300 {
			c.Put(stID(n), stDEK(n))
		}
		c.Purge()
		stAssertSlabZero(t, c)
		if got := c.Len(); got != 0 {
			t.Errorf("Len() after Purge = %d, want 0", got)
		}
	})
	t.Run("drop zeroes exactly its slot", func(t *testing.T) {
		c := newStCache(t, CacheOptions{MaxEntries: 3})
		c.Put(stID(1), stDEK(1))
		c.Put(stID(2), stDEK(2))
		slot, _ := c.slotOf(stID(1))
		c.Drop(stID(1))
		stAssertSlotZero(t, c, slot)
		if got := stCachedKey(t, c, stID(2)); !bytes.Equal(got, stDEK(2)) {
			t.Errorf("key 2: got %x, want %x", got, stDEK(2))
		}
	})
}

func TestCacheCapacity100k(t *testing.T) {
	const memlockLimit = 8 << 20 // a typical RLIMIT_MEMLOCK
	c := newStCache(t, CacheOptions{})
	if got, want := c.LockedBytes(), memlockLimit; got > want {
		t.Fatalf("LockedBytes() = %d, want <= %d", got, want)
	}
	if got, want := c.LockedBytes(), DefaultCacheEntries*crypto.DEKSize; got < want {
		t.Fatalf("LockedBytes() = %d, want >= %d", got, want)
	}
	dek := make([]byte, crypto.DEKSize)
	for n := range DefaultCacheEntries {
		id := stID(n)
		id[13] = byte(n >> 16)
		dek[0], dek[1], dek[2] = byte(n), byte(n>>8), byte(n>>16)
		c.Put(id, dek)
	}
	if got := c.Len(); got != DefaultCacheEntries {
		t.Fatalf("Len() = %d, want %d", got, DefaultCacheEntries)
	}
	if got := c.Stats().Evictions; got != 0 {
		t.Fatalf("evictions: got %d, want 0", got)
	}
	for _, n := range []int{0, 1, 65535, 65536, DefaultCacheEntries - 1} {
		id := stID(n)
		id[13] = byte(n >> 16)
		got := stCachedKey(t, c, id)
		if got == nil || got[0] != byte(n) || got[1] != byte(n>>8) || got[2] != byte(n>>16) {
			t.Errorf("key %d: got %x", n, got)
		}
	}
}

func TestCacheHitAllocatesNothing(t *testing.T) {
	c := newStCache(t, CacheOptions{MaxEntries: 16})
	for n := range 16 {
		c.Put(stID(n), stDEK(n))
	}
	var sum byte
	fn := func(dek []byte) error { sum += dek[0]; return nil }
	ids := []crypto.FileID{stID(3), stID(9), stID(0)}
	allocs := testing.AllocsPerRun(100, func() {
		for _, id := range ids {
			if hit, _ := c.With(id, fn); !hit {
				t.Fatalf("miss on %s", id)
			}
		}
		c.Put(stID(5), stDEK(5))
	})
	if allocs != 0 {
		t.Fatalf("allocations per hit round: got %v, want 0", allocs)
	}
}

func TestCacheWithError(t *testing.T) {
	c := newStCache(t, CacheOptions{MaxEntries: 2})
	c.Put(stID(1), stDEK(1))
	boom := errors.New("boom")
	hit, err := c.With(stID(1), func([]byte) error { return boom })
	if !hit || !errors.Is(err, boom) {
		t.Fatalf("With: got (%v, %v), want (true, %v)", hit, err, boom)
	}
}

func TestCacheClose(t *testing.T) {
	c, err := NewCache(CacheOptions{MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	c.Put(stID(1), stDEK(1))
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if got := c.Len(); got != 0 {
		t.Errorf("Len() after Close = %d, want 0", got)
	}
	if got := c.LockedBytes(); got != 0 {
		t.Errorf("LockedBytes() after Close = %d, want 0", got)
	}
	c.Put(stID(2), stDEK(2)) // must not touch the unmapped slab
	if got := stCachedKey(t, c, stID(1)); got != nil {
		t.Errorf("With after Close: got %x, want a miss", got)
	}
	c.Drop(stID(1))
	c.Purge()
	if got := c.Sweep(); got != 0 {
		t.Errorf("Sweep after Close = %d, want 0", got)
	}
}

func TestNewCacheOptions(t *testing.T) {
	tests := []struct {
		name    string
		o       CacheOptions
		wantErr bool
		wantCap int
	}{
		{name: "defaults", o: CacheOptions{}, wantCap: DefaultCacheEntries},
		{name: "small", o: CacheOptions{MaxEntries: 1, TTL: time.Second}, wantCap: 1},
		{name: "negative entries", o: CacheOptions{MaxEntries: -1}, wantErr: true},
		{name: "negative TTL", o: CacheOptions{TTL: -time.Second}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewCache(tt.o)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewCache error: got %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			defer c.Close()
			if got := c.Stats().Capacity; got != tt.wantCap {
				t.Errorf("capacity: got %d, want %d", got, tt.wantCap)
			}
		})
	}
}

func TestCacheConcurrent(t *testing.T) {
	c := newStCache(t, CacheOptions{MaxEntries: 64})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				n := (g*7 + i) % 100
				switch i % 5 {
				case 0:
					c.Drop(stID(n))
				case 1:
					c.Sweep()
				default:
					c.Put(stID(n), stDEK(n))
					_, _ = c.With(stID(n), func(dek []byte) error {
						if !bytes.Equal(dek, stDEK(n)) {
							t.Errorf("key %d: got %x, want %x", n, dek, stDEK(n))
						}
						return nil
					})
				}
			}
		}()
	}
	wg.Wait()
	if got := c.Len(); got > 64 {
		t.Fatalf("Len() = %d, want <= 64", got)
	}
}
