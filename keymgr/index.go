package keymgr

// The header index maps a file ID to the file's header (its wrapped keys),
// so opening a file needs no read of the file's header slots and tools
// (status, rewrap, fsck) can list every file's keys without walking the
// cipher tree. It is a badger v4 database in CIPHERDIR/.kmsfs/index; this is
// the only file that imports badger.
//
// Layout:
//
//	key   "h/" | file ID (16 raw bytes)            18 bytes
//	value crypto.Header.Marshal(), the header body of docs/format.md
//	      (about 160 bytes with the local provider, 300 with AWS KMS)
//
// Durability: writes are not synced (SyncWrites false), and the entries
// of creates and unlinks are queued and committed in batches by a writer
// goroutine (PutLater, DeleteLater; indexqueue.go). A write survives a
// crash of the process (badger's write-ahead log is in the page cache) but
// not necessarily a power cut. That is enough because the index is a cache
// of data that is also on disk, fsync'ed, in every cipher file: each file
// mirrors its header in two slots, OpenFile falls back to that mirror when
// the index has no entry or a bad one (and heals the index), and
// `kmsfs fsck --repair` rebuilds the whole index from the mirrors.
//
// Badger takes an exclusive flock on the directory, so while a cipher
// directory is mounted only the mount process can open its index; offline
// commands open it read-only (a shared lock).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/kmsfs/kmsfs/crypto"
)

// Index sizes and tuning. Badger's defaults are sized for a server (64 MiB
// memtables x 5, 256 MiB block cache); an index of 100k 300-byte values is
// 30 MB, so a few MiB of memtable and cache are plenty.
const (
	indexKeyPrefix   = "h/"
	indexKeySize     = len(indexKeyPrefix) + crypto.FileIDSize // 18
	indexMemTable    = 4 << 20                                 // bytes per memtable
	indexMemTables   = 2
	indexValueThresh = 64 << 10 // values up to this size stay in the LSM tree; must be <= 15% of the memtable
	indexBlockCache  = 1 << 20  // needed: compression with a zero block cache panics at Open
	indexIndexCache  = 1 << 20
	indexBaseTable   = 1 << 20
	indexVlogFile    = 16 << 20
	indexGCInterval  = 10 * time.Minute
	indexGCRatio     = 0.5
)

// IndexOptions configures OpenIndex.
type IndexOptions struct {
	ReadOnly bool         // shared lock, no writes, no value-log GC (offline status)
	Logger   *slog.Logger // nil: discard; badger's own messages are passed on at warning level and above
}

// Index is the badger header index. It is safe for concurrent use.
type Index struct {
	dir      string
	readOnly bool
	log      *slog.Logger

	mu     sync.RWMutex // read: an operation is using db; write: Close
	db     *badger.DB
	closed bool

	stop chan struct{}
	done chan struct{} // closed when gcLoop has returned

	q indexQueue // write-behind of PutLater and DeleteLater (indexqueue.go)
}

// OpenIndex opens (creating unless read-only) the index in dir. A directory
// held by another process fails with ErrIndexLocked, one that badger cannot
// read with ErrIndexCorrupt; both errors say what to do.
func OpenIndex(dir string, o IndexOptions) (*Index, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.ReadOnly {
		// Badger would say "Cannot find directory"; say it in our words.
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("open header index read-only: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open header index: %w", err)
	}
	// Surface permission problems as themselves before badger flattens
	// every error into a string.
	if f, err := os.Open(dir); err != nil {
		return nil, fmt.Errorf("open header index: %w", err)
	} else {
		_ = f.Close()
	}

	opts := badger.DefaultOptions(dir).
		WithReadOnly(o.ReadOnly).
		WithSyncWrites(false).
		WithNumVersionsToKeep(1).
		WithMemTableSize(indexMemTable).
		WithNumMemtables(indexMemTables).
		WithValueThreshold(indexValueThresh).
		WithBaseTableSize(indexBaseTable).
		WithValueLogFileSize(indexVlogFile).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithNumCompactors(2).
		WithCompression(options.Snappy).
		WithBlockCacheSize(indexBlockCache).
		WithIndexCacheSize(indexIndexCache).
		WithMetricsEnabled(false).
		WithLogger(badgerLogger{log: log.With("component", "index")})

	db, err := openBadger(opts)
	if err != nil {
		return nil, classifyOpenError(dir, err)
	}
	ix := &Index{
		dir:      dir,
		readOnly: o.ReadOnly,
		log:      log,
		db:       db,
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		q:        newIndexQueue(),
	}
	if o.ReadOnly {
		close(ix.done)
		close(ix.q.done)
	} else {
		go ix.gcLoop()
		go ix.writeLoop()
	}
	return ix, nil
}

