package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"testing"
)

// The chunk benchmarks run beside raw AES-256-GCM on the same buffer, so
// the cost of the format (AAD, nonce read, checks) shows as the difference.

var benchSizes = []struct {
	name  string
	shift uint8
}{{"4KiB", 12}, {"64KiB", 16}, {"1MiB", 20}}

func rawGCM(b *testing.B) cipher.AEAD {
	block, err := aes.NewCipher(testDEK(1))
	if err != nil {
		b.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		b.Fatal(err)
	}
	return gcm
}

func benchCipher(b *testing.B, shift uint8) *ContentCipher {
	c, err := NewContentCipher(testDEK(1), testFileID(1), Layout{ChunkShift: shift, SlotShift: 9}, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func BenchmarkSealChunk(b *testing.B) {
	for _, s := range benchSizes {
		size := 1 << s.shift
		plain := plainPattern(size)
		b.Run(fmt.Sprintf("kmsfs/%s", s.name), func(b *testing.B) {
			c := benchCipher(b, s.shift)
			dst := make([]byte, 0, size+ChunkOverhead)
			b.SetBytes(int64(size))
			for i := 0; b.Loop(); i++ {
				var err error
				if dst, err = c.SealChunk(dst[:0], int64(i), false, plain); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("rawGCM/%s", s.name), func(b *testing.B) {
			gcm := rawGCM(b)
			nonce := make([]byte, NonceSize)
			dst := make([]byte, 0, size+TagSize)
			b.SetBytes(int64(size))
			for b.Loop() {
				dst = gcm.Seal(dst[:0], nonce, plain, nil)
			}
		})
	}
}

func BenchmarkOpenChunk(b *testing.B) {
	for _, s := range benchSizes {
		size := 1 << s.shift
		plain := plainPattern(size)
		b.Run(fmt.Sprintf("kmsfs/%s", s.name), func(b *testing.B) {
			c := benchCipher(b, s.shift)
			sealed, err := c.SealChunk(nil, 5, false, plain)
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, 0, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				if dst, err = c.OpenChunk(dst[:0], 5, false, sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("rawGCM/%s", s.name), func(b *testing.B) {
			gcm := rawGCM(b)
			nonce := make([]byte, NonceSize)
			sealed := gcm.Seal(nil, nonce, plain, nil)
			dst := make([]byte, 0, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				var err error
				if dst, err = gcm.Open(dst[:0], nonce, sealed, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
