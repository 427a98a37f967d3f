package cipherfile

// The head of a cipher file, [0, ContentOffset):
//
//	0       32  preamble (crypto.Preamble)
//	32      S   header slot 0
//	32+S    S   header slot 1
//
// A new file gets the preamble, its header in slot 0 and an all-zero (empty)
// slot 1 in one pwrite. A header update writes the other slot with
// generation+1 and fsyncs, so a torn write damages only the slot being
// written and ReadHeader falls back to the old one.

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kmsfs/kmsfs/crypto"
)

// Create writes the head of a new cipher file: the preamble of l and
// h.FileID, h in slot 0 (with the generation given, 1 for a new file) and an
// empty slot 1, as one pwrite of l.ContentOffset() bytes at offset 0. It
// does not fsync: the caller decides (the file has no content yet). f is
// expected to be new and empty; content after ContentOffset is left alone.
func Create(f *os.File, l crypto.Layout, h crypto.Header) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("create cipher file %s: %w", h.FileID, err)
	}
	slot, err := crypto.EncodeSlot(h, l.SlotSize())
	if err != nil {
		return fmt.Errorf("create cipher file %s: %w", h.FileID, err)
	}
	head := make([]byte, l.ContentOffset())
	copy(head, crypto.NewPreamble(l, h.FileID).Marshal())
	copy(head[l.SlotOffset(0):], slot)
	if _, err := f.WriteAt(head, 0); err != nil {
		return fmt.Errorf("create cipher file %s: %w", h.FileID, ioErr(err))
	}
	return nil
}

// ReadPreamble reads and parses the first 32 bytes. A file shorter than
// that is crypto.ErrNotCipherFile.
func ReadPreamble(f *os.File) (crypto.Preamble, error) {
	var b [crypto.PreambleSize]byte
	n, err := f.ReadAt(b[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return crypto.Preamble{}, fmt.Errorf("read preamble: %w", ioErr(err))
	}
	p, err := crypto.ParsePreamble(b[:n])
	if err != nil {
		return crypto.Preamble{}, fmt.Errorf("read preamble: %w", err)
	}
	return p, nil
}

// ReadHeader reads the preamble and both header slots in one pread, checks
// the preamble's layout is l (crypto.ErrLayoutMismatch otherwise) and
// returns the valid header with the highest generation and the slot it came
// from (crypto.PickSlot). The next WriteHeader goes to the other slot.
func ReadHeader(f *os.File, l crypto.Layout) (crypto.Header, int, error) {
	if err := l.Validate(); err != nil {
		return crypto.Header{}, 0, fmt.Errorf("read header: %w", err)
	}
	head := make([]byte, l.ContentOffset())
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return crypto.Header{}, 0, fmt.Errorf("read header: %w", ioErr(err))
	}
	p, err := crypto.ParsePreamble(head[:min(n, crypto.PreambleSize)])
	if err != nil {
		return crypto.Header{}, 0, fmt.Errorf("read header: %w", err)
	}
	if got := p.Layout(); got != l {
		return crypto.Header{}, 0, fmt.Errorf("read header of %s: chunk/slot shift %d/%d, want %d/%d: %w",
			p.FileID, got.ChunkShift, got.SlotShift, l.ChunkShift, l.SlotShift, crypto.ErrLayoutMismatch)
	}
	// A head cut short leaves zeros in the missing part: a slot cut
	// into fails its CRC, a slot wholly missing reads as empty.
	clear(head[n:])
	s0 := head[l.SlotOffset(0):l.SlotOffset(1)]
	s1 := head[l.SlotOffset(1):l.ContentOffset()]
	h, slot, err := crypto.PickSlot(s0, s1, p.FileID)
	if err != nil {
		return crypto.Header{}, 0, fmt.Errorf("read header of %s: %w", p.FileID, err)
	}
	return h, slot, nil
}

// WriteHeader writes h into slot 1-curSlot, curSlot being the slot
// ReadHeader (or the previous WriteHeader) returned, then fsyncs. The
// caller passes the new header: h.Generation must be the current one plus
// one, so that PickSlot prefers it once it is on disk. Until the fsync
// returns, a crash may leave the slot torn; ReadHeader then returns the old
// header from curSlot.
func WriteHeader(f *os.File, l crypto.Layout, h crypto.Header, curSlot int) error {
	if curSlot != 0 && curSlot != 1 {
		return fmt.Errorf("write header of %s: current slot %d: %w", h.FileID, curSlot, ErrBadSlot)
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("write header of %s: %w", h.FileID, err)
	}
	slot := 1 - curSlot
	b, err := crypto.EncodeSlot(h, l.SlotSize())
	if err != nil {
		return fmt.Errorf("write header of %s: %w", h.FileID, err)
	}
	if _, err := f.WriteAt(b, l.SlotOffset(slot)); err != nil {
		return fmt.Errorf("write header of %s, slot %d: %w", h.FileID, slot, ioErr(err))
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write header of %s, slot %d: %w", h.FileID, slot, ioErr(err))
	}
	return nil
}
