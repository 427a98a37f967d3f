package keymgr

// The Manager is what the filesystem sees of key management (fs.FileKeys):
// a new file gets a fresh key from the DEK pool and an index entry; an
// existing file's key comes from the DEK cache, or else is unwrapped by the
// provider from the header the index (or, failing that, the file itself)
// holds. The header index is a cache of the in-file header mirror: when it
// has no entry, a bad entry, or an entry whose keys do not unwrap, the
// mirror is read and the index healed.

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// How often the Manager sweeps expired keys out of the DEK cache.
const maxSweepInterval = time.Minute

// ManagerOptions configures NewManager. Provider and Cache are required;
// they and Index stay the caller's (Manager.Close does not close them).
// Index may be nil for offline readers that cannot open it (the mount holds
// its lock): every open then reads the file's header mirror, and nothing is
// written to an index.
type ManagerOptions struct {
	FilesystemID string   // kmsfs.conf filesystem_id; part of every encryption context
	KeyARN       string   // CMK that wraps new files' keys (kmsfs.conf key_arn)
	Provider     Provider // KMS
	Index        *Index   // header index; nil: read the header mirrors, write no index
	Cache        *Cache   // DEK cache
	PoolSize     int      // most ready keys the DEK pool aims for; 0: DefaultPoolSize
	// PoolStart is the pool's first target, doubled up to PoolSize each
	// time a create finds it empty; 0: DefaultPoolStart (at most PoolSize).
	PoolStart int
	// PoolRefillers is the most GenerateDataKey calls the pool's refills
	// keep in flight (one while the KMS fails); 0: DefaultPoolRefillers.
	PoolRefillers int
	Layout        crypto.Layout // the filesystem's geometry
	Rand          io.Reader     // nil: crypto/rand.Reader
	Logger        *slog.Logger  // nil: discard
	// KeyEpoch is stamped into the key version of new files' wrapped keys
	// when the provider shows no version (aws: kmsfs.conf rewrap_epoch,
	// see rewrap.go); the local provider's real versions are kept.
	KeyEpoch uint32
}

// KMSCallStats counts the provider calls a Manager made.
type KMSCallStats struct {
	GenerateDataKey uint64
	Decrypt         uint64
	Errors          uint64 // calls of either kind that failed
}

// ManagerStats is a snapshot of a Manager's state, for `kmsfs status`.
type ManagerStats struct {
	CacheEntries      int
	CacheCapacity     int
	CacheLockedBytes  int
	CacheHits         uint64
	CacheMisses       uint64
	CacheEvictions    uint64
	CacheExpirations  uint64
	PoolReady         int
	PoolSize          int    // most keys the pool may aim for
	PoolTarget        int    // keys it aims for now
	PoolGenerated     uint64 // keys generated (refill and synchronous)
	PoolTaken         uint64 // keys handed to new files
	PoolWaits         uint64 // creates that found the pool empty and waited for a refill under way
	PoolSyncFallbacks uint64 // creates that called GenerateDataKey themselves
	PoolRefillErrors  uint64
	IndexHeals        uint64 // index entries rewritten from a file's header mirror
	KMSCalls          KMSCallStats
}

// Manager hands out content ciphers for new and existing files. It is safe
// for concurrent use.
type Manager struct {
	fsID     string
	keyARN   string
	provider Provider
	index    *Index
	cache    *Cache
	layout   crypto.Layout
	rand     io.Reader
	log      *slog.Logger
	pool     *dekPool
	kms      *kmsCounters

	mu       sync.Mutex
	inflight map[crypto.FileID]*unwrapCall
	closed   bool
	started  bool
	startCtx context.Context // Start's ctx, for a pool replaced by SetWrapKey
	epoch    uint32          // ManagerOptions.KeyEpoch; SetWrapKey changes it
	stop     chan struct{}
	done     chan struct{}

	heals atomic.Uint64
}

// unwrapCall is one in-flight OpenFile miss; concurrent opens of the same
// file wait for it instead of calling the KMS again.
type unwrapCall struct {
	done   chan struct{}
	cipher *crypto.ContentCipher
	err    error
	// waiters counts the opens that joined this call (guarded by
	// Manager.mu); tests wait on it instead of sleeping.
	waiters int
}

