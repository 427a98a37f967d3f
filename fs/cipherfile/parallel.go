package cipherfile

import (
	"runtime"
	"sync"
)

// parallelMinBytes is the plain bytes a call must cover before its chunks
// are sealed or opened on several cores: below it, starting goroutines
// costs more than AES-GCM on one core saves (a 4 KiB chunk takes about a
// microsecond). 128 KiB is the kernel's usual read-ahead and write-back
// unit, so large sequential I/O (up to 1 MiB per FUSE request) is split and
// small random I/O is not.
const parallelMinBytes = 128 << 10

// parallelChunks runs fn over chunks [0, n) of a batch, split into
// contiguous ranges on up to GOMAXPROCS goroutines when the batch holds at
// least parallelMinBytes. fn(j0, j1) handles chunks j0..j1-1 and returns a
// count and an error; the result is that of the first range, in chunk
// order, that failed (so a count of bytes done before a bad chunk stays
// right), else that of the last range.
func parallelChunks(n, chunkShift int, fn func(j0, j1 int) (int, error)) (int, error) {
	workers := min(runtime.GOMAXPROCS(0), (n<<chunkShift)/(parallelMinBytes/2), n)
	if workers <= 1 || n<<chunkShift < parallelMinBytes {
		return fn(0, n)
	}
	type result struct {
		n   int
		err error
	}
	res := make([]result, workers)
	var wg sync.WaitGroup
	for w := 1; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[w].n, res[w].err = fn(w*n/workers, (w+1)*n/workers)
		}()
	}
	res[0].n, res[0].err = fn(0, n/workers)
	wg.Wait()
	for _, r := range res {
		if r.err != nil {
			return r.n, r.err
		}
	}
	return res[workers-1].n, nil
}
