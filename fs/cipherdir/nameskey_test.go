package cipherdir

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

func testNamesHeader() crypto.Header {
	return crypto.Header{FileID: crypto.NamesKeyID, Generation: 1, Keys: []crypto.WrappedKey{
		{KeyARN: "arn:kmsfs:local:k:key/1", KeyVersion: 3, EDK: bytes.Repeat([]byte{0xa5}, 60)},
	}}
}

// newNamesDir is a cipher directory root with .kmsfs and both copies.
func newNamesDir(t *testing.T, l crypto.Layout) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(MetaDir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteNamesKey(dir, l, testNamesHeader()); err != nil {
		t.Fatalf("WriteNamesKey: %v", err)
	}
	return dir
}

func sameTestHeader(a, b crypto.Header) bool {
	ma, _ := a.Marshal()
	mb, _ := b.Marshal()
	return bytes.Equal(ma, mb)
}

func TestWriteNamesKey(t *testing.T) {
	l := crypto.DefaultLayout()
	dir := newNamesDir(t, l)
	for _, p := range NamesKeyPaths(dir) {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if got, want := fi.Mode(), os.FileMode(0o444); got != want {
			t.Errorf("%s mode: got %v, want %v", p, got, want)
		}
		if got, want := fi.Size(), l.ContentOffset(); got != want {
			t.Errorf("%s size: got %d, want %d (a head, no content)", p, got, want)
		}
	}
	for _, d := range []string{dir, MetaDir(dir)} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err) // else the check below looks at nothing
		}
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp-") {
				t.Errorf("temporary file %s left in %s", e.Name(), d)
			}
		}
	}
	readers := NamesKeyReaders(dir, l)
	if len(readers) != 2 {
		t.Fatalf("readers: got %d, want 2", len(readers))
	}
	for i, read := range readers {
		h, err := read()
		if err != nil {
			t.Fatalf("copy %d: %v", i+1, err)
		}
		if !sameTestHeader(h, testNamesHeader()) {
			t.Errorf("copy %d: got %+v, want %+v", i+1, h, testNamesHeader())
		}
	}

	// A second write replaces both copies whole.
	h2 := testNamesHeader()
	h2.Generation = 2
	if err := WriteNamesKey(dir, l, h2); err != nil {
		t.Fatalf("second WriteNamesKey: %v", err)
	}
	for i, read := range NamesKeyReaders(dir, l) {
		if h, err := read(); err != nil || h.Generation != 2 {
			t.Errorf("copy %d after rewrite: got generation %d, %v; want 2", i+1, h.Generation, err)
		}
	}
}

