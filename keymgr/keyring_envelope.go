package keymgr

// keyring_envelope.go: the keyring file's outer JSON object and the
// passphrase seal over the inner JSON (keyring_inner.go):
//
//	{"format":"kmsfs-keyring/1", "kdf":"argon2id", "salt":B64, "time":T,
//	 "memory_kib":M, "threads":P, "nonce":B64, "sealed":B64}
//
//	KEK    = Argon2id(passphrase, salt, T, M KiB, P lanes, 32 bytes)
//	sealed = AES-256-GCM(KEK, nonce, inner JSON) with
//	AAD    = "kmsfs-keyring/1" 0x00 "argon2id" 0x00 | salt length u16 | salt |
//	         T u32 | M u32 | P u8                       (integers big-endian)
//
// so the KDF parameters cannot be swapped or weakened without the open
// failing. A save reuses the KEK with a fresh nonce, so it needs no
// passphrase.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"golang.org/x/crypto/argon2"
)

const (
	keyringFormat   = "kmsfs-keyring/1"
	keyringKDF      = "argon2id"
	keyringSaltSize = 16
	keyringNonceLen = 12
	kekSize         = 32

	// Default Argon2id parameters (RFC 9106's second recommended option,
	// with 4 lanes): about 0.1-0.3 s and 64 MiB on a current machine.
	DefaultArgonTime      = 3
	DefaultArgonMemoryKiB = 64 * 1024
	DefaultArgonThreads   = 4

	// Bounds a keyring file's KDF parameters must respect, checked before
	// the KDF runs, so a planted file cannot make every open spin or
	// allocate beyond what a user would choose: about 5x the default time
	// and 16x its memory. kmsfs's commands only ever write the defaults.
	maxArgonTime      = 16
	maxArgonMemoryKiB = 1 << 20 // 1 GiB
	maxArgonThreads   = 16
	minArgonMemoryKiB = 8
)

type kdfParams struct {
	salt      []byte
	time      uint32
	memoryKiB uint32
	threads   uint8
}

