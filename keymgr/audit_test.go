package keymgr

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// stepClock returns a clock that moves 1.5 ms per call.
func stepClock() func() time.Time {
	var mu sync.Mutex
	t := time.Date(2026, 11, 27, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(1500 * time.Microsecond)
		return t
	}
}

func openTestAudit(t *testing.T) (*AuditLog, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), ".kmsfs", "audit.log")
	a, err := OpenAuditLog(path, AuditOptions{})
	if err != nil {
		t.Fatalf("OpenAuditLog: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a, path
}

func readAuditFile(t *testing.T, path string) []AuditRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := ReadAudit(f)
	if err != nil {
		t.Fatalf("ReadAudit: %v", err)
	}
	return recs
}

func TestAuditRecords(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	b := mustCreateKey(t, k, "b", "alias/b")
	log, path := openTestAudit(t)
	p := NewAuditingProvider(NewLocalProvider(k), log, stepClock())
	if got, want := p.Name(), "local"; got != want {
		t.Errorf("Name: got %v, want %v", got, want)
	}
	ctx := context.Background()
	ec := testContext("fs", 1)
	other := testContext("fs", 2)
	fid, otherID := ec[ContextFile], other[ContextFile]

	dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec); err != nil {
		t.Fatal(err)
	}
	_, _ = p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, other)
	if _, err := p.ReEncrypt(ctx, dk.KeyARN, dk.Ciphertext, ec, "alias/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.DescribeKey(ctx, "alias/b"); err != nil {
		t.Fatal(err)
	}
	_, _ = p.DescribeKey(ctx, "alias/none")
	if _, err := k.SetEnabled("alias/a", false); err != nil {
		t.Fatal(err)
	}
	_, _ = p.GenerateDataKey(ctx, "alias/a", ec)
	_, _ = p.Decrypt(ctx, "alias/a", dk.Ciphertext, ec)

	want := []AuditRecord{
		{Op: "GenerateDataKey", KeyARN: a.ARN, FileID: fid, Outcome: "ok"},
		{Op: "Decrypt", KeyARN: a.ARN, FileID: fid, Outcome: "ok"},
		{Op: "Decrypt", KeyARN: a.ARN, FileID: otherID, Outcome: "InvalidCiphertext"},
		{Op: "ReEncrypt", KeyARN: a.ARN, FileID: fid, Outcome: "ok", DestKeyARN: b.ARN},
		{Op: "DescribeKey", KeyARN: b.ARN, Outcome: "ok"},
		{Op: "DescribeKey", KeyARN: "alias/none", Outcome: "KeyNotFound"},
		{Op: "GenerateDataKey", KeyARN: "alias/a", FileID: fid, Outcome: "KeyDisabled"},
		{Op: "Decrypt", KeyARN: "alias/a", FileID: fid, Outcome: "KeyDisabled"},
	}
	got := readAuditFile(t, path)
	if len(got) != len(want) {
		t.Fatalf("audit records: got %d, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Op != w.Op || g.KeyARN != w.KeyARN || g.FileID != w.FileID || g.Outcome != w.Outcome || g.DestKeyARN != w.DestKeyARN {
			t.Errorf("record %d: got %+v, want %+v", i, g, w)
		}
		if (g.Outcome == "ok") != (g.Error == "") {
			t.Errorf("record %d: outcome %q with error %q", i, g.Outcome, g.Error)
		}
		if g.Time.Location() != time.UTC {
			t.Errorf("record %d: time %v is not UTC", i, g.Time)
		}
		if got, want := g.LatencyMS, 1.5; got != want {
			t.Errorf("record %d latency: got %v, want %v", i, got, want)
		}
		if i > 0 && !g.Time.After(got[i-1].Time) {
			t.Errorf("record %d: time %v not after %v", i, g.Time, got[i-1].Time)
		}
	}
	raw, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	if got, want := len(lines), len(want); got != want {
		t.Fatalf("lines: got %v, want %v", got, want)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if got, want := first["time"], "2026-11-27T11:00:00.0015Z"; got != want {
		t.Errorf("time field: got %v, want %v", got, want)
	}
	for _, f := range []string{"op", "key_arn", "file_id", "outcome", "latency_ms"} {
		if _, ok := first[f]; !ok {
			t.Errorf("line lacks %q: %s", f, lines[0])
		}
	}
	if _, ok := first["error"]; ok {
		t.Errorf("ok line carries an error field: %s", lines[0])
	}
	fi, _ := os.Stat(path)
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("audit log mode: got %v, want %v", got, want)
	}
}

