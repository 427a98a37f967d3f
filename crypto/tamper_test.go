package crypto

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// A tamper test seals a 3.5-chunk file in memory, rearranges or edits its
// chunks the way an attacker or a broken copy could, and opens every chunk
// at its new position. A chunk may open only where it was sealed: same file,
// same index, same last flag.

type sealedChunk struct {
	file   string // which test file sealed it
	index  int64
	last   bool
	sealed []byte
}

type tamperFile struct {
	c      *ContentCipher
	plain  []byte
	chunks []sealedChunk
}

const tamperPlainSize = 3*4096 + 2048

func sealTamperFile(t *testing.T, name string, dek []byte, id FileID) tamperFile {
	t.Helper()
	l := DefaultLayout()
	c := newTestCipher(t, dek, id, l)
	f := tamperFile{c: c, plain: plainPattern(tamperPlainSize)}
	n := l.ChunkCount(tamperPlainSize)
	C := l.ChunkSize()
	for i := range n {
		end := min((i+1)*C, tamperPlainSize)
		last := i == n-1
		sealed, err := c.SealChunk(nil, i, last, f.plain[i*C:end])
		if err != nil {
			t.Fatal(err)
		}
		f.chunks = append(f.chunks, sealedChunk{file: name, index: i, last: last, sealed: sealed})
	}
	return f
}

// check opens chunks at positions 0..len-1 with f's cipher and compares
// each outcome with the rule: ok iff the chunk was sealed by f at this index
// with this last flag.
func (f tamperFile) check(t *testing.T, name string, c *ContentCipher, chunks []sealedChunk) {
	t.Helper()
	C := c.Layout().ChunkSize()
	for pos, ch := range chunks {
		p := int64(pos)
		last := pos == len(chunks)-1
		got, err := c.OpenChunk(nil, p, last, ch.sealed)
		wantOK := c == f.c && ch.file == "A" && ch.index == p && ch.last == last
		if !wantOK {
			if !errors.Is(err, ErrAuth) {
				t.Errorf("%s: chunk at %d (sealed as %s/%d last %t): got %v, want ErrAuth", name, pos, ch.file, ch.index, ch.last, err)
			}
			continue
		}
		want := f.plain[p*C : min((p+1)*C, int64(len(f.plain)))]
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: untouched chunk %d: got %d bytes, %v, want %d bytes, nil", name, pos, len(got), err, len(want))
		}
	}
}

func TestTamperRearrange(t *testing.T) {
	a := sealTamperFile(t, "A", testDEK(1), testFileID(1))
	b := sealTamperFile(t, "B", testDEK(2), testFileID(2))       // other DEK, other file ID
	sameDEK := sealTamperFile(t, "D", testDEK(1), testFileID(3)) // same DEK, other file ID
	n := len(a.chunks)
	if n != 4 {
		t.Fatalf("got %d chunks, want 4", n)
	}
	clone := func() []sealedChunk { return append([]sealedChunk(nil), a.chunks...) }

	type tc struct {
		name   string
		c      *ContentCipher
		chunks []sealedChunk
	}
	tests := []tc{{"untouched", a.c, clone()}}
	for i := range n {
		for j := i + 1; j < n; j++ {
			cs := clone()
			cs[i], cs[j] = cs[j], cs[i]
			tests = append(tests, tc{fmt.Sprintf("swap %d,%d", i, j), a.c, cs})
		}
		for _, other := range []tamperFile{b, sameDEK} {
			cs := clone()
			cs[i] = other.chunks[i]
			tests = append(tests, tc{fmt.Sprintf("chunk %d from file %s", i, other.chunks[0].file), a.c, cs})
		}
		dropped := append(clone()[:i], a.chunks[i+1:]...)
		tests = append(tests, tc{fmt.Sprintf("drop %d", i), a.c, dropped})
		dup := append(clone()[:i+1], a.chunks[i:]...)
		tests = append(tests, tc{fmt.Sprintf("duplicate %d", i), a.c, dup})
		if i > 0 {
			tests = append(tests, tc{fmt.Sprintf("truncate to %d chunks", i), a.c, clone()[:i]})
		}
	}
	tests = append(tests,
		tc{"wrong file ID (same DEK)", sameDEK.c, clone()},
		tc{"wrong DEK and file ID", b.c, clone()},
		tc{"append a chunk of B", a.c, append(clone(), b.chunks[n-1])},
	)
	for _, tt := range tests {
		a.check(t, tt.name, tt.c, tt.chunks)
	}
	// Every case but the control must break at least one chunk.
	for _, tt := range tests[1:] {
		broken := false
		for pos, ch := range tt.chunks {
			if _, err := tt.c.OpenChunk(nil, int64(pos), pos == len(tt.chunks)-1, ch.sealed); err != nil {
				broken = true
			}
		}
		if !broken {
			t.Errorf("%s: every chunk opened", tt.name)
		}
	}
}

