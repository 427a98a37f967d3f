package keymgr

// keyring.go: the local provider's keyring file, sealed under a passphrase.
//
// The file is JSON, mode 0600, in a directory of mode 0700. Opening checks
// both on the handles it reads through (keyringDir): the directory must be
// the caller's (or root's) and writable by no one else, and kmsfs's
// default directory readable by no one else; the file, opened relative to
// the directory without following a symlink, must be a regular file only
// its owner can read. The outer object:
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
// failing. The inner JSON (never on disk in clear):
//
//	{"id":"<32 hex: keyring id>",
//	 "keys":[{"id":"<8-4-4-4-12 hex>","description":"..","created":RFC3339,
//	          "enabled":true,"pending_deletion":RFC3339 (optional),
//	          "versions":[{"version":1,"created":RFC3339,"material":B64(32 bytes)}]}],
//	 "aliases":{"alias/name":"<key id>"}}
//
// Once decrypted, the KEK and every key version's material live in a
// LockedSlab (32-byte slots: slot 0 the KEK, then one per key version), not
// on the Go heap; the plaintext inner JSON is built and parsed in a temporary
// LockedSlab too. Temporary heap copies (the argon2 output, a decoded
// material before it is copied into the slab, a returned DEK) are cleared
// after use.
//
// Save rewrites the whole file atomically (temp file 0600, fsync, rename,
// fsync of the directory), reusing the KEK with a fresh nonce, so a save
// needs no passphrase. Reload re-reads a file changed by another process
// (`kmsfs keys rotate` while mounted) with the kept KEK.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"
)

const (
	keyringFormat   = "kmsfs-keyring/1"
	keyringKDF      = "argon2id"
	keyringSaltSize = 16
	keyringNonceLen = 12
	kekSize         = 32
	cmkSize         = 32
	keyIDSize       = 16
	keyringIDSize   = 16

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

	maxKeyringFileSize = 16 << 20
	maxDescriptionLen  = 8192
	maxAliasLen        = 256
	maxKeyVersions     = 1 << 20
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

type kdfParams struct {
	salt      []byte
	time      uint32
	memoryKiB uint32
	threads   uint8
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

type fileIdentity struct {
	dev, ino uint64
	size     int64
	mtimeNS  int64
}

func identityOf(fi os.FileInfo) fileIdentity {
	id := fileIdentity{size: fi.Size(), mtimeNS: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev = uint64(st.Dev)
		id.ino = uint64(st.Ino)
	}
	return id
}

var errKeyringClosed = fmt.Errorf("%w: keyring is closed", ErrKMSUnavailable)

// errUnknownVersion marks an EDK whose key version this keyring does not
// (yet) hold: the provider reloads the keyring and tries once more.
var errUnknownVersion = errors.New("key version not in keyring")

// DefaultKeyringPath is $KMSFS_KEYRING, else $XDG_CONFIG_HOME/kmsfs/keyring.json,
// else ~/.config/kmsfs/keyring.json.
func DefaultKeyringPath() string {
	if p := os.Getenv("KMSFS_KEYRING"); p != "" {
		return p
	}
	return filepath.Join(defaultKeyringDir(), "keyring.json")
}

// defaultKeyringDir is the directory kmsfs chooses (and creates 0700) for
// the keyring: $XDG_CONFIG_HOME/kmsfs, else ~/.config/kmsfs.
func defaultKeyringDir() string {
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "kmsfs")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".config", "kmsfs")
}

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

// readKeyringFile reads the keyring file after checking its directory
// (openKeyringDir) and that it is a regular file, not a symlink, that only
// its owner can read or write.
func readKeyringFile(path string) ([]byte, fileIdentity, error) {
	dir, err := openKeyringDir(filepath.Dir(path))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: run `kmsfs init` to create one, or pass --keyring PATH", path, ErrKeyringNotFound)
		}
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w", path, err)
	}
	defer dir.Close()
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case err == unix.ENOENT:
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: run `kmsfs init` to create one, or pass --keyring PATH", path, ErrKeyringNotFound)
	case err == unix.ELOOP:
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: a symlink, which kmsfs does not follow: pass --keyring with the file it points to", path, ErrKeyringInsecure)
	case err != nil:
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileIdentity{}, fmt.Errorf("open keyring: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: not a regular file: pass --keyring with the keyring file", path, ErrKeyringCorrupt)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w (mode %04o): run `chmod 600 %s`", path, ErrKeyringInsecure, perm, path)
	}
	if fi.Size() > maxKeyringFileSize {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w: %d bytes is larger than any keyring: restore it from a backup", path, ErrKeyringCorrupt, fi.Size())
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, fileIdentity{}, fmt.Errorf("open keyring %s: %w", path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyringFileSize+1))
	if err != nil {
		return nil, fileIdentity{}, fmt.Errorf("open keyring: %w", err)
	}
	return data, identityOf(fi), nil
}

