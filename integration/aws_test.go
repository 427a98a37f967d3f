package integration

// aws_test.go: the aws provider through the built binary, against a real
// KMS API server (local-kms, localkms_test.go): init with every form of key
// reference, round trips across remounts, an EDK moved between files, a
// disabled key, a key pending deletion, an asymmetric key, a missing key,
// a KMS that cannot be reached (at init, at mount and while mounted), and
// the number of KMS calls (audit log and kmsfs status).
//
// Errors of the issue and where each is seen with its message:
//   - NotFound: TestAWSRefusals (init with a missing alias);
//     keymgr TestAWSNotFound (every call, every form of reference).
//   - Disabled: TestAWSDisabledKey (mount, open while mounted),
//     TestAWSRefusals (init); keymgr TestAWSDisabledKey.
//   - KMSInvalidState: TestAWSRefusals (init and mount with a key pending
//     deletion); keymgr TestAWSPendingDeletion.
//   - InvalidCiphertext: TestAWSMovedEDK; keymgr
//     TestAWSEncryptionContextEnforced, TestAWSReEncrypt.
//   - network down: TestAWSRefusals (init and mount against a closed
//     port), TestAWSOutage (while mounted, and mount); keymgr
//     TestAWSHardOutage.
//   - AccessDenied: keymgr TestAWSAccessDenied and TestAWSNoCredentials
//     (local-kms enforces no policies: the fault-injecting proxy answers
//     AccessDeniedException).
//   - throttling after retries: keymgr TestAWSPersistentThrottling (the
//     proxy throttles every attempt); TestAWSRetriesRideOutFaults for
//     throttling, 500s, dropped connections and slow answers that the
//     retries absorb.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kmsfs/kmsfs/keymgr"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

// awsConf is the part of kmsfs.conf the aws tests check.
type awsConf struct {
	Provider     string `json:"provider"`
	Key          string `json:"key"`
	KeyARN       string `json:"key_arn"`
	FilesystemID string `json:"filesystem_id"`
	AWSRegion    string `json:"aws_region"`
	AWSEndpoint  string `json:"aws_endpoint"`
	AWSProfile   string `json:"aws_profile"`
}

func readAWSConf(t *testing.T, cipher string) awsConf {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var c awsConf
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("kmsfs.conf: %v\n%s", err, b)
	}
	return c
}

// awsStatus is kmsfs status --json with the KMS call counts.
type awsStatus struct {
	Provider string         `json:"provider"`
	KeyARN   string         `json:"key_arn"`
	Files    int            `json:"files"`
	KMSCalls map[string]int `json:"kms_calls"`
	Keys     []struct {
		KeyARN string `json:"key_arn"`
		Files  int    `json:"files"`
	} `json:"keys"`
	KeyStores *struct {
		CacheEntries      int    `json:"cache_entries"`
		CacheHits         uint64 `json:"cache_hits"`
		CacheMisses       uint64 `json:"cache_misses"`
		PoolTarget        int    `json:"pool_target"`
		PoolSize          int    `json:"pool_size"`
		PoolTaken         uint64 `json:"pool_taken"`
		PoolSyncFallbacks uint64 `json:"pool_sync_fallbacks"`
	} `json:"key_stores"`
}

func (f *fixture) awsStatus() awsStatus {
	f.t.Helper()
	out := f.kmsfs("status", "--json", f.cipher)
	var s awsStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		f.t.Fatalf("kmsfs status --json: %v\n%s", err, out)
	}
	return s
}

// refuse runs kmsfs args, which must fail with one line on stderr that
// starts with "kmsfs: " and contains every one of words, and returns it.
func (f *fixture) refuse(words []string, args ...string) string {
	f.t.Helper()
	stdout, stderr, code := f.run(args...)
	if code == 0 {
		f.t.Errorf("kmsfs %s: exit 0, want a refusal\nstdout: %s", strings.Join(args, " "), stdout)
		return stderr
	}
	f.t.Logf("kmsfs %s: exit %d: %s", args[0], code, strings.TrimSpace(stderr))
	if !strings.HasPrefix(stderr, "kmsfs: ") || strings.Count(stderr, "\n") != 1 {
		f.t.Errorf("kmsfs %s: stderr %q, want one line starting with %q", strings.Join(args, " "), stderr, "kmsfs: ")
	}
	for _, w := range words {
		if !strings.Contains(stderr, w) {
			f.t.Errorf("kmsfs %s: stderr %q does not say %q", args[0], strings.TrimSpace(stderr), w)
		}
	}
	return stderr
}

