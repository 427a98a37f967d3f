package keymgr

import (
	"bytes"
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// TestIndexQueueOrder: a sequence of queued and synchronous changes of one
// file ID ends as the last call says, both when read back at once (from
// the queue) and after everything is committed and the index reopened.
func TestIndexQueueOrder(t *testing.T) {
	h1, h2 := stHeader(1, 1), stHeader(1, 2)
	type op struct {
		later  bool
		delete bool
		h      crypto.Header
	}
	put := func(h crypto.Header) op { return op{h: h} }
	putLater := func(h crypto.Header) op { return op{later: true, h: h} }
	del := op{delete: true}
	delLater := op{later: true, delete: true}
	tests := []struct {
		name string
		ops  []op
		want *crypto.Header // nil: not indexed
	}{
		{name: "put later", ops: []op{putLater(h1)}, want: &h1},
		{name: "put later then delete later", ops: []op{putLater(h1), delLater}},
		{name: "delete later then put later", ops: []op{delLater, putLater(h2)}, want: &h2},
		{name: "put then delete later", ops: []op{put(h1), delLater}},
		{name: "put later then put", ops: []op{putLater(h1), put(h2)}, want: &h2},
		{name: "put later then delete", ops: []op{putLater(h1), del}},
		{name: "delete later then put", ops: []op{delLater, put(h1)}, want: &h1},
		{name: "put, delete later, put later", ops: []op{put(h1), delLater, putLater(h2)}, want: &h2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := stIndexDir(t)
			ix, err := OpenIndex(dir, IndexOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range tt.ops {
				var err error
				switch {
				case o.later && o.delete:
					err = ix.DeleteLater(h1.FileID)
				case o.later:
					err = ix.PutLater(o.h)
				case o.delete:
					err = ix.Delete(h1.FileID)
				default:
					err = ix.Put(o.h)
				}
				if err != nil {
					t.Fatalf("%+v: %v", o, err)
				}
			}
			check := func(when string, ix *Index) {
				t.Helper()
				got, err := ix.Get(h1.FileID)
				switch {
				case tt.want == nil && !errors.Is(err, ErrNotIndexed):
					t.Errorf("Get %s: got %+v, %v; want %v", when, got, err, ErrNotIndexed)
				case tt.want != nil && (err != nil || !reflect.DeepEqual(got, *tt.want)):
					t.Errorf("Get %s: got %+v, %v; want %+v", when, got, err, *tt.want)
				}
			}
			check("at once", ix)
			if err := ix.Close(); err != nil {
				t.Fatal(err)
			}
			check("after close and reopen", openStIndex(t, dir, IndexOptions{}))
		})
	}
}

// TestIndexQueueReaders: Count, ForEach and Backup see queued entries.
func TestIndexQueueReaders(t *testing.T) {
	ix := openStIndex(t, stIndexDir(t), IndexOptions{})
	for i := range 50 {
		if err := ix.PutLater(stHeader(i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if err := ix.DeleteLater(stID(i)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := ix.Count(); err != nil || n != 40 {
		t.Errorf("Count() = %d, %v; want 40", n, err)
	}
	n := 0
	if err := ix.ForEach(func(crypto.Header) error { n++; return nil }); err != nil || n != 40 {
		t.Errorf("ForEach saw %d entries (%v); want 40", n, err)
	}
	if err := ix.DeleteLater(stID(10)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := ix.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	restored := openStIndex(t, stIndexDir(t), IndexOptions{})
	if err := restored.Load(&buf); err != nil {
		t.Fatal(err)
	}
	if n, err := restored.Count(); err != nil || n != 39 {
		t.Errorf("Count() of a backup's restore = %d, %v; want 39", n, err)
	}
}

// TestIndexQueueConcurrent: many goroutines queue puts and deletes of
// their own file IDs while others read; every file ends as its last call
// said. Run with -race.
func TestIndexQueueConcurrent(t *testing.T) {
	ix := openStIndex(t, stIndexDir(t), IndexOptions{})
	const workers, perWorker = 8, 600 // more than indexQueueMax in all
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				n := w*perWorker + i
				if err := ix.PutLater(stHeader(n, 1)); err != nil {
					t.Error(err)
					return
				}
				if _, err := ix.Get(stID(n)); err != nil {
					t.Errorf("Get right after PutLater of %d: %v", n, err)
				}
				if n%3 == 0 {
					if err := ix.DeleteLater(stID(n)); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	want := 0
	for n := range workers * perWorker {
		if n%3 != 0 {
			want++
		}
	}
	if n, err := ix.Count(); err != nil || n != want {
		t.Fatalf("Count() = %d, %v; want %d", n, err, want)
	}
	for _, n := range []int{0, 1, 3, workers*perWorker - 1} {
		_, err := ix.Get(stID(n))
		if deleted := n%3 == 0; deleted != errors.Is(err, ErrNotIndexed) {
			t.Errorf("Get(%d): %v (deleted %v)", n, err, deleted)
		}
	}
}

// TestIndexQueueClosed: a closed or read-only index refuses queued
// changes.
func TestIndexQueueClosed(t *testing.T) {
	dir := stIndexDir(t)
	ix, err := OpenIndex(dir, IndexOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ix.PutLater(stHeader(1, 1)); err == nil {
		t.Error("PutLater on a closed index: no error")
	}
	ro := openStIndex(t, dir, IndexOptions{ReadOnly: true})
	if err := ro.DeleteLater(stID(1)); err == nil {
		t.Error("DeleteLater on a read-only index: no error")
	}
}
