package crypto

import (
	"bytes"
	"strings"
	"testing"
)

// These pin the numbers written in docs/format.md; change the doc with them.

func TestFormatConstants(t *testing.T) {
	for _, tt := range []struct {
		name      string
		got, want int64
	}{
		{"PreambleSize", PreambleSize, 32},
		{"FileIDSize", FileIDSize, 16},
		{"NonceSize", NonceSize, 12},
		{"TagSize", TagSize, 16},
		{"ChunkOverhead", ChunkOverhead, 28},
		{"DEKSize", DEKSize, 32},
		{"FormatVersion", FormatVersion, 1},
		{"chunk AAD", chunkAADSize, 25},
		{"MinChunkShift", MinChunkShift, 12},
		{"MaxChunkShift", MaxChunkShift, 20},
		{"DefaultChunkShift", DefaultChunkShift, 12},
		{"MinSlotShift", MinSlotShift, 9},
		{"MaxSlotShift", MaxSlotShift, 13},
		{"DefaultSlotShift", DefaultSlotShift, 9},
		{"MaxWrappedKeys", MaxWrappedKeys, 8},
		{"MaxKeyARNLen", MaxKeyARNLen, 2048},
		{"MaxEDKLen", MaxEDKLen, 6144},
		{"default slot", DefaultLayout().SlotSize(), 512},
		{"default chunk", DefaultLayout().ChunkSize(), 4096},
		{"ContentOffset", DefaultLayout().ContentOffset(), 1056},
		{"smallest chunk", Layout{MinChunkShift, 9}.ChunkSize(), 4 << 10},
		{"largest chunk", Layout{MaxChunkShift, 9}.ChunkSize(), 1 << 20},
		{"smallest slot", Layout{12, MinSlotShift}.SlotSize(), 512},
		{"largest slot", Layout{12, MaxSlotShift}.SlotSize(), 8 << 10},
		{"header fixed", headerFixedSize, 1 + 8 + 16 + 1},
		{"wrapped key fixed", wrappedKeyFixedSize, 2 + 4 + 2},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	if Magic != "KMSF" {
		t.Errorf("Magic: got %q, want %q", Magic, "KMSF")
	}
}

func TestFormatWorkedSizes(t *testing.T) {
	l := DefaultLayout()
	for _, tt := range []struct {
		plain, chunks, cipher, overhead int64
	}{
		{0, 0, 1056, 1056},
		{1, 1, 1085, 1084},
		{4096, 1, 5180, 1084},
		{1048576, 256, 1056800, 8224},
	} {
		if got := l.ChunkCount(tt.plain); got != tt.chunks {
			t.Errorf("ChunkCount(%d): got %d, want %d", tt.plain, got, tt.chunks)
		}
		if got := l.CipherSize(tt.plain); got != tt.cipher {
			t.Errorf("CipherSize(%d): got %d, want %d", tt.plain, got, tt.cipher)
		}
		if got := l.CipherSize(tt.plain) - tt.plain; got != tt.overhead {
			t.Errorf("overhead(%d): got %d, want %d", tt.plain, got, tt.overhead)
		}
	}
}

// TestFormatPreambleLayout builds the preamble by hand from the table in
// format.md and compares.
func TestFormatPreambleLayout(t *testing.T) {
	id := FileID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	want := []byte("KMSF")
	want = append(want, 0, 1, 12, 9)
	want = append(want, id[:]...)
	want = append(want, make([]byte, 8)...)
	if got := NewPreamble(DefaultLayout(), id).Marshal(); !bytes.Equal(got, want) {
		t.Errorf("preamble: got %x, want %x", got, want)
	}
}

// TestFormatHeaderFitsSlot: both provider shapes fit a default slot, even
// two wrapped keys at once (a local key and an AWS key during a migration).
func TestFormatHeaderFitsSlot(t *testing.T) {
	local := WrappedKey{
		KeyARN:     "arn:kmsfs:local:" + strings.Repeat("k", 20) + ":key/" + strings.Repeat("a", 29), // 70 bytes
		KeyVersion: 3,
		EDK:        bytes.Repeat([]byte{0xed}, 81),
	}
	aws := WrappedKey{
		KeyARN: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", // 75 bytes
		EDK:    bytes.Repeat([]byte{0xae}, 184),
	}
	if len(local.KeyARN) != 70 || len(aws.KeyARN) != 75 {
		t.Fatalf("ARN lengths: got %d, %d, want 70, 75", len(local.KeyARN), len(aws.KeyARN))
	}
	for _, tt := range []struct {
		name     string
		keys     []WrappedKey
		wantBody int
	}{
		{"local", []WrappedKey{local}, 26 + 8 + 70 + 81},
		{"aws", []WrappedKey{aws}, 26 + 8 + 75 + 184},
		{"local+aws", []WrappedKey{local, aws}, 26 + 16 + 70 + 81 + 75 + 184},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := Header{FileID: FileID{9}, Generation: 1, Keys: tt.keys}
			body, err := h.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if len(body) != tt.wantBody {
				t.Errorf("body: got %d bytes, want %d", len(body), tt.wantBody)
			}
			slot, err := EncodeSlot(h, DefaultLayout().SlotSize())
			if err != nil {
				t.Fatalf("EncodeSlot: got %v, want nil", err)
			}
			if len(slot) != 512 {
				t.Errorf("slot: got %d bytes, want 512", len(slot))
			}
			t.Logf("%s header body %d bytes, %d free in a 512-byte slot", tt.name, len(body), 512-6-len(body))
		})
	}
}

// TestFormatCRC32C: the slot checksum is CRC-32C (Castagnoli), whose
// standard check value for "123456789" is e3069283.
func TestFormatCRC32C(t *testing.T) {
	if got := crc32c([]byte("123456789")); got != 0xe3069283 {
		t.Errorf("crc32c check value: got %08x, want e3069283", got)
	}
}
