package crypto

import (
	"bytes"
	"testing"
)

// seqReader yields the bytes n, n+1, n+2, ... (mod 256): a deterministic
// nonce source for known-answer tests. Not safe for concurrent use, which
// ContentCipher must cope with.
type seqReader struct{ n byte }

func (r *seqReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.n
		r.n++
	}
	return len(p), nil
}

func testDEK(seed byte) []byte {
	dek := make([]byte, DEKSize)
	for i := range dek {
		dek[i] = seed + byte(i)
	}
	return dek
}

func testFileID(seed byte) FileID {
	var id FileID
	for i := range id {
		id[i] = seed ^ byte(0xa0+i)
	}
	return id
}

func newTestCipher(t testing.TB, dek []byte, id FileID, l Layout) *ContentCipher {
	t.Helper()
	c, err := NewContentCipher(dek, id, l, &seqReader{})
	if err != nil {
		t.Fatalf("NewContentCipher: %v", err)
	}
	return c
}

func testHeader(id FileID, gen uint64) Header {
	return Header{FileID: id, Generation: gen, Keys: []WrappedKey{{
		KeyARN:     "arn:kmsfs:local:0123456789abcdef:key/fedcba9876543210",
		KeyVersion: 2,
		EDK:        bytes.Repeat([]byte{0x5e}, 81),
	}}}
}

// plainPattern is deterministic non-zero content.
func plainPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + 1)
	}
	return b
}
