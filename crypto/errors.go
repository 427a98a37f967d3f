package crypto

import "errors"

// Sentinel errors. Functions wrap them with context; compare with errors.Is.
var (
	// ErrAuth: a chunk or xattr value failed authentication (tampered,
	// moved, truncated, wrong key or file ID, wrong last-chunk flag).
	ErrAuth = errors.New("crypto: message authentication failed")
	// ErrBadSize: a size or length is invalid (cipher size that no plain
	// size maps to, chunk length out of range, DEK of the wrong length).
	ErrBadSize = errors.New("crypto: invalid size")
	// ErrNotCipherFile: too short for a preamble, or wrong magic.
	ErrNotCipherFile = errors.New("crypto: not a kmsfs cipher file")
	// ErrUnsupportedVersion: a preamble of a format version this build does not know.
	ErrUnsupportedVersion = errors.New("crypto: unsupported format version")
	// ErrBadPreamble: magic and version are right but a field is invalid.
	ErrBadPreamble = errors.New("crypto: invalid preamble")
	// ErrBadHeader: a header body that does not decode, or whose file ID is
	// not the expected one.
	ErrBadHeader = errors.New("crypto: invalid header")
	// ErrEmptySlot: an all-zero header slot.
	ErrEmptySlot = errors.New("crypto: empty header slot")
	// ErrBadChecksum: a header slot whose CRC-32C does not match (torn or damaged).
	ErrBadChecksum = errors.New("crypto: header slot checksum mismatch")
	// ErrNoValidHeader: neither header slot is valid; wraps both causes.
	ErrNoValidHeader = errors.New("crypto: no valid header slot")
	// ErrHeaderTooLarge: the header body does not fit a slot.
	ErrHeaderTooLarge = errors.New("crypto: header too large for slot")
	// ErrLayoutMismatch: a file's chunk or slot shift differs from the
	// filesystem's (returned by callers comparing Preamble.Layout()).
	ErrLayoutMismatch = errors.New("crypto: file layout differs from filesystem layout")
	// ErrBadLayout: chunk or slot shift out of the allowed range.
	ErrBadLayout = errors.New("crypto: invalid layout")
	// ErrBadFileID: a file ID string that is not 32 hex characters.
	ErrBadFileID = errors.New("crypto: invalid file ID")
	// ErrBadName: not a valid plain name (empty, over 255 bytes, "." or
	// "..", holding '/' or NUL) or symlink target (empty, over 3039 bytes,
	// holding NUL); or not an encoded name or target (bad base64, a length
	// no name or target encodes to, or an authenticated plaintext that is
	// not a valid name or target).
	ErrBadName = errors.New("crypto: invalid name")
	// ErrNameTooLong: wrapped together with ErrBadName for a plain name of
	// more than 255 bytes; callers map it to ENAMETOOLONG.
	ErrNameTooLong = errors.New("crypto: name too long")
	// ErrTargetTooLong: wrapped together with ErrBadName for a symlink
	// target of more than 3039 bytes (its encoding would not fit
	// PATH_MAX); callers map it to ENAMETOOLONG.
	ErrTargetTooLong = errors.New("crypto: symlink target too long")
	// ErrNameAuth: an encoded name or symlink target that fails
	// authentication (another directory, tampered, wrong key).
	ErrNameAuth = errors.New("crypto: name authentication failed")
)
