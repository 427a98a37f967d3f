package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestFileID(t *testing.T) {
	id, err := NewFileID(&seqReader{n: 0xf0})
	if err != nil {
		t.Fatal(err)
	}
	const want = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
	if got := id.String(); got != want {
		t.Errorf("String: got %s, want %s", got, want)
	}
	for _, tt := range []struct {
		name, in string
		ok       bool
	}{
		{"lower", want, true},
		{"upper", strings.ToUpper(want), true},
		{"mixed", "F0f1F2f3f4f5f6f7f8f9fafbfcfdfeff", true},
		{"short", want[:31], false},
		{"long", want + "0", false},
		{"empty", "", false},
		{"non-hex", "g0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", false},
		{"spaces", " 0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFileID(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParseFileID(%q): got %v, want ok %v", tt.in, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrBadFileID) {
				t.Errorf("got %v, want ErrBadFileID", err)
			}
			if tt.ok && got != id {
				t.Errorf("got %s, want %s", got, id)
			}
		})
	}
	if _, err := NewFileID(bytes.NewReader(make([]byte, 15))); err == nil {
		t.Error("NewFileID on a short reader: got nil, want error")
	}
	a, _ := NewFileID(nil)
	b, _ := NewFileID(nil)
	if a == b {
		t.Errorf("two random file IDs equal: %s", a)
	}
}

func TestPreambleRoundTrip(t *testing.T) {
	for _, l := range allLayouts() {
		p := NewPreamble(l, testFileID(byte(l.ChunkShift)))
		b := p.Marshal()
		if len(b) != PreambleSize {
			t.Fatalf("Marshal: got %d bytes, want %d", len(b), PreambleSize)
		}
		got, err := ParsePreamble(b)
		if err != nil || got != p {
			t.Fatalf("ParsePreamble(Marshal(%+v)): got %+v, %v", p, got, err)
		}
		if got.Layout() != l {
			t.Errorf("Layout: got %+v, want %+v", got.Layout(), l)
		}
	}
}

func TestParsePreambleErrors(t *testing.T) {
	good := NewPreamble(DefaultLayout(), testFileID(1)).Marshal()
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tt := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrNotCipherFile},
		{"short", good[:31], ErrNotCipherFile},
		{"magic", edit(func(b []byte) []byte { b[0] = 'k'; return b }), ErrNotCipherFile},
		{"version 0", edit(func(b []byte) []byte { b[5] = 0; return b }), ErrUnsupportedVersion},
		{"version 2", edit(func(b []byte) []byte { b[5] = 2; return b }), ErrUnsupportedVersion},
		{"version 256+1", edit(func(b []byte) []byte { b[4] = 1; return b }), ErrUnsupportedVersion},
		{"trailing", append(bytes.Clone(good), 0), ErrBadPreamble},
		{"chunk shift 11", edit(func(b []byte) []byte { b[6] = 11; return b }), ErrBadPreamble},
		{"chunk shift 21", edit(func(b []byte) []byte { b[6] = 21; return b }), ErrBadPreamble},
		{"slot shift 8", edit(func(b []byte) []byte { b[7] = 8; return b }), ErrBadPreamble},
		{"slot shift 14", edit(func(b []byte) []byte { b[7] = 14; return b }), ErrBadPreamble},
		{"reserved first", edit(func(b []byte) []byte { b[24] = 1; return b }), ErrBadPreamble},
		{"reserved last", edit(func(b []byte) []byte { b[31] = 0x80; return b }), ErrBadPreamble},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePreamble(tt.in); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	id := testFileID(3)
	maxKey := WrappedKey{KeyARN: strings.Repeat("a", MaxKeyARNLen), KeyVersion: 1<<32 - 1, EDK: bytes.Repeat([]byte{1}, MaxEDKLen)}
	for _, tt := range []struct {
		name string
		h    Header
	}{
		{"one key", testHeader(id, 1)},
		{"generation max", Header{FileID: id, Generation: 1<<64 - 1, Keys: testHeader(id, 1).Keys}},
		{"minimal key", Header{FileID: id, Generation: 7, Keys: []WrappedKey{{KeyARN: "a", EDK: []byte{0}}}}},
		{"eight max keys", Header{FileID: id, Generation: 2, Keys: slices8(maxKey)}},
		{"utf-8 arn", Header{FileID: id, Generation: 2, Keys: []WrappedKey{{KeyARN: "arn:é", EDK: []byte{1, 2}}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.h.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := UnmarshalHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.h) {
				t.Errorf("got %+v, want %+v", got, tt.h)
			}
			// The result must not alias the input.
			clear(b)
			if !reflect.DeepEqual(got, tt.h) {
				t.Errorf("decoded header aliases its input")
			}
		})
	}
}

func slices8(k WrappedKey) []WrappedKey {
	ks := make([]WrappedKey, MaxWrappedKeys)
	for i := range ks {
		ks[i] = k
	}
	return ks
}

