package keymgr

// pinned.go: the trust pin between kmsfs and the KMS. The writer of a
// cipher directory can edit every header, and a header names the key that
// unwraps it. Taken on trust, a planted file naming the writer's own key
// (with an EDK they made under the public context {filesystem ID, file
// ID}) would open as authentic, and what the user then writes into it
// would be sealed under a DEK the writer knows. A PinnedProvider lets a
// call through only when every key it names is one the user trusts for
// this filesystem: the trust anchor kept outside the cipher directory
// lists the filesystem's key and, during a migration, its target.
//
// Invariants:
//   - GenerateDataKey, Decrypt and ReEncrypt (source and destination)
//     reach the inner provider only with a trusted key ARN; any other
//     reference, an alias or bare key ID included, is refused with
//     ErrUntrustedKey before any call.
//   - ARNs compare exactly: aliases are resolved (DescribeKey, which
//     passes through) before a key is trusted.
//   - A GenerateDataKey or ReEncrypt answer that names another key than
//     the one asked for is refused with ErrKeyMismatch and its plaintext
//     zeroed; an answer naming none is stamped with the key asked for.
//     (Decrypt answers name no key here; the aws provider checks the
//     KMS's KeyId itself.)
//
// Both errors wrap ErrInvalidCiphertext: to the mount the file fails
// authentication (EIO), and a planted index entry still falls back to the
// file's own header mirror. Stack it under the audit log,
// NewAuditingProvider(NewPinnedProvider(real, trusted), log, nil), so a
// refusal leaves an audit line like any failed call.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/kmsfs/kmsfs/crypto"
)

// PinnedProvider wraps a Provider so that only trusted key ARNs are used.
// It is safe for concurrent use; Trust may be called while calls run.
type PinnedProvider struct {
	p Provider

	mu      sync.RWMutex
	trusted map[string]bool // exact key ARNs; never ""
}

var _ Provider = (*PinnedProvider)(nil)

// NewPinnedProvider wraps p, trusting exactly the key ARNs in trusted
// (empty strings are ignored: nothing is trusted by default).
func NewPinnedProvider(p Provider, trusted []string) *PinnedProvider {
	pp := &PinnedProvider{p: p, trusted: make(map[string]bool, len(trusted))}
	for _, arn := range trusted {
		pp.Trust(arn)
	}
	return pp
}

// Trust adds a key ARN to the trusted set (a migration's target). An empty
// ARN is ignored.
func (pp *PinnedProvider) Trust(arn string) {
	if arn == "" {
		return
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.trusted[arn] = true
}

// Trusted returns the trusted key ARNs, sorted.
func (pp *PinnedProvider) Trusted() []string {
	pp.mu.RLock()
	defer pp.mu.RUnlock()
	out := make([]string, 0, len(pp.trusted))
	for arn := range pp.trusted {
		out = append(out, arn)
	}
	slices.Sort(out)
	return out
}

// IsTrusted reports whether arn is trusted, by exact comparison.
func (pp *PinnedProvider) IsTrusted(arn string) bool {
	pp.mu.RLock()
	defer pp.mu.RUnlock()
	return pp.trusted[arn]
}

// Name is the inner provider's.
func (pp *PinnedProvider) Name() string { return pp.p.Name() }

// Why a key is refused, for refuse.
const (
	whyHeader = "a header naming it was not written with this filesystem's keys (a planted or altered file)"
	whyWrap   = "new keys are wrapped only under a trusted key (is kmsfs.conf's key_arn altered?)"
)

// refuse is the ErrUntrustedKey of op naming keyRef for the file (or
// purpose) of ec, and why it matters.
func (pp *PinnedProvider) refuse(op, role, keyRef, why string, ec EncryptionContext) error {
	trusted := pp.Trusted()
	list := "none"
	if len(trusted) > 0 {
		list = strings.Join(trusted, ", ")
	}
	return fmt.Errorf("%s%s%s key %q: %w (trusted: %s): %s; "+
		"if the key is yours, review it and run `kmsfs trust CIPHERDIR`",
		op, pinSubject(ec), role, keyRef, ErrUntrustedKey, list, why)
}

// pinSubject names the file or purpose of ec for an error: " of file <id>".
func pinSubject(ec EncryptionContext) string {
	switch {
	case ec[ContextFile] != "":
		return " of file " + ec[ContextFile]
	case ec[ContextPurpose] != "":
		return " of the " + ec[ContextPurpose] + " key"
	}
	return ""
}

// GenerateDataKey asks the inner provider only for a trusted keyRef and
// checks the answer names it.
func (pp *PinnedProvider) GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error) {
	const op = "GenerateDataKey"
	if !pp.IsTrusted(keyRef) {
		return DataKey{}, pp.refuse(op, " with", keyRef, whyWrap, ec)
	}
	dk, err := pp.p.GenerateDataKey(ctx, keyRef, ec)
	if err != nil {
		return DataKey{}, err
	}
	if err := answeredBy(op, keyRef, &dk); err != nil {
		return DataKey{}, err
	}
	return dk, nil
}

// Decrypt calls the inner provider only for a trusted keyRef.
func (pp *PinnedProvider) Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error) {
	if !pp.IsTrusted(keyRef) {
		return nil, pp.refuse("Decrypt", " with", keyRef, whyHeader, ec)
	}
	return pp.p.Decrypt(ctx, keyRef, blob, ec)
}

// ReEncrypt calls the inner provider only when both keys are trusted, and
// checks the answer names the destination.
func (pp *PinnedProvider) ReEncrypt(ctx context.Context, srcKeyRef string, blob []byte, ec EncryptionContext, dstKeyRef string) (DataKey, error) {
	const op = "ReEncrypt"
	if !pp.IsTrusted(srcKeyRef) {
		return DataKey{}, pp.refuse(op, " from", srcKeyRef, whyHeader, ec)
	}
	if !pp.IsTrusted(dstKeyRef) {
		return DataKey{}, pp.refuse(op, " to", dstKeyRef, whyWrap, ec)
	}
	dk, err := pp.p.ReEncrypt(ctx, srcKeyRef, blob, ec, dstKeyRef)
	if err != nil {
		return DataKey{}, err
	}
	if err := answeredBy(op, dstKeyRef, &dk); err != nil {
		return DataKey{}, err
	}
	return dk, nil
}

// DescribeKey passes through: it uses no key material, and alias
// resolution at init needs it before anything is trusted.
func (pp *PinnedProvider) DescribeKey(ctx context.Context, keyRef string) (KeyMetadata, error) {
	return pp.p.DescribeKey(ctx, keyRef)
}

// answeredBy checks that dk came from want (stamping it when the answer
// names no key); on a mismatch it zeroes the plaintext.
func answeredBy(op, want string, dk *DataKey) error {
	switch dk.KeyARN {
	case want:
		return nil
	case "":
		dk.KeyARN = want
		return nil
	}
	crypto.Zero(dk.Plaintext)
	got := dk.KeyARN
	*dk = DataKey{}
	return fmt.Errorf("%s %s: %w: the answer names key %s: check the KMS endpoint and region (a misrouted or impersonating KMS)", op, want, ErrKeyMismatch, got)
}
