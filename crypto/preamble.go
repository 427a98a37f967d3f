package crypto

// The preamble opens every cipher file (32 bytes):
//
//	0   4   magic "KMSF"
//	4   2   format version = 1 (big-endian)
//	6   1   chunk shift (12..20)
//	7   1   slot shift (9..13)
//	8   16  file ID
//	24  8   reserved, zero (non-zero is refused: a newer format)
//
// It is not authenticated itself: the file ID is bound into every chunk's
// AAD and the EDK's encryption context, and the shifts must equal the
// filesystem's.

import (
	"encoding/binary"
	"fmt"
)

const (
	PreambleSize  = 32
	Magic         = "KMSF"
	FormatVersion = 1

	preambleMagicOff    = 0
	preambleVersionOff  = 4
	preambleChunkOff    = 6
	preambleSlotOff     = 7
	preambleFileIDOff   = 8
	preambleReservedOff = 24
	preambleReserved    = 8
)

// Preamble is the decoded fixed start of a cipher file.
type Preamble struct {
	Version    uint16
	ChunkShift uint8
	SlotShift  uint8
	FileID     FileID
}

// NewPreamble returns the version-1 preamble of a file with layout l.
func NewPreamble(l Layout, id FileID) Preamble {
	return Preamble{Version: FormatVersion, ChunkShift: l.ChunkShift, SlotShift: l.SlotShift, FileID: id}
}

// Marshal returns the 32 preamble bytes.
func (p Preamble) Marshal() []byte {
	b := make([]byte, PreambleSize)
	copy(b[preambleMagicOff:], Magic)
	binary.BigEndian.PutUint16(b[preambleVersionOff:], p.Version)
	b[preambleChunkOff] = p.ChunkShift
	b[preambleSlotOff] = p.SlotShift
	copy(b[preambleFileIDOff:], p.FileID[:])
	return b
}

// ParsePreamble decodes exactly PreambleSize bytes. A short input or wrong
// magic is ErrNotCipherFile, an unknown version ErrUnsupportedVersion, and a
// shift out of range, a non-zero reserved byte or trailing bytes
// ErrBadPreamble.
func ParsePreamble(b []byte) (Preamble, error) {
	if len(b) < PreambleSize {
		return Preamble{}, fmt.Errorf("preamble of %d bytes, want %d: %w", len(b), PreambleSize, ErrNotCipherFile)
	}
	if string(b[preambleMagicOff:preambleMagicOff+len(Magic)]) != Magic {
		return Preamble{}, fmt.Errorf("preamble magic %q, want %q: %w", b[:len(Magic)], Magic, ErrNotCipherFile)
	}
	var p Preamble
	p.Version = binary.BigEndian.Uint16(b[preambleVersionOff:])
	if p.Version != FormatVersion {
		return Preamble{}, fmt.Errorf("format version %d, this build reads %d: %w", p.Version, FormatVersion, ErrUnsupportedVersion)
	}
	if len(b) != PreambleSize {
		return Preamble{}, fmt.Errorf("preamble of %d bytes, want %d: %w", len(b), PreambleSize, ErrBadPreamble)
	}
	p.ChunkShift = b[preambleChunkOff]
	p.SlotShift = b[preambleSlotOff]
	if err := p.Layout().Validate(); err != nil {
		return Preamble{}, fmt.Errorf("preamble: %w: %w", ErrBadPreamble, err)
	}
	copy(p.FileID[:], b[preambleFileIDOff:])
	for _, c := range b[preambleReservedOff : preambleReservedOff+preambleReserved] {
		if c != 0 {
			return Preamble{}, fmt.Errorf("preamble reserved bytes %x not zero: %w", b[preambleReservedOff:], ErrBadPreamble)
		}
	}
	return p, nil
}

// Layout returns the file's chunk and slot shifts.
func (p Preamble) Layout() Layout {
	return Layout{ChunkShift: p.ChunkShift, SlotShift: p.SlotShift}
}
