package cipherfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

func TestCreateWritesHead(t *testing.T) {
	for _, l := range []crypto.Layout{crypto.DefaultLayout(), {ChunkShift: 16, SlotShift: 13}} {
		tf := newTestFile(t, l)
		raw, err := os.ReadFile(tf.path)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := int64(len(raw)), l.ContentOffset(); got != want {
			t.Fatalf("layout %+v: file of %d bytes, want %d", l, got, want)
		}
		p, err := crypto.ParsePreamble(raw[:crypto.PreambleSize])
		if err != nil {
			t.Fatalf("ParsePreamble: %v", err)
		}
		if got, want := p, crypto.NewPreamble(l, tf.c.FileID()); got != want {
			t.Fatalf("preamble %+v, want %+v", got, want)
		}
		slot0, err := crypto.EncodeSlot(tf.h, l.SlotSize())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw[l.SlotOffset(0):l.SlotOffset(1)], slot0) {
			t.Fatalf("slot 0 is not the encoded header")
		}
		if !bytes.Equal(raw[l.SlotOffset(1):], make([]byte, l.SlotSize())) {
			t.Fatalf("slot 1 not zero")
		}
		tf.checkSize(t, 0)
	}
}

func TestHeaderSlotsAlternate(t *testing.T) {
	tf := newTestFile(t, crypto.DefaultLayout())
	h, slot, err := ReadHeader(tf.fd, tf.l)
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	if slot != 0 || h.Generation != 1 {
		t.Fatalf("new file: slot %d generation %d, want 0 1", slot, h.Generation)
	}
	for i := range 5 {
		next := h
		next.Generation++
		next.Keys = []crypto.WrappedKey{{KeyARN: "arn:kmsfs:local:x:key/y", KeyVersion: uint32(i + 2), EDK: bytes.Repeat([]byte{byte(i)}, 40)}}
		if err := WriteHeader(tf.fd, tf.l, next, slot); err != nil {
			t.Fatalf("WriteHeader: %v", err)
		}
		got, gotSlot, err := ReadHeader(tf.fd, tf.l)
		if err != nil {
			t.Fatalf("ReadHeader after write %d: %v", i, err)
		}
		if gotSlot != 1-slot {
			t.Fatalf("write %d: slot %d, want %d", i, gotSlot, 1-slot)
		}
		if got.Generation != next.Generation || got.Keys[0].KeyVersion != next.Keys[0].KeyVersion {
			t.Fatalf("write %d: got %+v, want %+v", i, got, next)
		}
		h, slot = got, gotSlot
	}
	tf.checkSize(t, 0) // header writes never touch content
}

func TestReadHeaderTornSlot(t *testing.T) {
	l := crypto.DefaultLayout()
	cases := []struct {
		name string
		tear func(b []byte) // the slot being written, S bytes
	}{
		{"garbage", func(b []byte) {
			for i := range b {
				b[i] = byte(i*31 + 7)
			}
		}},
		{"half written", func(b []byte) { clear(b[len(b)/2:]) }},
		{"one bit", func(b []byte) { b[5] ^= 0x10 }},
		{"crc only", func(b []byte) { b[len(b)-1] ^= 1 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tf := newTestFile(t, l)
			// generation 2 in slot 1, then a torn generation 3 in slot 0.
			h2 := testHeader(tf.c.FileID(), 2)
			if err := WriteHeader(tf.fd, l, h2, 0); err != nil {
				t.Fatal(err)
			}
			h3 := testHeader(tf.c.FileID(), 3)
			slot, err := crypto.EncodeSlot(h3, l.SlotSize())
			if err != nil {
				t.Fatal(err)
			}
			tc.tear(slot)
			if _, err := tf.fd.WriteAt(slot, l.SlotOffset(0)); err != nil {
				t.Fatal(err)
			}
			got, gotSlot, err := ReadHeader(tf.fd, l)
			if err != nil {
				t.Fatalf("ReadHeader: %v", err)
			}
			if gotSlot != 1 || got.Generation != 2 {
				t.Fatalf("got slot %d generation %d, want 1 2", gotSlot, got.Generation)
			}
		})
	}
}

func TestReadHeaderErrors(t *testing.T) {
	l := crypto.DefaultLayout()
	tf := newTestFile(t, l)
	if _, _, err := ReadHeader(tf.fd, crypto.Layout{ChunkShift: 13, SlotShift: 9}); !errors.Is(err, crypto.ErrLayoutMismatch) {
		t.Fatalf("other layout: got %v, want %v", err, crypto.ErrLayoutMismatch)
	}
	// Both slots damaged.
	if _, err := tf.fd.WriteAt([]byte{0xff}, l.SlotOffset(0)+3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadHeader(tf.fd, l); !errors.Is(err, crypto.ErrNoValidHeader) {
		t.Fatalf("damaged slot 0, empty slot 1: got %v, want %v", err, crypto.ErrNoValidHeader)
	}
	// A file cut inside the head.
	if err := tf.fd.Truncate(l.SlotOffset(1) + 10); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadHeader(tf.fd, l); !errors.Is(err, crypto.ErrNoValidHeader) {
		t.Fatalf("cut head: got %v, want %v", err, crypto.ErrNoValidHeader)
	}
	if err := WriteHeader(tf.fd, l, testHeader(tf.c.FileID(), 2), 2); !errors.Is(err, ErrBadSlot) {
		t.Fatalf("WriteHeader slot 2: got %v, want %v", err, ErrBadSlot)
	}
}

func TestReadPreambleErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		content []byte
		want    error
	}{
		{"empty", nil, crypto.ErrNotCipherFile},
		{"short", []byte("KMSF\x00\x01"), crypto.ErrNotCipherFile},
		{"plain text", bytes.Repeat([]byte("hello "), 20), crypto.ErrNotCipherFile},
		{"version 2", append([]byte("KMSF\x00\x02\x0c\x09"), make([]byte, 24)...), crypto.ErrUnsupportedVersion},
		{"bad shift", append([]byte("KMSF\x00\x01\x30\x09"), make([]byte, 24)...), crypto.ErrBadPreamble},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := ReadPreamble(f); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNewChecksPreamble(t *testing.T) {
	tf := newTestFile(t, crypto.DefaultLayout())
	if _, err := New(tf.fd, newCipher(t, crypto.DefaultLayout())); !errors.Is(err, ErrFileIDMismatch) {
		t.Fatalf("other file ID: got %v, want %v", err, ErrFileIDMismatch)
	}
	other := layoutShift(14)
	if _, err := New(tf.fd, newCipher(t, other)); !errors.Is(err, crypto.ErrLayoutMismatch) {
		t.Fatalf("other layout: got %v, want %v", err, crypto.ErrLayoutMismatch)
	}
	if _, err := New(tf.fd, tf.c); err != nil {
		t.Fatalf("own cipher: got %v, want nil", err)
	}
}