// openBadger turns a panic inside badger.Open (it panics on some damaged
// files) into an error.
func openBadger(opts badger.Options) (db *badger.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("badger panicked: %v", r)
		}
	}()
	return badger.Open(opts)
}

// classifyOpenError maps a badger.Open error onto ErrIndexLocked or
// ErrIndexCorrupt. Badger flattens the errors it wraps (%+v, not %w), so
// the lock failure can only be recognised by its message.
func classifyOpenError(dir string, err error) error {
	msg := err.Error()
	if strings.Contains(msg, "Cannot acquire directory lock") || strings.Contains(msg, "Another process is using this Badger database") {
		return fmt.Errorf("open header index %s: %w: is the cipher directory mounted? unmount it or run the command through the mount", dir, ErrIndexLocked)
	}
	if strings.Contains(msg, "Log truncate required") {
		// Not damage: the last writer (a mount) died without closing the
		// index, and only a read-write open replays and trims its log.
		return fmt.Errorf("open header index %s: %w: it was not closed cleanly (did a mount crash?) and a read-only open cannot replay its log: mount the cipher directory once, or run `kmsfs fsck --repair %s`",
			dir, ErrIndexCorrupt, cipherDirOf(dir))
	}
	return fmt.Errorf("open header index %s: %w (%v): run `kmsfs fsck --repair %s` to rebuild it from the file headers", dir, ErrIndexCorrupt, err, cipherDirOf(dir))
}

// cipherDirOf guesses the cipher directory from the index path
// (CIPHERDIR/.kmsfs/index) for the advice in error messages.
func cipherDirOf(indexDir string) string {
	clean := filepath.Clean(indexDir)
	if filepath.Base(clean) == "index" && filepath.Base(filepath.Dir(clean)) == ".kmsfs" {
		return filepath.Dir(filepath.Dir(clean))
	}
	return "CIPHERDIR"
}

// Path is the index directory.
func (ix *Index) Path() string { return ix.dir }

// ReadOnly reports whether the index was opened read-only.
func (ix *Index) ReadOnly() bool { return ix.readOnly }

func indexKey(id crypto.FileID) []byte {
	k := make([]byte, 0, indexKeySize)
	k = append(k, indexKeyPrefix...)
	return append(k, id[:]...)
}

// use runs fn with the database unless the index is closed.
func (ix *Index) use(fn func(db *badger.DB) error) error {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if ix.closed {
		return badger.ErrDBClosed
	}
	return fn(ix.db)
}

