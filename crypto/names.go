package crypto

// Encrypted names and symlink targets (docs/format.md, "Names").
//
// Two 64-byte AES-SIV keys (RFC 5297, AES-CMAC-SIV: bytes 0..31 key CMAC,
// bytes 32..63 key CTR) come from the filesystem's 32-byte names key:
//
//	nameKey   = HKDF-SHA256(ikm = names key, salt = filesystem ID (32 hex chars as text), info = "kmsfs v1 name", 64 bytes)
//	targetKey = HKDF-SHA256(ikm = names key, salt = filesystem ID (32 hex chars as text), info = "kmsfs v1 symlink target", 64 bytes)
//
// An encoded name, for a plain name of n = 1..255 bytes in the directory
// whose kmsfs.dirid holds the 16-byte dirID:
//
//	padded  = name | p bytes of value p, p = 16 - n mod 16 (1..16), so 16*(n/16+1) bytes
//	ct      = AES-SIV(nameKey, padded, AD = dirID): 16-byte SIV | len(padded) bytes
//	encoded = base64url without padding (RFC 4648 section 5) of ct
//
// so a name of n bytes encodes to ceil((16 + 16*(n/16+1)) * 4/3) characters:
// 43 for n = 1..15, 235 for n = 144..159, 256 for n = 160..175 and 363 for
// n = 240..255. An encoded name longer than MaxEncodedName (a plain name of
// 160 bytes or more) is stored under LongName(encoded), with a side file
// LongName(encoded)+LongNameSuffix holding the encoded name.
//
// An encoded symlink target, for a target of t = 1..3039 bytes:
//
//	nonce   = 16 random bytes, fresh on every write
//	ct      = AES-SIV(targetKey, target, AD = nonce): 16-byte SIV | t bytes
//	encoded = base64url without padding of nonce | ct: ceil((32 + t) * 4/3) characters, 4095 at most
//
// The alphabet A-Z a-z 0-9 - _ never yields '.' or '/', so no encoded name
// equals "." or "..", and none clashes with kmsfs's own entries, which all
// hold a '.'.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/tink-crypto/tink-go/v2/daead/subtle"
	"golang.org/x/crypto/hkdf"
)

const (
	NamesKeySize   = 32            // the names key from the KMS
	DirIDSize      = 16            // a directory's random ID, stored in its kmsfs.dirid file
	MaxPlainName   = 255           // bytes
	MaxEncodedName = 255           // longest encoded name stored as itself; longer ones use the long-name scheme
	MaxPlainTarget = 3039          // longest symlink target that encrypts (encoded form must fit 4095 bytes)
	LongNamePrefix = "kmsfs.long." // long entry: LongNamePrefix + base64url(SHA-256(encoded)) (43 chars)
	LongNameSuffix = ".name"       // side file: long entry name + LongNameSuffix, content = the encoded name (ASCII, no newline)

	nameSIVKeySize   = 64 // AES-SIV with two AES-256 keys
	sivSize          = 16 // the synthetic IV that leads every AES-SIV output
	namePadBlock     = 16
	targetNonceSize  = 16
	nameKeyInfo      = "kmsfs v1 name"
	targetKeyInfo    = "kmsfs v1 symlink target"
	minCipherName    = sivSize + namePadBlock                     // 32: a name of 1..15 bytes
	maxCipherName    = sivSize + MaxPlainName + 1                 // 272: a name of 240..255 bytes
	maxEncodedTarget = 4095                                       // PATH_MAX - 1
	minCipherTarget  = targetNonceSize + sivSize + 1              // 33: a 1-byte target
	longNameHashLen  = 43                                         // base64url without padding of a SHA-256 sum
	longNameLen      = len(LongNamePrefix) + longNameHashLen      // 54
	longSideFileLen  = longNameLen + len(LongNameSuffix)          // 59
	maxEncodedName   = (maxCipherName*4 + 2) / 3                  // 363: the longest encoding of a valid name
	maxCipherTarget  = targetNonceSize + sivSize + MaxPlainTarget // 3071
)