// insecureDirError is ErrKeyringInsecure for the keyring's directory (the
// sentinel's own words are about the file).
type insecureDirError string

func (e insecureDirError) Error() string        { return string(e) }
func (e insecureDirError) Is(target error) bool { return target == ErrKeyringInsecure }

// openKeyringDir opens the keyring's directory and checks, on that handle
// (fstat, so a directory swapped after the check is not the one checked),
// that no one but the caller could replace the keyring in it or, for
// kmsfs's default directory, list it:
//
//   - owned by the effective user, or by root (who can do anything anyway);
//   - not writable by group or others (sticky or not);
//   - the default directory ($XDG_CONFIG_HOME/kmsfs, created 0700): no
//     group or other permission at all. A directory the user chose may be
//     readable by others (the file itself is 0600).
//
// Errors wrap ErrKeyringInsecure and name the fix.
func openKeyringDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	d := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.Close()
		return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	perm := st.Mode & 0o777
	euid := uint32(os.Geteuid())
	var why string
	switch {
	case st.Uid != euid && st.Uid != 0:
		why = fmt.Sprintf("keyring directory %s belongs to user %d, not to you (%d), who could replace the keyring: move the keyring to a directory of your own, mode 0700", dir, st.Uid, euid)
	case perm&0o022 != 0:
		why = fmt.Sprintf("keyring directory %s (mode %04o) is writable by group or others, who could replace the keyring: run `chmod 700 %s`", dir, perm, dir)
	case perm&0o077 != 0 && isDefaultKeyringDir(&st):
		why = fmt.Sprintf("keyring directory %s (mode %04o) is open to group or others, and kmsfs creates it 0700: run `chmod 700 %s`", dir, perm, dir)
	}
	if why != "" {
		d.Close()
		return nil, insecureDirError(why)
	}
	return d, nil
}

