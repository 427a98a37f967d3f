package crypto

// A header slot (S bytes, S = 2^slot shift, two per file):
//
//	0     2   body length L (0 = empty slot)
//	2     L   header body (header.go)
//	2+L   ..  zero padding up to S-4
//	S-4   4   CRC-32C (Castagnoli) of bytes [0, S-4)
//
// A slot is valid when L > 0, L <= S-6, the padding is zero, the CRC
// matches, the body decodes and its file ID is the preamble's. An all-zero
// slot is empty. The file's header is the valid slot with the highest
// generation; an update writes the other slot with generation+1, so a torn
// write damages only the slot being written.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

const (
	slotLenSize = 2
	slotCRCSize = 4
	slotSlack   = slotLenSize + slotCRCSize // S - 6 is the largest body
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checkSlotSize(slotSize int64) error {
	for shift := MinSlotShift; shift <= MaxSlotShift; shift++ {
		if slotSize == 1<<shift {
			return nil
		}
	}
	return fmt.Errorf("slot of %d bytes, want 2^%d..2^%d: %w", slotSize, MinSlotShift, MaxSlotShift, ErrBadSize)
}

// EncodeSlot returns the slotSize bytes of a slot holding h. A body longer
// than slotSize-6 is ErrHeaderTooLarge; an invalid header ErrBadHeader.
func EncodeSlot(h Header, slotSize int64) ([]byte, error) {
	if err := checkSlotSize(slotSize); err != nil {
		return nil, fmt.Errorf("encode slot: %w", err)
	}
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("encode slot %s: %w", h.FileID, err)
	}
	if n := h.size(); int64(n) > slotSize-slotSlack {
		return nil, fmt.Errorf("encode slot %s: body of %d bytes, slot holds %d: %w", h.FileID, n, slotSize-slotSlack, ErrHeaderTooLarge)
	}
	b := make([]byte, slotLenSize, slotSize)
	b = h.appendTo(b)
	binary.BigEndian.PutUint16(b, uint16(len(b)-slotLenSize))
	b = b[:slotSize] // zero padding
	binary.BigEndian.PutUint32(b[slotSize-slotCRCSize:], crc32c(b[:slotSize-slotCRCSize]))
	return b, nil
}

// DecodeSlot decodes one slot of a file whose preamble carries want. An
// all-zero slot is ErrEmptySlot, a CRC mismatch ErrBadChecksum, and a bad
// length, non-zero padding, a body that does not decode or a file ID other
// than want ErrBadHeader.
func DecodeSlot(b []byte, want FileID) (Header, error) {
	if err := checkSlotSize(int64(len(b))); err != nil {
		return Header{}, fmt.Errorf("decode slot: %w", err)
	}
	if allZero(b) {
		return Header{}, fmt.Errorf("decode slot: %w", ErrEmptySlot)
	}
	end := len(b) - slotCRCSize
	if got, want := crc32c(b[:end]), binary.BigEndian.Uint32(b[end:]); got != want {
		return Header{}, fmt.Errorf("decode slot: crc32c %08x, stored %08x: %w", got, want, ErrBadChecksum)
	}
	n := int(binary.BigEndian.Uint16(b))
	if n < 1 || n > len(b)-slotSlack {
		return Header{}, fmt.Errorf("decode slot: body length %d, want 1..%d: %w", n, len(b)-slotSlack, ErrBadHeader)
	}
	if !allZero(b[slotLenSize+n : end]) {
		return Header{}, fmt.Errorf("decode slot: padding not zero: %w", ErrBadHeader)
	}
	h, err := UnmarshalHeader(b[slotLenSize : slotLenSize+n])
	if err != nil {
		return Header{}, fmt.Errorf("decode slot: %w", err)
	}
	if h.FileID != want {
		return Header{}, fmt.Errorf("decode slot: file ID %s, preamble has %s: %w", h.FileID, want, ErrBadHeader)
	}
	return h, nil
}

// PickSlot decodes both slots and returns the valid one with the highest
// generation (slot 0 on a tie) and its number. When neither is valid the
// error wraps ErrNoValidHeader and both causes. The next update goes to slot
// 1-slot with Generation+1.
func PickSlot(slot0, slot1 []byte, want FileID) (h Header, slot int, err error) {
	h0, err0 := DecodeSlot(slot0, want)
	h1, err1 := DecodeSlot(slot1, want)
	switch {
	case err0 == nil && err1 == nil:
		if h1.Generation > h0.Generation {
			return h1, 1, nil
		}
		return h0, 0, nil
	case err0 == nil:
		return h0, 0, nil
	case err1 == nil:
		return h1, 1, nil
	default:
		return Header{}, 0, fmt.Errorf("%w: slot 0: %w; slot 1: %w", ErrNoValidHeader, err0, err1)
	}
}

func allZero(b []byte) bool {
	// Every byte equals its neighbour and the first is zero; bytes.Equal is a
	// vectorized memcmp, and this runs on every slot read and hole check.
	return len(b) == 0 || (b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1]))
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
