package keymgr

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// LockedSlab is a region of memory outside the Go heap for key material:
// mmap'ed anonymous and private, mlock'ed so it never reaches swap, and
// madvise(MADV_DONTDUMP)'ed so it never reaches a core dump. It is carved
// into fixed-size slots (32 bytes for a DEK) so that 100,000 keys take
// 3.2 MB of a typical 8 MiB RLIMIT_MEMLOCK, not a page each.
//
// Invariant: every byte of a slot that is not in use is zero. Clear zeroes
// a slot; Close zeroes the whole region before unmapping it.
//
// LockedSlab does no locking of its own: its owner serialises access.
type LockedSlab struct {
	mem      []byte
	slotSize int
	slots    int
}

// NewLockedSlab maps slots*slotSize bytes (rounded up to whole pages) and
// locks them. The error wraps ErrMemlock and says how to raise the limit.
func NewLockedSlab(slots, slotSize int) (*LockedSlab, error) {
	if slots <= 0 || slotSize <= 0 {
		return nil, fmt.Errorf("locked slab: invalid size %d x %d", slots, slotSize)
	}
	page := unix.Getpagesize()
	size := (slots*slotSize + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("locked slab: mmap %d bytes: %w", size, err)
	}
	if err := unix.Madvise(mem, unix.MADV_DONTDUMP); err != nil {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("locked slab: madvise(MADV_DONTDUMP): %w", err)
	}
	if err := unix.Mlock(mem); err != nil {
		_ = unix.Munmap(mem)
		var lim unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim)
		return nil, fmt.Errorf("%w: mlock of %d bytes failed (%v); RLIMIT_MEMLOCK is %d bytes: lower the cache size or raise the limit (ulimit -l, or LimitMEMLOCK= in a systemd unit)",
			ErrMemlock, size, err, lim.Cur)
	}
	return &LockedSlab{mem: mem, slotSize: slotSize, slots: slots}, nil
}

// Slots is the number of slots.
func (s *LockedSlab) Slots() int { return s.slots }

// Bytes is the number of bytes locked (whole pages).
func (s *LockedSlab) Bytes() int { return len(s.mem) }

// Slot returns slot i as a slice into locked memory. The slice must not be
// retained past the owner's lock, nor after Close.
func (s *LockedSlab) Slot(i int) []byte {
	off := i * s.slotSize
	return s.mem[off : off+s.slotSize : off+s.slotSize]
}

// Clear zeroes slot i.
func (s *LockedSlab) Clear(i int) { clear(s.Slot(i)) }

// Close zeroes the whole region, unlocks and unmaps it. The slab is unusable
// afterwards. Calling Close twice is harmless.
func (s *LockedSlab) Close() error {
	if s.mem == nil {
		return nil
	}
	clear(s.mem)
	err := unix.Munlock(s.mem)
	if uerr := unix.Munmap(s.mem); err == nil {
		err = uerr
	}
	s.mem = nil
	if err != nil {
		return fmt.Errorf("locked slab: release: %w", err)
	}
	return nil
}