// isDefaultKeyringDir reports whether st is the directory kmsfs creates
// for its keyring (by identity, whatever path reached it).
func isDefaultKeyringDir(st *unix.Stat_t) bool {
	var def unix.Stat_t
	if err := unix.Stat(defaultKeyringDir(), &def); err != nil {
		return false
	}
	return def.Dev == st.Dev && def.Ino == st.Ino
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

// install replaces the keyring's keys with those of in, in a new slab.
func (k *Keyring) install(in *innerKeyring, kek []byte) error {
	n := 1
	for _, ik := range in.Keys {
		n += len(ik.Versions)
	}
	slab, err := NewLockedSlab(max(128, n+n/2), 32)
	if err != nil {
		return err
	}
	copy(slab.Slot(0), kek)
	used := 1
	keys := make([]*cmk, 0, len(in.Keys))
	byID := make(map[[keyIDSize]byte]*cmk, len(in.Keys))
	for _, ik := range in.Keys {
		id, _ := parseKeyID(ik.ID) // checked by parseInner
		c := &cmk{id: id, description: ik.Description, created: ik.Created, enabled: ik.Enabled, pendingDeletion: ik.PendingDeletion}
		for _, iv := range ik.Versions {
			copy(slab.Slot(used), iv.Material.p[:])
			c.versions = append(c.versions, cmkVersion{created: iv.Created, slot: used})
			used++
		}
		keys = append(keys, c)
		byID[id] = c
	}
	aliases := make(map[string]*cmk, len(in.Aliases))
	for name, target := range in.Aliases {
		id, _ := parseKeyID(target)
		aliases[name] = byID[id]
	}
	if k.slab != nil {
		_ = k.slab.Close()
	}
	k.slab, k.used, k.keys, k.byID, k.aliases = slab, used, keys, byID, aliases
	k.id = in.ID
	return nil
}

// innerKeyring is the sealed part of the keyring file.
type innerKeyring struct {
	ID      string            `json:"id"`
	Keys    []innerKey        `json:"keys"`
	Aliases map[string]string `json:"aliases"`
}

type innerKey struct {
	ID              string         `json:"id"`
	Description     string         `json:"description"`
	Created         time.Time      `json:"created"`
	Enabled         bool           `json:"enabled"`
	PendingDeletion *time.Time     `json:"pending_deletion,omitempty"`
	Versions        []innerVersion `json:"versions"`
}

type innerVersion struct {
	Version  uint32      `json:"version"`
	Created  time.Time   `json:"created"`
	Material keyMaterial `json:"material"`
}

// keyMaterial decodes base64 key material into its own small allocation,
// so that growing the Versions slice while decoding moves a pointer, not
// the key; wipe clears it once it is copied into locked memory.
type keyMaterial struct{ p *[cmkSize]byte }

func (m *keyMaterial) UnmarshalJSON(data []byte) error {
	// 32 bytes are 44 base64 characters ending in a single '='.
	if len(data) != 46 || data[0] != '"' || data[45] != '"' {
		return errors.New("key material is not 32 bytes of base64")
	}
	var tmp [cmkSize + 1]byte
	defer clear(tmp[:])
	n, err := base64.StdEncoding.Strict().Decode(tmp[:], data[1:45])
	if err != nil || n != cmkSize {
		return errors.New("key material is not 32 bytes of base64")
	}
	if m.p == nil {
		m.p = new([cmkSize]byte)
	}
	copy(m.p[:], tmp[:cmkSize])
	return nil
}

func (in *innerKeyring) wipe() {
	for i := range in.Keys {
		for j := range in.Keys[i].Versions {
			if p := in.Keys[i].Versions[j].Material.p; p != nil {
				clear(p[:])
			}
		}
	}
}

// parseInner parses and checks the decrypted inner JSON. Errors wrap
// ErrKeyringCorrupt. The caller wipes the result (also on error, when it is
// not nil). Fuzzed by FuzzOpenKeyringJSON.
func parseInner(plain []byte) (*innerKeyring, error) {
	in := new(innerKeyring)
	dec := json.NewDecoder(bytes.NewReader(plain))
	dec.DisallowUnknownFields()
	if err := dec.Decode(in); err != nil {
		return in, fmt.Errorf("%w: sealed content: %v: restore it from a backup", ErrKeyringCorrupt, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return in, fmt.Errorf("%w: sealed content: data after the JSON object: restore it from a backup", ErrKeyringCorrupt)
	}
	if err := in.check(); err != nil {
		return in, fmt.Errorf("%w: sealed content: %v: restore it from a backup", ErrKeyringCorrupt, err)
	}
	return in, nil
}

func (in *innerKeyring) check() error {
	if len(in.ID) != 2*keyringIDSize || strings.ToLower(in.ID) != in.ID {
		return fmt.Errorf("keyring id %q is not 32 lowercase hex digits", in.ID)
	}
	if _, err := hex.DecodeString(in.ID); err != nil {
		return fmt.Errorf("keyring id %q is not 32 lowercase hex digits", in.ID)
	}
	seen := make(map[[keyIDSize]byte]bool, len(in.Keys))
	total := 0
	for i, ik := range in.Keys {
		id, err := parseKeyID(ik.ID)
		if err != nil {
			return fmt.Errorf("key %d: %v", i, err)
		}
		if seen[id] {
			return fmt.Errorf("key %s appears twice", ik.ID)
		}
		seen[id] = true
		if len(ik.Description) > maxDescriptionLen {
			return fmt.Errorf("key %s: description longer than %d bytes", ik.ID, maxDescriptionLen)
		}
		if len(ik.Versions) == 0 {
			return fmt.Errorf("key %s has no versions", ik.ID)
		}
		total += len(ik.Versions)
		if total > maxKeyVersions {
			return fmt.Errorf("more than %d key versions", maxKeyVersions)
		}
		for j, iv := range ik.Versions {
			if iv.Version != uint32(j+1) {
				return fmt.Errorf("key %s: version %d at position %d, want %d", ik.ID, iv.Version, j, j+1)
			}
			if iv.Material.p == nil {
				return fmt.Errorf("key %s version %d has no material", ik.ID, iv.Version)
			}
		}
	}
	for name, target := range in.Aliases {
		if err := checkAliasName(name); err != nil {
			return err
		}
		id, err := parseKeyID(target)
		if err != nil {
			return fmt.Errorf("alias %s: %v", name, err)
		}
		if !seen[id] {
			return fmt.Errorf("alias %s names key %s, which is not in the keyring", name, target)
		}
	}
	return nil
}

// parseKeyID accepts 32 hex digits or the 8-4-4-4-12 form, any case.
func parseKeyID(s string) ([keyIDSize]byte, error) {
	var id [keyIDSize]byte
	h := s
	if len(s) == 36 {
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return id, fmt.Errorf("%q is not a key ID (32 hex digits or 8-4-4-4-12)", s)
		}
		h = s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	}
	if len(h) != 2*keyIDSize {
		return id, fmt.Errorf("%q is not a key ID (32 hex digits or 8-4-4-4-12)", s)
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, fmt.Errorf("%q is not a key ID (32 hex digits or 8-4-4-4-12)", s)
	}
	return id, nil
}

// formatKeyID gives the canonical 8-4-4-4-12 lowercase form.
func formatKeyID(id [keyIDSize]byte) string {
	h := hex.EncodeToString(id[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func checkAliasName(name string) error {
	rest, ok := strings.CutPrefix(name, "alias/")
	if !ok || rest == "" {
		return fmt.Errorf("alias %q must be alias/NAME", name)
	}
	if len(name) > maxAliasLen {
		return fmt.Errorf("alias %q is longer than %d bytes", name, maxAliasLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("alias %q is not UTF-8", name)
	}
	for _, r := range rest {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '/', r == '_', r == '-':
		default:
			return fmt.Errorf("alias %q may hold only letters, digits, '/', '_' and '-'", name)
		}
	}
	return nil
}

// appendInner appends the inner JSON. material gives the bytes of a slot;
// the caller sizes dst so that no append reallocates it (see marshalInner).
func (k *Keyring) appendInner(dst []byte, material func(slot int) []byte) []byte {
	str := func(dst []byte, s string) []byte {
		b, _ := json.Marshal(s) // a string always marshals
		return append(dst, b...)
	}
	tm := func(dst []byte, t time.Time) []byte {
		dst = append(dst, '"')
		dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
		return append(dst, '"')
	}
	dst = append(dst, `{"id":`...)
	dst = str(dst, k.id)
	dst = append(dst, `,"keys":[`...)
	for i, c := range k.keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = str(dst, formatKeyID(c.id))
		dst = append(dst, `,"description":`...)
		dst = str(dst, c.description)
		dst = append(dst, `,"created":`...)
		dst = tm(dst, c.created)
		dst = append(dst, `,"enabled":`...)
		if c.enabled {
			dst = append(dst, "true"...)
		} else {
			dst = append(dst, "false"...)
		}
		if c.pendingDeletion != nil {
			dst = append(dst, `,"pending_deletion":`...)
			dst = tm(dst, *c.pendingDeletion)
		}
		dst = append(dst, `,"versions":[`...)
		for j, v := range c.versions {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"version":`...)
			dst = fmt.Appendf(dst, "%d", j+1)
			dst = append(dst, `,"created":`...)
			dst = tm(dst, v.created)
			dst = append(dst, `,"material":"`...)
			dst = base64.StdEncoding.AppendEncode(dst, material(v.slot))
			dst = append(dst, `"}`...)
		}
		dst = append(dst, "]}"...)
	}
	dst = append(dst, `],"aliases":{`...)
	names := make([]string, 0, len(k.aliases))
	for name := range k.aliases {
		names = append(names, name)
	}
	sort.Strings(names)
	for i, name := range names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = str(dst, name)
		dst = append(dst, ':')
		dst = str(dst, formatKeyID(k.aliases[name].id))
	}
	return append(dst, "}}"...)
}

// marshalInner builds the inner JSON in a new locked slab (slot 0): the
// caller closes the slab. A first pass with zero material measures it, so
// the real pass never reallocates and leaves no copy of a key on the heap.
func (k *Keyring) marshalInner() (*LockedSlab, []byte, error) {
	var zero [cmkSize]byte
	n := len(k.appendInner(nil, func(int) []byte { return zero[:] }))
	tmp, err := NewLockedSlab(1, n)
	if err != nil {
		return nil, nil, err
	}
	buf := tmp.Slot(0)
	out := k.appendInner(buf[:0], func(slot int) []byte { return k.slab.Slot(slot) })
	if len(out) != n || &out[0] != &buf[0] {
		_ = tmp.Close()
		panic("keymgr: keyring inner JSON changed size between passes")
	}
	return tmp, out, nil
}

// Save writes the keyring to its file atomically, sealed with the kept KEK
// under a fresh nonce. It refuses to overwrite changes another process made
// to the file since this keyring read or wrote it.
func (k *Keyring) Save() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return fmt.Errorf("save keyring %s: %w", k.path, errKeyringClosed)
	}
	if err := k.saveLocked(false); err != nil {
		return fmt.Errorf("save keyring %s: %w", k.path, err)
	}
	return nil
}

