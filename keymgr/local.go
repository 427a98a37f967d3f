package keymgr

// local.go: the local provider, a KMS over a Keyring.
//
// EDK (81 bytes), integers big-endian:
//
//	0   1   EDK version = 1
//	1   16  key ID (raw bytes of the CMK's UUID)
//	17  4   key version that wrapped the DEK (1, 2, ...)
//	21  12  nonce, random
//	33  48  AES-256-GCM(CMK version material, DEK) including the 16-byte tag
//
//	AAD = "kmsfs-local-edk-v1" 0x00 | key ID | key version | ec.Canonical()
//
// The key ID and version in the EDK say which material unwraps it; the AAD
// authenticates them together with the encryption context, so an EDK moved
// to another file, filesystem or key fails to unwrap.

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

const (
	localEDKVersion   = 1
	localEDKSize      = 81
	localEDKNonceSize = 12
	localEDKSealedLen = crypto.DEKSize + 16
	localEDKAADPrefix = "kmsfs-local-edk-v1\x00"

	// localReloadInterval is how often the provider stats the keyring file.
	localReloadInterval = time.Second
)

// localEDK is a parsed EDK of the local provider.
type localEDK struct {
	keyID   [keyIDSize]byte
	version uint32
	nonce   [localEDKNonceSize]byte
	sealed  [localEDKSealedLen]byte
}

// parseLocalEDK splits an EDK; errors wrap ErrInvalidCiphertext.
func parseLocalEDK(b []byte) (localEDK, error) {
	var e localEDK
	if len(b) != localEDKSize {
		return e, fmt.Errorf("%w: local EDK of %d bytes, want %d", ErrInvalidCiphertext, len(b), localEDKSize)
	}
	if b[0] != localEDKVersion {
		return e, fmt.Errorf("%w: local EDK version %d, want %d", ErrInvalidCiphertext, b[0], localEDKVersion)
	}
	copy(e.keyID[:], b[1:17])
	e.version = binary.BigEndian.Uint32(b[17:21])
	copy(e.nonce[:], b[21:33])
	copy(e.sealed[:], b[33:81])
	if e.version == 0 {
		return e, fmt.Errorf("%w: local EDK names key version 0", ErrInvalidCiphertext)
	}
	return e, nil
}

// localEDKWrapper returns the key ID (8-4-4-4-12, as in the key's ARN) and
// the key version a local EDK names. Both are authenticated by the EDK's
// AAD: unlike a header's KeyVersion field, a writer cannot change them
// without the EDK failing to unwrap. Rewrap's "already current" test reads
// them here. Errors wrap ErrInvalidCiphertext (not a local EDK).
func localEDKWrapper(edk []byte) (keyID string, version uint32, err error) {
	e, err := parseLocalEDK(edk)
	if err != nil {
		return "", 0, err
	}
	return formatKeyID(e.keyID), e.version, nil
}

func (e localEDK) marshal() []byte {
	b := make([]byte, 0, localEDKSize)
	b = append(b, localEDKVersion)
	b = append(b, e.keyID[:]...)
	b = binary.BigEndian.AppendUint32(b, e.version)
	b = append(b, e.nonce[:]...)
	return append(b, e.sealed[:]...)
}

func localEDKAAD(keyID [keyIDSize]byte, version uint32, ec EncryptionContext) []byte {
	canon := ec.Canonical()
	b := make([]byte, 0, len(localEDKAADPrefix)+keyIDSize+4+len(canon))
	b = append(b, localEDKAADPrefix...)
	b = append(b, keyID[:]...)
	b = binary.BigEndian.AppendUint32(b, version)
	return append(b, canon...)
}

// aeadForSlot builds AES-256-GCM over a key in the slab. Its key schedule
// is a heap copy of the CMK: the caller holds k.mu and zeroes it with
// crypto.WipeAEAD as soon as the one seal or open is done.
func (k *Keyring) aeadForSlot(slot int) (cipher.AEAD, error) {
	return crypto.NewAESGCM(k.slab.Slot(slot))
}

// wrapLocked seals dek under the current version of c. Caller holds k.mu.
func (k *Keyring) wrapLocked(c *cmk, dek []byte, ec EncryptionContext) ([]byte, uint32, error) {
	if len(dek) != crypto.DEKSize {
		return nil, 0, fmt.Errorf("wrap: DEK of %d bytes, want %d", len(dek), crypto.DEKSize)
	}
	e := localEDK{keyID: c.id, version: uint32(len(c.versions))}
	if err := k.readRand(e.nonce[:]); err != nil {
		return nil, 0, err
	}
	aead, err := k.aeadForSlot(c.versions[e.version-1].slot)
	if err != nil {
		return nil, 0, err
	}
	defer crypto.WipeAEAD(aead)
	aead.Seal(e.sealed[:0], e.nonce[:], dek, localEDKAAD(e.keyID, e.version, ec))
	return e.marshal(), e.version, nil
}