func TestHeaderMarshalErrors(t *testing.T) {
	id := testFileID(4)
	k := testHeader(id, 1).Keys[0]
	for _, tt := range []struct {
		name string
		h    Header
	}{
		{"generation 0", Header{FileID: id, Keys: []WrappedKey{k}}},
		{"no keys", Header{FileID: id, Generation: 1}},
		{"nine keys", Header{FileID: id, Generation: 1, Keys: append(slices8(k), k)}},
		{"empty ARN", Header{FileID: id, Generation: 1, Keys: []WrappedKey{{EDK: []byte{1}}}}},
		{"long ARN", Header{FileID: id, Generation: 1, Keys: []WrappedKey{{KeyARN: strings.Repeat("a", MaxKeyARNLen+1), EDK: []byte{1}}}}},
		{"bad UTF-8 ARN", Header{FileID: id, Generation: 1, Keys: []WrappedKey{{KeyARN: "arn\xff", EDK: []byte{1}}}}},
		{"empty EDK", Header{FileID: id, Generation: 1, Keys: []WrappedKey{{KeyARN: "a"}}}},
		{"long EDK", Header{FileID: id, Generation: 1, Keys: []WrappedKey{{KeyARN: "a", EDK: make([]byte, MaxEDKLen+1)}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.h.Marshal(); !errors.Is(err, ErrBadHeader) {
				t.Errorf("Marshal: got %v, want ErrBadHeader", err)
			}
			if _, err := EncodeSlot(tt.h, 8192); !errors.Is(err, ErrBadHeader) {
				t.Errorf("EncodeSlot: got %v, want ErrBadHeader", err)
			}
		})
	}
}

func TestUnmarshalHeaderErrors(t *testing.T) {
	good, err := testHeader(testFileID(5), 1).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	arnLen := int(binary.BigEndian.Uint16(good[26:]))
	edkLenOff := 26 + 2 + arnLen + 4
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tt := range []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"fixed part only", good[:26]},
		{"truncated by one", good[:len(good)-1]},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"version 0", edit(func(b []byte) []byte { b[0] = 0; return b })},
		{"version 2", edit(func(b []byte) []byte { b[0] = 2; return b })},
		{"generation 0", edit(func(b []byte) []byte { clear(b[1:9]); return b })},
		{"0 keys", edit(func(b []byte) []byte { b[25] = 0; return b })},
		{"2 keys, 1 present", edit(func(b []byte) []byte { b[25] = 2; return b })},
		{"9 keys", edit(func(b []byte) []byte { b[25] = 9; return b })},
		{"ARN length 0", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[26:], 0); return b })},
		{"ARN length 2049", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[26:], 2049); return b })},
		{"ARN length +1", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[26:], uint16(arnLen+1)); return b })},
		{"ARN not UTF-8", edit(func(b []byte) []byte { b[28] = 0xff; return b })},
		{"EDK length 0", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[edkLenOff:], 0); return b })},
		{"EDK length 6145", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[edkLenOff:], 6145); return b })},
		{"EDK length -1", edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[edkLenOff:], 80); return b })},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := UnmarshalHeader(tt.in); !errors.Is(err, ErrBadHeader) {
				t.Errorf("got %v, want ErrBadHeader", err)
			}
		})
	}
}

func TestSlotRoundTrip(t *testing.T) {
	id := testFileID(6)
	h := testHeader(id, 5)
	for shift := MinSlotShift; shift <= MaxSlotShift; shift++ {
		size := int64(1) << shift
		b, err := EncodeSlot(h, size)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != size {
			t.Fatalf("EncodeSlot: got %d bytes, want %d", len(b), size)
		}
		body, _ := h.Marshal()
		if got := int(binary.BigEndian.Uint16(b)); got != len(body) {
			t.Errorf("slot length field: got %d, want %d", got, len(body))
		}
		if !bytes.Equal(b[2:2+len(body)], body) {
			t.Errorf("slot body differs from Marshal")
		}
		got, err := DecodeSlot(b, id)
		if err != nil || !reflect.DeepEqual(got, h) {
			t.Errorf("DecodeSlot: got %+v, %v, want %+v", got, err, h)
		}
	}
}

