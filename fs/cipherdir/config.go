package cipherdir

// config.go: kmsfs.conf, the configuration of a cipher directory (format
// version, filesystem ID, provider and key, geometry, names, rewrap
// epoch), parsed strictly.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/internal/atomicfile"
)

// FormatVersion is the kmsfs.conf format this build writes and reads.
const FormatVersion = 1

// MaxConfigSize bounds the kmsfs.conf a Load will read; a real one is
// about 400 bytes.
const MaxConfigSize = 64 << 10

// Provider names.
const (
	ProviderLocal = "local"
	ProviderAWS   = "aws"
)

// Known features. A feature listed in kmsfs.conf that this build does not
// know means the filesystem was made by a newer kmsfs: it is refused.
//
// name_encryption: names and symlink targets are encrypted under the
// filesystem's names key (kmsfs.names, copy in .kmsfs/names).
const FeatureNameEncryption = "name_encryption"

// supportedFeatures maps each known feature to whether this build can
// mount a filesystem that has it switched on.
var supportedFeatures = map[string]bool{
	FeatureNameEncryption: true,
}

// Sentinel errors; Parse, Load and Validate wrap them with the detail.
var (
	ErrBadConfig          = errors.New("invalid kmsfs.conf")
	ErrUnknownFeature     = errors.New("unknown feature in kmsfs.conf")
	ErrUnsupportedFeature = errors.New("feature not supported by this build")
	ErrUnsupportedFormat  = errors.New("unsupported kmsfs.conf format")
	ErrNotCipherDir       = errors.New("not a kmsfs cipher directory")
)

// Config is kmsfs.conf (docs/format.md, "kmsfs.conf"). It holds no secrets.
type Config struct {
	Format       int    `json:"format"`
	FilesystemID string `json:"filesystem_id"`
	Provider     string `json:"provider"`
	// Key is the key reference as the user typed it at init.
	Key string `json:"key"`
	// KeyARN is what Key resolved to at init; new files are wrapped under it.
	KeyARN string `json:"key_arn"`
	// Keyring is the absolute path of the local provider's keyring.
	Keyring string `json:"keyring,omitempty"`
	// AWSRegion, AWSEndpoint and AWSProfile are what init was given for
	// the aws provider, so later commands need no AWS flags; flags and the
	// standard AWS environment override them.
	AWSRegion   string          `json:"aws_region,omitempty"`
	AWSEndpoint string          `json:"aws_endpoint,omitempty"`
	AWSProfile  string          `json:"aws_profile,omitempty"`
	ChunkShift  uint8           `json:"chunk_shift"`
	SlotShift   uint8           `json:"slot_shift"`
	Features    map[string]bool `json:"features"`
	// RewrapEpoch is the aws provider's rewrap marker (docs/format.md,
	// "Rewrap epoch"): AWS KMS hides key versions, so kmsfs stores this
	// number in the key-version field of each aws-wrapped key instead. A
	// file whose key carries a lower epoch has not been re-encrypted by
	// the latest full rewrap. 0 (absent) at init.
	RewrapEpoch uint32 `json:"rewrap_epoch,omitempty"`
	// RewrapPending is set while a full rewrap to RewrapEpoch is
	// unfinished, so that the next run resumes it instead of starting
	// another epoch.
	RewrapPending bool `json:"rewrap_pending,omitempty"`
}