func (k *Keyring) saveLocked(create bool) error {
	if !create {
		fi, err := os.Stat(k.path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err == nil && identityOf(fi) != k.disk {
			return errors.New("the file changed on disk since it was read (another kmsfs command?): reopen the keyring and repeat the change")
		}
	}
	kf := keyringFile{
		Format: keyringFormat, KDF: keyringKDF, Salt: k.kdf.salt,
		Time: k.kdf.time, MemoryKiB: k.kdf.memoryKiB, Threads: k.kdf.threads,
		Nonce: make([]byte, keyringNonceLen),
	}
	if err := k.readRand(kf.Nonce); err != nil {
		return err
	}
	block, err := aes.NewCipher(k.slab.Slot(0))
	if err != nil {
		return err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	tmp, plain, err := k.marshalInner()
	if err != nil {
		return err
	}
	kf.Sealed = gcm.Seal(nil, kf.Nonce, plain, kf.aad())
	_ = tmp.Close()
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	ident, err := writeFileAtomic(k.path, data, create)
	if err != nil {
		return err
	}
	k.disk = ident
	k.dirty = false
	return nil
}

// writeFileAtomic writes data to a temporary file 0600 beside path, fsyncs
// it, moves it into place (link for a new file, so an existing one is never
// replaced; rename otherwise) and fsyncs the directory.
func writeFileAtomic(path string, data []byte, exclusive bool) (fileIdentity, error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fileIdentity{}, err
	}
	tmpName := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmpName)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fileIdentity{}, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fileIdentity{}, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fileIdentity{}, err
	}
	if err := f.Close(); err != nil {
		return fileIdentity{}, err
	}
	if exclusive {
		if err := os.Link(tmpName, path); err != nil {
			if errors.Is(err, os.ErrExist) {
				return fileIdentity{}, fmt.Errorf("%w: open it instead, or pass another --keyring path", ErrKeyringExists)
			}
			return fileIdentity{}, err
		}
		_ = os.Remove(tmpName)
	} else if err := os.Rename(tmpName, path); err != nil {
		return fileIdentity{}, err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		serr := d.Sync()
		d.Close()
		if serr != nil {
			return fileIdentity{}, fmt.Errorf("fsync %s: %w", dir, serr)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileIdentity{}, err
	}
	return identityOf(fi), nil
}