func TestEncodeSlotLimits(t *testing.T) {
	id := testFileID(7)
	// Body of exactly S-6 fits; one byte more does not.
	for _, tt := range []struct {
		name    string
		bodyLen int
		want    error
	}{
		{"S-6", 512 - 6, nil},
		{"S-5", 512 - 5, ErrHeaderTooLarge},
	} {
		edk := tt.bodyLen - headerFixedSize - wrappedKeyFixedSize - 1
		h := Header{FileID: id, Generation: 1, Keys: []WrappedKey{{KeyARN: "a", EDK: make([]byte, edk)}}}
		b, err := EncodeSlot(h, 512)
		if !errors.Is(err, tt.want) {
			t.Fatalf("%s: EncodeSlot: got %v, want %v", tt.name, err, tt.want)
		}
		if err == nil {
			if _, err := DecodeSlot(b, id); err != nil {
				t.Errorf("%s: DecodeSlot: got %v, want nil", tt.name, err)
			}
		}
	}
	for _, size := range []int64{0, 256, 511, 513, 1000, 16384} {
		if _, err := EncodeSlot(testHeader(id, 1), size); !errors.Is(err, ErrBadSize) {
			t.Errorf("EncodeSlot(size %d): got %v, want ErrBadSize", size, err)
		}
		if _, err := DecodeSlot(make([]byte, size), id); !errors.Is(err, ErrBadSize) {
			t.Errorf("DecodeSlot(size %d): got %v, want ErrBadSize", size, err)
		}
	}
}

// reCRC recomputes a slot's checksum after an edit, so the edit reaches the
// checks behind the CRC.
func reCRC(b []byte) []byte {
	end := len(b) - 4
	binary.BigEndian.PutUint32(b[end:], crc32c(b[:end]))
	return b
}

func TestDecodeSlotErrors(t *testing.T) {
	id := testFileID(8)
	good, err := EncodeSlot(testHeader(id, 1), 512)
	if err != nil {
		t.Fatal(err)
	}
	bodyLen := int(binary.BigEndian.Uint16(good))
	edit := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	for _, tt := range []struct {
		name string
		in   []byte
		want error
	}{
		{"all zero", make([]byte, 512), ErrEmptySlot},
		{"zero except CRC", reCRC(make([]byte, 512)), ErrBadHeader},
		{"CRC flipped", edit(func(b []byte) { b[511] ^= 1 }), ErrBadChecksum},
		{"body flipped", edit(func(b []byte) { b[40] ^= 1 }), ErrBadChecksum},
		{"length 0", edit(func(b []byte) { binary.BigEndian.PutUint16(b, 0); reCRC(b) }), ErrBadHeader},
		{"length S-5", edit(func(b []byte) { binary.BigEndian.PutUint16(b, 512-5); reCRC(b) }), ErrBadHeader},
		{"length +1", edit(func(b []byte) { binary.BigEndian.PutUint16(b, uint16(bodyLen+1)); reCRC(b) }), ErrBadHeader},
		{"padding", edit(func(b []byte) { b[2+bodyLen] = 1; reCRC(b) }), ErrBadHeader},
		{"last padding byte", edit(func(b []byte) { b[507] = 1; reCRC(b) }), ErrBadHeader},
		{"body version", edit(func(b []byte) { b[2] = 9; reCRC(b) }), ErrBadHeader},
		{"file ID in body", edit(func(b []byte) { b[2+9] ^= 1; reCRC(b) }), ErrBadHeader},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeSlot(tt.in, id); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := DecodeSlot(good, testFileID(9)); !errors.Is(err, ErrBadHeader) {
		t.Errorf("wrong preamble file ID: got %v, want ErrBadHeader", err)
	}
}

func TestPickSlot(t *testing.T) {
	id := testFileID(10)
	slot := func(gen uint64) []byte {
		b, err := EncodeSlot(testHeader(id, gen), 512)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	empty := make([]byte, 512)
	bad := slot(9)
	bad[100] ^= 0xff
	for _, tt := range []struct {
		name     string
		s0, s1   []byte
		wantSlot int
		wantGen  uint64
		wantErr  []error
	}{
		{"new file", slot(1), empty, 0, 1, nil},
		{"slot 1 newer", slot(1), slot(2), 1, 2, nil},
		{"slot 0 newer", slot(3), slot(2), 0, 3, nil},
		{"tie prefers 0", slot(4), slot(4), 0, 4, nil},
		{"slot 1 torn", slot(3), bad, 0, 3, nil},
		{"slot 0 torn", bad, slot(2), 1, 2, nil},
		{"only slot 1", empty, slot(2), 1, 2, nil},
		{"both empty", empty, empty, 0, 0, []error{ErrNoValidHeader, ErrEmptySlot}},
		{"both bad", bad, bad, 0, 0, []error{ErrNoValidHeader, ErrBadChecksum}},
		{"empty and bad", empty, bad, 0, 0, []error{ErrNoValidHeader, ErrEmptySlot, ErrBadChecksum}},
		{"short slots", nil, []byte{1}, 0, 0, []error{ErrNoValidHeader, ErrBadSize}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, s, err := PickSlot(tt.s0, tt.s1, id)
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("got %v, want %v", err, want)
				}
			}
			if tt.wantErr == nil && err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if err != nil {
				return
			}
			if s != tt.wantSlot || h.Generation != tt.wantGen {
				t.Errorf("got slot %d gen %d, want slot %d gen %d", s, h.Generation, tt.wantSlot, tt.wantGen)
			}
		})
	}
}