// Get returns the indexed header of id: ErrNotIndexed when there is none,
// ErrIndexCorrupt when the stored value does not decode or names another
// file.
func (ix *Index) Get(id crypto.FileID) (crypto.Header, error) {
	if val, ok := ix.q.queued(id); ok {
		if val == nil {
			return crypto.Header{}, fmt.Errorf("index get %s: %w", id, ErrNotIndexed)
		}
		return decodeIndexValue(id, val)
	}
	var val []byte
	err := ix.use(func(db *badger.DB) error {
		return db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(indexKey(id))
			if err != nil {
				return err
			}
			val, err = item.ValueCopy(nil)
			return err
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return crypto.Header{}, fmt.Errorf("index get %s: %w", id, ErrNotIndexed)
	}
	if err != nil {
		return crypto.Header{}, fmt.Errorf("index get %s: %w", id, err)
	}
	return decodeIndexValue(id, val)
}

func decodeIndexValue(id crypto.FileID, val []byte) (crypto.Header, error) {
	h, err := crypto.UnmarshalHeader(val)
	if err != nil {
		return crypto.Header{}, fmt.Errorf("index entry of file %s: %w: %w", id, ErrIndexCorrupt, err)
	}
	if h.FileID != id {
		return crypto.Header{}, fmt.Errorf("index entry of file %s holds the header of file %s: %w", id, h.FileID, ErrIndexCorrupt)
	}
	return h, nil
}

// Put stores h under h.FileID, replacing any previous entry.
func (ix *Index) Put(h crypto.Header) error {
	val, err := h.Marshal()
	if err != nil {
		return fmt.Errorf("index put %s: %w", h.FileID, err)
	}
	return ix.putRaw(h.FileID, val)
}

// putRaw stores val unchecked (Put, and tests that plant bad values).
func (ix *Index) putRaw(id crypto.FileID, val []byte) error {
	err := ix.use(func(db *badger.DB) error {
		ix.q.commitMu.Lock()
		defer ix.q.commitMu.Unlock()
		ix.q.dropQueued(id)
		return db.Update(func(txn *badger.Txn) error {
			return txn.Set(indexKey(id), val)
		})
	})
	if err != nil {
		return fmt.Errorf("index put %s: %w", id, err)
	}
	return nil
}

// Delete removes the entry of id; deleting an absent entry is not an error.
func (ix *Index) Delete(id crypto.FileID) error {
	err := ix.use(func(db *badger.DB) error {
		ix.q.commitMu.Lock()
		defer ix.q.commitMu.Unlock()
		ix.q.dropQueued(id)
		return db.Update(func(txn *badger.Txn) error {
			return txn.Delete(indexKey(id))
		})
	})
	if err != nil {
		return fmt.Errorf("index delete %s: %w", id, err)
	}
	return nil
}

// ForEach calls fn with every indexed header in file-ID order, inside one
// read transaction (a consistent snapshot). It stops at fn's first error and
// returns it. A value that does not decode stops the walk with an error
// wrapping ErrIndexCorrupt and naming the file.
func (ix *Index) ForEach(fn func(crypto.Header) error) error {
	if err := ix.Flush(); err != nil {
		return err
	}
	return ix.use(func(db *badger.DB) error {
		return db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(indexKeyPrefix)})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				item := it.Item()
				id, err := idOfKey(item.Key())
				if err != nil {
					return err
				}
				var h crypto.Header
				err = item.Value(func(val []byte) error {
					var derr error
					h, derr = decodeIndexValue(id, val)
					return derr
				})
				if err != nil {
					return err
				}
				if err := fn(h); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

func idOfKey(key []byte) (crypto.FileID, error) {
	var id crypto.FileID
	if len(key) != indexKeySize {
		return id, fmt.Errorf("index key %x has %d bytes, want %d: %w", key, len(key), indexKeySize, ErrIndexCorrupt)
	}
	copy(id[:], key[len(indexKeyPrefix):])
	return id, nil
}

// Count is the number of indexed files.
func (ix *Index) Count() (int, error) {
	if err := ix.Flush(); err != nil {
		return 0, err
	}
	n := 0
	err := ix.use(func(db *badger.DB) error {
		return db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(indexKeyPrefix)})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				n++
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("index count: %w", err)
	}
	return n, nil
}

// Backup writes every entry of the index to w as a badger backup stream
// (DB.Backup: length-prefixed protobuf KV lists), from one consistent
// snapshot. It works on a read-only index.
func (ix *Index) Backup(w io.Writer) error {
	if err := ix.Flush(); err != nil {
		return err
	}
	err := ix.use(func(db *badger.DB) error {
		_, err := db.Backup(w, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("back up header index %s: %w", ix.dir, err)
	}
	return nil
}

// maxBackupFrame bounds one length-prefixed frame of a backup stream that
// Load accepts. Badger writes lists of at most a few MiB; a bigger length
// is damage, and badger would try to allocate it.
const maxBackupFrame = 256 << 20

// Load adds the entries of a Backup stream to the index (an entry of the
// same file ID is replaced). A stream that is not a badger backup, or that
// holds a key or value that is not a header index entry, is refused with
// an error wrapping ErrIndexCorrupt; entries before the damage may already
// be written, so callers load into a scratch index first. The index must
// be writable.
func (ix *Index) Load(r io.Reader) error {
	if err := ix.Flush(); err != nil {
		return err
	}
	if ix.readOnly {
		return fmt.Errorf("load into header index %s: opened read-only", ix.dir)
	}
	err := ix.use(func(db *badger.DB) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("badger panicked: %v", p)
			}
		}()
		return db.Load(&frameGuard{r: r}, 256)
	})
	if err != nil {
		return fmt.Errorf("load into header index %s: %w: %w", ix.dir, ErrIndexCorrupt, err)
	}
	// Every loaded entry must be one of ours.
	if err := ix.ForEach(func(crypto.Header) error { return nil }); err != nil {
		return fmt.Errorf("load into header index %s: %w", ix.dir, err)
	}
	return nil
}

