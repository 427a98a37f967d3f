package keymgr

import (
	"context"
	"sort"
	"strings"

	"github.com/kmsfs/kmsfs/crypto"
)

// Encryption-context keys. Every KMS call kmsfs makes carries the
// filesystem and either the file (a DEK) or the purpose (the names key), so
// a wrapped key unwraps only for what it was made for, and every unwrap
// names the file (never a path) or the purpose in the KMS's audit trail.
const (
	ContextFilesystem = "kmsfs-filesystem"
	ContextFile       = "kmsfs-file"
	ContextPurpose    = "kmsfs-purpose"
)

// PurposeNames is the ContextPurpose of the filesystem's names key.
const PurposeNames = "names"

// EncryptionContext is the KMS encryption context: non-secret key/value
// pairs bound into a wrapped key as additional authenticated data.
type EncryptionContext map[string]string

// FileContext is the encryption context of one file. The reserved
// crypto.NamesKeyID gets NamesContext, so code that walks cipher-file heads
// (rewrap) handles the names-key head with no case of its own.
func FileContext(filesystemID string, fileID crypto.FileID) EncryptionContext {
	if fileID == crypto.NamesKeyID {
		return NamesContext(filesystemID)
	}
	return EncryptionContext{ContextFilesystem: filesystemID, ContextFile: fileID.String()}
}

// NamesContext is the encryption context of the filesystem's names key. It
// has no file key, so no file's EDK unwraps under it, nor it under a file's.
func NamesContext(filesystemID string) EncryptionContext {
	return EncryptionContext{ContextFilesystem: filesystemID, ContextPurpose: PurposeNames}
}

// Canonical returns the context as sorted "k=v" lines joined by "\n", the
// byte string the local provider authenticates.
func (ec EncryptionContext) Canonical() []byte {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(ec[k])
	}
	return []byte(b.String())
}

// DataKey is a fresh data key as GenerateDataKey returns it. Plaintext is the
// caller's to zero (crypto.Zero) once it is stored in locked memory.
type DataKey struct {
	Plaintext  []byte // 32-byte DEK
	Ciphertext []byte // EDK, the provider's opaque blob
	KeyARN     string // ARN of the CMK that wrapped it
	KeyVersion uint32 // key version that wrapped it; 0 when not visible (aws)
}

// KeyState mirrors the KMS KeyState values kmsfs cares about.
type KeyState string

const (
	KeyEnabled         KeyState = "Enabled"
	KeyDisabled        KeyState = "Disabled"
	KeyPendingDeletion KeyState = "PendingDeletion"
)

// KeyMetadata describes a CMK as DescribeKey returns it.
type KeyMetadata struct {
	KeyID          string
	ARN            string
	State          KeyState
	Description    string
	Aliases        []string
	CurrentVersion uint32 // local provider: newest version; aws: 0
	Symmetric      bool   // SYMMETRIC_DEFAULT
	EncryptDecrypt bool   // KeyUsage ENCRYPT_DECRYPT
}

// Provider is a KMS, shaped like the AWS KMS API. keyRef is a key ID, key
// ARN, alias name ("alias/...") or alias ARN. Every call carries the
// encryption context of the file (or the names key) concerned. Errors wrap
// the sentinels in errors.go so callers can tell a disabled key from a
// network failure.
type Provider interface {
	// Name is "local" or "aws".
	Name() string
	// GenerateDataKey returns a fresh 256-bit DEK and its EDK under keyRef.
	GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error)
	// Decrypt unwraps blob, which must have been wrapped by keyRef (the key
	// is pinned: a blob of another key fails) under exactly ec.
	Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error)
	// ReEncrypt moves blob from srcKeyRef to the current version of
	// dstKeyRef without exposing the DEK to the caller.
	ReEncrypt(ctx context.Context, srcKeyRef string, blob []byte, ec EncryptionContext, dstKeyRef string) (DataKey, error)
	// DescribeKey resolves keyRef and reports the key's state.
	DescribeKey(ctx context.Context, keyRef string) (KeyMetadata, error)
}
