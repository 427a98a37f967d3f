package cipherfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// edgeSizes are the plain sizes and offsets every edge test crosses.
func edgeSizes(c int64) []int64 {
	return []int64{0, 1, c - 1, c, c + 1, 2*c - 1, 2 * c, 3*c + 5}
}

func TestWriteAtEdges(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	for _, size := range edgeSizes(c) {
		for _, off := range edgeSizes(c) {
			for _, n := range []int64{1, c - 1, c, c + 1, 2*c + 3} {
				t.Run(fmt.Sprintf("size=%d/off=%d/len=%d", size, off, n), func(t *testing.T) {
					tf := newTestFile(t, l)
					ref := randBytes(t, int(size))
					if size > 0 {
						tf.mustWrite(t, ref, 0)
					}
					p := randBytes(t, int(n))
					tf.mustWrite(t, p, off)
					if end := off + n; end > int64(len(ref)) {
						ref = append(ref, make([]byte, end-int64(len(ref)))...)
					}
					copy(ref[off:], p)
					tf.checkSize(t, int64(len(ref)))
					if got := tf.readAll(t); !bytes.Equal(got, ref) {
						t.Fatalf("content differs from reference")
					}
				})
			}
		}
	}
}

func TestTruncateEdges(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	sizes := append(edgeSizes(c), 10*c+7)
	for _, from := range sizes {
		for _, to := range sizes {
			t.Run(fmt.Sprintf("%d->%d", from, to), func(t *testing.T) {
				tf := newTestFile(t, l)
				ref := randBytes(t, int(from))
				if from > 0 {
					tf.mustWrite(t, ref, 0)
				}
				if err := tf.Truncate(to); err != nil {
					t.Fatalf("Truncate(%d): %v", to, err)
				}
				if to <= from {
					ref = ref[:to]
				} else {
					ref = append(ref, make([]byte, to-from)...)
				}
				tf.checkSize(t, to)
				if got := tf.readAll(t); !bytes.Equal(got, ref) {
					t.Fatalf("content differs from reference")
				}
				// The file stays writable at its end.
				tf.mustWrite(t, []byte("x"), to)
				ref = append(ref, 'x')
				if got := tf.readAll(t); !bytes.Equal(got, ref) {
					t.Fatalf("content after append differs from reference")
				}
			})
		}
	}
}

func TestReadAtEOFSemantics(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	tf := newTestFile(t, l)
	ref := randBytes(t, int(2*c+10))
	tf.mustWrite(t, ref, 0)
	size := int64(len(ref))
	cases := []struct {
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}{
		{0, 0, 0, false},
		{0, int(size), int(size), false},
		{0, int(size) + 1, int(size), true},
		{c - 1, 2, 2, false},
		{size - 1, 1, 1, false},
		{size - 1, 5, 1, true},
		{size, 1, 0, true},
		{size + c, 1, 0, true},
		{2 * c, 10, 10, false},
	}
	for _, tc := range cases {
		p := make([]byte, tc.n)
		n, err := tf.ReadAt(p, tc.off)
		if n != tc.wantN || (err == io.EOF) != tc.wantEOF || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(%d bytes, %d) = %d, %v; want %d, EOF %t", tc.n, tc.off, n, err, tc.wantN, tc.wantEOF)
			continue
		}
		if n > 0 && !bytes.Equal(p[:n], ref[tc.off:tc.off+int64(n)]) {
			t.Errorf("ReadAt(%d bytes, %d): wrong bytes", tc.n, tc.off)
		}
	}
	if _, err := tf.ReadAt(make([]byte, 1), -1); !errors.Is(err, ErrNegativeOffset) || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ReadAt at -1: got %v, want %v", err, ErrNegativeOffset)
	}
	if _, err := tf.WriteAt(make([]byte, 1), -1); !errors.Is(err, ErrNegativeOffset) {
		t.Errorf("WriteAt at -1: got %v, want %v", err, ErrNegativeOffset)
	}
	if err := tf.Truncate(-1); !errors.Is(err, ErrNegativeOffset) {
		t.Errorf("Truncate(-1): got %v, want %v", err, ErrNegativeOffset)
	}
	if _, err := tf.WriteAt(make([]byte, 2), math.MaxInt64-1); !errors.Is(err, ErrFileTooLarge) {
		t.Errorf("WriteAt at MaxInt64-1: got %v, want %v", err, ErrFileTooLarge)
	}
	if n, err := tf.WriteAt(nil, size+100); n != 0 || err != nil {
		t.Errorf("WriteAt(nil) = %d, %v; want 0, nil", n, err)
	}
	tf.checkSize(t, size) // an empty write does not extend
}