// NewManager validates o and builds the DEK pool (its refill starts with
// Start).
func NewManager(o ManagerOptions) (*Manager, error) {
	switch {
	case o.FilesystemID == "":
		return nil, errors.New("key manager: filesystem ID is empty")
	case o.KeyARN == "":
		return nil, errors.New("key manager: key ARN is empty")
	case o.Provider == nil:
		return nil, errors.New("key manager: no provider")
	case o.Cache == nil:
		return nil, errors.New("key manager: no DEK cache")
	case o.PoolSize < 0:
		return nil, fmt.Errorf("key manager: pool size %d is negative", o.PoolSize)
	case o.PoolStart < 0:
		return nil, fmt.Errorf("key manager: pool start %d is negative", o.PoolStart)
	}
	if err := o.Layout.Validate(); err != nil {
		return nil, fmt.Errorf("key manager: %w", err)
	}
	if o.PoolSize == 0 {
		o.PoolSize = DefaultPoolSize
	}
	o.PoolStart = min(cmp.Or(o.PoolStart, DefaultPoolStart), o.PoolSize)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Cache.bind(o.FilesystemID); err != nil {
		return nil, fmt.Errorf("key manager: %w", err)
	}
	if o.Rand == nil {
		o.Rand = crand.Reader
	} else if o.Rand != crand.Reader {
		// File IDs are drawn from two goroutines and nonces from many.
		o.Rand = &lockedReader{r: o.Rand}
	}
	m := &Manager{
		fsID:     o.FilesystemID,
		keyARN:   o.KeyARN,
		epoch:    o.KeyEpoch,
		provider: o.Provider,
		index:    o.Index,
		cache:    o.Cache,
		layout:   o.Layout,
		rand:     o.Rand,
		log:      o.Logger,
		kms:      new(kmsCounters),
		inflight: make(map[crypto.FileID]*unwrapCall),
	}
	pool, err := newDEKPool(poolOptions{
		Size:         o.PoolSize,
		Start:        o.PoolStart,
		Refillers:    cmp.Or(o.PoolRefillers, DefaultPoolRefillers),
		FilesystemID: o.FilesystemID,
		KeyARN:       o.KeyARN,
		Provider:     o.Provider,
		Rand:         o.Rand,
		Logger:       o.Logger,
		Counters:     m.kms,
	})
	if err != nil {
		return nil, fmt.Errorf("key manager: %w", err)
	}
	m.pool = pool
	return m, nil
}

// Start fills the DEK pool in the background and starts the periodic sweep
// of expired cached keys. Both stop at Close or when ctx ends.
func (m *Manager) Start(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.closed {
		return
	}
	m.started = true
	m.startCtx = ctx
	m.pool.start(ctx)
	m.stop = make(chan struct{})
	m.done = make(chan struct{})
	interval := min(m.cache.ttl/2, maxSweepInterval)
	go m.sweepLoop(ctx, interval)
}

func (m *Manager) sweepLoop(ctx context.Context, interval time.Duration) {
	defer close(m.done)
	t := time.NewTicker(max(interval, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.stop:
			return
		case <-t.C:
			if n := m.cache.Sweep(); n > 0 {
				m.log.Debug("expired cached keys", "count", n)
			}
		}
	}
}

// NewFile makes the key of a new file: a fresh file ID, DEK and EDK from the
// pool, the header (generation 1, one wrapped key) written to the index and
// the DEK to the cache. The caller mirrors the header into the file.
func (m *Manager) NewFile(ctx context.Context) (crypto.Header, *crypto.ContentCipher, error) {
	if m.isClosed() {
		return crypto.Header{}, nil, fmt.Errorf("new file key: %w", errManagerClosed)
	}
	var dek [crypto.DEKSize]byte
	defer crypto.Zero(dek[:])
	k, err := m.takeKey(ctx, dek[:])
	if err != nil {
		return crypto.Header{}, nil, fmt.Errorf("new file key: %w", err)
	}
	if k.ID == crypto.NamesKeyID {
		// Drawn with probability 2^-128, but never a content key.
		return crypto.Header{}, nil, fmt.Errorf("new file key: drew the reserved names-key file ID: %w", crypto.ErrBadHeader)
	}
	h := crypto.Header{
		FileID:     k.ID,
		Generation: 1,
		Keys:       []crypto.WrappedKey{{KeyARN: k.KeyARN, KeyVersion: k.KeyVersion, EDK: k.EDK}},
	}
	c, err := crypto.NewContentCipher(dek[:], k.ID, m.layout, m.rand)
	if err != nil {
		return crypto.Header{}, nil, fmt.Errorf("new file %s: %w", k.ID, err)
	}
	if m.index != nil {
		// Queued (indexqueue.go): the file's own header, which the
		// caller writes next, is the copy the index is healed from if a
		// crash loses the queue.
		if err := m.index.PutLater(h); err != nil {
			return crypto.Header{}, nil, fmt.Errorf("new file %s: %w", k.ID, err)
		}
	}
	m.cache.Put(k.ID, dek[:])
	return h, c, nil
}

