// Package kmserr owns the sentinel errors of key management that layers
// above keymgr must recognise: a key the KMS refuses, a wrapped key that
// does not unwrap, a KMS or header index that cannot answer. keymgr wraps
// them (and re-exports each as keymgr.ErrX); fs maps them to errno
// (fs/errno.go) without linking keymgr, its badger index or the AWS SDK.
//
// It is a leaf: it must import nothing but the standard library's errors,
// so anything may import it.
package kmserr

import "errors"

// Errors of a key or of a KMS call.
var (
	// ErrKeyNotFound: the key reference names no key (NotFoundException).
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyDisabled: the key exists but is disabled (DisabledException).
	ErrKeyDisabled = errors.New("key is disabled")
	// ErrKeyInvalidState: pending deletion or otherwise unusable (KMSInvalidStateException).
	ErrKeyInvalidState = errors.New("key is in an invalid state")
	// ErrAccessDenied: the caller may not use the key (AccessDeniedException).
	ErrAccessDenied = errors.New("access to the key is denied")
	// ErrInvalidCiphertext: the EDK does not unwrap under this key and
	// encryption context: tampering, or a file from another filesystem.
	ErrInvalidCiphertext = errors.New("wrapped key does not match its key or encryption context")
	// ErrUntrustedKey: a header (or a KMS answer) names a key this
	// filesystem does not trust; no call is made with it (keymgr's
	// PinnedProvider). It wraps ErrInvalidCiphertext, so it is an
	// authentication failure of the file (EIO), and the Manager still
	// falls back from a planted index entry to the file's own header
	// mirror.
	ErrUntrustedKey error = &kindOf{msg: "key is not trusted for this filesystem", kind: ErrInvalidCiphertext}
	// ErrKeyMismatch: the KMS answered for another key than the one the
	// call named (a misrouted or impersonating endpoint); the answer's
	// key material is zeroed and never used. It wraps ErrInvalidCiphertext.
	ErrKeyMismatch error = &kindOf{msg: "the KMS answered with another key than the one asked for", kind: ErrInvalidCiphertext}
	// ErrKMSUnavailable: the KMS could not be reached or kept failing.
	ErrKMSUnavailable = errors.New("KMS unavailable")
	// ErrThrottled: the KMS kept throttling after retries.
	ErrThrottled = errors.New("KMS request throttled")
)

// Errors of the header index and of the DEK cache's locked memory.
var (
	// ErrNotIndexed: the header index has no entry for the file.
	ErrNotIndexed = errors.New("file not in header index")
	// ErrIndexLocked: another process (a running mount) holds the index.
	ErrIndexLocked = errors.New("header index is locked by another process")
	// ErrIndexCorrupt: the index or one of its values does not decode.
	ErrIndexCorrupt = errors.New("header index is corrupt")
	// ErrMemlock: locked memory could not be obtained (RLIMIT_MEMLOCK).
	ErrMemlock = errors.New("cannot lock memory for keys")
)

// kindOf is a sentinel that is also a kind of another (errors.Is matches
// both) without repeating the other's message.
type kindOf struct {
	msg  string
	kind error
}

func (e *kindOf) Error() string { return e.msg }
func (e *kindOf) Unwrap() error { return e.kind }