// NewFilesystemID returns 128 random bits as 32 lowercase hex characters.
func NewFilesystemID(r io.Reader) (string, error) {
	if r == nil {
		r = rand.Reader
	}
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("new filesystem id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// New returns a version-1 config with the default slot size and every
// known feature switched off (SetEncryptedNames switches names on).
func New(filesystemID, provider, key, keyARN, keyring string, chunkShift uint8) Config {
	return Config{
		Format:       FormatVersion,
		FilesystemID: filesystemID,
		Provider:     provider,
		Key:          key,
		KeyARN:       keyARN,
		Keyring:      keyring,
		ChunkShift:   chunkShift,
		SlotShift:    crypto.DefaultSlotShift,
		Features:     map[string]bool{FeatureNameEncryption: false},
	}
}

// EncryptedNames reports whether the filesystem's names are encrypted
// (features.name_encryption).
func (c Config) EncryptedNames() bool {
	return c.Features[FeatureNameEncryption]
}

// SetEncryptedNames switches features.name_encryption on or off. Only init
// calls it: an existing filesystem's names stay as they were made. The
// feature map is copied, so configs copied from c are not changed.
func (c *Config) SetEncryptedNames(on bool) {
	f := maps.Clone(c.Features)
	if f == nil {
		f = map[string]bool{}
	}
	f[FeatureNameEncryption] = on
	c.Features = f
}

// Layout is the geometry every cipher file of the filesystem has.
func (c Config) Layout() crypto.Layout {
	return crypto.Layout{ChunkShift: c.ChunkShift, SlotShift: c.SlotShift}
}

// Validate checks every field. Errors wrap ErrBadConfig,
// ErrUnsupportedFormat, ErrUnknownFeature or ErrUnsupportedFeature.
func (c Config) Validate() error {
	if c.Format != FormatVersion {
		return fmt.Errorf("%w %d (this kmsfs reads format %d): upgrade kmsfs", ErrUnsupportedFormat, c.Format, FormatVersion)
	}
	if len(c.FilesystemID) != 32 || strings.ToLower(c.FilesystemID) != c.FilesystemID {
		return fmt.Errorf("%w: filesystem_id must be 32 lowercase hex characters, got %q", ErrBadConfig, c.FilesystemID)
	}
	if _, err := hex.DecodeString(c.FilesystemID); err != nil {
		return fmt.Errorf("%w: filesystem_id must be 32 lowercase hex characters, got %q", ErrBadConfig, c.FilesystemID)
	}
	switch c.Provider {
	case ProviderLocal:
		if c.Keyring == "" || !filepath.IsAbs(c.Keyring) {
			return fmt.Errorf("%w: provider local needs keyring, an absolute path, got %q", ErrBadConfig, c.Keyring)
		}
		if c.AWSRegion != "" || c.AWSEndpoint != "" || c.AWSProfile != "" {
			return fmt.Errorf("%w: provider local takes no aws_region, aws_endpoint or aws_profile", ErrBadConfig)
		}
	case ProviderAWS:
		if c.Keyring != "" {
			return fmt.Errorf("%w: provider aws takes no keyring, got %q", ErrBadConfig, c.Keyring)
		}
	default:
		return fmt.Errorf("%w: provider must be %q or %q, got %q", ErrBadConfig, ProviderLocal, ProviderAWS, c.Provider)
	}
	if c.Key == "" {
		return fmt.Errorf("%w: key is empty", ErrBadConfig)
	}
	if c.KeyARN == "" || len(c.KeyARN) > crypto.MaxKeyARNLen || !strings.HasPrefix(c.KeyARN, "arn:") {
		return fmt.Errorf("%w: key_arn must be an ARN (arn:...), got %q", ErrBadConfig, c.KeyARN)
	}
	if err := c.Layout().Validate(); err != nil {
		return fmt.Errorf("%w: chunk_shift %d, slot_shift %d: chunk_shift must be %d..%d and slot_shift %d..%d",
			ErrBadConfig, c.ChunkShift, c.SlotShift, crypto.MinChunkShift, crypto.MaxChunkShift, crypto.MinSlotShift, crypto.MaxSlotShift)
	}
	names := make([]string, 0, len(c.Features))
	for name := range c.Features {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		supported, known := supportedFeatures[name]
		if !known {
			return fmt.Errorf("%w: %q (made by a newer kmsfs?): upgrade kmsfs", ErrUnknownFeature, name)
		}
		if c.Features[name] && !supported {
			return fmt.Errorf("%w: %q is switched on but this kmsfs cannot read it: upgrade kmsfs", ErrUnsupportedFeature, name)
		}
	}
	return nil
}

// Parse decodes kmsfs.conf strictly (unknown fields, trailing data and
// duplicate documents are refused) and validates it.
func Parse(b []byte) (Config, error) {
	var c Config
	if len(b) > MaxConfigSize {
		return c, fmt.Errorf("%w: %d bytes, more than %d", ErrBadConfig, len(b), MaxConfigSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		msg := strings.TrimPrefix(err.Error(), "json: ")
		if strings.HasPrefix(msg, "unknown field") {
			return Config{}, fmt.Errorf("%w: %s (made by a newer kmsfs?)", ErrBadConfig, msg)
		}
		return Config{}, fmt.Errorf("%w: %s", ErrBadConfig, msg)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Config{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadConfig)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Marshal encodes the config as indented JSON with a final newline.
func (c Config) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode kmsfs.conf: %w", err)
	}
	return append(b, '\n'), nil
}

// Load reads and validates CIPHERDIR/kmsfs.conf. A missing file wraps
// ErrNotCipherDir.
func Load(dir string) (Config, error) {
	path := ConfPath(dir)
	f, err := openConf(dir)
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("%s: %w", dir, ErrNotCipherDir)
	}
	if err != nil {
		return Config{}, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("read %s: %w", path, err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// openConf opens CIPHERDIR/kmsfs.conf for reading without following a
// symlink there, and refuses anything but a regular file (a fifo would
// hang the read).
func openConf(dir string) (*os.File, error) {
	root, err := OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	fd, err := OpenAt(root, ConfName, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("it is a symlink, which kmsfs never follows in a cipher directory: %w", err)
		}
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("not a regular file: %w", ErrBadConfig)
	}
	return os.NewFile(uintptr(fd), ConfPath(dir)), nil
}

// Save validates c and writes CIPHERDIR/kmsfs.conf atomically
// (atomicfile: temp file, fsync, rename, fsync of the directory), through
// a handle of the cipher directory, so neither the temporary name nor
// kmsfs.conf is followed if it is a symlink; mode 0644: it holds no
// secrets.
func Save(dir string, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, err := c.Marshal()
	if err != nil {
		return err
	}
	path := ConfPath(dir)
	root, err := OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	defer unix.Close(root)
	if err := atomicfile.WriteFileAt(root, ConfName, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
