package cipherfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
)

// TestWriteENOSPCKeepsFile: an extending write cut short by a full disk
// leaves the file exactly as it was (size and every byte), whether it
// starts inside the old last chunk (which it re-seals as non-last), before
// it, or at a chunk boundary. It needs a small tmpfs, so root.
func TestWriteENOSPCKeepsFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	tests := []struct {
		name     string
		plainOff int64
	}{
		{"inside the old last chunk", c + 904},
		{"inside an earlier chunk", 100},
		{"at the old end's chunk boundary", 2 * c},
		{"past the end", 5 * c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=128k"); err != nil {
				t.Skipf("mount tmpfs: %v", err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			tf := newTestFileIn(t, l, dir)
			ref := randBytes(t, int(c+1000)) // chunk 1 is partial: the last
			tf.mustWrite(t, ref, 0)
			fill(t, filepath.Join(dir, "filler"))

			if _, err := tf.WriteAt(bytes.Repeat([]byte{7}, 64<<10), tt.plainOff); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("WriteAt on a full disk: got %v, want ENOSPC", err)
			}
			if size, err := tf.PlainSize(); size != int64(len(ref)) || err != nil {
				t.Fatalf("PlainSize after the failed write: %d, %v; want %d, nil", size, err, len(ref))
			}
			// Every chunk reads (no EIO), each either as before or as
			// the write would have made it: chunks wholly before the
			// old last one may have gone out before the disk filled.
			got := tf.readAll(t)
			want := append([]byte(nil), ref...)
			for i := tt.plainOff; i < int64(len(want)); i++ {
				want[i] = 7
			}
			for off := int64(0); off < int64(len(ref)); off += c {
				end := min(off+c, int64(len(ref)))
				if !bytes.Equal(got[off:end], ref[off:end]) && !bytes.Equal(got[off:end], want[off:end]) {
					t.Fatalf("chunk %d after the failed write is neither its old nor its new content", off/c)
				}
			}
			if !bytes.Equal(got[c:], ref[c:]) {
				t.Fatalf("the old last chunk changed: a failed write must restore it")
			}
			if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
				t.Fatal(err)
			}
			tf.mustWrite(t, []byte("after"), int64(len(ref)))
			if again := tf.readAll(t); !bytes.Equal(again, append(got, "after"...)) {
				t.Fatalf("append after freeing space: wrong content")
			}
		})
	}
}

// fill writes to path until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 4096)
	for i := 0; i < 1<<16; i++ {
		if _, err := f.Write(block); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
	t.Fatal("the tmpfs never filled up")
}