// cipherBlocks is the cipher file's allocated size in bytes.
func cipherBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestHoles(t *testing.T) {
	for _, shift := range []uint8{12, 16} {
		l := layoutShift(shift)
		c := l.ChunkSize()
		far := int64(4 << 20 >> shift) // 4 MiB of holes
		cases := []struct {
			name string
			do   func(t *testing.T, tf *testFile) []byte // returns the reference
		}{
			{"write past EOF of empty file", func(t *testing.T, tf *testFile) []byte {
				tf.mustWrite(t, []byte("end"), far*c+5)
				ref := make([]byte, far*c+8)
				copy(ref[far*c+5:], "end")
				return ref
			}},
			{"write past partial last chunk", func(t *testing.T, tf *testFile) []byte {
				head := randBytes(t, int(c/2))
				tf.mustWrite(t, head, 0)
				tf.mustWrite(t, []byte("end"), far*c)
				ref := make([]byte, far*c+3)
				copy(ref, head)
				copy(ref[far*c:], "end")
				return ref
			}},
			{"truncate up", func(t *testing.T, tf *testFile) []byte {
				head := randBytes(t, int(c+1))
				tf.mustWrite(t, head, 0)
				if err := tf.Truncate(far*c + 1); err != nil {
					t.Fatal(err)
				}
				ref := make([]byte, far*c+1)
				copy(ref, head)
				return ref
			}},
		}
		for _, tc := range cases {
			t.Run(fmt.Sprintf("C=%d/%s", c, tc.name), func(t *testing.T) {
				tf := newTestFile(t, l)
				ref := tc.do(t, tf)
				tf.checkSize(t, int64(len(ref)))
				if got := tf.readAll(t); !bytes.Equal(got, ref) {
					t.Fatalf("content differs from reference")
				}
				// At most the head, 2 chunks written and 2 blocks of slack
				// each side; the far chunks are holes.
				if got, limit := cipherBlocks(t, tf.path), l.ContentOffset()+2*l.CipherChunkSize()+4*4096+8192; got > limit {
					t.Fatalf("cipher file allocates %d bytes, want at most %d (sparse)", got, limit)
				}
				// A hole chunk is all zero on disk and opens as C zeros.
				raw := make([]byte, l.CipherChunkSize())
				if _, err := tf.fd.ReadAt(raw, l.CipherChunkOffset(far/2)); err != nil {
					t.Fatal(err)
				}
				if !crypto.IsHole(raw, l) {
					t.Fatalf("chunk %d is not a hole", far/2)
				}
				// Writing into a hole makes it a chunk; its neighbours stay holes.
				tf.mustWrite(t, []byte("mid"), (far/2)*c+7)
				copy(ref[(far/2)*c+7:], "mid")
				if got := tf.readAll(t); !bytes.Equal(got, ref) {
					t.Fatalf("content after writing into a hole differs from reference")
				}
			})
		}
	}
}

// flipCipherByte flips one bit of the cipher file at cipherOff.
func flipCipherByte(t *testing.T, fd *os.File, cipherOff int64) {
	t.Helper()
	b := make([]byte, 1)
	if _, err := fd.ReadAt(b, cipherOff); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x04
	if _, err := fd.WriteAt(b, cipherOff); err != nil {
		t.Fatal(err)
	}
}

// wantChunkAuth checks err is a *ChunkError for index wrapping crypto.ErrAuth.
func wantChunkAuth(t *testing.T, err error, index int64) {
	t.Helper()
	var ce *ChunkError
	if !errors.As(err, &ce) || !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("got %v, want a ChunkError wrapping %v", err, crypto.ErrAuth)
	}
	if ce.Index != index {
		t.Fatalf("got chunk %d, want %d (%v)", ce.Index, index, err)
	}
}

