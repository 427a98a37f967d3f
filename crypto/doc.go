// Package crypto owns the kmsfs on-disk formats, version 1 (docs/format.md):
// the cipher-file preamble, the header body and its two checksummed slots,
// chunked AES-256-GCM sealing of file content and of user xattr values, the
// size arithmetic that maps plain offsets and sizes to cipher ones, and the
// encryption of names and symlink targets (AES-SIV, names.go).
//
// It must not do I/O, know about KMS providers, FUSE or the index, or keep
// key material beyond an AES key schedule: callers hand it bytes and get
// bytes back. Randomness is injected as an io.Reader so known-answer tests
// can pin exact ciphertext. It imports only the standard library,
// golang.org/x/crypto (HKDF) and tink-go's AES-SIV (RFC 5297), the one
// deterministic AEAD it needs and should not write itself.
//
// Decoders are strict: lengths out of range, non-zero reserved bytes or
// padding, and trailing bytes are refused with an error wrapping one of the
// sentinels in errors.go. Bad input never panics.
package crypto
