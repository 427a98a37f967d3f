package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// Geometry of the tampered files: 4 KiB chunks, default 512-byte slots.
const (
	tamperChunk       = 4096
	tamperCipherChunk = tamperChunk + 28
	tamperContentOff  = 32 + 2*512 // 1056
	tamperChunks      = 16
	tamperSize        = tamperChunks * tamperChunk // 64 KiB
)

// cipherChunkOff is the cipher offset of content chunk k.
func cipherChunkOff(k int) int64 { return tamperContentOff + int64(k)*tamperCipherChunk }

// readRange reads [off, off+n) of the plain file at p with pread.
func readRange(p string, off int64, n int) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b := make([]byte, n)
	m, err := fh.ReadAt(b, off)
	return b[:m], err
}

// TestTamper damages cipher files behind the mount's back: a flipped
// byte, a cut-off last chunk, two swapped chunks. The damaged chunks read
// as EIO (never wrong bytes), the others as written, and the mount log
// names the chunk.
func TestTamper(t *testing.T) {
	f := newFixture(t)
	f.init("--chunk-size", fmt.Sprint(tamperChunk))
	f.allowLog = regexp.MustCompile(`chunk failed authentication`)
	f.mount()
	names := []string{"tamper-flip.bin", "tamper-trunc.bin", "tamper-swap.bin", "tamper-control.bin"}
	content := map[string][]byte{}
	for _, n := range names {
		content[n] = randBytes(t, tamperSize)
		if err := os.WriteFile(filepath.Join(f.mnt, n), content[n], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f.unmount()

	paths := map[string]string{}
	for _, n := range names {
		paths[n] = f.cipherPath(n)
	}
	cipherPath := func(n string) string { return paths[n] }
	for _, n := range names {
		fi, err := os.Stat(cipherPath(n))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.Size(), cipherChunkOff(tamperChunks); got != want {
			t.Fatalf("cipher size of %s: got %d, want %d (the offsets below assume format.md)", n, got, want)
		}
	}
	fileID := map[string]string{}
	for _, n := range names {
		id, err := fileIDOf(cipherPath(n))
		if err != nil {
			t.Fatal(err)
		}
		fileID[n] = id
	}

	// Flip one byte in the content area of chunk 5.
	flipOff := cipherChunkOff(5) + 100
	b, err := os.ReadFile(cipherPath("tamper-flip.bin"))
	if err != nil {
		t.Fatal(err)
	}
	b[flipOff] ^= 0x01
	if err := os.WriteFile(cipherPath("tamper-flip.bin"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	// Remove the last chunk, at a chunk boundary.
	if err := os.Truncate(cipherPath("tamper-trunc.bin"), cipherChunkOff(tamperChunks-1)); err != nil {
		t.Fatal(err)
	}
	// Swap chunks 2 and 3.
	b, err = os.ReadFile(cipherPath("tamper-swap.bin"))
	if err != nil {
		t.Fatal(err)
	}
	c2 := append([]byte(nil), b[cipherChunkOff(2):cipherChunkOff(3)]...)
	copy(b[cipherChunkOff(2):], b[cipherChunkOff(3):cipherChunkOff(4)])
	copy(b[cipherChunkOff(3):], c2)
	if err := os.WriteFile(cipherPath("tamper-swap.bin"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	logBefore := len(f.mountLog())
	f.mount()

	plain := func(n string) string { return filepath.Join(f.mnt, n) }
	// wantEIO: reading the range fails with EIO, and any bytes it did
	// return are the right ones.
	wantEIO := func(t *testing.T, n string, off int64, size int) {
		t.Helper()
		got, err := readRange(plain(n), off, size)
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("read %s [%d, %d): got %d bytes, err %v; want EIO", n, off, off+int64(size), len(got), err)
		}
		if !bytes.Equal(got, content[n][off:off+int64(len(got))]) {
			t.Errorf("read %s [%d, %d): returned %d wrong bytes before failing", n, off, off+int64(size), len(got))
		}
	}
	wantBytes := func(t *testing.T, n string, off int64, size int) {
		t.Helper()
		got, err := readRange(plain(n), off, size)
		if err != nil || !bytes.Equal(got, content[n][off:off+int64(size)]) {
			t.Errorf("read %s [%d, %d): got %d bytes (equal %v), err %v; want the written bytes",
				n, off, off+int64(size), len(got), bytes.Equal(got, content[n][off:off+int64(len(got))]), err)
		}
	}

	t.Run("flipped byte", func(t *testing.T) {
		const n = "tamper-flip.bin"
		if fi, err := os.Stat(plain(n)); err != nil || fi.Size() != tamperSize {
			t.Errorf("stat %s: %v, %v; want size %d", n, fi, err, tamperSize)
		}
		if got, err := os.ReadFile(plain(n)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read whole %s: got %d bytes, err %v; want EIO", n, len(got), err)
		}
		for k := 0; k < tamperChunks; k++ {
			if k != 5 {
				wantBytes(t, n, int64(k)*tamperChunk, tamperChunk)
			}
		}
		wantBytes(t, n, 5*tamperChunk-300, 300)       // up to the bad chunk
		wantBytes(t, n, 6*tamperChunk, 2*tamperChunk) // from just after it
		wantEIO(t, n, 5*tamperChunk+10, 100)          // inside it
		wantEIO(t, n, 5*tamperChunk, tamperChunk)     // all of it
		wantEIO(t, n, 4*tamperChunk+4000, 200)        // straddling into it
	})

	t.Run("last chunk cut off", func(t *testing.T) {
		const n = "tamper-trunc.bin"
		const newSize = (tamperChunks - 1) * tamperChunk
		fi, err := os.Stat(plain(n))
		if err != nil || fi.Size() != newSize {
			t.Errorf("stat %s: %v; want size %d", n, err, newSize)
		}
		if got, err := os.ReadFile(plain(n)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read whole %s: got %d bytes, err %v; want EIO", n, len(got), err)
		}
		wantEIO(t, n, newSize-tamperChunk, tamperChunk) // the new tail
		wantEIO(t, n, newSize-10, 10)
		wantBytes(t, n, 0, tamperChunk)
		wantBytes(t, n, 7*tamperChunk, tamperChunk)
	})

	t.Run("swapped chunks", func(t *testing.T) {
		const n = "tamper-swap.bin"
		if got, err := os.ReadFile(plain(n)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read whole %s: got %d bytes, err %v; want EIO", n, len(got), err)
		}
		wantEIO(t, n, 2*tamperChunk, tamperChunk)
		wantEIO(t, n, 3*tamperChunk, tamperChunk)
		wantEIO(t, n, 2*tamperChunk+50, 10)
		wantEIO(t, n, 3*tamperChunk+50, 10)
		wantBytes(t, n, 1*tamperChunk, tamperChunk)
		wantBytes(t, n, 4*tamperChunk, tamperChunk)
		wantBytes(t, n, 15*tamperChunk, tamperChunk)
	})

	t.Run("control", func(t *testing.T) {
		const n = "tamper-control.bin"
		got, err := os.ReadFile(plain(n))
		if err != nil || !bytes.Equal(got, content[n]) {
			t.Errorf("read %s: got %d bytes, err %v; want the %d written bytes", n, len(got), err, tamperSize)
		}
	})

	f.unmount()

	t.Run("mount log names the chunk", func(t *testing.T) {
		log := f.mountLog()[logBefore:]
		var chunkLines []string
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "chunk") {
				chunkLines = append(chunkLines, l)
			}
		}
		if len(chunkLines) == 0 {
			t.Fatalf("mount.log: no line mentions a chunk after the EIO reads; log:\n%s", log)
		}
		for _, want := range []struct {
			file  string
			chunk int
		}{{"tamper-flip.bin", 5}, {"tamper-trunc.bin", 14}, {"tamper-swap.bin", 2}, {"tamper-swap.bin", 3}} {
			re := regexp.MustCompile(fmt.Sprintf(`\bchunk[=: ]+%d\b`, want.chunk))
			found := false
			for _, l := range chunkLines {
				if re.MatchString(l) && strings.Contains(l, fileID[want.file]) {
					found = true
					break
				}
			}
			if !found {
				t.Errorf("mount.log: no line names chunk %d of file ID %s (%s); chunk lines:\n%s",
					want.chunk, fileID[want.file], want.file, strings.Join(chunkLines, "\n"))
			}
		}
		// Logs carry file IDs, never plaintext names.
		for _, n := range names {
			if strings.Contains(log, n) {
				t.Errorf("mount.log names the plaintext file %s", n)
			}
		}
	})
}
