package crypto

// Layout is the geometry of every cipher file in a filesystem, fixed at init
// by kmsfs.conf (chunk_shift, slot_shift) and repeated in each preamble:
//
//	offset          size            field
//	0               32              preamble
//	32              S               header slot 0
//	32+S            S               header slot 1
//	32+2S           C+28 per chunk  content chunks 0..n-1
//
// with C = 2^ChunkShift plain bytes per chunk and S = 2^SlotShift. Chunk i
// is stored at cipher offset 32+2S+i*(C+28); the last chunk holds 1..C plain
// bytes. Plain size follows from cipher size (no size field):
//
//	content = cipherSize - (32+2S), k = C+28, r = content mod k
//	content == 0     -> 0
//	r == 0           -> (content/k)*C
//	1 <= r <= 28     -> invalid; best answer (content/k)*C
//	r > 28           -> (content/k)*C + r - 28
//	cipherSize < 32+2S -> invalid; best answer 0
//
// and cipherSize(p) = 32 + 2S + ceil(p/C)*28 + p.
//
// Every offset and size is named plain... or cipher... by the side it counts.

import "fmt"

const (
	MinChunkShift     = 12 // 4 KiB chunks
	MaxChunkShift     = 20 // 1 MiB chunks
	DefaultChunkShift = 12
	MinSlotShift      = 9 // 512 B slots
	MaxSlotShift      = 13
	DefaultSlotShift  = 9
)

// Layout holds a filesystem's chunk and slot shifts. Methods other than
// Validate and PlainSize assume a valid layout; they never panic, but their
// answers for an invalid one are meaningless.
type Layout struct {
	ChunkShift uint8
	SlotShift  uint8
}

// DefaultLayout is 4 KiB chunks and 512-byte slots.
func DefaultLayout() Layout {
	return Layout{ChunkShift: DefaultChunkShift, SlotShift: DefaultSlotShift}
}

// Validate checks both shifts against their allowed ranges.
func (l Layout) Validate() error {
	if l.ChunkShift < MinChunkShift || l.ChunkShift > MaxChunkShift {
		return fmt.Errorf("chunk shift %d not in [%d, %d]: %w", l.ChunkShift, MinChunkShift, MaxChunkShift, ErrBadLayout)
	}
	if l.SlotShift < MinSlotShift || l.SlotShift > MaxSlotShift {
		return fmt.Errorf("slot shift %d not in [%d, %d]: %w", l.SlotShift, MinSlotShift, MaxSlotShift, ErrBadLayout)
	}
	return nil
}

// ChunkSize is C, the plain bytes per chunk.
func (l Layout) ChunkSize() int64 { return 1 << l.ChunkShift }

// CipherChunkSize is C+28, the cipher bytes of a full chunk.
func (l Layout) CipherChunkSize() int64 { return l.ChunkSize() + ChunkOverhead }

// SlotSize is S, the bytes of one header slot.
func (l Layout) SlotSize() int64 { return 1 << l.SlotShift }

// SlotOffset is the cipher offset of header slot 0 or 1.
func (l Layout) SlotOffset(slot int) int64 { return PreambleSize + int64(slot)*l.SlotSize() }

// ContentOffset is the cipher offset of chunk 0, 32+2S.
func (l Layout) ContentOffset() int64 { return PreambleSize + 2*l.SlotSize() }

// PlainSize maps a cipher file size to its plain size. For a size no plain
// size maps to, the error wraps ErrBadSize and the returned size is still the
// best answer: below ContentOffset 0; for a tail of r = 1..28 bytes after
// the whole chunks, their plain bytes plus r, so reads reach the cut chunk
// and fail there (a file cut into its last chunk's overhead must not read
// as a clean, shorter file).
func (l Layout) PlainSize(cipherSize int64) (int64, error) {
	if err := l.Validate(); err != nil {
		return 0, err
	}
	if cipherSize < l.ContentOffset() {
		return 0, fmt.Errorf("cipher size %d below content offset %d: %w", cipherSize, l.ContentOffset(), ErrBadSize)
	}
	cipherContent := cipherSize - l.ContentOffset()
	k := l.CipherChunkSize()
	chunks, r := cipherContent/k, cipherContent%k
	plainWhole := chunks << l.ChunkShift
	switch {
	case r == 0:
		return plainWhole, nil
	case r <= ChunkOverhead:
		// The r stray bytes count as plain bytes, so that a reader
		// reaches them and gets EIO instead of a clean, shorter file.
		return plainWhole + r, fmt.Errorf("cipher size %d: last chunk of %d bytes is shorter than %d: %w", cipherSize, r, ChunkOverhead+1, ErrBadSize)
	default:
		return plainWhole + r - ChunkOverhead, nil
	}
}

// CipherSize maps a plain size (>= 0) to the cipher file size.
func (l Layout) CipherSize(plainSize int64) int64 {
	return l.ContentOffset() + l.ChunkCount(plainSize)*ChunkOverhead + plainSize
}

// ChunkIndex is the chunk holding plain offset plainOff, plainOff / C.
func (l Layout) ChunkIndex(plainOff int64) int64 { return plainOff >> l.ChunkShift }

// ChunkCount is the number of chunks of a plain size, ceil(plainSize / C).
func (l Layout) ChunkCount(plainSize int64) int64 {
	if plainSize <= 0 {
		return 0
	}
	return (plainSize-1)>>l.ChunkShift + 1
}

// CipherChunkOffset is the cipher offset of chunk index.
func (l Layout) CipherChunkOffset(index int64) int64 {
	return l.ContentOffset() + index*l.CipherChunkSize()
}