func TestTamperWrongLastFlag(t *testing.T) {
	a := sealTamperFile(t, "A", testDEK(1), testFileID(1))
	for _, ch := range a.chunks {
		if _, err := a.c.OpenChunk(nil, ch.index, !ch.last, ch.sealed); !errors.Is(err, ErrAuth) {
			t.Errorf("chunk %d opened with last %t: got %v, want ErrAuth", ch.index, !ch.last, err)
		}
	}
}

func TestTamperFlipEveryByte(t *testing.T) {
	a := sealTamperFile(t, "A", testDEK(1), testFileID(1))
	for i, ch := range a.chunks {
		for pos := range ch.sealed {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				ch.sealed[pos] ^= mask
				_, err := a.c.OpenChunk(nil, ch.index, ch.last, ch.sealed)
				ch.sealed[pos] ^= mask
				if !errors.Is(err, ErrAuth) {
					t.Fatalf("chunk %d byte %d ^ %#x: got %v, want ErrAuth", i, pos, mask, err)
				}
			}
		}
		a.check(t, fmt.Sprintf("after flipping chunk %d", i), a.c, a.chunks)
	}
}

// TestTamperTruncateEveryLength cuts the content stream at every byte: the
// chunk that becomes last is either too short or sealed with flag 0 (or is
// the old last chunk cut short), and must not open.
func TestTamperTruncateEveryLength(t *testing.T) {
	a := sealTamperFile(t, "A", testDEK(1), testFileID(1))
	l := a.c.Layout()
	var stream []byte
	for _, ch := range a.chunks {
		stream = append(stream, ch.sealed...)
	}
	k := int(l.CipherChunkSize())
	for cut := 1; cut < len(stream); cut++ {
		lastIndex := (cut - 1) / k
		lastChunk := stream[lastIndex*k : cut]
		if _, err := a.c.OpenChunk(nil, int64(lastIndex), true, lastChunk); !errors.Is(err, ErrAuth) {
			t.Fatalf("cut at %d: last chunk %d (%d bytes): got %v, want ErrAuth", cut, lastIndex, len(lastChunk), err)
		}
		// stat agrees with the reader on where the file ends.
		// A last chunk no longer than its overhead is no valid size.
		plainSize, err := l.PlainSize(l.ContentOffset() + int64(cut))
		if rem := cut % k; rem > 0 && rem <= ChunkOverhead {
			if !errors.Is(err, ErrBadSize) {
				t.Fatalf("cut at %d (%d bytes into chunk %d): PlainSize: got %d, %v; want %v", cut, rem, lastIndex, plainSize, err, ErrBadSize)
			}
		} else if err != nil {
			t.Fatalf("cut at %d: PlainSize: %v", cut, err)
		} else if got := l.ChunkCount(plainSize); got != int64(lastIndex+1) {
			t.Fatalf("cut at %d: PlainSize %d has %d chunks, want %d", cut, plainSize, got, lastIndex+1)
		}
	}
}