// keyringFile is the outer, plain part of the keyring file.
type keyringFile struct {
	Format    string `json:"format"`
	KDF       string `json:"kdf"`
	Salt      []byte `json:"salt"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Nonce     []byte `json:"nonce"`
	Sealed    []byte `json:"sealed"`
}

// parseKeyringFile parses and checks the outer object of a keyring file.
// Errors wrap ErrKeyringCorrupt. Fuzzed by FuzzOpenKeyringJSON.
func parseKeyringFile(data []byte) (keyringFile, error) {
	var kf keyringFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return keyringFile{}, fmt.Errorf("%w: %v: restore it from a backup", ErrKeyringCorrupt, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return keyringFile{}, fmt.Errorf("%w: data after the JSON object: restore it from a backup", ErrKeyringCorrupt)
	}
	if kf.Format != keyringFormat {
		return keyringFile{}, fmt.Errorf("%w: format %q, this kmsfs reads %q: use the kmsfs version that wrote it", ErrKeyringCorrupt, kf.Format, keyringFormat)
	}
	if kf.KDF != keyringKDF {
		return keyringFile{}, fmt.Errorf("%w: kdf %q, want %q: restore it from a backup", ErrKeyringCorrupt, kf.KDF, keyringKDF)
	}
	p := kdfParams{salt: kf.Salt, time: kf.Time, memoryKiB: kf.MemoryKiB, threads: kf.Threads}
	if err := p.validate(); err != nil {
		return keyringFile{}, fmt.Errorf("%w: %v: kmsfs never writes such KDF parameters and does not run them (a damaged keyring, or one planted by someone else): restore it from a backup", ErrKeyringCorrupt, err)
	}
	if len(kf.Salt) < 8 || len(kf.Salt) > 64 {
		return keyringFile{}, fmt.Errorf("%w: salt of %d bytes: restore it from a backup", ErrKeyringCorrupt, len(kf.Salt))
	}
	if len(kf.Nonce) != keyringNonceLen {
		return keyringFile{}, fmt.Errorf("%w: nonce of %d bytes, want %d: restore it from a backup", ErrKeyringCorrupt, len(kf.Nonce), keyringNonceLen)
	}
	if len(kf.Sealed) < 16+2 {
		return keyringFile{}, fmt.Errorf("%w: sealed part of %d bytes is too short: restore it from a backup", ErrKeyringCorrupt, len(kf.Sealed))
	}
	return kf, nil
}

func (p kdfParams) validate() error {
	if p.time < 1 || p.time > maxArgonTime {
		return fmt.Errorf("argon2id time %d outside 1..%d", p.time, maxArgonTime)
	}
	if p.threads < 1 || p.threads > maxArgonThreads {
		return fmt.Errorf("argon2id threads %d outside 1..%d", p.threads, maxArgonThreads)
	}
	if p.memoryKiB < minArgonMemoryKiB || p.memoryKiB < 8*uint32(p.threads) || p.memoryKiB > maxArgonMemoryKiB {
		return fmt.Errorf("argon2id memory %d KiB outside %d..%d (1 GiB) for %d threads", p.memoryKiB, max(minArgonMemoryKiB, 8*uint32(p.threads)), maxArgonMemoryKiB, p.threads)
	}
	return nil
}

// derive returns the KEK on the heap: the caller copies it into locked
// memory and clears it.
func (p kdfParams) derive(passphrase []byte) []byte {
	return argon2.IDKey(passphrase, p.salt, p.time, p.memoryKiB, p.threads, kekSize)
}

func (p kdfParams) equal(q kdfParams) bool {
	return bytes.Equal(p.salt, q.salt) && p.time == q.time && p.memoryKiB == q.memoryKiB && p.threads == q.threads
}

// aad binds the outer header fields to the sealed part.
func (kf keyringFile) aad() []byte {
	b := make([]byte, 0, 64)
	b = append(b, kf.Format...)
	b = append(b, 0)
	b = append(b, kf.KDF...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(kf.Salt)))
	b = append(b, kf.Salt...)
	b = binary.BigEndian.AppendUint32(b, kf.Time)
	b = binary.BigEndian.AppendUint32(b, kf.MemoryKiB)
	b = append(b, kf.Threads)
	return b
}

// loadSealed opens kf.Sealed with kek and replaces the keyring's state with
// its content. The caller holds k.mu for writing, or owns k alone.
func (k *Keyring) loadSealed(kf keyringFile, kek []byte, ident fileIdentity) error {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return fmt.Errorf("keyring KEK: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return fmt.Errorf("keyring KEK: %w", err)
	}
	tmp, err := NewLockedSlab(1, len(kf.Sealed))
	if err != nil {
		return err
	}
	defer tmp.Close()
	plain, err := gcm.Open(tmp.Slot(0)[:0], kf.Nonce, kf.Sealed, kf.aad())
	if err != nil {
		return fmt.Errorf("%w: try again (if the passphrase is right, the file was altered: restore it from a backup)", ErrWrongPassphrase)
	}
	in, err := parseInner(plain)
	if in != nil {
		defer in.wipe()
	}
	if err != nil {
		return err
	}
	if k.id != "" && in.ID != k.id {
		return fmt.Errorf("%w: the file now holds keyring %s, not %s: restart with the keyring you meant", ErrKeyringCorrupt, in.ID, k.id)
	}
	if err := k.install(in, kek); err != nil {
		return err
	}
	k.kdf = kdfParams{salt: slices.Clone(kf.Salt), time: kf.Time, memoryKiB: kf.MemoryKiB, threads: kf.Threads}
	k.disk = ident
	k.dirty = false
	return nil
}

// sealLocked builds the keyring file: the inner JSON sealed with the kept
// KEK under a fresh nonce, in the outer object. The caller holds k.mu.
func (k *Keyring) sealLocked() ([]byte, error) {
	kf := keyringFile{
		Format: keyringFormat, KDF: keyringKDF, Salt: k.kdf.salt,
		Time: k.kdf.time, MemoryKiB: k.kdf.memoryKiB, Threads: k.kdf.threads,
		Nonce: make([]byte, keyringNonceLen),
	}
	if err := k.readRand(kf.Nonce); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k.slab.Slot(0))
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	tmp, plain, err := k.marshalInner()
	if err != nil {
		return nil, err
	}
	kf.Sealed = gcm.Seal(nil, kf.Nonce, plain, kf.aad())
	_ = tmp.Close()
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
