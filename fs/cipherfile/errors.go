package cipherfile

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Sentinel errors of this package. Errors from crypto (ErrAuth,
// ErrLayoutMismatch, ErrNotCipherFile, ErrNoValidHeader, ...) are wrapped,
// not replaced: compare with errors.Is against either package's sentinels.
var (
	// ErrNegativeOffset: a plain offset or size below zero. It wraps
	// syscall.EINVAL, the errno pread(2)/ftruncate(2) give for it.
	ErrNegativeOffset = fmt.Errorf("cipherfile: negative offset: %w", syscall.EINVAL)
	// ErrFileTooLarge: a plain size whose cipher size would not fit an
	// int64. It wraps syscall.EFBIG.
	ErrFileTooLarge = fmt.Errorf("cipherfile: file too large: %w", syscall.EFBIG)
	// ErrFileIDMismatch: the preamble's file ID is not the content
	// cipher's (the file would open, but no chunk would authenticate).
	ErrFileIDMismatch = errors.New("cipherfile: preamble file ID differs from the content cipher's")
	// ErrBadSlot: a header slot number other than 0 or 1.
	ErrBadSlot = errors.New("cipherfile: header slot must be 0 or 1")
)

// ChunkError names the content chunk an error is about. Err wraps
// crypto.ErrAuth when the chunk failed to open (tampered, cut off, moved,
// wrong last-chunk flag), so errors.Is(err, crypto.ErrAuth) holds through
// it; the FUSE layer maps that to EIO and logs Index.
type ChunkError struct {
	Index int64 // chunk index i: plain bytes [i*C, (i+1)*C)
	Err   error
}

func (e *ChunkError) Error() string { return fmt.Sprintf("chunk %d: %v", e.Index, e.Err) }

// Unwrap returns Err.
func (e *ChunkError) Unwrap() error { return e.Err }

// ioErr strips the path from an *os.PathError, keeping the operation and
// the errno (errors.Is(err, syscall.EIO) still holds): in format version 1
// a cipher path is the plaintext path, and errors end up in logs, which
// name files by file ID instead.
func ioErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}
