package keymgr

// audit.go: the audit log, CIPHERDIR/.kmsfs/audit.log. One JSON object per
// line and per KMS call:
//
//	{"time":"2026-11-27T17:20:00.123456789Z","op":"Decrypt",
//	 "key_arn":"arn:kmsfs:local:<keyring id>:key/<key id>",
//	 "file_id":"<32 hex>","outcome":"ok","latency_ms":0.042}
//
// A call for the names key has no file: its line has "file_id":"" and
// "purpose":"names" (the encryption context's kmsfs-purpose).
//
// It names keys by ARN and files by ID: never a key, a DEK, plaintext or a
// plaintext name. Each line is one write(2) to a file opened O_APPEND, so
// lines from concurrent callers (and processes) never interleave. The log
// is rotated at a size cap (audit.log.1 .. audit.log.Keep) and fsync'd once
// a second by its writer (audit_log.go); readers report a damaged line and
// go on (audit_read.go).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// Audit operation names, as in AWS KMS.
const (
	AuditGenerateDataKey = "GenerateDataKey"
	AuditDecrypt         = "Decrypt"
	AuditReEncrypt       = "ReEncrypt"
	AuditDescribeKey     = "DescribeKey"
)

// AuditRecord is one line of the audit log.
type AuditRecord struct {
	Time    time.Time `json:"time"`
	Op      string    `json:"op"`
	KeyARN  string    `json:"key_arn"`
	FileID  string    `json:"file_id"`
	Purpose string    `json:"purpose,omitempty"` // kmsfs-purpose: "names" for the names key, absent for a file's
	Outcome string    `json:"outcome"`           // "ok" or the error's short name, e.g. "KeyDisabled", "UntrustedKey"
	Error   string    `json:"error,omitempty"`
	// DestKeyARN is the key a ReEncrypt wrapped to (KeyARN is its source).
	DestKeyARN string  `json:"dest_key_arn,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
}

// auditOutcome is "ok" or the short name of the sentinel err wraps.
func auditOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUntrustedKey):
		return "UntrustedKey" // refused before any call: no KMS saw it
	case errors.Is(err, ErrKeyMismatch):
		return "KeyMismatch"
	case errors.Is(err, ErrKeyNotFound):
		return "KeyNotFound"
	case errors.Is(err, ErrKeyDisabled):
		return "KeyDisabled"
	case errors.Is(err, ErrKeyInvalidState):
		return "KeyInvalidState"
	case errors.Is(err, ErrAccessDenied):
		return "AccessDenied"
	case errors.Is(err, ErrInvalidCiphertext):
		return "InvalidCiphertext"
	case errors.Is(err, ErrThrottled):
		return "Throttled"
	case errors.Is(err, ErrKMSUnavailable):
		return "KMSUnavailable"
	case errors.Is(err, context.Canceled):
		return "Canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "DeadlineExceeded"
	}
	return "Error"
}

// auditingProvider writes one AuditRecord per call of the wrapped provider.
type auditingProvider struct {
	p   Provider
	log *AuditLog
	now func() time.Time
}

// NewAuditingProvider wraps p so that every call is recorded in a (now nil:
// time.Now). The log fails closed: when the record cannot be written, the
// call fails too (a DEK it produced is zeroed), so no unwrap goes
// unrecorded.
func NewAuditingProvider(p Provider, a *AuditLog, now func() time.Time) Provider {
	if now == nil {
		now = time.Now
	}
	return &auditingProvider{p: p, log: a, now: now}
}

func (a *auditingProvider) Name() string { return a.p.Name() }

func (a *auditingProvider) record(rec AuditRecord, start time.Time, err error) error {
	rec.Time = start.UTC()
	rec.Outcome = auditOutcome(err)
	if err != nil {
		rec.Error = err.Error()
	}
	rec.LatencyMS = float64(a.now().Sub(start)) / float64(time.Millisecond)
	return a.log.Write(rec)
}

func (a *auditingProvider) GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error) {
	start := a.now()
	dk, err := a.p.GenerateDataKey(ctx, keyRef, ec)
	rec := AuditRecord{Op: AuditGenerateDataKey, KeyARN: keyRef, FileID: ec[ContextFile], Purpose: ec[ContextPurpose]}
	if err == nil {
		rec.KeyARN = dk.KeyARN
	}
	if werr := a.record(rec, start, err); werr != nil && err == nil {
		crypto.Zero(dk.Plaintext)
		return DataKey{}, fmt.Errorf("GenerateDataKey: %w", werr)
	}
	return dk, err
}

func (a *auditingProvider) Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error) {
	start := a.now()
	dek, err := a.p.Decrypt(ctx, keyRef, blob, ec)
	rec := AuditRecord{Op: AuditDecrypt, KeyARN: keyRef, FileID: ec[ContextFile], Purpose: ec[ContextPurpose]}
	if werr := a.record(rec, start, err); werr != nil && err == nil {
		crypto.Zero(dek)
		return nil, fmt.Errorf("Decrypt: %w", werr)
	}
	return dek, err
}

func (a *auditingProvider) ReEncrypt(ctx context.Context, srcKeyRef string, blob []byte, ec EncryptionContext, dstKeyRef string) (DataKey, error) {
	start := a.now()
	dk, err := a.p.ReEncrypt(ctx, srcKeyRef, blob, ec, dstKeyRef)
	rec := AuditRecord{Op: AuditReEncrypt, KeyARN: srcKeyRef, FileID: ec[ContextFile], Purpose: ec[ContextPurpose], DestKeyARN: dstKeyRef}
	if err == nil && dk.KeyARN != "" {
		rec.DestKeyARN = dk.KeyARN
	}
	if werr := a.record(rec, start, err); werr != nil && err == nil {
		crypto.Zero(dk.Plaintext)
		return DataKey{}, fmt.Errorf("ReEncrypt: %w", werr)
	}
	return dk, err
}

func (a *auditingProvider) DescribeKey(ctx context.Context, keyRef string) (KeyMetadata, error) {
	start := a.now()
	md, err := a.p.DescribeKey(ctx, keyRef)
	rec := AuditRecord{Op: AuditDescribeKey, KeyARN: keyRef}
	if err == nil && md.ARN != "" {
		rec.KeyARN = md.ARN
	}
	if werr := a.record(rec, start, err); werr != nil && err == nil {
		return KeyMetadata{}, fmt.Errorf("DescribeKey: %w", werr)
	}
	return md, err
}
