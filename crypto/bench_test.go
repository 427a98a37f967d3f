package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"testing"
	"time"
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

// BenchmarkChunkOverhead measures kmsfs's chunk seal and open against raw
// AES-256-GCM on the same buffer, interleaved in blocks of 32 calls so
// that a busy machine slows both alike; it reports each one's ns per
// chunk and the format's overhead in percent (the nonce draw, the AAD,
// the length and hole checks). make bench checks overhead-% <= 10.
func BenchmarkChunkOverhead(b *testing.B) {
	const block = 32
	for _, op := range []string{"Seal", "Open"} {
		for _, s := range benchSizes {
			size := 1 << s.shift
			plain := plainPattern(size)
			b.Run(op+"/"+s.name, func(b *testing.B) {
				c := benchCipher(b, s.shift)
				gcm := rawGCM(b)
				nonce := make([]byte, NonceSize)
				sealed, err := c.SealChunk(nil, 5, false, plain)
				if err != nil {
					b.Fatal(err)
				}
				rawSealed := gcm.Seal(nil, nonce, plain, nil)
				dst := make([]byte, 0, size+ChunkOverhead)
				var kNs, rNs time.Duration
				b.SetBytes(int64(size))
				for b.Loop() {
					t0 := time.Now()
					for range block {
						if op == "Seal" {
							dst, err = c.SealChunk(dst[:0], 5, false, plain)
						} else {
							dst, err = c.OpenChunk(dst[:0], 5, false, sealed)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					t1 := time.Now()
					for range block {
						if op == "Seal" {
							dst = gcm.Seal(dst[:0], nonce, plain, nil)
						} else if dst, err = gcm.Open(dst[:0], nonce, rawSealed, nil); err != nil {
							b.Fatal(err)
						}
					}
					t2 := time.Now()
					kNs += t1.Sub(t0)
					rNs += t2.Sub(t1)
				}
				n := float64(b.N * block)
				b.ReportMetric(float64(kNs)/n, "kmsfs-ns/chunk")
				b.ReportMetric(float64(rNs)/n, "raw-ns/chunk")
				b.ReportMetric((float64(kNs)/float64(rNs)-1)*100, "overhead-%")
			})
		}
	}
}
