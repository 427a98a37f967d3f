package crypto

// The header body (big-endian), stored in a header slot and as the value of
// the header index:
//
//	0    1    header version = 1
//	1    8    generation (1 at creation, +1 on each rewrite)
//	9    16   file ID
//	25   1    number of wrapped keys n (1..8)
//	26   ...  n wrapped keys:
//	          2   key ARN length a (1..2048)
//	          a   key ARN (UTF-8)
//	          4   key version
//	          2   EDK length e (1..6144)
//	          e   EDK (KMS ciphertext blob of the 32-byte DEK)
//
// Trailing bytes are refused.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

const (
	MaxWrappedKeys = 8
	MaxKeyARNLen   = 2048
	MaxEDKLen      = 6144

	headerVersion        = 1
	headerFixedSize      = 26 // version, generation, file ID, n
	wrappedKeyFixedSize  = 8  // ARN length, key version, EDK length
	headerGenerationOff  = 1
	headerFileIDOff      = 9
	headerKeyCountOff    = 25
	headerWrappedKeysOff = 26
)

// WrappedKey is one EDK with the key that wrapped it.
type WrappedKey struct {
	KeyARN     string
	KeyVersion uint32
	EDK        []byte
}

// Header is a file's key header: its wrapped DEKs and generation.
type Header struct {
	FileID     FileID
	Generation uint64
	Keys       []WrappedKey
}

// Equal reports whether h and o are the same header: file ID, generation
// and the same wrapped keys in the same order (what a header slot and an
// index entry must agree on).
func (h Header) Equal(o Header) bool {
	if h.FileID != o.FileID || h.Generation != o.Generation || len(h.Keys) != len(o.Keys) {
		return false
	}
	for i, k := range h.Keys {
		ok := o.Keys[i]
		if k.KeyARN != ok.KeyARN || k.KeyVersion != ok.KeyVersion || !bytes.Equal(k.EDK, ok.EDK) {
			return false
		}
	}
	return true
}

func (h Header) validate() error {
	if h.Generation == 0 {
		return fmt.Errorf("generation 0 (first is 1): %w", ErrBadHeader)
	}
	if len(h.Keys) < 1 || len(h.Keys) > MaxWrappedKeys {
		return fmt.Errorf("%d wrapped keys, want 1..%d: %w", len(h.Keys), MaxWrappedKeys, ErrBadHeader)
	}
	for i, k := range h.Keys {
		if err := k.validate(); err != nil {
			return fmt.Errorf("wrapped key %d: %w", i, err)
		}
	}
	return nil
}

func (k WrappedKey) validate() error {
	if len(k.KeyARN) < 1 || len(k.KeyARN) > MaxKeyARNLen {
		return fmt.Errorf("key ARN of %d bytes, want 1..%d: %w", len(k.KeyARN), MaxKeyARNLen, ErrBadHeader)
	}
	if !utf8.ValidString(k.KeyARN) {
		return fmt.Errorf("key ARN not UTF-8: %w", ErrBadHeader)
	}
	if len(k.EDK) < 1 || len(k.EDK) > MaxEDKLen {
		return fmt.Errorf("EDK of %d bytes, want 1..%d: %w", len(k.EDK), MaxEDKLen, ErrBadHeader)
	}
	return nil
}

// size is the length of the encoded body of a valid header.
func (h Header) size() int {
	n := headerFixedSize
	for _, k := range h.Keys {
		n += wrappedKeyFixedSize + len(k.KeyARN) + len(k.EDK)
	}
	return n
}

// Marshal encodes the header body. An invalid header (generation 0, 0 or
// more than 8 keys, an ARN or EDK length out of range) is ErrBadHeader.
func (h Header) Marshal() ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("marshal header %s: %w", h.FileID, err)
	}
	return h.appendTo(make([]byte, 0, h.size())), nil
}

// appendTo appends the body of a validated header.
func (h Header) appendTo(b []byte) []byte {
	b = append(b, headerVersion)
	b = binary.BigEndian.AppendUint64(b, h.Generation)
	b = append(b, h.FileID[:]...)
	b = append(b, byte(len(h.Keys)))
	for _, k := range h.Keys {
		b = binary.BigEndian.AppendUint16(b, uint16(len(k.KeyARN)))
		b = append(b, k.KeyARN...)
		b = binary.BigEndian.AppendUint32(b, k.KeyVersion)
		b = binary.BigEndian.AppendUint16(b, uint16(len(k.EDK)))
		b = append(b, k.EDK...)
	}
	return b
}

// UnmarshalHeader decodes a header body strictly: every length in range,
// nothing left over. Errors wrap ErrBadHeader. The result does not alias b.
func UnmarshalHeader(b []byte) (Header, error) {
	h, err := unmarshalHeader(b)
	if err != nil {
		return Header{}, fmt.Errorf("unmarshal header: %w", err)
	}
	return h, nil
}

func unmarshalHeader(b []byte) (Header, error) {
	if len(b) < headerFixedSize {
		return Header{}, fmt.Errorf("%d bytes, want at least %d: %w", len(b), headerFixedSize, ErrBadHeader)
	}
	if b[0] != headerVersion {
		return Header{}, fmt.Errorf("header version %d, want %d: %w", b[0], headerVersion, ErrBadHeader)
	}
	var h Header
	h.Generation = binary.BigEndian.Uint64(b[headerGenerationOff:])
	copy(h.FileID[:], b[headerFileIDOff:])
	n := int(b[headerKeyCountOff])
	if n < 1 || n > MaxWrappedKeys {
		return Header{}, fmt.Errorf("%d wrapped keys, want 1..%d: %w", n, MaxWrappedKeys, ErrBadHeader)
	}
	h.Keys = make([]WrappedKey, 0, n)
	rest := b[headerWrappedKeysOff:]
	for i := range n {
		var k WrappedKey
		var err error
		if k, rest, err = unmarshalWrappedKey(rest); err != nil {
			return Header{}, fmt.Errorf("wrapped key %d: %w", i, err)
		}
		h.Keys = append(h.Keys, k)
	}
	if len(rest) != 0 {
		return Header{}, fmt.Errorf("%d trailing bytes: %w", len(rest), ErrBadHeader)
	}
	if err := h.validate(); err != nil {
		return Header{}, err
	}
	return h, nil
}

func unmarshalWrappedKey(b []byte) (WrappedKey, []byte, error) {
	var k WrappedKey
	if len(b) < 2 {
		return k, nil, fmt.Errorf("truncated ARN length: %w", ErrBadHeader)
	}
	a := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if a < 1 || a > MaxKeyARNLen {
		return k, nil, fmt.Errorf("key ARN of %d bytes, want 1..%d: %w", a, MaxKeyARNLen, ErrBadHeader)
	}
	if len(b) < a+6 {
		return k, nil, fmt.Errorf("truncated key ARN: %w", ErrBadHeader)
	}
	k.KeyARN = string(b[:a])
	b = b[a:]
	k.KeyVersion = binary.BigEndian.Uint32(b)
	e := int(binary.BigEndian.Uint16(b[4:]))
	b = b[6:]
	if e < 1 || e > MaxEDKLen {
		return k, nil, fmt.Errorf("EDK of %d bytes, want 1..%d: %w", e, MaxEDKLen, ErrBadHeader)
	}
	if len(b) < e {
		return k, nil, fmt.Errorf("truncated EDK: %w", ErrBadHeader)
	}
	k.EDK = append([]byte(nil), b[:e]...)
	return k, b[e:], nil
}