// closedURL is an http URL on 127.0.0.1 where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// writeSet writes n files of random content into dir of the mount and
// returns their sha256 by name.
func writeSet(t *testing.T, dir, prefix string, sizes ...int) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i, n := range sizes {
		p := filepath.Join(dir, fmt.Sprintf("%s%02d.bin", prefix, i))
		b := randBytes(t, n)
		writeFile(t, p, b)
		sums[p] = sha256Of(b)
	}
	return sums
}

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

// checkSums reads each file and compares its sha256.
func checkSums(t *testing.T, what string, sums map[string][32]byte) {
	t.Helper()
	for p, want := range sums {
		got, err := fileSHA256(p)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		if got != want {
			t.Errorf("%s: %s: sha256 got %x, want %x", what, filepath.Base(p), got[:8], want[:8])
		}
	}
}

// wantErrno checks that reading p fails with errno want.
func wantErrno(t *testing.T, what, p string, want syscall.Errno) {
	t.Helper()
	b, err := os.ReadFile(p)
	if !errors.Is(err, want) {
		t.Errorf("%s: read %s: got %d bytes, %v; want %v", what, filepath.Base(p), len(b), err, want)
	}
}

// auditCounts is the audit log's lines per op.
func auditCounts(t *testing.T, f *fixture) map[string]int {
	t.Helper()
	ops, _ := auditOps(t, f.cipher)
	return ops
}

// waitAudit waits until the audit log holds at least n calls of op.
func waitAudit(t *testing.T, f *fixture, op string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := auditCounts(t, f)[op]
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit log: %d %s calls after 20 s, want at least %d", got, op, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func diffCounts(after, before map[string]int) map[string]int {
	d := map[string]int{}
	for _, op := range []string{"GenerateDataKey", "Decrypt", "ReEncrypt", "DescribeKey", "names:GenerateDataKey", "names:Decrypt", "names:ReEncrypt"} {
		d[op] = after[op] - before[op]
	}
	return d
}

// TestAWSKeyRefs: init accepts every form of key reference and records
// the key's ARN; files round-trip through unmount and remount, with no AWS
// flag after init.
func TestAWSKeyRefs(t *testing.T) {
	requireKmsfs(t)
	lk := startLocalKMS(t)
	tests := []struct{ name, ref string }{
		{"key ID", lkKeyA},
		{"key ARN", lkKeyARN(lkKeyA)},
		{"alias name", lkAliasA},
		{"alias ARN", lkAliasARN(lkAliasA)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.awsEnv()
			f.init(lk.initArgs(tc.ref)...)
			c := readAWSConf(t, f.cipher)
			want := awsConf{Provider: "aws", Key: tc.ref, KeyARN: lkKeyARN(lkKeyA), FilesystemID: c.FilesystemID,
				AWSRegion: lkRegion, AWSEndpoint: lk.url}
			if c != want {
				t.Errorf("kmsfs.conf: got %+v, want %+v", c, want)
			}

			f.mount()
			sums := writeSet(t, filepath.Join(f.mnt, "d"), "f", 0, 1, 4096, 4097, 100000)
			f.unmount()
			f.mount()
			checkSums(t, "after remount", sums)
			f.unmount()

			// Every call succeeded, but for the DEK pool's refills that
			// the unmount cancelled.
			for _, r := range readAuditRecords(t, f) {
				if r.Outcome != "ok" && (r.Op != "GenerateDataKey" || r.Outcome != "Canceled") {
					t.Errorf("audit log: %s of file %s: %s: %s", r.Op, r.FileID, r.Outcome, r.Error)
				}
			}
			s := f.awsStatus()
			if s.Provider != "aws" || s.KeyARN != lkKeyARN(lkKeyA) || s.Files != len(sums) ||
				len(s.Keys) != 1 || s.Keys[0].KeyARN != lkKeyARN(lkKeyA) || s.Keys[0].Files != len(sums) {
				t.Errorf("status: got %+v, want provider aws, %d files all under %s", s, len(sums), lkKeyARN(lkKeyA))
			}
		})
	}
}

