package cipherfile

import (
	"fmt"
	"os"

	"github.com/kmsfs/kmsfs/crypto"
)

// KeySource gives the content cipher of the file id: the Manager's
// OpenFile with its context bound. header reads the file's own header
// mirror (ReadHeader); a source that has the key cached, or an index
// entry that serves, need not call it, so an open with a warm cache
// reads only the preamble.
type KeySource func(id crypto.FileID, header func() (crypto.Header, error)) (*crypto.ContentCipher, error)

// OpenError is an error of OpenContent once f's preamble has been read:
// Preamble names the file and gives its layout. With Key set, Err is the
// key source's error; otherwise it wraps crypto.ErrLayoutMismatch (the
// preamble's layout is not the filesystem's), crypto.ErrBadHeader (the
// file claims crypto.NamesKeyID) or ErrFileIDMismatch (the key source
// gave another file's cipher).
type OpenError struct {
	Preamble crypto.Preamble
	Key      bool
	Err      error
}

func (e *OpenError) Error() string {
	if e.Key {
		return fmt.Sprintf("open file key %s: %v", e.Preamble.FileID, e.Err)
	}
	return fmt.Sprintf("open content of %s: %v", e.Preamble.FileID, e.Err)
}

// Unwrap returns Err.
func (e *OpenError) Unwrap() error { return e.Err }

// OpenContent opens the content of the existing cipher file f, of the
// filesystem's layout l, the one way the mount and every command do it:
// it reads the preamble (one pread), refuses the names key's file ID and
// a foreign layout before any key is asked for, gets the content cipher
// from keys, and returns the content view (File.Cipher gives the cipher).
//
// A preamble that does not read or parse is returned as it is (a file
// shorter than 32 bytes is crypto.ErrNotCipherFile: a caller that treats a
// 0-byte file as empty checks the size first); every later failure is an
// *OpenError.
func OpenContent(f *os.File, l crypto.Layout, keys KeySource) (*File, error) {
	p, err := ReadPreamble(f)
	if err != nil {
		return nil, err
	}
	if p.FileID == crypto.NamesKeyID {
		// The names key's head: never a file's content key.
		return nil, &OpenError{Preamble: p, Err: fmt.Errorf("the file ID reserved for the names key: %w", crypto.ErrBadHeader)}
	}
	if got := p.Layout(); got != l {
		return nil, &OpenError{Preamble: p, Err: fmt.Errorf("chunk/slot shift %d/%d, want %d/%d: %w",
			got.ChunkShift, got.SlotShift, l.ChunkShift, l.SlotShift, crypto.ErrLayoutMismatch)}
	}
	c, err := keys(p.FileID, func() (crypto.Header, error) {
		h, _, err := ReadHeader(f, l)
		return h, err
	})
	if err != nil {
		return nil, &OpenError{Preamble: p, Key: true, Err: err}
	}
	cf, err := open(f, c, p)
	if err != nil {
		return nil, &OpenError{Preamble: p, Err: err}
	}
	return cf, nil
}