// unwrapLocked opens blob, which must be wrapped by c (pinned). The caller
// holds k.mu and clears the returned DEK.
func (k *Keyring) unwrapLocked(c *cmk, blob []byte, ec EncryptionContext) ([]byte, error) {
	e, err := parseLocalEDK(blob)
	if err != nil {
		return nil, err
	}
	if e.keyID != c.id {
		return nil, fmt.Errorf("%w: it was wrapped by key %s, not by key %s", ErrInvalidCiphertext, formatKeyID(e.keyID), formatKeyID(c.id))
	}
	if err := c.usable(); err != nil {
		return nil, err
	}
	if int64(e.version) > int64(len(c.versions)) {
		return nil, fmt.Errorf("%w: %w: key %s has versions 1..%d, the EDK names %d", ErrInvalidCiphertext, errUnknownVersion, formatKeyID(c.id), len(c.versions), e.version)
	}
	aead, err := k.aeadForSlot(c.versions[e.version-1].slot)
	if err != nil {
		return nil, err
	}
	defer crypto.WipeAEAD(aead)
	dek, err := aead.Open(make([]byte, 0, crypto.DEKSize), e.nonce[:], e.sealed[:], localEDKAAD(e.keyID, e.version, ec))
	if err != nil {
		return nil, fmt.Errorf("%w: the EDK does not open under key %s version %d and this encryption context (another file or filesystem, or altered)", ErrInvalidCiphertext, formatKeyID(c.id), e.version)
	}
	return dek, nil
}

// localProvider implements Provider over a Keyring.
type localProvider struct {
	kr *Keyring

	mu        sync.Mutex
	lastCheck time.Time
}

// NewLocalProvider returns the local provider ("local") over k. It is safe
// for concurrent use; it stats the keyring file at most once a second and
// reloads it when another process changed it, and on a Decrypt naming a key
// or version it does not hold.
func NewLocalProvider(k *Keyring) Provider {
	return &localProvider{kr: k}
}

func (p *localProvider) Name() string { return "local" }

// maybeReload reloads the keyring if its file changed; unless forced, it
// looks at most once per localReloadInterval. A failed reload keeps the
// keys already loaded (and is logged).
func (p *localProvider) maybeReload(force bool) {
	now := p.kr.now()
	p.mu.Lock()
	if !force && !p.lastCheck.IsZero() && now.Sub(p.lastCheck) < localReloadInterval && now.Sub(p.lastCheck) >= 0 {
		p.mu.Unlock()
		return
	}
	p.lastCheck = now
	p.mu.Unlock()
	if err := p.kr.Reload(); err != nil && !errors.Is(err, errKeyringClosed) {
		p.kr.log.Warn("keyring reload failed, keeping the keys loaded", "keyring", p.kr.path, "err", err)
	}
}

// retryAfterReload runs fn, and once more after a forced reload when fn
// failed for a key or version this keyring does not hold (yet).
func (p *localProvider) retryAfterReload(fn func() error) error {
	err := fn()
	if errors.Is(err, ErrKeyNotFound) || errors.Is(err, errUnknownVersion) {
		p.maybeReload(true)
		err = fn()
	}
	return err
}

// call runs fn under the keyring's read lock for one operation: it refuses
// a cancelled ctx, looks for a keyring file changed by another process, and
// runs fn once more after a forced reload when the key or version is not
// held yet (retryAfterReload). Errors say "local <op>".
func (p *localProvider) call(ctx context.Context, op string, fn func(k *Keyring) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local %s: %w", op, err)
	}
	p.maybeReload(false)
	err := p.retryAfterReload(func() error {
		k := p.kr
		k.mu.RLock()
		defer k.mu.RUnlock()
		return fn(k)
	})
	if err != nil {
		return fmt.Errorf("local %s: %w", op, err)
	}
	return nil
}

func (p *localProvider) GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error) {
	var dk DataKey
	err := p.call(ctx, "GenerateDataKey", func(k *Keyring) error {
		c, err := k.resolveLocked(keyRef)
		if err != nil {
			return err
		}
		if err := c.usable(); err != nil {
			return err
		}
		dek := make([]byte, crypto.DEKSize)
		if err := k.readRand(dek); err != nil {
			return err
		}
		edk, v, err := k.wrapLocked(c, dek, ec)
		if err != nil {
			clear(dek)
			return err
		}
		dk = DataKey{Plaintext: dek, Ciphertext: edk, KeyARN: k.keyARN(c), KeyVersion: v}
		return nil
	})
	return dk, err
}

func (p *localProvider) Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error) {
	var dek []byte
	err := p.call(ctx, "Decrypt", func(k *Keyring) error {
		c, err := k.resolveLocked(keyRef)
		if err != nil {
			return err
		}
		dek, err = k.unwrapLocked(c, blob, ec)
		return err
	})
	if err != nil {
		return nil, err
	}
	return dek, nil
}

func (p *localProvider) ReEncrypt(ctx context.Context, srcKeyRef string, blob []byte, ec EncryptionContext, dstKeyRef string) (DataKey, error) {
	var dk DataKey
	err := p.call(ctx, "ReEncrypt", func(k *Keyring) error {
		src, err := k.resolveLocked(srcKeyRef)
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		dst, err := k.resolveLocked(dstKeyRef)
		if err != nil {
			return fmt.Errorf("destination: %w", err)
		}
		if err := dst.usable(); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
		dek, err := k.unwrapLocked(src, blob, ec)
		if err != nil {
			return err
		}
		defer clear(dek)
		edk, v, err := k.wrapLocked(dst, dek, ec)
		if err != nil {
			return err
		}
		dk = DataKey{Ciphertext: edk, KeyARN: k.keyARN(dst), KeyVersion: v}
		return nil
	})
	return dk, err
}

func (p *localProvider) DescribeKey(ctx context.Context, keyRef string) (KeyMetadata, error) {
	var md KeyMetadata
	err := p.call(ctx, "DescribeKey", func(k *Keyring) error {
		c, err := k.resolveLocked(keyRef)
		if err == nil {
			md = k.metadataLocked(c)
		}
		return err
	})
	return md, err
}