var (
	b64 = base64.RawURLEncoding.Strict()
	// errZeroed: a NameCipher used after Zero, a caller's bug.
	errZeroed = errors.New("crypto: name cipher used after Zero")
)

// NameCipher encrypts and decrypts the names and symlink targets of one
// filesystem. It is safe for concurrent use.
type NameCipher struct {
	// mu is held shared by every operation and exclusively by Zero, so Zero
	// never clears a key under a running operation.
	mu sync.RWMutex
	// keys is nameKey | targetKey. tink's AESSIV keeps slices of the key it
	// is given (the CTR half is re-keyed on every call), so these bytes are
	// the live keys: Zero clears them, nothing else may.
	keys         []byte
	name, target *subtle.AESSIV
}

// NewNameCipher derives the name and target keys from the 32-byte names key
// and the filesystem ID, exactly as kmsfs.conf holds it (32 lowercase hex
// characters; its text is the HKDF salt, so another spelling of the same ID
// gives other keys). namesKey is not retained; the caller may zero it on
// return.
func NewNameCipher(namesKey []byte, filesystemID string) (*NameCipher, error) {
	if len(namesKey) != NamesKeySize {
		return nil, fmt.Errorf("name cipher: names key of %d bytes, want %d: %w", len(namesKey), NamesKeySize, ErrBadSize)
	}
	if filesystemID == "" {
		return nil, fmt.Errorf("name cipher: empty filesystem ID: %w", ErrBadSize)
	}
	keys := make([]byte, 2*nameSIVKeySize)
	for i, info := range []string{nameKeyInfo, targetKeyInfo} {
		kdf := hkdf.New(sha256.New, namesKey, []byte(filesystemID), []byte(info))
		if _, err := io.ReadFull(kdf, keys[i*nameSIVKeySize:(i+1)*nameSIVKeySize]); err != nil {
			clear(keys)
			return nil, fmt.Errorf("name cipher: %s key: %w", info, err)
		}
	}
	name, err := subtle.NewAESSIV(keys[:nameSIVKeySize:nameSIVKeySize])
	if err != nil {
		clear(keys)
		return nil, fmt.Errorf("name cipher: %w", err)
	}
	target, err := subtle.NewAESSIV(keys[nameSIVKeySize:])
	if err != nil {
		clear(keys)
		return nil, fmt.Errorf("name cipher: %w", err)
	}
	return &NameCipher{keys: keys, name: name, target: target}, nil
}

// Zero clears the derived keys and makes every later call fail. Best effort:
// the AES key schedule of the CMAC half lives inside tink and crypto/aes,
// out of reach, until the garbage collector frees it.
func (c *NameCipher) Zero() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.keys)
	c.keys, c.name, c.target = nil, nil, nil
}