// TestAuditAndKeyringHoldNoDEK generates DEKs through every call and fails
// if any DEK or key material appears in the audit log or the keyring file,
// raw, hex or base64.
func TestAuditAndKeyringHoldNoDEK(t *testing.T) {
	k, krPath := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	mustCreateKey(t, k, "b", "alias/b")
	log, path := openTestAudit(t)
	p := NewAuditingProvider(NewLocalProvider(k), log, nil)
	ctx := context.Background()
	var secrets [][]byte
	for i := range 64 {
		ec := testContext("fs", byte(i))
		dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, dk.Plaintext)
		dek, err := p.Decrypt(ctx, "alias/a", dk.Ciphertext, ec)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, dek)
		if _, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, ec, "alias/b"); err != nil {
			t.Fatal(err)
		}
		if i%16 == 0 {
			if _, err := k.Rotate("alias/a"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, ref := range []string{"alias/a", "alias/b"} {
		md, _ := k.Resolve(ref)
		for v := uint32(1); v <= md.CurrentVersion; v++ {
			secrets = append(secrets, materialOf(t, k, ref, v))
		}
	}
	mustSave(t, k)
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	auditBytes, _ := os.ReadFile(path)
	keyringBytes, _ := os.ReadFile(krPath)
	if len(auditBytes) == 0 || len(keyringBytes) == 0 {
		t.Fatalf("nothing to scan: audit %d bytes, keyring %d bytes", len(auditBytes), len(keyringBytes))
	}
	for i, s := range secrets {
		forms := map[string][]byte{
			"raw":       s,
			"hex":       []byte(hex.EncodeToString(s)),
			"HEX":       []byte(strings.ToUpper(hex.EncodeToString(s))),
			"base64":    []byte(base64.StdEncoding.EncodeToString(s)),
			"base64url": []byte(base64.RawURLEncoding.EncodeToString(s)),
			"prefix":    s[:16],
		}
		for form, b := range forms {
			if bytes.Contains(auditBytes, b) {
				t.Errorf("secret %d (%s) found in the audit log", i, form)
			}
			if bytes.Contains(keyringBytes, b) {
				t.Errorf("secret %d (%s) found in the keyring file", i, form)
			}
		}
	}
}

func TestAuditFailsClosed(t *testing.T) {
	k, _ := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	log, _ := openTestAudit(t)
	p := NewAuditingProvider(NewLocalProvider(k), log, nil)
	ctx := context.Background()
	ec := testContext("fs", 1)
	dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	_ = log.Close()
	if got, err := p.GenerateDataKey(ctx, "alias/a", ec); err == nil || got.Plaintext != nil {
		t.Errorf("GenerateDataKey with a closed audit log: got %v, %v, want no DEK and an error", got.Plaintext != nil, err)
	}
	if dek, err := p.Decrypt(ctx, "alias/a", dk.Ciphertext, ec); err == nil || dek != nil {
		t.Errorf("Decrypt with a closed audit log: got DEK %v, error %v, want no DEK and an error", dek != nil, err)
	}
}

func TestAuditConcurrentLines(t *testing.T) {
	log, path := openTestAudit(t)
	// A second handle on the same file, as a second process would have.
	log2, err := OpenAuditLog(path, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer log2.Close()
	long := strings.Repeat("x", 3000) // lines larger than a pipe buffer's atomic size
	var wg sync.WaitGroup
	const goroutines, per = 16, 50
	for g := range goroutines {
		wg.Go(func() {
			l := log
			if g%2 == 1 {
				l = log2
			}
			for i := range per {
				if err := l.Write(AuditRecord{Time: time.Now().UTC(), Op: "Decrypt", KeyARN: "k", FileID: long, Outcome: "ok", LatencyMS: float64(i)}); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	recs := readAuditFile(t, path)
	if got, want := len(recs), goroutines*per; got != want {
		t.Fatalf("records: got %v, want %v", got, want)
	}
	for i, r := range recs {
		if r.FileID != long || r.Op != "Decrypt" {
			t.Fatalf("record %d is damaged", i)
		}
	}
}

// TestReadAudit: every record that parses comes back; a damaged line is
// reported by its number and why, a torn last line is not damage.
func TestReadAudit(t *testing.T) {
	line := `{"time":"2026-11-27T12:00:00Z","op":"Decrypt","key_arn":"k","file_id":"f","outcome":"ok","latency_ms":1}`
	tests := []struct {
		name        string
		in          string
		want        int
		wantDamaged []int // line numbers
	}{
		{"empty", "", 0, nil},
		{"one", line + "\n", 1, nil},
		{"two", line + "\n" + line + "\n", 2, nil},
		{"blank lines", "\n" + line + "\n\n  \n" + line + "\n", 2, nil},
		{"no final newline", line, 1, nil},
		{"torn last line", line + "\n" + line[:40], 1, nil},
		{"torn last line only", line[:10], 0, nil},
		{"bad middle line", line + "\n" + line[:40] + "\n" + line + "\n", 2, []int{2}},
		{"bad terminated last line", line + "\n" + "garbage\n", 1, []int{2}},
		{"two bad lines", "x\n" + line + "\n\n{\n" + line + "\n", 2, []int{1, 4}},
		{"not an object", "[]\n", 0, []int{1}},
		{"null", "null\n", 0, []int{1}},
		{"crlf", line + "\r\n" + line + "\r\n", 2, nil},
		{"overlong line", line + "\n{" + strings.Repeat(" ", maxAuditLine+10) + "}\n" + line + "\n", 2, []int{2}},
		{"overlong torn last line", line + "\n{" + strings.Repeat(" ", 2*maxAuditLine), 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, err := ReadAudit(strings.NewReader(tt.in))
			var dmg *AuditDamageError
			if err != nil && !errors.As(err, &dmg) {
				t.Fatalf("ReadAudit: %v", err)
			}
			var gotLines []int
			if dmg != nil {
				for _, d := range dmg.Damage {
					gotLines = append(gotLines, d.Line)
					if d.Why == "" || !strings.Contains(err.Error(), fmt.Sprintf("line %d: ", d.Line)) {
						t.Errorf("damage %+v: no reason, or not named in %q", d, err)
					}
				}
				if got, want := dmg.Lines, len(dmg.Damage); got != want {
					t.Errorf("damaged lines: got %v, want %v", got, want)
				}
			}
			if fmt.Sprint(gotLines) != fmt.Sprint(tt.wantDamaged) {
				t.Errorf("damaged lines: got %v, want %v", gotLines, tt.wantDamaged)
			}
			if got := len(recs); got != tt.want {
				t.Errorf("records: got %v, want %v", got, tt.want)
			}
		})
	}
	if _, err := ReadAudit(errReader{}); err == nil || errors.As(err, new(*AuditDamageError)) {
		t.Errorf("ReadAudit of a failing reader: got %v, want the read error", err)
	}
	// Many damaged lines: the first maxAuditDamage named, all counted.
	var b strings.Builder
	for range 3 * maxAuditDamage {
		b.WriteString("junk\n" + line + "\n")
	}
	recs, err := ReadAudit(strings.NewReader(b.String()))
	var dmg *AuditDamageError
	if !errors.As(err, &dmg) || dmg.Lines != 3*maxAuditDamage || len(dmg.Damage) != maxAuditDamage || len(recs) != 3*maxAuditDamage {
		t.Errorf("many damaged lines: got %d records, %v, want %d records and %d damaged lines, %d named", len(recs), err, 3*maxAuditDamage, 3*maxAuditDamage, maxAuditDamage)
	}
}

func TestCountAuditOps(t *testing.T) {
	rec := func(op, outcome string) string {
		return `{"time":"2026-11-27T12:00:00Z","op":"` + op + `","key_arn":"k","file_id":"f","outcome":"` + outcome + `","latency_ms":1}` + "\n"
	}
	zero := map[string]int{"GenerateDataKey": 0, "Decrypt": 0, "ReEncrypt": 0, "DescribeKey": 0}
	tests := []struct {
		name    string
		log     *string // nil: no log file
		want    map[string]int
		wantErr bool
	}{
		{"no log", nil, zero, false},
		{"empty", countLog(""), zero, false},
		{"every op and outcome",
			countLog(rec("DescribeKey", "ok") + rec("GenerateDataKey", "ok") + rec("GenerateDataKey", "KMSUnavailable") +
				rec("Decrypt", "ok") + rec("Decrypt", "InvalidCiphertext") + rec("Decrypt", "ok") + rec("ReEncrypt", "ok")),
			map[string]int{"GenerateDataKey": 2, "Decrypt": 3, "ReEncrypt": 1, "DescribeKey": 1}, false},
		{"torn last line", countLog(rec("Decrypt", "ok") + rec("Decrypt", "ok")[:30]),
			map[string]int{"GenerateDataKey": 0, "Decrypt": 1, "ReEncrypt": 0, "DescribeKey": 0}, false},
		{"bad line", countLog(rec("Decrypt", "ok") + "garbage\n" + rec("Decrypt", "ok")),
			map[string]int{"GenerateDataKey": 0, "Decrypt": 2, "ReEncrypt": 0, "DescribeKey": 0}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			if tt.log != nil {
				if err := os.WriteFile(path, []byte(*tt.log), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := CountAuditOps(path)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CountAuditOps error: got %v, want error %v", err, tt.wantErr)
			}
			if err != nil && (!strings.Contains(err.Error(), "audit.log line 2: ") || !errors.As(err, new(*AuditDamageError))) {
				t.Errorf("CountAuditOps error %q is no AuditDamageError naming audit.log line 2", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("counts: got %v, want %v", got, tt.want)
			}
		})
	}
	// Counted from a log the AuditingProvider wrote.
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	log, path := openTestAudit(t)
	p := NewAuditingProvider(NewLocalProvider(k), log, nil)
	ctx := context.Background()
	ec := EncryptionContext{ContextFilesystem: "fs", ContextFile: "f"}
	dk, err := p.GenerateDataKey(ctx, a.ARN, ec)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := p.Decrypt(ctx, a.ARN, dk.Ciphertext, ec); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = p.DescribeKey(ctx, "alias/missing")
	got, err := CountAuditOps(path)
	if want := map[string]int{"GenerateDataKey": 1, "Decrypt": 3, "ReEncrypt": 0, "DescribeKey": 1}; err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("counts of a written log: got %v, %v; want %v", got, err, want)
	}
}

// countLog is a TestCountAuditOps log text.
func countLog(s string) *string { return &s }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func FuzzReadAudit(f *testing.F) {
	line := `{"time":"2026-11-27T12:00:00.5+01:00","op":"Decrypt","key_arn":"arn:kmsfs:local:x:key/y","file_id":"f","outcome":"KeyDisabled","error":"e","latency_ms":0.25}`
	f.Add([]byte(line + "\n" + line + "\n"))
	f.Add([]byte(line + "\n" + line[:30]))
	f.Add([]byte("\n\n"))
	f.Add([]byte(`{"dest_key_arn":"z"}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ReadAudit(bytes.NewReader(data))
		var dmg *AuditDamageError
		if !errors.As(err, &dmg) {
			if err != nil {
				t.Fatalf("ReadAudit of bytes: %v", err)
			}
			dmg = &AuditDamageError{}
		}
		if lines := bytes.Count(data, []byte("\n")) + 1; len(recs)+dmg.Lines > lines {
			t.Fatalf("%d records and %d damaged lines in %d lines", len(recs), dmg.Lines, lines)
		}
		// What parsed writes back and reads again unchanged.
		var buf bytes.Buffer
		for _, r := range recs {
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatalf("marshal parsed record: %v", err)
			}
			buf.Write(b)
			buf.WriteByte('\n')
		}
		again, err := ReadAudit(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("reread: %v", err)
		}
		if len(again) != len(recs) {
			t.Fatalf("reread: got %d records, want %d", len(again), len(recs))
		}
		for i := range recs {
			a, _ := json.Marshal(recs[i])
			b, _ := json.Marshal(again[i])
			if !bytes.Equal(a, b) {
				t.Fatalf("record %d: got %s, want %s", i, b, a)
			}
		}
	})
}

// TestAuditLogRefusesSymlinks: an audit log, or its directory, replaced by
// a symlink (a writer of the cipher directory pointing it at a shell
// start-up file) is refused, and the target gets nothing.
func TestAuditLogRefusesSymlinks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, meta, target string)
	}{
		{"log is a symlink", func(t *testing.T, meta, target string) {
			if err := os.Symlink(target, filepath.Join(meta, "audit.log")); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory is a symlink", func(t *testing.T, meta, target string) {
			if err := os.Symlink(filepath.Dir(target), meta); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(filepath.Dir(target), "audit.log"), []byte("keep\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(t.TempDir(), ".bashrc")
			if err := os.WriteFile(outside, []byte("keep\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			meta := filepath.Join(base, ".kmsfs")
			if tc.name == "log is a symlink" {
				if err := os.Mkdir(meta, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			tc.plant(t, meta, outside)
			log, err := OpenAuditLog(filepath.Join(meta, "audit.log"), AuditOptions{})
			if err == nil {
				log.Write(AuditRecord{Op: AuditDecrypt})
				log.Close()
				t.Fatalf("OpenAuditLog through a symlink: got nil error")
			}
			for _, p := range []string{outside, filepath.Join(filepath.Dir(outside), "audit.log")} {
				if b, err := os.ReadFile(p); err == nil && string(b) != "keep\n" {
					t.Errorf("%s changed: %q", p, b)
				}
			}
		})
	}
}