// OpenFile returns the content cipher of an existing file. A cached key
// costs no KMS call and no index access. On a miss the header comes from
// the index, or from readHeader (the file's own header mirror) when the
// index has no usable entry or the index's keys do not unwrap; the index is
// then healed from the mirror. readHeader may be nil when the file cannot
// be read. Concurrent opens of one uncached file share one unwrap. A file
// claiming crypto.NamesKeyID is refused (crypto.ErrBadHeader): the names
// key never becomes a content key. Headers are not authenticated: with the
// provider pinned (PinnedProvider), a header naming a key the user does
// not trust fails with ErrUntrustedKey (EIO) and no call is made with that
// key; an index entry that does so is replaced from the file's mirror.
// What may land in the DEK cache is the Cache's invariant (cache.go).
func (m *Manager) OpenFile(ctx context.Context, id crypto.FileID, readHeader func() (crypto.Header, error)) (*crypto.ContentCipher, error) {
	if m.isClosed() {
		return nil, fmt.Errorf("open file %s: %w", id, errManagerClosed)
	}
	if id == crypto.NamesKeyID {
		return nil, fmt.Errorf("open file %s: the file ID reserved for the names key: %w", id, crypto.ErrBadHeader)
	}
	for {
		if c, ok, err := m.cached(id); ok || err != nil {
			return c, err
		}
		m.mu.Lock()
		if call, ok := m.inflight[id]; ok {
			call.waiters++
			m.mu.Unlock()
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("open key of file %s: %w", id, ctx.Err())
			case <-call.done:
			}
			if call.err != nil && isContextError(call.err) && ctx.Err() == nil {
				continue // the leader gave up, not the KMS: try again ourselves
			}
			return call.cipher, call.err
		}
		call := &unwrapCall{done: make(chan struct{})}
		m.inflight[id] = call
		m.mu.Unlock()

		// A call that finished between our cache check and our
		// registration has filled the cache: look again before the KMS.
		c, ok, err := m.cached(id)
		if !ok && err == nil {
			c, err = m.unwrapFile(ctx, id, readHeader)
		}
		call.cipher, call.err = c, err
		m.mu.Lock()
		delete(m.inflight, id)
		m.mu.Unlock()
		close(call.done)
		return c, err
	}
}

var errManagerClosed = errors.New("key manager is closed")

func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

func isContextError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// cached builds the cipher from the cached DEK, if there is one.
func (m *Manager) cached(id crypto.FileID) (*crypto.ContentCipher, bool, error) {
	var c *crypto.ContentCipher
	hit, err := m.cache.With(id, func(dek []byte) error {
		var err error
		c, err = crypto.NewContentCipher(dek, id, m.layout, m.rand)
		return err
	})
	if err != nil {
		return nil, true, fmt.Errorf("open file %s: %w", id, err)
	}
	return c, hit, nil
}

// unwrapFile is the miss path of OpenFile.
func (m *Manager) unwrapFile(ctx context.Context, id crypto.FileID, readHeader func() (crypto.Header, error)) (*crypto.ContentCipher, error) {
	var mirror *crypto.Header // read at most once
	readMirror := func() (crypto.Header, error) {
		if mirror != nil {
			return *mirror, nil
		}
		if readHeader == nil {
			return crypto.Header{}, fmt.Errorf("header of file %s: no header mirror to read", id)
		}
		h, err := readHeader()
		if err != nil {
			return crypto.Header{}, fmt.Errorf("header of file %s: %w", id, err)
		}
		if h.FileID != id {
			return crypto.Header{}, fmt.Errorf("header of file %s names file %s: %w", id, h.FileID, crypto.ErrBadHeader)
		}
		mirror = &h
		return h, nil
	}

	var dek [crypto.DEKSize]byte
	defer crypto.Zero(dek[:])
	// unwrapFor unwraps only a header of file id, so the key cached under
	// id below came from the encryption context of id (the Cache's
	// invariant); the index and readMirror check it too.
	unwrapFor := func(h crypto.Header) error {
		if h.FileID != id {
			return fmt.Errorf("open file %s: header names file %s: %w", id, h.FileID, crypto.ErrBadHeader)
		}
		return m.unwrap(ctx, h, dek[:])
	}

	if m.index == nil {
		mh, err := readMirror()
		if err != nil {
			return nil, fmt.Errorf("open file %s: %w", id, err)
		}
		if err := unwrapFor(mh); err != nil {
			return nil, err
		}
	} else if h, idxErr := m.index.Get(id); idxErr != nil {
		mh, err := readMirror()
		if err != nil {
			return nil, fmt.Errorf("open file %s: %w (index: %w)", id, err, idxErr)
		}
		m.log.Info("header index entry unusable; using the file's header mirror", "file_id", id.String(), "err", idxErr)
		if err := unwrapFor(mh); err != nil {
			return nil, err
		}
		m.heal(mh, idxErr)
	} else if err := unwrapFor(h); err != nil {
		// A stale or damaged index entry (an EDK that does not unwrap,
		// or a key that no longer exists) may be fixed by the mirror.
		if !errors.Is(err, ErrInvalidCiphertext) && !errors.Is(err, ErrKeyNotFound) {
			return nil, err
		}
		mh, merr := readMirror()
		if merr != nil || h.Equal(mh) {
			return nil, err
		}
		m.log.Info("header index entry does not unwrap; trying the file's header mirror",
			"file_id", id.String(), "index_generation", h.Generation, "file_generation", mh.Generation, "err", err)
		if err2 := unwrapFor(mh); err2 != nil {
			return nil, fmt.Errorf("%w (index entry: %w)", err2, err)
		}
		m.heal(mh, err)
	}

	c, err := crypto.NewContentCipher(dek[:], id, m.layout, m.rand)
	if err != nil {
		return nil, fmt.Errorf("open file %s: %w", id, err)
	}
	m.cache.Put(id, dek[:])
	return c, nil
}