// TestAWSMovedEDK copies file A's wrapped key into file B's header (both
// slots, B's file ID, valid checksums) and lets fsck --repair take the
// forged header into the index: KMS refuses to unwrap it under B's
// encryption context, so B reads as EIO with the cause in the mount log,
// and A is unharmed.
func TestAWSMovedEDK(t *testing.T) {
	f, _ := newAWSFixture(t)
	f.allowLog = regexp.MustCompile(`cannot open file key`)
	f.mount()
	a, b := filepath.Join(f.mnt, "a.txt"), filepath.Join(f.mnt, "b.txt")
	aData, bData := randBytes(t, 10000), randBytes(t, 20000)
	writeFile(t, a, aData)
	writeFile(t, b, bData)
	f.unmount()

	cipherA, cipherB := f.cipherPath("a.txt"), f.cipherPath("b.txt")
	hA, _ := readCipherHeader(t, cipherA)
	hB, l := readCipherHeader(t, cipherB)
	forged := crypto.Header{FileID: hB.FileID, Generation: hB.Generation + 1, Keys: hA.Keys}
	slot, err := crypto.EncodeSlot(forged, l.SlotSize())
	if err != nil {
		t.Fatalf("EncodeSlot: %v", err)
	}
	fh, err := os.OpenFile(cipherB, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for s := 0; s < 2; s++ {
		if _, err := fh.WriteAt(slot, l.SlotOffset(s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	// The index still holds B's real header; fsck takes the file's (newer
	// generation) into it, as it would after an interrupted rewrap.
	out := f.kmsfs("fsck", "--repair", f.cipher)
	t.Logf("fsck --repair:\n%s", out)

	before := auditCounts(t, f)
	f.mount()
	if got, err := os.ReadFile(a); err != nil || !bytes.Equal(got, aData) {
		t.Errorf("read a.txt: got %d bytes, %v; want its %d bytes", len(got), err, len(aData))
	}
	wantErrno(t, "b.txt with a.txt's wrapped key", b, syscall.EIO)
	f.unmount()

	if log := f.mountLog(); !strings.Contains(log, "tampered") || !strings.Contains(log, hB.FileID.String()) {
		t.Errorf("mount.log does not name the tampering and file %s:\n%s", hB.FileID, log)
	}
	recs := readAuditRecords(t, f)
	bad := 0
	for _, r := range recs {
		if r.Op == "Decrypt" && r.FileID == hB.FileID.String() && r.Outcome == "InvalidCiphertext" {
			bad++
		}
	}
	if bad == 0 {
		t.Errorf("audit log: no Decrypt of %s with outcome InvalidCiphertext", hB.FileID)
	}
	if d := diffCounts(auditCounts(t, f), before); d["Decrypt"] < 2 {
		t.Errorf("Decrypt calls during the mount: got %d, want at least 2 (a.txt and b.txt)", d["Decrypt"])
	}
}

// readCipherHeader reads the header a cipher file's slots hold, and its
// layout.
func readCipherHeader(t *testing.T, path string) (crypto.Header, crypto.Layout) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < crypto.PreambleSize {
		t.Fatalf("%s: %d bytes, shorter than a preamble", path, len(b))
	}
	p, err := crypto.ParsePreamble(b[:crypto.PreambleSize])
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	l := p.Layout()
	if int64(len(b)) < l.ContentOffset() {
		t.Fatalf("%s: %d bytes, shorter than its header slots", path, len(b))
	}
	s0 := b[l.SlotOffset(0):l.SlotOffset(1)]
	s1 := b[l.SlotOffset(1):l.ContentOffset()]
	h, _, err := crypto.PickSlot(s0, s1, p.FileID)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return h, l
}

type auditLine struct {
	Op      string `json:"op"`
	FileID  string `json:"file_id"`
	Outcome string `json:"outcome"`
	Error   string `json:"error"`
}

func readAuditRecords(t *testing.T, f *fixture) []auditLine {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.cipher, ".kmsfs", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []auditLine
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		var r auditLine
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("audit log line %q: %v", l, err)
		}
		out = append(out, r)
	}
	return out
}

// TestAWSDisabledKey disables the key while mounted: files whose key is
// cached keep working, the others fail with EACCES; then mount refuses
// with the fix, and works again once the key is enabled.
func TestAWSDisabledKey(t *testing.T) {
	f, lk := newAWSFixture(t)
	f.allowLog = regexp.MustCompile(`cannot open file key|DEK pool refill failed`)
	f.mount()
	cached := writeSet(t, f.mnt, "cached", 100, 5000)
	uncached := writeSet(t, f.mnt, "uncached", 100, 5000)
	f.unmount()

	f.mount()
	checkSums(t, "before the disable", cached) // their keys are now cached
	lk.must("DisableKey", map[string]any{"KeyId": lkKeyA})
	if s := lk.keyState(lkAliasA); s != "Disabled" {
		t.Fatalf("key state after DisableKey: %s", s)
	}
	checkSums(t, "cached files with the key disabled", cached)
	for p := range uncached {
		wantErrno(t, "uncached file with the key disabled", p, syscall.EACCES)
	}
	// A cached file still takes writes.
	for p := range cached {
		fh, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			_, err = fh.Write([]byte("more"))
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			t.Errorf("append to a cached file with the key disabled: %v", err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		cached[p] = sha256Of(b)
	}
	f.unmount()
	if log := f.mountLog(); !strings.Contains(log, "disabled") || !strings.Contains(log, "aws kms enable-key") {
		t.Errorf("mount.log does not say the key is disabled and how to enable it")
	}

	before := snapshot(t, f.cipher)
	f.refuse([]string{"disabled", lkKeyARN(lkKeyA), "aws kms enable-key"}, "mount", f.cipher, f.mnt)
	if isMounted(f.mnt) {
		t.Fatalf("%s mounted with the key disabled", f.mnt)
	}
	if after := snapshot(t, f.cipher); after != before {
		t.Errorf("the refused mount changed the cipher directory")
	}

	lk.must("EnableKey", map[string]any{"KeyId": lkKeyA})
	f.mount()
	checkSums(t, "cached files after EnableKey", cached)
	checkSums(t, "uncached files after EnableKey", uncached)
	f.unmount()
}

// TestAWSRefusals: init and mount refuse keys they cannot use, with one
// line that says which problem and what to do, and leave nothing behind.
func TestAWSRefusals(t *testing.T) {
	requireKmsfs(t)
	lk := startLocalKMS(t)
	f := newFixture(t)
	f.awsEnv()

	disabledID, _ := lk.createKey(nil)
	lk.must("DisableKey", map[string]any{"KeyId": disabledID})
	pendingID, _ := lk.createKey(nil)
	lk.must("ScheduleKeyDeletion", map[string]any{"KeyId": pendingID, "PendingWindowInDays": 7})
	rsaID, rsaARN := lk.createKey(map[string]any{"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"})
	closed := closedURL(t)

	inits := []struct {
		name, ref, endpoint string
		words               []string
	}{
		{"disabled key", disabledID, lk.url, []string{"disabled", "aws kms enable-key"}},
		{"pending deletion", pendingID, lk.url, []string{"PendingDeletion", "aws kms cancel-key-deletion"}},
		{"asymmetric key", rsaID, lk.url, []string{"asymmetric", rsaARN, "SYMMETRIC_DEFAULT"}},
		{"missing alias", "alias/kmsfs-missing", lk.url, []string{"not found", "alias/kmsfs-missing", "region"}},
		{"missing key ARN", lkKeyARN("3f1e2d3c-4b5a-4697-8877-665544332211"), lk.url, []string{"not found", "3f1e2d3c-4b5a-4697-8877-665544332211"}},
		{"closed port", lkAliasA, closed, []string{"cannot reach", strings.TrimPrefix(closed, "http://"), "check the network"}},
	}
	for _, tc := range inits {
		t.Run("init/"+tc.name, func(t *testing.T) {
			g := f.withT(t)
			dir := filepath.Join(f.dir, "init-"+strings.ReplaceAll(tc.name, " ", "-"))
			start := time.Now()
			g.refuse(tc.words, "init", "--kms", "aws", "--key", tc.ref, "--aws-region", lkRegion, "--aws-endpoint", tc.endpoint, dir)
			if d := time.Since(start); d > 15*time.Second {
				t.Errorf("refusal took %v", d.Round(time.Millisecond))
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused init left %s behind (%v)", dir, err)
			}
		})
	}

	// A cipher directory on its own key, then the key and the network
	// fail under it.
	keyID, keyARN := lk.createKey(nil)
	f.init(lk.initArgs(keyID)...)
	f.mount()
	sums := writeSet(t, f.mnt, "f", 1000)
	f.unmount()

	mounts := []struct {
		name  string
		setup func()
		undo  func()
		args  []string
		words []string
	}{
		{name: "closed port", args: []string{"--aws-endpoint", closed},
			words: []string{"cannot reach", strings.TrimPrefix(closed, "http://"), "check the network"}},
		{name: "pending deletion",
			setup: func() {
				lk.must("ScheduleKeyDeletion", map[string]any{"KeyId": keyID, "PendingWindowInDays": 7})
			},
			undo: func() {
				lk.must("CancelKeyDeletion", map[string]any{"KeyId": keyID})
				if lk.keyState(keyID) != "Enabled" {
					lk.must("EnableKey", map[string]any{"KeyId": keyID})
				}
			},
			words: []string{"PendingDeletion", keyARN, "aws kms cancel-key-deletion"}},
	}
	for _, tc := range mounts {
		t.Run("mount/"+tc.name, func(t *testing.T) {
			g := f.withT(t)
			if tc.setup != nil {
				tc.setup()
			}
			if tc.undo != nil {
				defer tc.undo()
			}
			before := snapshot(t, f.cipher)
			g.refuse(tc.words, append(append([]string{"mount"}, tc.args...), f.cipher, f.mnt)...)
			if isMounted(f.mnt) {
				t.Fatalf("%s mounted", f.mnt)
			}
			if after := snapshot(t, f.cipher); after != before {
				t.Errorf("the refused mount changed the cipher directory")
			}
		})
	}
	f.mount()
	checkSums(t, "after the refusals", sums)
	f.unmount()
}

// TestAWSOutage kills the KMS while mounted: files whose key is cached
// keep working (reads, writes, and creates from the warm DEK pool),
// uncached files fail with EIO, mount refuses while it is down, and
// everything written is there once it is back.
func TestAWSOutage(t *testing.T) {
	f, lk := newAWSFixture(t)
	f.allowLog = regexp.MustCompile(`cannot open file key|DEK pool refill failed`)
	f.mount()
	cached := writeSet(t, f.mnt, "cached", 10, 70000)
	uncached := writeSet(t, f.mnt, "uncached", 10, 70000)
	f.unmount()

	before := auditCounts(t, f)
	f.mount()
	checkSums(t, "before the outage", cached)
	// The DEK pool fills in the background: wait until it is full, so
	// that creates need no KMS during the outage.
	waitAudit(t, f, "GenerateDataKey", before["GenerateDataKey"]+32)

	lk.stop()
	checkSums(t, "cached files during the outage", cached)
	for p := range uncached {
		wantErrno(t, "uncached file during the outage", p, syscall.EIO)
	}
	for p := range cached {
		fh, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("open a cached file during the outage: %v", err)
		}
		if _, err := fh.WriteAt([]byte("written during the outage"), 5); err != nil {
			t.Errorf("write a cached file during the outage: %v", err)
		}
		if err := fh.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		cached[p] = sha256Of(b)
	}
	created := writeSet(t, f.mnt, "created-in-outage", 1, 9000, 0)
	f.unmount()
	if log := f.mountLog(); !strings.Contains(log, "cannot reach") {
		t.Errorf("mount.log does not say the KMS cannot be reached")
	}

	snap := snapshot(t, f.cipher)
	f.refuse([]string{"cannot reach", strings.TrimPrefix(lk.url, "http://"), "check the network"}, "mount", f.cipher, f.mnt)
	if after := snapshot(t, f.cipher); after != snap {
		t.Errorf("the refused mount changed the cipher directory")
	}

	lk.start()
	f.mount()
	checkSums(t, "cached files after the outage", cached)
	checkSums(t, "uncached files after the outage", uncached)
	checkSums(t, "files created during the outage", created)
	f.unmount()
	if out := f.kmsfs("fsck", f.cipher); !strings.Contains(out, "0 findings") {
		t.Errorf("fsck after the outage: %s", out)
	}
}

// TestAWSCallCounts: one GenerateDataKey per created file (plus at most
// the pool ahead) and no Decrypt; after a remount one Decrypt per file
// read, none for a re-read; kmsfs status reports the audit log's counts.
// Each mount of a filesystem with encrypted names also unwraps the names
// key once (a Decrypt with purpose names), and nothing else of it.
func TestAWSCallCounts(t *testing.T) {
	const n = 1000
	f, _ := newAWSFixture(t)
	before := auditCounts(t, f)
	f.mount()
	var names []string
	for i := 0; i < n; i++ {
		p := filepath.Join(f.mnt, fmt.Sprintf("d%d", i%10), fmt.Sprintf("f%04d", i))
		writeFile(t, p, []byte(p))
		names = append(names, p)
	}
	f.unmount()
	d := diffCounts(auditCounts(t, f), before)
	// The pool's keys still waiting at unmount were generated for
	// nothing: up to its largest target, to which a burst of creates
	// that empties it grows it.
	if d["GenerateDataKey"] < n || d["GenerateDataKey"] > n+keymgr.DefaultPoolSize || d["Decrypt"] != 1 || d["names:Decrypt"] != 1 || d["ReEncrypt"] != 0 || d["DescribeKey"] != 1 {
		t.Errorf("KMS calls creating %d files: got %v; want %d..%d GenerateDataKey, 1 Decrypt (the names key), 0 ReEncrypt, 1 DescribeKey (mount)", n, d, n, n+keymgr.DefaultPoolSize)
	}

	readAll := func(what string) {
		t.Helper()
		for _, p := range names {
			b, err := os.ReadFile(p)
			if err != nil || string(b) != p {
				t.Fatalf("%s: read %s: got %q, %v", what, p, b, err)
			}
		}
	}
	before = auditCounts(t, f)
	f.mount()
	readAll("first read")
	d = diffCounts(auditCounts(t, f), before)
	if d["Decrypt"] != n+1 || d["names:Decrypt"] != 1 || d["GenerateDataKey"] > keymgr.DefaultPoolStart || d["ReEncrypt"] != 0 || d["DescribeKey"] != 1 {
		t.Errorf("KMS calls reading %d files after a remount: got %v; want %d Decrypt (one per file and the names key's), at most %d GenerateDataKey (the pool's first fill), 0 ReEncrypt, 1 DescribeKey", n, d, n+1, keymgr.DefaultPoolStart)
	}
	readAll("re-read")
	d = diffCounts(auditCounts(t, f), before)
	if d["Decrypt"] != n+1 {
		t.Errorf("Decrypt calls after re-reading the cached files: got %d, want still %d", d["Decrypt"], n+1)
	}

	// kmsfs status counts the same from the audit log, mounted or not.
	for _, mounted := range []bool{true, false} {
		if !mounted {
			f.unmount()
		}
		want := auditCounts(t, f)
		s := f.awsStatus()
		for _, op := range []string{"GenerateDataKey", "Decrypt", "ReEncrypt", "DescribeKey"} {
			if got, ok := s.KMSCalls[op]; !ok || got != want[op] {
				t.Errorf("status --json (mounted %v): kms_calls[%s] = %d (present %v), want %d", mounted, op, got, ok, want[op])
			}
		}
		text := f.kmsfs("status", f.cipher)
		line := fmt.Sprintf("kms calls: GenerateDataKey %d, Decrypt %d, ReEncrypt %d, DescribeKey %d",
			want["GenerateDataKey"], want["Decrypt"], want["ReEncrypt"], want["DescribeKey"])
		if !strings.Contains(text, line) {
			t.Errorf("status (mounted %v): no line %q in\n%s", mounted, line, text)
		}
		// The mount's key stores: every file read is cached (the re-read
		// hit them all), and this mount created nothing.
		if !mounted {
			if s.KeyStores != nil || strings.Contains(text, "dek cache:") {
				t.Errorf("status (not mounted): key stores reported: %+v\n%s", s.KeyStores, text)
			}
			continue
		}
		k := s.KeyStores
		if k == nil {
			t.Fatalf("status --json (mounted): no key_stores")
		}
		if k.CacheEntries != n || k.CacheMisses < n || k.CacheHits < n || k.PoolTaken != 0 || k.PoolSyncFallbacks != 0 ||
			k.PoolTarget != keymgr.DefaultPoolStart || k.PoolSize != keymgr.DefaultPoolSize {
			t.Errorf("status --json (mounted): key_stores %+v; want %d cached keys, >= %d misses and hits, nothing taken from a pool of target %d (at most %d)",
				*k, n, n, keymgr.DefaultPoolStart, keymgr.DefaultPoolSize)
		}
		if line := fmt.Sprintf("dek cache: %d of ", n); !strings.Contains(text, line) || !strings.Contains(text, "dek pool: ") {
			t.Errorf("status (mounted): no lines %q and \"dek pool: \" in\n%s", line, text)
		}
	}
}
