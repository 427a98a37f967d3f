package keymgr

import (
	"context"
	"crypto/rand"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// The hot paths of an open: a DEK cache hit (the open of a cached file,
// which must cost no KMS call and no index access) and, on a miss, the
// header index lookup. Run with `make bench` (docs/performance.md).

const benchKeys = 100000 // the mount's cache size

func benchCache(b *testing.B, n int) *Cache {
	b.Helper()
	c, err := NewCache(CacheOptions{MaxEntries: benchKeys})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	for i := 0; i < n; i++ {
		c.Put(benchID(i), stDEK(i))
	}
	return c
}

func benchID(n int) crypto.FileID {
	var id crypto.FileID
	id[0] = 0xb0
	id[12], id[13], id[14], id[15] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return id
}

// BenchmarkCacheHit is the lookup alone, in a full cache.
func BenchmarkCacheHit(b *testing.B) {
	c := benchCache(b, benchKeys)
	fn := func([]byte) error { return nil }
	for i := 0; b.Loop(); i++ {
		if hit, _ := c.With(benchID(i%benchKeys), fn); !hit {
			b.Fatal("miss")
		}
	}
}

// BenchmarkCacheHitCipher is what an open of a cached file costs in
// keymgr: the lookup and the AES-256-GCM key schedule of the file's
// content cipher (Manager.cached).
func BenchmarkCacheHitCipher(b *testing.B) {
	c := benchCache(b, benchKeys)
	l := crypto.DefaultLayout()
	for i := 0; b.Loop(); i++ {
		id := benchID(i % benchKeys)
		var cc *crypto.ContentCipher
		hit, err := c.With(id, func(dek []byte) error {
			var err error
			cc, err = crypto.NewContentCipher(dek, id, l, rand.Reader)
			return err
		})
		if !hit || err != nil || cc == nil {
			b.Fatalf("hit %t, err %v", hit, err)
		}
	}
}

// BenchmarkCachePut is the cost of caching a new file's DEK, evicting the
// least recently used once full.
func BenchmarkCachePut(b *testing.B) {
	c := benchCache(b, benchKeys)
	dek := stDEK(7)
	for i := 0; b.Loop(); i++ {
		c.Put(benchID(benchKeys+i), dek)
	}
}

func benchHeader(i int) crypto.Header {
	edk := make([]byte, 184) // an AWS KMS EDK's size
	edk[0], edk[1] = byte(i), byte(i>>8)
	return crypto.Header{
		FileID:     benchID(i),
		Generation: 1,
		Keys: []crypto.WrappedKey{{
			KeyARN:     "arn:aws:kms:eu-west-2:111122223333:key/0b6f5a3c-1d2e-4f70-8a9b-0c1d2e3f4a5b",
			KeyVersion: 1,
			EDK:        edk,
		}},
	}
}

const benchIndexFiles = 20000

func benchIndex(b *testing.B) *Index {
	b.Helper()
	ix, err := OpenIndex(b.TempDir(), IndexOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ix.Close() })
	for i := 0; i < benchIndexFiles; i++ {
		if err := ix.Put(benchHeader(i)); err != nil {
			b.Fatal(err)
		}
	}
	return ix
}

// BenchmarkIndexGet is the header lookup of an open that missed the cache.
func BenchmarkIndexGet(b *testing.B) {
	ix := benchIndex(b)
	for i := 0; b.Loop(); i++ {
		if _, err := ix.Get(benchID(i % benchIndexFiles)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIndexPut is the index write of every create.
func BenchmarkIndexPut(b *testing.B) {
	ix := benchIndex(b)
	for i := 0; b.Loop(); i++ {
		if err := ix.Put(benchHeader(benchIndexFiles + i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAWSGenerateDataKey is one GenerateDataKey through the aws
// provider to local-kms on 127.0.0.1, 8 calls in flight; client-us/call is
// this process's CPU (user + system, the SDK and HTTP client) per call,
// local-kms's own work excluded.
func BenchmarkAWSGenerateDataKey(b *testing.B) {
	lk := startLocalKMS(b)
	p, _ := newTestAWS(b, lk.url, nil)
	ec := testContext("bench", 1)
	ctx := context.Background()
	if _, err := p.GenerateDataKey(ctx, lkAliasA, ec); err != nil { // connect
		b.Fatal(err)
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.SetParallelism(4) // 4 x GOMAXPROCS goroutines: 8 on two cores
	c0 := cpu()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			dk, err := p.GenerateDataKey(ctx, lkAliasA, ec)
			if err != nil {
				b.Error(err)
				return
			}
			crypto.Zero(dk.Plaintext)
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(cpu()-c0)/float64(time.Microsecond)/float64(b.N), "client-us/call")
}
