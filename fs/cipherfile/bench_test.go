package cipherfile

import (
	"math/rand/v2"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

const benchFileSize = 64 << 20

// Run with TMPDIR=/dev/shm to measure the code rather than the disk.

func benchFile(b *testing.B, fill bool) *testFile {
	tf := newTestFile(b, crypto.DefaultLayout())
	if fill {
		buf := make([]byte, 1<<20)
		for off := int64(0); off < benchFileSize; off += int64(len(buf)) {
			tf.mustWrite(b, buf, off)
		}
	}
	return tf
}

var benchCases = []struct {
	name   string
	size   int
	random bool // random aligned offsets, else sequential
}{
	{"4KiB-random", 4 << 10, true},
	{"1MiB-sequential", 1 << 20, false},
}

func benchOffset(r *rand.Rand, i, size int, random bool) int64 {
	if random {
		return r.Int64N(benchFileSize/int64(size)) * int64(size)
	}
	return int64(i*size) % benchFileSize
}

// BenchmarkWriteAt overwrites a 64 MiB file with 4 KiB random writes
// (whole chunks: no read-modify-write), or writes one sequentially in
// 1 MiB writes (appending on the first pass, then overwriting).
func BenchmarkWriteAt(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			tf := benchFile(b, bc.random)
			p := make([]byte, bc.size)
			r := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(int64(bc.size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := tf.WriteAt(p, benchOffset(r, i, bc.size, bc.random)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadAt(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			tf := benchFile(b, true)
			p := make([]byte, bc.size)
			r := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(int64(bc.size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := tf.ReadAt(p, benchOffset(r, i, bc.size, bc.random)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppend4KiB: a program writing a file sequentially in 4 KiB
// pieces; every write also re-seals the old last chunk as non-last.
func BenchmarkAppend4KiB(b *testing.B) {
	tf := benchFile(b, false)
	p := make([]byte, 4<<10)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := int64(i*len(p)) % benchFileSize
		if off == 0 {
			if err := tf.Truncate(0); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := tf.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteAtUnaligned: 1000-byte writes at random offsets, each a
// read-modify-write of one or two chunks.
func BenchmarkWriteAtUnaligned(b *testing.B) {
	tf := benchFile(b, true)
	p := make([]byte, 1000)
	r := rand.New(rand.NewPCG(1, 2))
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tf.WriteAt(p, r.Int64N(benchFileSize-int64(len(p)))); err != nil {
			b.Fatal(err)
		}
	}
}