// frameGuard passes a backup stream through, refusing frame lengths
// above maxBackupFrame before badger allocates them.
type frameGuard struct {
	r    io.Reader
	hdr  [8]byte
	hdrN int    // bytes of the current length prefix read so far
	left uint64 // bytes of the current frame's body still to pass
}

func (g *frameGuard) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if g.left == 0 {
		n, err := g.r.Read(p[:min(len(p), len(g.hdr)-g.hdrN)])
		copy(g.hdr[g.hdrN:], p[:n])
		g.hdrN += n
		if g.hdrN == len(g.hdr) {
			g.hdrN = 0
			g.left = binary.LittleEndian.Uint64(g.hdr[:])
			if g.left > maxBackupFrame {
				return n, fmt.Errorf("backup frame of %d bytes, more than %d: not a header index backup", g.left, maxBackupFrame)
			}
		}
		return n, err
	}
	n, err := g.r.Read(p[:min(uint64(len(p)), g.left)])
	g.left -= uint64(n)
	return n, err
}

// gcLoop runs value-log GC every indexGCInterval until Close. With values
// this small almost nothing lives in the value log, but rewritten and
// deleted entries would otherwise accumulate there forever.
func (ix *Index) gcLoop() {
	defer close(ix.done)
	t := time.NewTicker(indexGCInterval)
	defer t.Stop()
	for {
		select {
		case <-ix.stop:
			return
		case <-t.C:
			ix.runGC()
		}
	}
}

func (ix *Index) runGC() {
	for {
		select {
		case <-ix.stop:
			return
		default:
		}
		err := ix.use(func(db *badger.DB) error { return db.RunValueLogGC(indexGCRatio) })
		switch {
		case err == nil:
			continue // a file was rewritten; try the next
		case errors.Is(err, badger.ErrNoRewrite), errors.Is(err, badger.ErrRejected), errors.Is(err, badger.ErrDBClosed):
			return
		default:
			ix.log.Warn("index value-log GC failed", "dir", ix.dir, "err", err)
			return
		}
	}
}

// Close stops the GC goroutine, commits the queued changes and closes the
// database, flushing it.
// Calling Close twice is harmless.
func (ix *Index) Close() error {
	ix.mu.Lock()
	if ix.closed {
		ix.mu.Unlock()
		return nil
	}
	ix.closed = true
	if !ix.readOnly {
		close(ix.stop)
	}
	ix.mu.Unlock()
	<-ix.done
	<-ix.q.done
	if err := ix.db.Close(); err != nil {
		return fmt.Errorf("close header index %s: %w", ix.dir, err)
	}
	return nil
}

// badgerLogger passes badger's warnings and errors to slog and drops its
// informational chatter (compaction, replay), which must not reach the user.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(format string, args ...any) {
	l.log.Error("badger: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (l badgerLogger) Warningf(format string, args ...any) {
	l.log.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

var _ badger.Logger = badgerLogger{}
