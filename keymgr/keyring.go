package keymgr

// keyring.go: the local provider's keyring, a file of customer master
// keys sealed under a passphrase: the Keyring type, creating, opening and
// closing one. The rest of it, one job per file:
//
//	keyring_envelope.go  the file's outer JSON: Argon2id KEK, AAD, seal and open
//	keyring_inner.go     the sealed inner JSON: codec, checks, key IDs, aliases
//	keyring_file.go      where the file lives, the checks on it and its
//	                     directory, Save (atomic, internal/atomicfile), Reload
//	keyring_admin.go     key administration: create, rotate, enable and
//	                     disable, aliases, lookup and metadata
//
// Once decrypted, the KEK and every key version's material live in a
// LockedSlab (32-byte slots: slot 0 the KEK, then one per key version), not
// on the Go heap; the plaintext inner JSON is built and parsed in a temporary
// LockedSlab too. Temporary heap copies (the argon2 output, a decoded
// material before it is copied into the slab, a returned DEK) are cleared
// after use.

import (
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// KeyringOptions tunes a keyring. The zero value is production use.
type KeyringOptions struct {
	// Rand is the source of keys, salts and nonces (nil: crypto/rand).
	Rand io.Reader
	// Argon2id parameters for a new keyring (zero: the defaults). Opening
	// uses the parameters stored in the file.
	ArgonTime      uint32
	ArgonMemoryKiB uint32
	ArgonThreads   uint8
	// Now is the clock for creation times and the provider's reload
	// throttle (nil: time.Now).
	Now func() time.Time
	// Logger receives reload notices (nil: discard). Never keys.
	Logger *slog.Logger
}

// Keyring is an open local keyring. It is safe for concurrent use.
type Keyring struct {
	path   string
	rand   io.Reader
	randMu sync.Mutex // Rand need not be safe for concurrent use
	now    func() time.Time
	log    *slog.Logger

	mu      sync.RWMutex
	closed  bool
	dirty   bool // changed in memory since the last Save or load
	id      string
	kdf     kdfParams
	slab    *LockedSlab // slot 0: KEK; then key material, one slot per version
	used    int         // slots in use, including the KEK's
	keys    []*cmk      // in creation order
	byID    map[[keyIDSize]byte]*cmk
	aliases map[string]*cmk
	disk    fileIdentity // the file as last read or written
}

// cmk is one customer master key; its material is in the keyring's slab.
type cmk struct {
	id              [keyIDSize]byte
	description     string
	created         time.Time
	enabled         bool
	pendingDeletion *time.Time
	versions        []cmkVersion // versions[i].version == i+1
}

type cmkVersion struct {
	created time.Time
	slot    int
}

var errKeyringClosed = fmt.Errorf("%w: keyring is closed", ErrKMSUnavailable)

// errUnknownVersion marks an EDK whose key version this keyring does not
// (yet) hold: the provider reloads the keyring and tries once more.
var errUnknownVersion = errors.New("key version not in keyring")

func newKeyringShell(path string, o KeyringOptions) *Keyring {
	k := &Keyring{path: path, rand: o.Rand, now: o.Now, log: o.Logger}
	if k.rand == nil {
		k.rand = crand.Reader
	}
	if k.now == nil {
		k.now = time.Now
	}
	if k.log == nil {
		k.log = slog.New(slog.DiscardHandler)
	}
	k.byID = make(map[[keyIDSize]byte]*cmk)
	k.aliases = make(map[string]*cmk)
	return k
}

func (k *Keyring) readRand(b []byte) error {
	k.randMu.Lock()
	defer k.randMu.Unlock()
	if _, err := io.ReadFull(k.rand, b); err != nil {
		return fmt.Errorf("read randomness: %w", err)
	}
	return nil
}

// CreateKeyring creates an empty keyring at path sealed under passphrase.
// The directory is created 0700, the file 0600; an existing file is never
// overwritten (ErrKeyringExists).
func CreateKeyring(path string, passphrase []byte, o KeyringOptions) (*Keyring, error) {
	if len(passphrase) == 0 {
		return nil, fmt.Errorf("create keyring %s: empty passphrase: choose a passphrase", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("create keyring %s: %w: open it instead, or pass another --keyring path", path, ErrKeyringExists)
	}
	k := newKeyringShell(path, o)
	k.kdf = kdfParams{time: o.ArgonTime, memoryKiB: o.ArgonMemoryKiB, threads: o.ArgonThreads}
	if k.kdf.time == 0 {
		k.kdf.time = DefaultArgonTime
	}
	if k.kdf.memoryKiB == 0 {
		k.kdf.memoryKiB = DefaultArgonMemoryKiB
	}
	if k.kdf.threads == 0 {
		k.kdf.threads = DefaultArgonThreads
	}
	if err := k.kdf.validate(); err != nil {
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	dir, err := openKeyringDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	dir.Close()
	k.kdf.salt = make([]byte, keyringSaltSize)
	if err := k.readRand(k.kdf.salt); err != nil {
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	var rid [keyringIDSize]byte
	if err := k.readRand(rid[:]); err != nil {
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	k.id = hex.EncodeToString(rid[:])

	slab, err := NewLockedSlab(128, 32)
	if err != nil {
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	k.slab = slab
	kek := k.kdf.derive(passphrase)
	copy(slab.Slot(0), kek)
	clear(kek)
	k.used = 1

	k.mu.Lock()
	err = k.saveLocked(true)
	k.mu.Unlock()
	if err != nil {
		_ = k.Close()
		return nil, fmt.Errorf("create keyring %s: %w", path, err)
	}
	return k, nil
}

// OpenKeyring opens the keyring at path with passphrase.
func OpenKeyring(path string, passphrase []byte, o KeyringOptions) (*Keyring, error) {
	data, ident, err := readKeyringFile(path)
	if err != nil {
		return nil, err
	}
	kf, err := parseKeyringFile(data)
	if err != nil {
		return nil, fmt.Errorf("open keyring %s: %w", path, err)
	}
	k := newKeyringShell(path, o)
	k.kdf = kdfParams{salt: kf.Salt, time: kf.Time, memoryKiB: kf.MemoryKiB, threads: kf.Threads}
	kek := k.kdf.derive(passphrase)
	defer clear(kek)
	if err := k.loadSealed(kf, kek, ident); err != nil {
		return nil, fmt.Errorf("open keyring %s: %w", path, err)
	}
	return k, nil
}

// Close zeroes all key material and the KEK. Calling it twice is harmless.
func (k *Keyring) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	k.keys, k.byID, k.aliases = nil, nil, nil
	if k.slab == nil {
		return nil
	}
	err := k.slab.Close()
	k.slab = nil
	return err
}

// ID is the keyring's random ID (32 hex digits), part of every key ARN.
func (k *Keyring) ID() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.id
}

// Path is the keyring file.
func (k *Keyring) Path() string { return k.path }

func (k *Keyring) keyARN(c *cmk) string {
	return "arn:kmsfs:local:" + k.id + ":key/" + formatKeyID(c.id)
}

// usable reports why c may not wrap or unwrap, as AWS KMS would.
func (c *cmk) usable() error {
	if c.pendingDeletion != nil {
		return fmt.Errorf("key %s: %w: it is pending deletion", formatKeyID(c.id), ErrKeyInvalidState)
	}
	if !c.enabled {
		return fmt.Errorf("key %s: %w: enable it with `kmsfs keys enable %s`", formatKeyID(c.id), ErrKeyDisabled, formatKeyID(c.id))
	}
	return nil
}