func TestTamperedChunk(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	const chunks = 12
	for _, k := range []int64{0, 3, chunks - 1} {
		for _, where := range []string{"nonce", "ciphertext", "tag"} {
			t.Run(fmt.Sprintf("chunk %d %s", k, where), func(t *testing.T) {
				tf := newTestFile(t, l)
				ref := randBytes(t, int(chunks*c-100)) // short last chunk
				tf.mustWrite(t, ref, 0)
				cipherOff := map[string]int64{"nonce": 3, "ciphertext": 12 + 50, "tag": 12 + 60 + 16 - 1}[where]
				flipCipherByte(t, tf.fd, l.CipherChunkOffset(k)+cipherOff)

				p := make([]byte, len(ref))
				n, err := tf.ReadAt(p, 0)
				wantChunkAuth(t, err, k)
				if msg := err.Error(); strings.Contains(msg, tf.path) || !strings.Contains(msg, tf.c.FileID().String()) {
					t.Fatalf("error %q: want the file ID and not the path", msg)
				}
				if int64(n) != k*c || !bytes.Equal(p[:n], ref[:n]) {
					t.Fatalf("ReadAt(all) = %d bytes before the bad chunk, want %d", n, k*c)
				}
				// A read starting inside the bad chunk returns nothing.
				n, err = tf.ReadAt(make([]byte, 10), k*c+5)
				wantChunkAuth(t, err, k)
				if n != 0 {
					t.Fatalf("ReadAt in chunk %d = %d bytes, want 0", k, n)
				}
				// Other chunks still read.
				for _, other := range []int64{0, 5, chunks - 1} {
					if other == k {
						continue
					}
					end := min((other+1)*c, int64(len(ref)))
					p := make([]byte, end-other*c)
					if n, err := tf.ReadAt(p, other*c); err != nil || !bytes.Equal(p[:n], ref[other*c:end]) {
						t.Fatalf("ReadAt chunk %d = %d, %v; want its bytes", other, n, err)
					}
				}
				// A partial write into the bad chunk needs its bytes: it fails and changes nothing.
				before, err := os.ReadFile(tf.path)
				if err != nil {
					t.Fatal(err)
				}
				_, err = tf.WriteAt([]byte("x"), k*c+1)
				wantChunkAuth(t, err, k)
				after, err := os.ReadFile(tf.path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(before, after) {
					t.Fatalf("failed write changed the cipher file")
				}
				// A whole-chunk write replaces it.
				if k < chunks-1 {
					fresh := randBytes(t, int(c))
					tf.mustWrite(t, fresh, k*c)
					copy(ref[k*c:], fresh)
					if got := tf.readAll(t); !bytes.Equal(got, ref) {
						t.Fatalf("content after rewriting chunk %d differs", k)
					}
				}
			})
		}
	}
}

func TestSwappedChunks(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	tf := newTestFile(t, l)
	ref := randBytes(t, int(4*c))
	tf.mustWrite(t, ref, 0)
	k := l.CipherChunkSize()
	a, b := make([]byte, k), make([]byte, k)
	tf.fd.ReadAt(a, l.CipherChunkOffset(1))
	tf.fd.ReadAt(b, l.CipherChunkOffset(2))
	tf.fd.WriteAt(b, l.CipherChunkOffset(1))
	tf.fd.WriteAt(a, l.CipherChunkOffset(2))
	n, err := tf.ReadAt(make([]byte, 4*c), 0)
	wantChunkAuth(t, err, 1)
	if int64(n) != c {
		t.Fatalf("got %d bytes, want %d", n, c)
	}
}

func TestCutBehindBack(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	const chunks = 6
	for _, cut := range []int64{1, 3, chunks - 1} {
		t.Run(fmt.Sprintf("at chunk boundary %d", cut), func(t *testing.T) {
			tf := newTestFile(t, l)
			ref := randBytes(t, int(chunks*c-7))
			tf.mustWrite(t, ref, 0)
			if err := os.Truncate(tf.path, l.CipherChunkOffset(cut)); err != nil {
				t.Fatal(err)
			}
			tf.checkSize(t, cut*c)
			n, err := tf.ReadAt(make([]byte, chunks*c), 0)
			wantChunkAuth(t, err, cut-1)
			if int64(n) != (cut-1)*c {
				t.Fatalf("got %d bytes, want %d", n, (cut-1)*c)
			}
			// A write past the new end needs the sealed-as-non-last chunk
			// re-sealed: it refuses, leaving the file as it was.
			_, err = tf.WriteAt([]byte("x"), chunks*c)
			wantChunkAuth(t, err, cut-1)
			tf.checkSize(t, cut*c)
		})
	}
}

func TestBadTail(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	for _, tail := range []int64{1, 13, crypto.ChunkOverhead} {
		t.Run(fmt.Sprintf("tail %d", tail), func(t *testing.T) {
			tf := newTestFile(t, l)
			ref := randBytes(t, int(5*c))
			tf.mustWrite(t, ref, 0)
			tf.mustWrite(t, []byte("tail"), 5*c) // chunk 5 holds 4 bytes
			if err := os.Truncate(tf.path, l.CipherChunkOffset(5)+tail); err != nil {
				t.Fatal(err)
			}
			size, err := tf.PlainSize()
			if size != 5*c+tail || !errors.Is(err, crypto.ErrBadSize) {
				t.Fatalf("PlainSize() = %d, %v; want %d, %v", size, err, 5*c+tail, crypto.ErrBadSize)
			}
			p := make([]byte, 6*c)
			n, err := tf.ReadAt(p, 0)
			wantChunkAuth(t, err, 5)
			if int64(n) != 5*c || !bytes.Equal(p[:n], ref) {
				t.Fatalf("ReadAt = %d bytes, want the %d of the whole chunks", n, 5*c)
			}
			if n, err := tf.ReadAt(p, 5*c); n != 0 {
				t.Fatalf("ReadAt(tail) = %d, %v; want 0", n, err)
			} else {
				wantChunkAuth(t, err, 5)
			}
			// A read inside the whole chunks is unaffected (chunk 4 is not last).
			if n, err := tf.ReadAt(p[:c], 4*c); n != int(c) || err != nil {
				t.Fatalf("ReadAt(chunk 4) = %d, %v; want %d, nil", n, err, c)
			}
			// A write inside the whole chunks keeps them non-last.
			tf.mustWrite(t, []byte("abc"), 4*c+1)
			copy(ref[4*c+1:], "abc")
			if n, err := tf.ReadAt(p[:c], 4*c); n != int(c) || err != nil || !bytes.Equal(p[:c], ref[4*c:]) {
				t.Fatalf("ReadAt(chunk 4) after write = %d, %v; want %d, nil", n, err, c)
			}
			// Extending past the tail needs it re-sealed: refused.
			if _, err := tf.WriteAt([]byte("x"), 7*c); err == nil {
				t.Fatalf("WriteAt past a bad tail: got nil, want an error")
			} else {
				wantChunkAuth(t, err, 5)
			}
			// Truncating to the whole chunks repairs the file.
			if err := tf.Truncate(5 * c); err != nil {
				t.Fatalf("Truncate: %v", err)
			}
			tf.checkSize(t, 5*c)
			if got := tf.readAll(t); !bytes.Equal(got, ref) {
				t.Fatalf("content after repair differs")
			}
		})
	}
}

func TestConcurrentReadAt(t *testing.T) {
	l := crypto.DefaultLayout()
	c := l.ChunkSize()
	tf := newTestFile(t, l)
	ref := randBytes(t, int(64*c+123))
	tf.mustWrite(t, ref, 0)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				off := r.Int64N(int64(len(ref)))
				p := make([]byte, 1+r.IntN(int(20*c)))
				n, err := tf.ReadAt(p, off)
				want := min(int64(len(p)), int64(len(ref))-off)
				if int64(n) != want || (err != nil && err != io.EOF) || !bytes.Equal(p[:n], ref[off:off+want]) {
					errs <- fmt.Errorf("ReadAt(%d bytes, %d) = %d, %v; want %d", len(p), off, n, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLargeWriteRead(t *testing.T) {
	// Larger than one batch: several preads/pwrites per call.
	l := crypto.DefaultLayout()
	tf := newTestFile(t, l)
	ref := randBytes(t, 3*cipherBatchMax+12345)
	tf.mustWrite(t, ref[:100], 0)
	tf.mustWrite(t, ref[100:], 100)
	tf.checkSize(t, int64(len(ref)))
	if got := tf.readAll(t); !bytes.Equal(got, ref) {
		t.Fatalf("content differs from reference")
	}
	p := make([]byte, len(ref)-777)
	if n, err := tf.ReadAt(p, 777); n != len(p) || err != nil || !bytes.Equal(p, ref[777:]) {
		t.Fatalf("ReadAt(777) = %d, %v; want %d, nil and the bytes", n, err, len(p))
	}
}

func TestErrorsHidePath(t *testing.T) {
	tf := newTestFile(t, crypto.DefaultLayout())
	tf.mustWrite(t, []byte("secret name"), 0)
	tf.fd.Close()
	cases := []struct {
		op   string
		call func() error
	}{
		{"ReadAt", func() error { _, err := tf.ReadAt(make([]byte, 1), 0); return err }},
		{"WriteAt", func() error { _, err := tf.WriteAt([]byte("x"), 0); return err }},
		{"Truncate", func() error { return tf.Truncate(1) }},
		{"Sync", tf.Sync},
		{"PlainSize", func() error { _, err := tf.PlainSize(); return err }},
	}
	for _, tc := range cases {
		err := tc.call()
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s on a closed file: got %v, want %v", tc.op, err, os.ErrClosed)
			continue
		}
		if strings.Contains(err.Error(), tf.path) {
			t.Errorf("%s: error %q names the path", tc.op, err)
		}
	}
}

// syscalls returns this process's read and write syscall counts
// (/proc/self/io), or skips the test where the kernel does not count them.
func syscalls(t *testing.T) (reads, writes int64) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no syscall accounting: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		var n int64
		if _, err := fmt.Sscanf(line, "syscr: %d", &n); err == nil {
			reads = n
		}
		if _, err := fmt.Sscanf(line, "syscw: %d", &n); err == nil {
			writes = n
		}
	}
	return reads, writes
}

// TestBatchedIO counts syscalls: a 1 MiB write of 4 KiB chunks is one
// pwrite (two when it extends the file: the old last chunk is re-sealed),
// a 1 MiB read one pread.
func TestBatchedIO(t *testing.T) {
	l := crypto.DefaultLayout()
	tf := newTestFile(t, l)
	p := randBytes(t, 1<<20)
	tf.mustWrite(t, p, 0)
	cases := []struct {
		name                  string
		do                    func()
		wantReads, wantWrites int64
	}{
		{"overwrite 1 MiB", func() { tf.mustWrite(t, p, 0) }, 0, 1},
		{"append 1 MiB", func() { tf.mustWrite(t, p, 1<<20) }, 1, 2}, // read + re-seal of the old last chunk
		{"unaligned overwrite 1 MiB", func() { tf.mustWrite(t, p, 100) }, 2, 1},
		{"read 1 MiB", func() {
			if n, err := tf.ReadAt(p, 12345); n != len(p) || err != nil {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
		}, 1, 0},
	}
	// Reading /proc/self/io itself counts: measure that first.
	r0, _ := syscalls(t)
	r1, _ := syscalls(t)
	procReads := r1 - r0
	for _, tc := range cases {
		r0, w0 := syscalls(t)
		tc.do()
		r1, w1 := syscalls(t)
		if gotR, gotW := r1-r0-procReads, w1-w0; gotR != tc.wantReads || gotW != tc.wantWrites {
			t.Errorf("%s: %d reads, %d writes; want %d, %d", tc.name, gotR, gotW, tc.wantReads, tc.wantWrites)
		}
	}
}