func TestWriteNamesKeyRefuses(t *testing.T) {
	l := crypto.DefaultLayout()
	tests := []struct {
		name    string
		h       crypto.Header
		noMeta  bool
		wantErr error
	}{
		{name: "file ID not zero", h: func() crypto.Header { h := testNamesHeader(); h.FileID[0] = 1; return h }(), wantErr: crypto.ErrBadHeader},
		{name: "no wrapped key", h: crypto.Header{FileID: crypto.NamesKeyID, Generation: 1}, wantErr: crypto.ErrBadHeader},
		{name: "no .kmsfs", h: testNamesHeader(), noMeta: true, wantErr: os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if !tt.noMeta {
				if err := os.Mkdir(MetaDir(dir), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			err := WriteNamesKey(dir, l, tt.h)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			for _, d := range []string{dir, MetaDir(dir)} {
				entries, err := os.ReadDir(d)
				if err != nil && !(tt.noMeta && d == MetaDir(dir) && errors.Is(err, os.ErrNotExist)) {
					t.Fatal(err) // else the check below looks at nothing
				}
				for _, e := range entries {
					if strings.Contains(e.Name(), ".tmp-") {
						t.Errorf("temporary file %s left in %s", e.Name(), d)
					}
				}
			}
		})
	}
}

func TestNamesKeyReadersRefuse(t *testing.T) {
	l := crypto.DefaultLayout()
	writeHead := func(t *testing.T, p string, id crypto.FileID, l crypto.Layout) {
		t.Helper()
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := testNamesHeader()
		h.FileID = id
		if err := cipherfile.Create(f, l, h); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		damage  func(t *testing.T, p string) // applied to copy 1; copy 2 must still read
		wantErr error                        // nil: only wantMsg is checked
		wantMsg string
	}{
		{name: "missing", damage: func(t *testing.T, p string) { os.Remove(p) }, wantErr: os.ErrNotExist},
		{name: "empty", damage: func(t *testing.T, p string) { os.Remove(p); os.WriteFile(p, nil, 0o444) }, wantErr: crypto.ErrNotCipherFile},
		{name: "garbage", damage: func(t *testing.T, p string) {
			os.Remove(p)
			os.WriteFile(p, bytes.Repeat([]byte("x"), 4096), 0o444)
		}, wantErr: crypto.ErrNotCipherFile},
		{name: "both slots zeroed", damage: func(t *testing.T, p string) {
			os.Chmod(p, 0o644)
			b, _ := os.ReadFile(p)
			clear(b[crypto.PreambleSize:])
			os.WriteFile(p, b, 0o444)
		}, wantErr: crypto.ErrNoValidHeader},
		{name: "truncated into slot 0", damage: func(t *testing.T, p string) { os.Truncate(p, crypto.PreambleSize+10) }, wantErr: crypto.ErrNoValidHeader},
		{name: "another file's head", damage: func(t *testing.T, p string) {
			os.Remove(p)
			writeHead(t, p, crypto.FileID{1, 2, 3}, l)
		}, wantErr: crypto.ErrBadHeader, wantMsg: "not the names key"},
		{name: "other layout", damage: func(t *testing.T, p string) {
			os.Remove(p)
			writeHead(t, p, crypto.NamesKeyID, crypto.Layout{ChunkShift: l.ChunkShift + 1, SlotShift: l.SlotShift})
		}, wantErr: crypto.ErrLayoutMismatch},
		{name: "symlink", damage: func(t *testing.T, p string) {
			good := p + ".real"
			os.Rename(p, good)
			if err := os.Symlink(good, p); err != nil {
				t.Fatal(err)
			}
		}, wantMsg: "symlink"},
		{name: "directory", damage: func(t *testing.T, p string) { os.Remove(p); os.Mkdir(p, 0o700) }, wantMsg: "not a regular file"},
		{name: "fifo", damage: func(t *testing.T, p string) {
			os.Remove(p)
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Skip(err)
			}
		}, wantMsg: "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := newNamesDir(t, l)
			p := NamesPath(dir)
			tt.damage(t, p)
			readers := NamesKeyReaders(dir, l)
			_, err := readers[0]()
			if err == nil {
				t.Fatalf("copy 1: got nil error, want one")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("copy 1: got %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("copy 1: got %q, want it to name %s and say %q", err, p, tt.wantMsg)
			}
			if h, err := readers[1](); err != nil || !sameTestHeader(h, testNamesHeader()) {
				t.Errorf("copy 2: got %+v, %v; want the header", h, err)
			}
		})
	}
}

// TestNamesKeyMetaSymlink: a .kmsfs that is a symlink is not followed,
// neither to read the copy in it nor to write one.
func TestNamesKeyMetaSymlink(t *testing.T) {
	l := crypto.DefaultLayout()
	dir := newNamesDir(t, l)
	elsewhere := t.TempDir()
	if err := os.Rename(MetaDir(dir), elsewhere+"/meta"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere+"/meta", MetaDir(dir)); err != nil {
		t.Fatal(err)
	}
	readers := NamesKeyReaders(dir, l)
	if _, err := readers[0](); err != nil {
		t.Errorf("copy 1: %v", err)
	}
	if _, err := readers[1](); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("copy 2 through a symlinked .kmsfs: got %v, want a refusal", err)
	}
	if err := WriteNamesKey(dir, l, testNamesHeader()); err == nil {
		t.Errorf("WriteNamesKey through a symlinked .kmsfs: got nil error, want one")
	}
	entries, err := os.ReadDir(elsewhere + "/meta")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("the moved .kmsfs is empty: copy 1 should be in it")
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s written through the symlink", e.Name())
		}
	}
}