// Reload re-reads the keyring file with the kept KEK if it changed on disk
// (identity, size or mtime) since this keyring last read or wrote it, so a
// running mount sees rotations and enable/disable done by the CLI. A keyring
// with unsaved changes is not reloaded.
func (k *Keyring) Reload() error {
	fi, err := os.Stat(k.path)
	if err != nil {
		return fmt.Errorf("reload keyring %s: %w", k.path, err)
	}
	k.mu.RLock()
	same, closed := identityOf(fi) == k.disk, k.closed
	k.mu.RUnlock()
	if closed {
		return fmt.Errorf("reload keyring %s: %w", k.path, errKeyringClosed)
	}
	if same {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return fmt.Errorf("reload keyring %s: %w", k.path, errKeyringClosed)
	}
	if k.dirty {
		return fmt.Errorf("reload keyring %s: this handle has unsaved changes: save or discard them first", k.path)
	}
	data, ident, err := readKeyringFile(k.path)
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if ident == k.disk {
		return nil // another goroutine reloaded it meanwhile
	}
	kf, err := parseKeyringFile(data)
	if err != nil {
		return fmt.Errorf("reload keyring %s: %w", k.path, err)
	}
	if !k.kdf.equal(kdfParams{salt: kf.Salt, time: kf.Time, memoryKiB: kf.MemoryKiB, threads: kf.Threads}) {
		return fmt.Errorf("reload keyring %s: %w: it was re-sealed under a new passphrase or KDF parameters: restart to open it again", k.path, ErrWrongPassphrase)
	}
	var kek [kekSize]byte
	copy(kek[:], k.slab.Slot(0))
	defer clear(kek[:])
	if err := k.loadSealed(kf, kek[:], ident); err != nil {
		return fmt.Errorf("reload keyring %s: %w", k.path, err)
	}
	k.log.Info("keyring reloaded", "keyring", k.path, "keys", len(k.keys))
	return nil
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

// allocSlot returns a zeroed free slot of the slab, growing it if needed.
func (k *Keyring) allocSlot() (int, error) {
	if k.used == k.slab.Slots() {
		bigger, err := NewLockedSlab(2*k.slab.Slots(), 32)
		if err != nil {
			return 0, err
		}
		for i := range k.used {
			copy(bigger.Slot(i), k.slab.Slot(i))
		}
		_ = k.slab.Close()
		k.slab = bigger
	}
	k.used++
	return k.used - 1, nil
}

// newVersion adds a version with fresh material to c.
func (k *Keyring) newVersion(c *cmk) error {
	if len(c.versions) >= maxKeyVersions {
		return fmt.Errorf("key %s has %d versions, the most a key may have", formatKeyID(c.id), len(c.versions))
	}
	slot, err := k.allocSlot()
	if err != nil {
		return err
	}
	if err := k.readRand(k.slab.Slot(slot)); err != nil {
		k.slab.Clear(slot)
		k.used--
		return err
	}
	c.versions = append(c.versions, cmkVersion{created: k.now().UTC(), slot: slot})
	return nil
}

// CreateKey makes a new AES-256 key at version 1, enabled, optionally
// under alias (which must not exist yet). Call Save to keep it.
func (k *Keyring) CreateKey(description, alias string) (KeyMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return KeyMetadata{}, fmt.Errorf("create key: %w", errKeyringClosed)
	}
	if len(description) > maxDescriptionLen {
		return KeyMetadata{}, fmt.Errorf("create key: description longer than %d bytes: shorten it", maxDescriptionLen)
	}
	if alias != "" {
		if err := checkAliasName(alias); err != nil {
			return KeyMetadata{}, fmt.Errorf("create key: %w", err)
		}
		if old, ok := k.aliases[alias]; ok {
			return KeyMetadata{}, fmt.Errorf("create key: alias %s already names key %s: pick another alias, or re-point it with SetAlias", alias, formatKeyID(old.id))
		}
	}
	c := &cmk{description: description, created: k.now().UTC(), enabled: true}
	for {
		if err := k.readRand(c.id[:]); err != nil {
			return KeyMetadata{}, fmt.Errorf("create key: %w", err)
		}
		c.id[6] = c.id[6]&0x0f | 0x40 // a version-4 UUID, like AWS key IDs
		c.id[8] = c.id[8]&0x3f | 0x80
		if _, dup := k.byID[c.id]; !dup {
			break
		}
	}
	if err := k.newVersion(c); err != nil {
		return KeyMetadata{}, fmt.Errorf("create key: %w", err)
	}
	k.keys = append(k.keys, c)
	k.byID[c.id] = c
	if alias != "" {
		k.aliases[alias] = c
	}
	k.dirty = true
	return k.metadataLocked(c), nil
}

