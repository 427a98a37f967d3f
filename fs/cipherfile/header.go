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
// written and ReadHead falls back to the old one.

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

// Head is a cipher file's head as ReadHead found it: the preamble, each
// header slot decoded on its own, and the slot crypto.PickSlot picks. The
// offline checkers (fsck, verify) report and repair from the per-slot
// results; everything else needs only Header.
type Head struct {
	Preamble crypto.Preamble
	// Slots[i] is slot i's header, or why it is not valid (Err wraps
	// crypto.ErrEmptySlot for a slot never written, crypto.ErrBadChecksum for a
	// torn one, crypto.ErrBadHeader for one that does not decode or names
	// another file ID).
	Slots [2]SlotResult
	// Current is the slot Header came from; the next WriteHeader goes to
	// the other.
	Current int
	Header  crypto.Header
}

// SlotResult is one header slot decoded on its own.
type SlotResult struct {
	Header crypto.Header
	Err    error
}

// ReadHead reads the preamble and both header slots in one pread, checks
// the preamble's layout is l and decodes each slot. What it returns with
// an error depends on how far it got:
//   - the head does not read, or the preamble does not parse (a file
//     shorter than 32 bytes is crypto.ErrNotCipherFile): an empty Head;
//   - the layout is not l: Preamble set, the error wraps
//     crypto.ErrLayoutMismatch;
//   - neither slot is valid: Preamble and Slots set, the error wraps
//     crypto.ErrNoValidHeader and both slots' causes.
//
// A head cut short reads as zeros where it is missing: a slot cut into
// fails its CRC, a slot wholly missing reads as empty.
func ReadHead(f *os.File, l crypto.Layout) (Head, error) {
	if err := l.Validate(); err != nil {
		return Head{}, fmt.Errorf("read header: %w", err)
	}
	head := make([]byte, l.ContentOffset())
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Head{}, fmt.Errorf("read header: %w", ioErr(err))
	}
	p, err := crypto.ParsePreamble(head[:min(n, crypto.PreambleSize)])
	if err != nil {
		return Head{}, fmt.Errorf("read header: %w", err)
	}
	hd := Head{Preamble: p}
	if got := p.Layout(); got != l {
		return hd, fmt.Errorf("read header of %s: chunk/slot shift %d/%d, want %d/%d: %w",
			p.FileID, got.ChunkShift, got.SlotShift, l.ChunkShift, l.SlotShift, crypto.ErrLayoutMismatch)
	}
	clear(head[n:])
	slot := func(i int) []byte { return head[l.SlotOffset(i) : l.SlotOffset(i)+l.SlotSize()] }
	for i := range hd.Slots {
		hd.Slots[i].Header, hd.Slots[i].Err = crypto.DecodeSlot(slot(i), p.FileID)
	}
	// PickSlot is the one rule for which slot wins; it decodes the
	// slots again, which costs two CRCs next to a pread.
	hd.Header, hd.Current, err = crypto.PickSlot(slot(0), slot(1), p.FileID)
	if err != nil {
		return hd, fmt.Errorf("read header of %s: %w", p.FileID, err)
	}
	return hd, nil
}

// ReadHeader is ReadHead for a caller that needs only the header: the
// valid header with the highest generation and the slot it came from.
func ReadHeader(f *os.File, l crypto.Layout) (crypto.Header, int, error) {
	hd, err := ReadHead(f, l)
	if err != nil {
		return crypto.Header{}, 0, err
	}
	return hd.Header, hd.Current, nil
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
