package cipherfile

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// testFile is a real cipher file in t.TempDir() with a random DEK.
type testFile struct {
	*File
	path string
	fd   *os.File
	c    *crypto.ContentCipher
	l    crypto.Layout
	h    crypto.Header
}

func testHeader(id crypto.FileID, gen uint64) crypto.Header {
	return crypto.Header{FileID: id, Generation: gen, Keys: []crypto.WrappedKey{{
		KeyARN:     "arn:kmsfs:local:0123456789abcdef:key/fedcba9876543210",
		KeyVersion: 1,
		EDK:        bytes.Repeat([]byte{0x5e}, 81),
	}}}
}

func newCipher(t testing.TB, l crypto.Layout) *crypto.ContentCipher {
	t.Helper()
	id, err := crypto.NewFileID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dek := make([]byte, crypto.DEKSize)
	if _, err := rand.Read(dek); err != nil {
		t.Fatal(err)
	}
	c, err := crypto.NewContentCipher(dek, id, l, nil)
	if err != nil {
		t.Fatalf("NewContentCipher: %v", err)
	}
	return c
}

// newTestFile creates an empty cipher file (head only) and its File.
func newTestFile(t testing.TB, l crypto.Layout) *testFile {
	t.Helper()
	return newTestFileIn(t, l, t.TempDir())
}

// newTestFileIn is newTestFile in dir (a small tmpfs, say).
func newTestFileIn(t testing.TB, l crypto.Layout, dir string) *testFile {
	t.Helper()
	c := newCipher(t, l)
	path := filepath.Join(dir, "f")
	fd, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	h := testHeader(c.FileID(), 1)
	if err := Create(fd, l, h); err != nil {
		t.Fatalf("Create: %v", err)
	}
	f, err := New(fd, c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &testFile{File: f, path: path, fd: fd, c: c, l: l, h: h}
}

func layoutShift(chunkShift uint8) crypto.Layout {
	return crypto.Layout{ChunkShift: chunkShift, SlotShift: crypto.DefaultSlotShift}
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// mustWrite writes p at off and fails the test on error or short count.
func (tf *testFile) mustWrite(t testing.TB, p []byte, off int64) {
	t.Helper()
	n, err := tf.WriteAt(p, off)
	if err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes, %d) = %d, %v; want %d, nil", len(p), off, n, err, len(p))
	}
}

// readAll reads the whole plain content and fails on any error.
func (tf *testFile) readAll(t testing.TB) []byte {
	t.Helper()
	size, err := tf.PlainSize()
	if err != nil {
		t.Fatalf("PlainSize: %v", err)
	}
	b := make([]byte, size+1) // one more: the read must end in io.EOF
	n, err := tf.ReadAt(b, 0)
	if int64(n) != size || err == nil || err.Error() != "EOF" {
		t.Fatalf("ReadAt(all) = %d, %v; want %d, EOF", n, err, size)
	}
	return b[:n]
}

// checkSize checks the plain size and that the cipher size is its image.
func (tf *testFile) checkSize(t testing.TB, want int64) {
	t.Helper()
	got, err := tf.PlainSize()
	if err != nil || got != want {
		t.Fatalf("PlainSize() = %d, %v; want %d, nil", got, err, want)
	}
	fi, err := tf.fd.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Size(), tf.l.CipherSize(want); got != want {
		t.Fatalf("cipher size %d, want %d", got, want)
	}
}