// Rotate adds version n+1 to the key: new wraps use it, old versions stay
// for Decrypt. Call Save to keep it.
func (k *Keyring) Rotate(ref string) (KeyMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("rotate: %w", err)
	}
	if c.pendingDeletion != nil {
		return KeyMetadata{}, fmt.Errorf("rotate key %s: %w: it is pending deletion", formatKeyID(c.id), ErrKeyInvalidState)
	}
	if err := k.newVersion(c); err != nil {
		return KeyMetadata{}, fmt.Errorf("rotate key %s: %w", formatKeyID(c.id), err)
	}
	k.dirty = true
	return k.metadataLocked(c), nil
}

// SetEnabled enables or disables a key. A disabled key neither wraps nor
// unwraps, as in AWS KMS. Call Save to keep it.
func (k *Keyring) SetEnabled(ref string, enabled bool) (KeyMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("set key state: %w", err)
	}
	if c.pendingDeletion != nil {
		return KeyMetadata{}, fmt.Errorf("set key state %s: %w: it is pending deletion", formatKeyID(c.id), ErrKeyInvalidState)
	}
	if c.enabled != enabled {
		c.enabled = enabled
		k.dirty = true
	}
	return k.metadataLocked(c), nil
}

// SetAlias points alias (alias/NAME) at the key ref names, creating the
// alias or re-pointing it. Call Save to keep it.
func (k *Keyring) SetAlias(alias, ref string) error {
	if err := checkAliasName(alias); err != nil {
		return fmt.Errorf("set alias: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return fmt.Errorf("set alias %s: %w", alias, err)
	}
	if k.aliases[alias] != c {
		k.aliases[alias] = c
		k.dirty = true
	}
	return nil
}

// Keys lists every key's metadata, in creation order.
func (k *Keyring) Keys() []KeyMetadata {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make([]KeyMetadata, 0, len(k.keys))
	for _, c := range k.keys {
		out = append(out, k.metadataLocked(c))
	}
	return out
}

// Resolve finds the key a reference names: key ID, key ARN, alias name
// (alias/NAME) or alias ARN. Errors wrap ErrKeyNotFound.
func (k *Keyring) Resolve(ref string) (KeyMetadata, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return KeyMetadata{}, err
	}
	return k.metadataLocked(c), nil
}