// TestTamperZeroedChunkIsHole pins the documented cost of the hole rule: a
// whole aligned non-final chunk zeroed by an attacker reads as zeros. The
// last chunk zeroed does not open.
func TestTamperZeroedChunkIsHole(t *testing.T) {
	a := sealTamperFile(t, "A", testDEK(1), testFileID(1))
	zero := make([]byte, a.c.Layout().CipherChunkSize())
	got, err := a.c.OpenChunk(nil, 1, false, zero)
	if err != nil || !allZero(got) || int64(len(got)) != a.c.Layout().ChunkSize() {
		t.Errorf("zeroed chunk 1: got %d bytes, %v, want %d zero bytes", len(got), err, a.c.Layout().ChunkSize())
	}
	last := a.chunks[len(a.chunks)-1]
	if _, err := a.c.OpenChunk(nil, last.index, true, make([]byte, len(last.sealed))); !errors.Is(err, ErrAuth) {
		t.Errorf("zeroed last chunk: got %v, want ErrAuth", err)
	}
}

func TestTamperSlotFlipEveryBit(t *testing.T) {
	id := testFileID(1)
	for _, size := range []int64{512, 8192} {
		slot, err := EncodeSlot(testHeader(id, 3), size)
		if err != nil {
			t.Fatal(err)
		}
		for pos := range slot {
			for bit := range 8 {
				slot[pos] ^= 1 << bit
				_, err := DecodeSlot(slot, id)
				slot[pos] ^= 1 << bit
				if !errors.Is(err, ErrBadChecksum) {
					t.Fatalf("slot %d byte %d bit %d: got %v, want ErrBadChecksum", size, pos, bit, err)
				}
			}
			slot[pos] ^= 0xff
			_, err := DecodeSlot(slot, id)
			slot[pos] ^= 0xff
			if !errors.Is(err, ErrBadChecksum) {
				t.Fatalf("slot %d byte %d ^ 0xff: got %v, want ErrBadChecksum", size, pos, err)
			}
		}
		if _, err := DecodeSlot(slot, id); err != nil {
			t.Fatalf("restored slot: got %v, want nil", err)
		}
	}
}

// TestTamperTornSlotWrite: a rewrap writes gen 4 over slot 1 (holding gen 2)
// while slot 0 holds gen 3. Whatever prefix or suffix of the write reached
// the disk, PickSlot answers gen 3 from slot 0, or gen 4 from slot 1 when the
// bytes that landed are the whole new slot.
func TestTamperTornSlotWrite(t *testing.T) {
	id := testFileID(1)
	const size = 512
	enc := func(h Header) []byte {
		b, err := EncodeSlot(h, size)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	slot0 := enc(testHeader(id, 3))
	old1 := enc(testHeader(id, 2))
	newHeader := testHeader(id, 4)
	newHeader.Keys[0].KeyARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	newHeader.Keys[0].EDK = bytes.Repeat([]byte{0xae}, 184)
	new1 := enc(newHeader)
	for _, torn := range []string{"prefix", "suffix"} {
		for k := 0; k <= size; k++ {
			slot1 := bytes.Clone(old1)
			if torn == "prefix" {
				copy(slot1[:k], new1[:k])
			} else {
				copy(slot1[k:], new1[k:])
			}
			h, s, err := PickSlot(slot0, slot1, id)
			if err != nil {
				t.Fatalf("%s %d: got %v, want nil", torn, k, err)
			}
			wantSlot, wantGen := 0, uint64(3)
			if bytes.Equal(slot1, new1) {
				wantSlot, wantGen = 1, 4
			}
			if s != wantSlot || h.Generation != wantGen {
				t.Fatalf("%s %d: got slot %d gen %d, want slot %d gen %d", torn, k, s, h.Generation, wantSlot, wantGen)
			}
		}
	}
}