// unwrap tries each wrapped key of h in order and writes the first DEK that
// unwraps into dek.
func (m *Manager) unwrap(ctx context.Context, h crypto.Header, dek []byte) error {
	what := "DEK of file " + h.FileID.String()
	if h.FileID == crypto.NamesKeyID {
		what = "names key" // FileContext gives it the names context
	}
	if len(h.Keys) == 0 {
		return fmt.Errorf("unwrap %s: header has no wrapped key: %w", what, crypto.ErrBadHeader)
	}
	ec := FileContext(m.fsID, h.FileID)
	var errs []error
	for _, wk := range h.Keys {
		m.kms.decrypt.Add(1)
		plain, err := m.provider.Decrypt(ctx, wk.KeyARN, wk.EDK, ec)
		if err != nil {
			m.kms.errors.Add(1)
			errs = append(errs, fmt.Errorf("unwrap %s with %s: %w", what, wk.KeyARN, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if len(plain) != crypto.DEKSize {
			crypto.Zero(plain)
			errs = append(errs, fmt.Errorf("unwrap %s with %s: provider %s returned a %d-byte key, want %d",
				what, wk.KeyARN, m.provider.Name(), len(plain), crypto.DEKSize))
			continue
		}
		copy(dek, plain)
		crypto.Zero(plain)
		return nil
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// heal rewrites the index entry of h.FileID from the file's header mirror.
// A failure only costs the next open another mirror read, so it is logged.
func (m *Manager) heal(h crypto.Header, cause error) {
	if m.index == nil || m.index.ReadOnly() {
		return
	}
	if err := m.index.Put(h); err != nil {
		m.log.Warn("cannot heal header index entry", "file_id", h.FileID.String(), "err", err)
		return
	}
	m.heals.Add(1)
	m.log.Info("healed header index entry from the file's header mirror",
		"file_id", h.FileID.String(), "generation", h.Generation, "cause", cause)
}

// Forget removes the file's index entry and cached key (the file was
// deleted).
func (m *Manager) Forget(ctx context.Context, id crypto.FileID) error {
	m.cache.Drop(id)
	if m.index == nil {
		return nil
	}
	if err := m.index.DeleteLater(id); err != nil {
		return fmt.Errorf("forget file %s: %w", id, err)
	}
	return nil
}

// Stats reports the cache, pool and KMS counters.
func (m *Manager) Stats() ManagerStats {
	cs := m.cache.Stats()
	pool := m.currentPool()
	return ManagerStats{
		CacheEntries:      cs.Entries,
		CacheCapacity:     cs.Capacity,
		CacheLockedBytes:  cs.LockedBytes,
		CacheHits:         cs.Hits,
		CacheMisses:       cs.Misses,
		CacheEvictions:    cs.Evictions,
		CacheExpirations:  cs.Expirations,
		PoolReady:         pool.readyCount(),
		PoolSize:          pool.o.Size,
		PoolTarget:        pool.currentTarget(),
		PoolGenerated:     pool.generated.Load(),
		PoolTaken:         pool.taken.Load(),
		PoolWaits:         pool.waits.Load(),
		PoolSyncFallbacks: pool.fallbacks.Load(),
		PoolRefillErrors:  pool.refillErrors.Load(),
		IndexHeals:        m.heals.Load(),
		KMSCalls: KMSCallStats{
			GenerateDataKey: m.kms.generate.Load(),
			Decrypt:         m.kms.decrypt.Load(),
			Errors:          m.kms.errors.Load(),
		},
	}
}

// Close stops the pool and the sweep, and zeroes every key the Manager
// holds (pool and cache). The index and cache stay open: they are the
// caller's to close. Calling Close twice is harmless.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	started := m.started
	m.mu.Unlock()
	if started {
		close(m.stop)
		<-m.done
	}
	err := m.currentPool().close()
	m.cache.Purge()
	if err != nil {
		return fmt.Errorf("close key manager: %w", err)
	}
	return nil
}

// lockedReader serialises reads from a reader not known to be safe for
// concurrent use.
type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}
