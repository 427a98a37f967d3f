package crypto

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Every parser is fuzzed: it must not panic, must fail with a sentinel, and
// whatever it accepts must re-encode to the same bytes.

func FuzzParsePreamble(f *testing.F) {
	for _, l := range []Layout{DefaultLayout(), {20, 13}} {
		f.Add(NewPreamble(l, testFileID(1)).Marshal())
	}
	f.Add([]byte("KMSF"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePreamble(b)
		if err != nil {
			if !errors.Is(err, ErrNotCipherFile) && !errors.Is(err, ErrUnsupportedVersion) && !errors.Is(err, ErrBadPreamble) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if got := p.Marshal(); !bytes.Equal(got, b) {
			t.Fatalf("Marshal(ParsePreamble(%x)) = %x", b, got)
		}
		if err := p.Layout().Validate(); err != nil {
			t.Fatalf("accepted layout %+v: %v", p.Layout(), err)
		}
	})
}

func FuzzUnmarshalHeader(f *testing.F) {
	for _, h := range []Header{
		testHeader(testFileID(1), 1),
		{FileID: testFileID(2), Generation: 9, Keys: []WrappedKey{{KeyARN: "a", EDK: []byte{1}}, {KeyARN: "bb", KeyVersion: 7, EDK: []byte{2, 3}}}},
	} {
		b, err := h.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := UnmarshalHeader(b)
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error without ErrBadHeader: %v", err)
			}
			return
		}
		got, err := h.Marshal()
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("Marshal(UnmarshalHeader(%x)) = %x, %v", b, got, err)
		}
		again, err := UnmarshalHeader(got)
		if err != nil || !reflect.DeepEqual(again, h) {
			t.Fatalf("second decode differs: %+v, %v", again, err)
		}
	})
}

func FuzzDecodeSlot(f *testing.F) {
	id := testFileID(1)
	for _, size := range []int64{512, 1024} {
		b, err := EncodeSlot(testHeader(id, 2), size)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(make([]byte, 512))
	f.Add(reCRC(make([]byte, 512)))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeSlot(b, id)
		if err != nil {
			if !errors.Is(err, ErrBadSize) && !errors.Is(err, ErrEmptySlot) && !errors.Is(err, ErrBadChecksum) && !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if h.FileID != id {
			t.Fatalf("accepted file ID %s, want %s", h.FileID, id)
		}
		got, err := EncodeSlot(h, int64(len(b)))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("EncodeSlot(DecodeSlot(b)) differs: %v", err)
		}
	})
}

// FuzzDecodeSlotBody puts fuzzed bodies into slots with a valid CRC, so the
// fuzzer reaches the checks behind the checksum.
func FuzzDecodeSlotBody(f *testing.F) {
	id := testFileID(1)
	body, _ := testHeader(id, 2).Marshal()
	f.Add(uint16(len(body)), body)
	f.Add(uint16(0), []byte{})
	f.Fuzz(func(t *testing.T, n uint16, body []byte) {
		slot := make([]byte, 512)
		slot[0], slot[1] = byte(n>>8), byte(n)
		copy(slot[2:508], body)
		reCRC(slot)
		h, err := DecodeSlot(slot, id)
		if err != nil {
			if !errors.Is(err, ErrBadHeader) && !errors.Is(err, ErrEmptySlot) {
				t.Fatalf("unexpected error: %v", err)
			}
			return
		}
		if got, err := EncodeSlot(h, 512); err != nil || !bytes.Equal(got, slot) {
			t.Fatalf("EncodeSlot(DecodeSlot(b)) differs: %v", err)
		}
	})
}

func FuzzPickSlot(f *testing.F) {
	id := testFileID(1)
	s1, _ := EncodeSlot(testHeader(id, 1), 512)
	s2, _ := EncodeSlot(testHeader(id, 2), 512)
	f.Add(s1, s2)
	f.Add(s1, make([]byte, 512))
	f.Add(make([]byte, 512), s2)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		h, slot, err := PickSlot(a, b, id)
		h0, err0 := DecodeSlot(a, id)
		h1, err1 := DecodeSlot(b, id)
		if err != nil {
			if !errors.Is(err, ErrNoValidHeader) || err0 == nil || err1 == nil {
				t.Fatalf("PickSlot error %v with slot errors %v, %v", err, err0, err1)
			}
			return
		}
		switch slot {
		case 0:
			if err0 != nil || !reflect.DeepEqual(h, h0) || (err1 == nil && h1.Generation > h0.Generation) {
				t.Fatalf("picked slot 0 (gen %d), slot 1: %+v, %v", h.Generation, h1, err1)
			}
		case 1:
			if err1 != nil || !reflect.DeepEqual(h, h1) || (err0 == nil && h0.Generation >= h1.Generation) {
				t.Fatalf("picked slot 1 (gen %d), slot 0: %+v, %v", h.Generation, h0, err0)
			}
		default:
			t.Fatalf("slot %d", slot)
		}
	})
}

