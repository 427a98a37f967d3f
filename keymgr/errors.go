package keymgr

import (
	"errors"

	"github.com/kmsfs/kmsfs/keymgr/kmserr"
)

// Sentinel errors. Providers and stores wrap them with context
// (fmt.Errorf("decrypt %s: %w", fileID, ErrKeyDisabled)); callers test with
// errors.Is. The ones a layer above keymgr must recognise live in the leaf
// package kmserr, which fs maps to errno in one place without linking
// keymgr; they are the same values here, so either name matches.
var (
	// ErrKeyNotFound: the key reference names no key (NotFoundException).
	ErrKeyNotFound = kmserr.ErrKeyNotFound
	// ErrKeyDisabled: the key exists but is disabled (DisabledException).
	ErrKeyDisabled = kmserr.ErrKeyDisabled
	// ErrKeyInvalidState: pending deletion or otherwise unusable (KMSInvalidStateException).
	ErrKeyInvalidState = kmserr.ErrKeyInvalidState
	// ErrAccessDenied: the caller may not use the key (AccessDeniedException).
	ErrAccessDenied = kmserr.ErrAccessDenied
	// ErrInvalidCiphertext: the EDK does not unwrap under this key and
	// encryption context: tampering, or a file from another filesystem.
	ErrInvalidCiphertext = kmserr.ErrInvalidCiphertext
	// ErrUntrustedKey: a header (or a KMS answer) names a key this
	// filesystem does not trust; no call is made with it (pinned.go). It
	// wraps ErrInvalidCiphertext, so it is an authentication failure of
	// the file (EIO), and the Manager still falls back from a planted
	// index entry to the file's own header mirror.
	ErrUntrustedKey = kmserr.ErrUntrustedKey
	// ErrKeyMismatch: the KMS answered for another key than the one the
	// call named (a misrouted or impersonating endpoint); the answer's
	// key material is zeroed and never used. It wraps ErrInvalidCiphertext.
	ErrKeyMismatch = kmserr.ErrKeyMismatch
	// ErrKMSUnavailable: the KMS could not be reached or kept failing.
	ErrKMSUnavailable = kmserr.ErrKMSUnavailable
	// ErrThrottled: the KMS kept throttling after retries.
	ErrThrottled = kmserr.ErrThrottled

	// ErrWrongPassphrase: the keyring did not open with this passphrase.
	ErrWrongPassphrase = errors.New("wrong passphrase for keyring")
	// ErrKeyringNotFound: no keyring file at the given path.
	ErrKeyringNotFound = errors.New("keyring not found")
	// ErrKeyringExists: refusing to overwrite an existing keyring.
	ErrKeyringExists = errors.New("keyring already exists")
	// ErrKeyringInsecure: the keyring file is readable by group or others.
	ErrKeyringInsecure = errors.New("keyring file is readable by group or others")
	// ErrKeyringCorrupt: the keyring file does not parse.
	ErrKeyringCorrupt = errors.New("keyring file is corrupt")

	// ErrNotIndexed: the header index has no entry for the file.
	ErrNotIndexed = kmserr.ErrNotIndexed
	// ErrIndexLocked: another process (a running mount) holds the index.
	ErrIndexLocked = kmserr.ErrIndexLocked
	// ErrIndexCorrupt: the index or one of its values does not decode.
	ErrIndexCorrupt = kmserr.ErrIndexCorrupt

	// ErrMemlock: locked memory could not be obtained (RLIMIT_MEMLOCK).
	ErrMemlock = kmserr.ErrMemlock
)