// EncryptName encodes plain, a name in the directory with ID dirID (16
// bytes). The same name in the same directory always gives the same
// encoding. An invalid name is ErrBadName (and ErrNameTooLong beyond
// MaxPlainName bytes). An encoding longer than MaxEncodedName (names of 160
// bytes or more) must be stored under LongName.
func (c *NameCipher) EncryptName(dirID []byte, plain string) (string, error) {
	if len(dirID) != DirIDSize {
		return "", fmt.Errorf("encrypt name: directory ID of %d bytes, want %d: %w", len(dirID), DirIDSize, ErrBadSize)
	}
	// Errors carry lengths, never the name: they end up in logs.
	if err := validName(plain); err != nil {
		return "", fmt.Errorf("encrypt name: %w", err)
	}
	p := namePadBlock - len(plain)%namePadBlock
	padded := make([]byte, len(plain)+p)
	copy(padded, plain)
	for i := len(plain); i < len(padded); i++ {
		padded[i] = byte(p)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.name == nil {
		return "", errZeroed
	}
	ct, err := c.name.EncryptDeterministically(padded, dirID)
	if err != nil {
		return "", fmt.Errorf("encrypt name: %w", err)
	}
	return b64.EncodeToString(ct), nil
}

// DecryptName decodes an encoded name found in the directory with ID dirID.
// Anything that is not an encoded name (bad base64, an impossible length, a
// valid ciphertext of an invalid name) is ErrBadName; an encoding that fails
// authentication (another directory, another filesystem, edited) is
// ErrNameAuth.
func (c *NameCipher) DecryptName(dirID []byte, encoded string) (string, error) {
	if len(dirID) != DirIDSize {
		return "", fmt.Errorf("decrypt name: directory ID of %d bytes, want %d: %w", len(dirID), DirIDSize, ErrBadSize)
	}
	ct, err := decodeStrict(encoded, maxEncodedName)
	if err != nil {
		return "", fmt.Errorf("decrypt name: %w", err)
	}
	if len(ct) < minCipherName || len(ct) > maxCipherName || (len(ct)-sivSize)%namePadBlock != 0 {
		return "", fmt.Errorf("decrypt name: %d cipher bytes, want 16 + a multiple of 16 in [%d, %d]: %w", len(ct), minCipherName, maxCipherName, ErrBadName)
	}
	c.mu.RLock()
	if c.name == nil {
		c.mu.RUnlock()
		return "", errZeroed
	}
	padded, err := c.name.DecryptDeterministically(ct, dirID)
	c.mu.RUnlock()
	if err != nil {
		return "", fmt.Errorf("decrypt name: %w", ErrNameAuth)
	}
	// Padding and name are authenticated: only a writer with the key that
	// broke the format could get here with bad ones.
	p := int(padded[len(padded)-1])
	if p < 1 || p > namePadBlock || p > len(padded) || bytes.Count(padded[len(padded)-p:], padded[len(padded)-1:]) != p {
		return "", fmt.Errorf("decrypt name: invalid padding: %w", ErrNameAuth)
	}
	plain := string(padded[:len(padded)-p])
	if err := validName(plain); err != nil {
		return "", fmt.Errorf("decrypt name: authenticated but %w", err)
	}
	return plain, nil
}

// EncryptTarget encodes a symlink target with a fresh 16-byte nonce from r
// (crypto/rand.Reader when nil; the caller serializes a reader that is not
// safe for concurrent use). An invalid target is ErrBadName; a target of
// more than MaxPlainTarget bytes also wraps ErrTargetTooLong.
func (c *NameCipher) EncryptTarget(target []byte, r io.Reader) (string, error) {
	if err := validTarget(target); err != nil {
		return "", fmt.Errorf("encrypt target: %w", err)
	}
	if r == nil {
		r = rand.Reader
	}
	nonce := make([]byte, targetNonceSize)
	if _, err := io.ReadFull(r, nonce); err != nil {
		return "", fmt.Errorf("encrypt target: nonce: %w", err)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.target == nil {
		return "", errZeroed
	}
	ct, err := c.target.EncryptDeterministically(target, nonce)
	if err != nil {
		return "", fmt.Errorf("encrypt target: %w", err)
	}
	return b64.EncodeToString(append(nonce, ct...)), nil
}

// PlainTargetLen is the length of the plain target stored as an encoding
// of encodedLen characters (what lstat reports as a cipher symlink's
// size), so a symlink's plain size needs no readlink: base64 of n bytes is
// ceil(4n/3) characters, so n = floor(3 * encodedLen / 4), less the nonce
// and the synthetic IV. 0 for a length no valid encoding has.
func PlainTargetLen(encodedLen int64) int64 {
	n := 3*encodedLen/4 - targetNonceSize - sivSize
	if n < 1 || n > MaxPlainTarget {
		return 0
	}
	return n
}

// DecryptTarget decodes an encoded symlink target. Anything that is not an
// encoded target is ErrBadName; one that fails authentication is ErrNameAuth.
func (c *NameCipher) DecryptTarget(encoded string) ([]byte, error) {
	raw, err := decodeStrict(encoded, maxEncodedTarget)
	if err != nil {
		return nil, fmt.Errorf("decrypt target: %w", err)
	}
	if len(raw) < minCipherTarget || len(raw) > maxCipherTarget {
		return nil, fmt.Errorf("decrypt target: %d cipher bytes, want %d..%d: %w", len(raw), minCipherTarget, maxCipherTarget, ErrBadName)
	}
	c.mu.RLock()
	if c.target == nil {
		c.mu.RUnlock()
		return nil, errZeroed
	}
	target, err := c.target.DecryptDeterministically(raw[targetNonceSize:], raw[:targetNonceSize])
	c.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("decrypt target: %w", ErrNameAuth)
	}
	if err := validTarget(target); err != nil {
		return nil, fmt.Errorf("decrypt target: authenticated but %w", err)
	}
	return target, nil
}

// LongName is the entry name under which an encoded name longer than
// MaxEncodedName is stored: LongNamePrefix + base64url-nopad(SHA-256(encoded)),
// 54 characters.
func LongName(encoded string) string {
	sum := sha256.Sum256([]byte(encoded))
	return LongNamePrefix + b64.EncodeToString(sum[:])
}

// IsLongName reports whether entry has the form of LongName's result: the
// prefix followed by exactly 43 characters that decode to a SHA-256 sum.
func IsLongName(entry string) bool {
	if len(entry) != longNameLen || !strings.HasPrefix(entry, LongNamePrefix) {
		return false
	}
	_, err := decodeStrict(entry[len(LongNamePrefix):], longNameHashLen)
	return err == nil
}

// IsLongNameSideFile reports whether entry is a long name followed by
// LongNameSuffix.
func IsLongNameSideFile(entry string) bool {
	return len(entry) == longSideFileLen && strings.HasSuffix(entry, LongNameSuffix) && IsLongName(strings.TrimSuffix(entry, LongNameSuffix))
}

// validName: what a directory entry of a POSIX filesystem may be called.
// Any bytes but '/' and NUL, not UTF-8 necessarily.
func validName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty name: %w", ErrBadName)
	case len(name) > MaxPlainName:
		return fmt.Errorf("name of %d bytes, max %d: %w: %w", len(name), MaxPlainName, ErrBadName, ErrNameTooLong)
	case name == "." || name == "..":
		return fmt.Errorf("name %q: %w", name, ErrBadName)
	case strings.IndexByte(name, '/') >= 0:
		return fmt.Errorf("name of %d bytes holds '/': %w", len(name), ErrBadName)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("name of %d bytes holds NUL: %w", len(name), ErrBadName)
	}
	return nil
}

func validTarget(target []byte) error {
	switch {
	case len(target) == 0:
		return fmt.Errorf("empty symlink target: %w", ErrBadName)
	case len(target) > MaxPlainTarget:
		return fmt.Errorf("symlink target of %d bytes, max %d: %w: %w", len(target), MaxPlainTarget, ErrBadName, ErrTargetTooLong)
	case bytes.IndexByte(target, 0) >= 0:
		return fmt.Errorf("symlink target of %d bytes holds NUL: %w", len(target), ErrBadName)
	}
	return nil
}

// decodeStrict decodes unpadded base64url of at most maxLen characters,
// refusing any string that is not the encoding of its own decoding (the
// decoder alone skips '\r' and '\n').
func decodeStrict(s string, maxLen int) ([]byte, error) {
	if len(s) > maxLen {
		return nil, fmt.Errorf("%d characters, max %d: %w", len(s), maxLen, ErrBadName)
	}
	b, err := b64.DecodeString(s)
	if err != nil || b64.EncodedLen(len(b)) != len(s) {
		return nil, fmt.Errorf("not base64url: %w", ErrBadName)
	}
	return b, nil
}
