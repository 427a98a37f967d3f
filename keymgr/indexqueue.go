package keymgr

// Write-behind for the index entries of the mount's hot path: a create
// adds an entry and an unlink removes one, and waiting for badger's
// commit (a hand-off to its writer goroutine and back) on every one of
// them would put two goroutine switches into each create and unlink.
// PutLater and DeleteLater queue the change and return; a writer
// goroutine commits what has queued in one batch, so a burst of creates
// costs one commit per batch.
//
// Invariants:
//   - The queue holds at most one change per file ID: the newest (a delete
//     queued after a put of the same file replaces it).
//   - Readers see queued changes: Get answers from the queue, and from the
//     batch being committed, before it asks badger; ForEach, Count and
//     Backup commit the queue first.
//   - A synchronous Put or Delete of a file ID drops the queued change of
//     that ID and waits for a batch being committed, so the newest call
//     wins in badger as well.
//   - Close commits the queue before it closes badger.
//
// What a crash loses: the changes still queued (at most indexCommitDelay's
// worth, or indexQueueMax entries). That is the loss badger
// itself allows without SyncWrites, and it is repaired the same way: each
// cipher file mirrors its header on disk, OpenFile falls back to that
// mirror and heals the index, an entry left by a lost delete names a file
// that no longer exists (fsck reports and removes it), and
// `kmsfs fsck --repair` rebuilds everything.

import (
	"fmt"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/kmsfs/kmsfs/crypto"
)

// indexCommitDelay is how long the writer lets changes gather after the
// first one queued before it commits: a burst of creates is then one
// commit (and one wake-up of the writer) per delay instead of one per
// file. It bounds what a crash can lose from the queue.
const indexCommitDelay = 2 * time.Millisecond

// indexQueueMax bounds the queue: a caller that finds it full commits it
// itself, so a writer that falls behind slows creates down instead of
// growing memory.
const indexQueueMax = 4096

// indexQueue is the write-behind state of an Index.
type indexQueue struct {
	mu      sync.Mutex
	pending map[crypto.FileID][]byte // queued: value to put, or nil to delete
	writing map[crypto.FileID][]byte // the batch being committed, for Get
	kick    chan struct{}            // capacity 1: the writer has work

	// commitMu is held while a batch is committed and by synchronous
	// writes, which thus never interleave with a batch.
	commitMu sync.Mutex

	done chan struct{} // closed when the writer goroutine has returned
}

func newIndexQueue() indexQueue {
	return indexQueue{
		pending: map[crypto.FileID][]byte{},
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
}

// PutLater queues h to be stored under h.FileID and returns at once.
func (ix *Index) PutLater(h crypto.Header) error {
	val, err := h.Marshal()
	if err != nil {
		return fmt.Errorf("index put %s: %w", h.FileID, err)
	}
	if err := ix.enqueue(h.FileID, val); err != nil {
		return fmt.Errorf("index put %s: %w", h.FileID, err)
	}
	return nil
}

// DeleteLater queues the removal of the entry of id and returns at once.
func (ix *Index) DeleteLater(id crypto.FileID) error {
	if err := ix.enqueue(id, nil); err != nil {
		return fmt.Errorf("index delete %s: %w", id, err)
	}
	return nil
}

func (ix *Index) enqueue(id crypto.FileID, val []byte) error {
	if ix.readOnly {
		return badger.ErrReadOnlyTxn
	}
	return ix.use(func(db *badger.DB) error {
		q := &ix.q
		q.mu.Lock()
		q.pending[id] = val
		full := len(q.pending) >= indexQueueMax
		q.mu.Unlock()
		if full {
			return ix.commitQueue(db)
		}
		select {
		case q.kick <- struct{}{}:
		default: // the writer is already told
		}
		return nil
	})
}

// queued reports the change of id still waiting or being committed.
func (q *indexQueue) queued(id crypto.FileID) (val []byte, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if val, ok = q.pending[id]; ok {
		return val, true
	}
	val, ok = q.writing[id]
	return val, ok
}

// dropQueued forgets the queued change of id. Caller holds commitMu.
func (q *indexQueue) dropQueued(id crypto.FileID) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// Flush commits every queued change now.
func (ix *Index) Flush() error {
	if ix.readOnly {
		return nil
	}
	if err := ix.use(ix.commitQueue); err != nil {
		return fmt.Errorf("index flush: %w", err)
	}
	return nil
}

// commitQueue commits the queued changes as one batch.
func (ix *Index) commitQueue(db *badger.DB) error {
	q := &ix.q
	q.commitMu.Lock()
	defer q.commitMu.Unlock()
	q.mu.Lock()
	batch := q.pending
	if len(batch) == 0 {
		q.mu.Unlock()
		return nil
	}
	q.pending = make(map[crypto.FileID][]byte, len(batch))
	q.writing = batch
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.writing = nil
		q.mu.Unlock()
	}()

	wb := db.NewWriteBatch()
	defer wb.Cancel()
	for id, val := range batch {
		var err error
		if val == nil {
			err = wb.Delete(indexKey(id))
		} else {
			err = wb.Set(indexKey(id), val)
		}
		if err != nil {
			return fmt.Errorf("commit %d queued index changes: %w", len(batch), err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("commit %d queued index changes: %w", len(batch), err)
	}
	return nil
}

// writeLoop commits the queue whenever it has work, and once more when
// the index closes. A failed commit is logged: the entries it held are
// healed from the files' header mirrors when next needed.
func (ix *Index) writeLoop() {
	defer close(ix.q.done)
	delay := time.NewTimer(indexCommitDelay)
	delay.Stop()
	closing := func() {
		if err := ix.commitQueue(ix.db); err != nil {
			ix.log.Warn("cannot commit queued index changes at close", "dir", ix.dir, "err", err.Error())
		}
	}
	for {
		select {
		case <-ix.q.kick:
		case <-ix.stop:
			closing()
			return
		}
		delay.Reset(indexCommitDelay)
		select {
		case <-delay.C:
		case <-ix.stop:
			closing()
			return
		}
		if err := ix.commitQueue(ix.db); err != nil {
			ix.log.Warn("cannot commit queued index changes; the files' header mirrors will heal them", "dir", ix.dir, "err", err.Error())
		}
	}
}
