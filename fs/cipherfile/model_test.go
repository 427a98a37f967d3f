package cipherfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

var modelSeed = flag.Uint64("cipherfile.seed", 0, "seed of TestModel (0: from the clock)")

// TestModel compares a File against a plain []byte over thousands of
// random WriteAt, Truncate and ReadAt calls whose offsets and lengths
// cluster around chunk boundaries. Rerun a failure with
// go test ./fs/cipherfile -run TestModel -args -cipherfile.seed=<the seed it logs>.
func TestModel(t *testing.T) {
	seed := *modelSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -cipherfile.seed=%d)", seed, seed)
	for _, tc := range []struct {
		shift uint8
		ops   int
	}{{12, 4000}, {15, 2000}} {
		ops := tc.ops
		if testing.Short() {
			ops /= 8
		}
		t.Run(fmt.Sprintf("C=%d", 1<<tc.shift), func(t *testing.T) {
			runModel(t, layoutShift(tc.shift), seed+uint64(tc.shift), ops)
		})
	}
}

func runModel(t *testing.T, l crypto.Layout, seed uint64, ops int) {
	c := l.ChunkSize()
	var chachaSeed [32]byte
	binary.LittleEndian.PutUint64(chachaSeed[:], seed)
	src := rand.NewChaCha8(chachaSeed)
	r := rand.New(src)
	tf := newTestFile(t, l)
	var ref []byte
	const maxChunks = 40

	// offset picks a plain offset near a chunk boundary, at the end of
	// the reference, or anywhere.
	offset := func() int64 {
		switch r.IntN(4) {
		case 0:
			return max(0, int64(len(ref))+r.Int64N(3)-1)
		case 1:
			return r.Int64N(maxChunks*c + 1)
		default:
			return max(0, r.Int64N(maxChunks)*c+r.Int64N(5)-2)
		}
	}
	length := func() int64 {
		switch r.IntN(5) {
		case 0:
			return 1 + r.Int64N(3)
		case 1:
			return c + r.Int64N(3) - 1
		case 2:
			return r.Int64N(12)*c + r.Int64N(3) - 1
		default:
			return 1 + r.Int64N(3*c)
		}
	}
	check := func(i int, op string) {
		t.Helper()
		size, err := tf.PlainSize()
		if err != nil || size != int64(len(ref)) {
			t.Fatalf("op %d %s: PlainSize() = %d, %v; want %d", i, op, size, err, len(ref))
		}
		fi, err := tf.fd.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.Size(), l.CipherSize(int64(len(ref))); got != want {
			t.Fatalf("op %d %s: cipher size %d, want %d", i, op, got, want)
		}
	}
	for i := range ops {
		var op string
		switch k := r.IntN(10); {
		case k < 5:
			off, n := offset(), max(1, length())
			op = fmt.Sprintf("WriteAt(%d bytes, %d)", n, off)
			p := make([]byte, n)
			src.Read(p)
			got, err := tf.WriteAt(p, off)
			if err != nil || got != len(p) {
				t.Fatalf("op %d %s = %d, %v", i, op, got, err)
			}
			if end := off + n; end > int64(len(ref)) {
				ref = append(ref, make([]byte, end-int64(len(ref)))...)
			}
			copy(ref[off:], p)
		case k < 7:
			size := offset()
			if r.IntN(4) == 0 {
				size = max(0, int64(len(ref))-r.Int64N(2*c))
			}
			op = fmt.Sprintf("Truncate(%d)", size)
			if err := tf.Truncate(size); err != nil {
				t.Fatalf("op %d %s: %v", i, op, err)
			}
			if size <= int64(len(ref)) {
				ref = ref[:size]
			} else {
				ref = append(ref, make([]byte, size-int64(len(ref)))...)
			}
		default:
			off, n := offset(), max(0, length())
			op = fmt.Sprintf("ReadAt(%d bytes, %d)", n, off)
			p := make([]byte, n)
			got, err := tf.ReadAt(p, off)
			want := max(0, min(n, int64(len(ref))-off))
			wantEOF := want < n
			if int64(got) != want || (err != nil && !(wantEOF && errors.Is(err, io.EOF))) || (wantEOF && err == nil) {
				t.Fatalf("op %d %s = %d, %v; want %d (EOF %t)", i, op, got, err, want, wantEOF)
			}
			if want > 0 && !bytes.Equal(p[:got], ref[off:off+want]) {
				t.Fatalf("op %d %s: bytes differ from reference", i, op)
			}
		}
		check(i, op)
		if i%100 == 99 {
			if got := tf.readAll(t); !bytes.Equal(got, ref) {
				t.Fatalf("op %d %s: whole content differs from reference", i, op)
			}
		}
	}
	if got := tf.readAll(t); !bytes.Equal(got, ref) {
		t.Fatalf("final content differs from reference")
	}
	// The last chunk is never a hole, and a second File over the same
	// cipher file (a later open) reads the same bytes.
	if len(ref) > 0 {
		raw, err := os.ReadFile(tf.path)
		if err != nil {
			t.Fatal(err)
		}
		last := raw[l.CipherChunkOffset(l.ChunkCount(int64(len(ref)))-1):]
		if crypto.IsHole(last, l) {
			t.Fatalf("last chunk is a hole")
		}
	}
	f2, err := New(tf.fd, tf.c)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len(ref))
	if n, err := f2.ReadAt(p, 0); n != len(ref) || (err != nil && err != io.EOF) || !bytes.Equal(p, ref) {
		t.Fatalf("second File: ReadAt = %d, %v; want %d bytes of reference", n, err, len(ref))
	}
}
