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
// lines from concurrent callers (and processes) never interleave.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

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
	Outcome string    `json:"outcome"`           // "ok" or the error's short name, e.g. "KeyDisabled"
	Error   string    `json:"error,omitempty"`
	// DestKeyARN is the key a ReEncrypt wrapped to (KeyARN is its source).
	DestKeyARN string  `json:"dest_key_arn,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
}

// AuditLog appends AuditRecords to a file. Safe for concurrent use.
type AuditLog struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// OpenAuditLog opens path for appending (created 0600, its directory 0700).
// Neither the log nor its directory may be a symlink: the log lives in the
// cipher directory, which its writer may change, and a log that is a
// symlink to (say) a shell start-up file must not get lines appended.
func OpenAuditLog(path string) (*AuditLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	f, err := openNoFollow(path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &AuditLog{path: path, f: f}, nil
}

// openNoFollow opens path with neither its directory (the last directory
// component) nor the file itself followed if a symlink, and refuses
// anything but a regular file.
func openNoFollow(path string, flags int, perm uint32) (*os.File, error) {
	dirfd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, filepath.Base(path), flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, perm)
	if err != nil {
		if err == unix.ELOOP {
			return nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("a symlink, never followed in a cipher directory: remove it: %w", err)}
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: errors.New("not a regular file")}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Path is the log file.
func (a *AuditLog) Path() string { return a.path }

// Write appends one record as one line, in one write.
func (a *AuditLog) Write(rec AuditRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	line = append(line, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return fmt.Errorf("audit log %s: closed", a.path)
	}
	if _, err := a.f.Write(line); err != nil {
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	return nil
}

// Close closes the log. Calling it twice is harmless.
func (a *AuditLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	if err != nil {
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	return nil
}

// auditOutcome is "ok" or the short name of the sentinel err wraps.
func auditOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
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

// ReadAudit parses an audit log. Blank lines are skipped; a last line
// without its newline that does not parse is a write torn by a crash (or
// still being written) and is ignored. Any other bad line is an error
// naming its number, returned with the records before it. Fuzzed by
// FuzzReadAudit.
func ReadAudit(r io.Reader) ([]AuditRecord, error) {
	var out []AuditRecord
	err := scanAudit(r, func(rec AuditRecord) { out = append(out, rec) })
	return out, err
}

// CountAuditOps counts the calls recorded in the audit log at path per op
// ("GenerateDataKey", "Decrypt", "ReEncrypt", "DescribeKey"), whatever
// their outcome; every op of the four is in the map, 0 when absent or when
// there is no log yet. It streams the log, so a running mount may be
// appending to it. On a bad line it returns the counts before it and an
// error naming the line.
func CountAuditOps(path string) (map[string]int, error) {
	counts := map[string]int{AuditGenerateDataKey: 0, AuditDecrypt: 0, AuditReEncrypt: 0, AuditDescribeKey: 0}
	f, err := openNoFollow(path, unix.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return counts, nil
	}
	if err != nil {
		return counts, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	if err := scanAudit(f, func(rec AuditRecord) { counts[rec.Op]++ }); err != nil {
		return counts, fmt.Errorf("%s: %w", path, err)
	}
	return counts, nil
}

// scanAudit calls fn for each record of an audit log, by ReadAudit's rules.
func scanAudit(r io.Reader, fn func(AuditRecord)) error {
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return fmt.Errorf("read audit log: %w", err)
		}
		last := err == io.EOF
		if t := bytes.TrimSpace(line); len(t) > 0 {
			var rec AuditRecord
			perr := error(nil)
			if t[0] != '{' {
				perr = errors.New("not a JSON object")
			} else {
				perr = json.Unmarshal(t, &rec)
			}
			if perr != nil {
				if last {
					return nil // torn last line
				}
				return fmt.Errorf("audit log line %d: %v", n, perr)
			}
			fn(rec)
		}
		if last {
			return nil
		}
	}
}