// FuzzOpenChunk opens either raw fuzzed bytes (base 0) or a valid chunk or
// hole edited by the fuzzer: data holds (position hi, position lo, xor)
// triples, and 1 or 2 leftover bytes cut the chunk short. Editing small
// inputs into full-size chunks keeps the corpus small and the fuzzer fast.
// Only an unedited chunk at its own index and flag, or a hole, may open.
func FuzzOpenChunk(f *testing.F) {
	l := DefaultLayout()
	c := newTestCipher(f, testDEK(1), testFileID(1), l)
	full, _ := c.SealChunk(nil, 0, false, plainPattern(4096))
	short, _ := c.SealChunk(nil, 3, true, []byte("tail"))
	bases := [][]byte{nil, full, short, make([]byte, l.CipherChunkSize())}
	f.Add(int64(0), false, uint8(1), []byte{})
	f.Add(int64(3), true, uint8(2), []byte{})
	f.Add(int64(1), false, uint8(3), []byte{})
	f.Add(int64(0), false, uint8(1), []byte{0, 20, 1})
	f.Add(int64(3), true, uint8(2), []byte{0, 5, 0x80, 7})
	f.Add(int64(-1), true, uint8(0), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, index int64, last bool, base uint8, data []byte) {
		var sealed []byte
		if b := bases[base%4]; b == nil {
			sealed = data
		} else {
			sealed = bytes.Clone(b)
			for ; len(data) >= 3; data = data[3:] {
				pos := (int(data[0])<<8 | int(data[1])) % len(sealed)
				sealed[pos] ^= data[2]
			}
			if len(data) > 0 {
				cut := int(data[0])
				if len(data) == 2 {
					cut = cut<<8 | int(data[1])
				}
				sealed = sealed[:cut%(len(sealed)+1)]
			}
		}
		got, err := c.OpenChunk(nil, index, last, sealed)
		if err != nil {
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("error without ErrAuth: %v", err)
			}
			if got != nil {
				t.Fatalf("failed open appended %d bytes", len(got))
			}
		} else {
			genuine := (index == 0 && !last && bytes.Equal(sealed, full)) ||
				(index == 3 && last && bytes.Equal(sealed, short)) ||
				(!last && IsHole(sealed, l))
			if !genuine {
				t.Fatalf("forged chunk %d (last %t, %d bytes) opened", index, last, len(sealed))
			}
		}
		// Round trip: a plain chunk of a valid length seals and opens back.
		plain := sealed
		if !last {
			plain = plainPattern(int(l.ChunkSize()))
			copy(plain, sealed)
		}
		if len(plain) < 1 || int64(len(plain)) > l.ChunkSize() || index < 0 {
			return
		}
		s, err := c.SealChunk(nil, index, last, plain)
		if err != nil {
			t.Fatal(err)
		}
		back, err := c.OpenChunk(nil, index, last, s)
		if err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzParseFileID(f *testing.F) {
	f.Add(testFileID(1).String())
	f.Add(strings.ToUpper(testFileID(2).String()))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseFileID(s)
		if err != nil {
			if !errors.Is(err, ErrBadFileID) {
				t.Fatalf("error without ErrBadFileID: %v", err)
			}
			return
		}
		if got := id.String(); got != strings.ToLower(s) {
			t.Fatalf("String(ParseFileID(%q)) = %q", s, got)
		}
	})
}

func FuzzPlainSize(f *testing.F) {
	f.Add(uint8(12), uint8(9), int64(1056))
	f.Add(uint8(12), uint8(9), int64(1085))
	f.Add(uint8(20), uint8(13), int64(1<<40))
	f.Add(uint8(0), uint8(0), int64(-5))
	f.Fuzz(func(t *testing.T, cs, ss uint8, cipherSize int64) {
		l := Layout{ChunkShift: cs, SlotShift: ss}
		p, err := l.PlainSize(cipherSize)
		if l.Validate() != nil {
			if !errors.Is(err, ErrBadLayout) {
				t.Fatalf("invalid layout %+v: got %v, want ErrBadLayout", l, err)
			}
			return
		}
		if cipherSize > 1<<62 {
			return // CipherSize of the answer would overflow
		}
		if p < 0 {
			t.Fatalf("PlainSize(%d) = %d", cipherSize, p)
		}
		back := l.CipherSize(p)
		if err == nil {
			if back != cipherSize {
				t.Fatalf("layout %+v: CipherSize(PlainSize(%d)=%d) = %d", l, cipherSize, p, back)
			}
			return
		}
		if !errors.Is(err, ErrBadSize) {
			t.Fatalf("error without ErrBadSize: %v", err)
		}
		// Below the content offset the answer is 0. For a cut tail of r
		// = 1..28 bytes it is the whole chunks' plain bytes plus r, so a
		// reader reaches the cut chunk: never a whole number of chunks,
		// and the whole chunks alone never reach past the file.
		if cipherSize < l.ContentOffset() {
			if p != 0 {
				t.Fatalf("layout %+v: PlainSize(%d) = %d, want 0", l, cipherSize, p)
			}
			return
		}
		r := p % l.ChunkSize()
		whole := p - r
		if r < 1 || r > ChunkOverhead || l.CipherSize(whole)+r != cipherSize {
			t.Fatalf("layout %+v: invalid size %d answered %d (cipher %d)", l, cipherSize, p, back)
		}
	})
}
