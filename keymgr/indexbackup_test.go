package keymgr

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// TestIndexBackupLoad: a backup of a read-only index loads into a fresh
// one with every entry, and into a non-empty one without dropping its own.
func TestIndexBackupLoad(t *testing.T) {
	dir := stIndexDir(t)
	src := openStIndex(t, dir, IndexOptions{})
	want := map[crypto.FileID]crypto.Header{}
	for i := range 300 {
		h := stHeader(i, uint64(i%5+1))
		if err := src.Put(h); err != nil {
			t.Fatal(err)
		}
		want[h.FileID] = h
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	ro := openStIndex(t, dir, IndexOptions{ReadOnly: true})
	var buf bytes.Buffer
	if err := ro.Backup(&buf); err != nil {
		t.Fatalf("Backup of a read-only index: %v", err)
	}

	dst := openStIndex(t, stIndexDir(t), IndexOptions{})
	own := stHeader(1000, 7)
	if err := dst.Put(own); err != nil {
		t.Fatal(err)
	}
	if err := dst.Load(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if n, err := dst.Count(); err != nil || n != len(want)+1 {
		t.Fatalf("Count after Load: got %d, %v, want %d", n, err, len(want)+1)
	}
	for id, h := range want {
		got, err := dst.Get(id)
		if err != nil || !got.Equal(h) {
			t.Fatalf("Get(%s) after Load: got %+v, %v, want %+v", id, got, err, h)
		}
	}
	if got, err := dst.Get(own.FileID); err != nil || !got.Equal(own) {
		t.Errorf("own entry after Load: got %+v, %v", got, err)
	}
	if err := ro.Load(bytes.NewReader(buf.Bytes())); err == nil {
		t.Error("Load into a read-only index: got nil error")
	}
}

// TestIndexLoadRefusesGarbage: streams that are not index backups fail
// with ErrIndexCorrupt, without a panic or a huge allocation.
func TestIndexLoadRefusesGarbage(t *testing.T) {
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, 1<<62)
	notProto := make([]byte, 8+5)
	binary.LittleEndian.PutUint64(notProto, 5)
	copy(notProto[8:], []byte{0xff, 0xff, 0xff, 0xff, 0xff})
	truncated := make([]byte, 8+3)
	binary.LittleEndian.PutUint64(truncated, 100)
	tests := []struct {
		name string
		in   []byte
	}{
		{"huge frame", huge},
		{"not protobuf", notProto},
		{"truncated frame", truncated},
		{"short length", []byte{1, 2, 3}},
		{"text", []byte("this is not a badger backup, it is a text file\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := openStIndex(t, stIndexDir(t), IndexOptions{})
			err := ix.Load(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrIndexCorrupt) {
				t.Fatalf("Load: got %v, want ErrIndexCorrupt", err)
			}
		})
	}
	t.Run("empty", func(t *testing.T) {
		ix := openStIndex(t, stIndexDir(t), IndexOptions{})
		if err := ix.Load(bytes.NewReader(nil)); err != nil {
			t.Fatalf("Load of an empty stream: %v", err)
		}
	})
}

// TestManagerWithoutIndex: with no index every open reads the header
// mirror, every time the key is not cached, and nothing is written.
func TestManagerWithoutIndex(t *testing.T) {
	writer := newStEnv(t, nil)
	h, sealed := writer.newFile(t)

	reader := newStEnv(t, func(o *ManagerOptions) {
		o.Index = nil
		o.Provider = writer.kms.prov
		o.KeyARN = writer.kms.arn
	})
	ctx := context.Background()
	mir := &mirror{h: h}
	c, err := reader.m.OpenFile(ctx, h.FileID, mir.read)
	if err != nil {
		t.Fatalf("OpenFile without an index: %v", err)
	}
	opens(t, c, h, sealed)
	if got := mir.calls.Load(); got != 1 {
		t.Errorf("mirror reads: got %d, want 1", got)
	}
	if _, err := reader.m.OpenFile(ctx, h.FileID, mir.read); err != nil || mir.calls.Load() != 1 {
		t.Errorf("cached reopen: err %v, mirror reads %d, want nil, 1", err, mir.calls.Load())
	}
	if st := reader.m.Stats(); st.IndexHeals != 0 {
		t.Errorf("heals without an index: got %d, want 0", st.IndexHeals)
	}
	if _, err := reader.m.OpenFile(ctx, stID(99), nil); err == nil {
		t.Error("OpenFile of an unknown file with no mirror: got nil error")
	}
	if err := reader.m.Forget(ctx, h.FileID); err != nil {
		t.Errorf("Forget without an index: %v", err)
	}
	h2, _, err := reader.m.NewFile(ctx)
	if err != nil {
		t.Fatalf("NewFile without an index: %v", err)
	}
	if _, err := writer.ix.Get(h2.FileID); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("NewFile without an index wrote somewhere: %v", err)
	}
}
