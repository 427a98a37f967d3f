package cipherfile

import (
	"math/bits"
	"sync"
)

// Buffers for cipher batches and scratch chunks come from power-of-two size
// classes shared by every File, so concurrent ReadAt callers never share a
// buffer and a steady stream of reads and writes allocates nothing.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 26 // 64 MiB; larger requests are allocated and dropped
)

var bufPools [maxClassShift + 1]sync.Pool // index = size class shift

// getBuf returns a buffer of length n (contents undefined) and the handle to
// give back to putBuf.
func getBuf(n int) *[]byte {
	shift := max(bits.Len(uint(n-1)), minClassShift)
	if n <= 0 {
		shift = minClassShift
	}
	if shift > maxClassShift {
		b := make([]byte, n)
		return &b
	}
	if v := bufPools[shift].Get(); v != nil {
		bp := v.(*[]byte)
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, 1<<shift)
	return &b
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(bp *[]byte) {
	c := cap(*bp)
	shift := bits.Len(uint(c)) - 1
	if c != 1<<shift || shift < minClassShift || shift > maxClassShift {
		return
	}
	bufPools[shift].Put(bp)
}
