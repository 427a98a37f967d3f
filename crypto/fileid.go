package crypto

// A file ID is 16 random bytes, fixed for the life of a cipher file:
//
//	0   16  file ID (128 random bits)
//
// Its text form is 32 lowercase hex characters; parsing also accepts
// uppercase. It is stored in the preamble and the header body, bound into
// every chunk's AAD and into the KMS encryption context of the file's EDK.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
)

const (
	FileIDSize    = 16             // bytes
	fileIDHexSize = 2 * FileIDSize // characters
)

// FileID identifies one cipher file.
type FileID [FileIDSize]byte

// NamesKeyID, the all-zero file ID, is reserved for the head that holds a
// filesystem's wrapped names key (CIPHERDIR/kmsfs.names and its copy
// .kmsfs/names). No cipher file may carry it: the names key is never a
// content key. A random ID is zero with probability 2^-128.
var NamesKeyID = FileID{}

// NewFileID draws a file ID from r (crypto/rand.Reader when r is nil).
func NewFileID(r io.Reader) (FileID, error) {
	if r == nil {
		r = rand.Reader
	}
	var id FileID
	if _, err := io.ReadFull(r, id[:]); err != nil {
		return FileID{}, fmt.Errorf("new file ID: %w", err)
	}
	return id, nil
}

// ParseFileID parses 32 hex characters (either case).
func ParseFileID(s string) (FileID, error) {
	var id FileID
	if len(s) != fileIDHexSize {
		return FileID{}, fmt.Errorf("file ID %q: %d characters, want %d: %w", s, len(s), fileIDHexSize, ErrBadFileID)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return FileID{}, fmt.Errorf("file ID %q: %w", s, ErrBadFileID)
	}
	return id, nil
}

// String returns the ID as 32 lowercase hex characters.
func (id FileID) String() string {
	return hex.EncodeToString(id[:])
}