func (k *Keyring) resolveLocked(ref string) (*cmk, error) {
	if k.closed {
		return nil, errKeyringClosed
	}
	if rest, ok := strings.CutPrefix(ref, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 4) // kmsfs, local, <keyring id>, <resource>
		if len(parts) != 4 || parts[0] != "kmsfs" || parts[1] != "local" {
			return nil, fmt.Errorf("key %s: %w: not an ARN of the local provider (arn:kmsfs:local:...): use the provider that owns it", ref, ErrKeyNotFound)
		}
		if parts[2] != k.id {
			return nil, fmt.Errorf("key %s: %w: it belongs to another keyring (%s), this is keyring %s: pass --keyring with the keyring that holds it", ref, ErrKeyNotFound, parts[2], k.id)
		}
		switch {
		case strings.HasPrefix(parts[3], "key/"):
			return k.byKeyID(ref, parts[3][len("key/"):])
		case strings.HasPrefix(parts[3], "alias/"):
			return k.byAlias(ref, parts[3])
		}
		return nil, fmt.Errorf("key %s: %w: the ARN names neither key/ID nor alias/NAME", ref, ErrKeyNotFound)
	}
	if strings.HasPrefix(ref, "alias/") {
		return k.byAlias(ref, ref)
	}
	return k.byKeyID(ref, ref)
}

func (k *Keyring) byKeyID(ref, s string) (*cmk, error) {
	id, err := parseKeyID(s)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w: not a key ID, key ARN, alias/NAME or alias ARN", ref, ErrKeyNotFound)
	}
	c, ok := k.byID[id]
	if !ok {
		return nil, fmt.Errorf("key %s: %w: no such key in keyring %s: `kmsfs keys list` shows its keys", ref, ErrKeyNotFound, k.id)
	}
	return c, nil
}

func (k *Keyring) byAlias(ref, name string) (*cmk, error) {
	c, ok := k.aliases[name]
	if !ok {
		return nil, fmt.Errorf("key %s: %w: no alias %s in keyring %s: `kmsfs keys list` shows its aliases", ref, ErrKeyNotFound, name, k.id)
	}
	return c, nil
}

func (k *Keyring) metadataLocked(c *cmk) KeyMetadata {
	md := KeyMetadata{
		KeyID:          formatKeyID(c.id),
		ARN:            k.keyARN(c),
		State:          KeyEnabled,
		Description:    c.description,
		CurrentVersion: uint32(len(c.versions)),
		Symmetric:      true,
		EncryptDecrypt: true,
	}
	switch {
	case c.pendingDeletion != nil:
		md.State = KeyPendingDeletion
	case !c.enabled:
		md.State = KeyDisabled
	}
	for name, a := range k.aliases {
		if a == c {
			md.Aliases = append(md.Aliases, name)
		}
	}
	sort.Strings(md.Aliases)
	return md
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
