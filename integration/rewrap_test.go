package integration

// rewrap_test.go: key rotation and rewrap through the built binary:
// rotation taking effect in a running mount, rewrap unmounted and through
// the mount (with a writer running), migration to another key followed by
// disabling the old one, dry runs, the aws provider (local-kms), and
// SIGKILL at random points of rewraps over 2,000 files.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	mrand "math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// keyCount is the files per (key ARN, version) in kmsfs status --json.
func keyCount(s statusJSON) map[string]int {
	out := map[string]int{}
	for _, k := range s.Keys {
		out[fmt.Sprintf("%s@%d", k.KeyARN, k.KeyVersion)] = k.Files
	}
	return out
}

func wantKeys(t *testing.T, what string, s statusJSON, want map[string]int) {
	t.Helper()
	got := keyCount(s)
	if len(got) != len(want) {
		t.Errorf("%s: files per key version: got %v, want %v", what, got, want)
		return
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: files per key version: got %v, want %v", what, got, want)
			return
		}
	}
}

// keyARNOf returns the ARN of a key of the fixture's keyring.
func (f *fixture) keyARNOf(ref string) string {
	f.t.Helper()
	out := f.kmsfs("keys", "list", "--json")
	var keys []struct {
		ARN     string   `json:"arn"`
		Aliases []string `json:"aliases"`
	}
	if err := json.Unmarshal([]byte(out), &keys); err != nil {
		f.t.Fatalf("keys list --json: %v", err)
	}
	for _, k := range keys {
		for _, a := range k.Aliases {
			if a == ref {
				return k.ARN
			}
		}
	}
	f.t.Fatalf("no key with alias %s in %s", ref, out)
	return ""
}

// writeFiles writes n small files (0..3 KiB) under dir and returns their
// sha256 by path relative to dir.
func writeFiles(t *testing.T, dir string, n int) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i := range n {
		rel := fmt.Sprintf("d%02d/f%05d", i%20, i)
		b := randBytes(t, (i*733)%3072)
		writeFile(t, filepath.Join(dir, rel), b)
		sums[rel] = sha256.Sum256(b)
	}
	return sums
}

// readAll reads every file of sums below dir and compares its sha256.
func readAll(t *testing.T, what, dir string, sums map[string][32]byte) {
	t.Helper()
	bad := 0
	for rel, want := range sums {
		got, err := fileSHA256(filepath.Join(dir, rel))
		if err != nil || got != want {
			if bad < 5 {
				t.Errorf("%s: %s: %v (or sha256 differs)", what, rel, err)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%s: %d of %d files do not read back", what, bad, len(sums))
	}
}

// namesKeyHeads: with encrypted names the names key's head, in its two
// copies (kmsfs.names, .kmsfs/names), is rewrapped like a file's head and
// counts as two files in rewrap's summary (docs/format.md, "Names key");
// kmsfs status counts files only.
const namesKeyHeads = 2

var rewrapSummaryRE = regexp.MustCompile(`files: (\d+); (?:would rewrap|rewrapped): (\d+); already current: (\d+); failed: (\d+)`)

// rewrapCounts parses the summary line of kmsfs rewrap.
func rewrapCounts(t *testing.T, out string) (files, rewrapped, current, failed int) {
	t.Helper()
	m := rewrapSummaryRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rewrap summary in %q", out)
	}
	fmt.Sscan(m[1], &files)
	fmt.Sscan(m[2], &rewrapped)
	fmt.Sscan(m[3], &current)
	fmt.Sscan(m[4], &failed)
	return
}

// cipherFiles hashes every cipher file (not .kmsfs): what a dry run must
// leave alone.
func cipherFiles(t *testing.T, cipher string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	for rel, e := range scanTree(t, cipher) {
		if strings.HasPrefix(rel, ".kmsfs") || rel == "kmsfs.conf" || !e.mode.IsRegular() {
			continue
		}
		out[rel] = e.sum
	}
	return out
}

// TestRotateInRunningMount: keys rotate takes effect in a running mount at
// once (new files wrap under the new version, old ones still open); a
// rewrap through the mount moves the old ones; status asks the mount.
func TestRotateInRunningMount(t *testing.T) {
	f := newFixture(t)
	f.init()
	arn := f.keyARNOf("alias/kmsfs/default")
	f.mount()
	old := writeFiles(t, filepath.Join(f.mnt, "old"), 5)
	f.kmsfs("keys", "rotate", "alias/kmsfs/default")
	fresh := writeFiles(t, filepath.Join(f.mnt, "new"), 3)
	s := f.status()
	if !s.Mounted || s.Source != "mount" {
		t.Errorf("status while mounted: got mounted %v, source %q; want true, mount", s.Mounted, s.Source)
	}
	wantKeys(t, "after rotate", s, map[string]int{arn + "@1": 5, arn + "@2": 3})
	readAll(t, "old files after rotate", filepath.Join(f.mnt, "old"), old)

	before, _ := auditOps(t, f.cipher)
	out := f.kmsfs("rewrap", f.cipher)
	if !strings.Contains(out, "through the mount") || !strings.Contains(out, "version 2") {
		t.Errorf("rewrap output: %q, want it to run through the mount to version 2", out)
	}
	if files, rewrapped, current, failed := rewrapCounts(t, out); files != 8+namesKeyHeads || rewrapped != 5+namesKeyHeads || current != 3 || failed != 0 {
		t.Errorf("rewrap: got %d files, %d rewrapped, %d current, %d failed; want %d, %d, 3, 0 (the names key's two heads with the files)",
			files, rewrapped, current, failed, 8+namesKeyHeads, 5+namesKeyHeads)
	}
	after, _ := auditOps(t, f.cipher)
	if d, dn := after["ReEncrypt"]-before["ReEncrypt"], after["names:ReEncrypt"]-before["names:ReEncrypt"]; d != 5+namesKeyHeads || dn != namesKeyHeads {
		t.Errorf("audit log: %d ReEncrypt calls, %d of them for the names key; want %d, %d", d, dn, 5+namesKeyHeads, namesKeyHeads)
	}
	if d := after["Decrypt"] - before["Decrypt"]; d != 0 {
		t.Errorf("audit log: %d Decrypt calls during the rewrap, want 0", d)
	}
	wantKeys(t, "after rewrap", f.status(), map[string]int{arn + "@2": 8})
	readAll(t, "old files after rewrap", filepath.Join(f.mnt, "old"), old)
	readAll(t, "new files after rewrap", filepath.Join(f.mnt, "new"), fresh)

	// Idempotent.
	out = f.kmsfs("rewrap", f.cipher)
	if _, rewrapped, current, _ := rewrapCounts(t, out); rewrapped != 0 || current != 8+namesKeyHeads {
		t.Errorf("second rewrap: %q, want 0 rewrapped, %d current", out, 8+namesKeyHeads)
	}
	f.unmount()
	s = f.status()
	if s.Source != "index" {
		t.Errorf("status unmounted: source %q, want index", s.Source)
	}
	wantKeys(t, "unmounted", s, map[string]int{arn + "@2": 8})
}

// TestRewrapMigrateThenDisableOld: unmounted rewrap --to another key,
// dry run first; kmsfs.conf names the new key only afterwards; with the old
// key disabled every file still reads after remount (fresh cache).
func TestRewrapMigrateThenDisableOld(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.kmsfs("keys", "create", "--alias", "rw-new")
	oldARN, newARN := f.keyARNOf("alias/kmsfs/default"), f.keyARNOf("alias/rw-new")
	f.mount()
	sums := writeFiles(t, f.mnt, 40)
	f.unmount()

	snap := cipherFiles(t, f.cipher)
	out := f.kmsfs("rewrap", "--dry-run", "--to", "alias/rw-new", f.cipher)
	if _, would, _, _ := rewrapCounts(t, out); would != 40+namesKeyHeads || !strings.Contains(out, "dry run") {
		t.Errorf("dry run: %q, want %d to rewrap (40 files, the names key's heads)", out, 40+namesKeyHeads)
	}
	if got := cipherFiles(t, f.cipher); len(got) != len(snap) {
		t.Fatalf("dry run changed the file set")
	} else {
		for k, v := range snap {
			if got[k] != v {
				t.Fatalf("dry run changed %s", k)
			}
		}
	}
	if s := f.status(); s.KeyARN != oldARN {
		t.Fatalf("dry run changed kmsfs.conf: key_arn %s", s.KeyARN)
	}

	out = f.kmsfs("rewrap", "--to", "alias/rw-new", "--jobs", "8", f.cipher)
	if _, rewrapped, _, _ := rewrapCounts(t, out); rewrapped != 40+namesKeyHeads || !strings.Contains(out, "kmsfs.conf") {
		t.Errorf("rewrap --to: %q, want %d rewrapped", out, 40+namesKeyHeads)
	}
	s := f.status()
	if s.Key != "alias/rw-new" || s.KeyARN != newARN {
		t.Errorf("kmsfs.conf after migration: key %s (%s), want alias/rw-new (%s)", s.Key, s.KeyARN, newARN)
	}
	wantKeys(t, "after migration", s, map[string]int{newARN + "@1": 40})
	if _, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after migration: exit %d: %s", code, stderr)
	}

	// The names key moved too: the mount needs no old key for it.
	f.kmsfs("keys", "disable", "alias/kmsfs/default")
	f.mount()
	readAll(t, "after migration, old key disabled", f.mnt, sums)
	more := writeFiles(t, filepath.Join(f.mnt, "more"), 3)
	f.unmount()
	wantKeys(t, "new files after migration", f.status(), map[string]int{newARN + "@1": 43})
	f.mount()
	readAll(t, "after remount", f.mnt, sums)
	readAll(t, "new files after remount", filepath.Join(f.mnt, "more"), more)
	f.unmount()

	// Refusals: a disabled target, an unknown one, a bad --jobs.
	if _, stderr, code := f.run("rewrap", "--to", "alias/kmsfs/default", f.cipher); code != 1 || !strings.Contains(stderr, "disabled") {
		t.Errorf("rewrap to a disabled key: exit %d, %q; want 1 and a message naming it disabled", code, stderr)
	}
	if _, stderr, code := f.run("rewrap", "--to", "alias/nope", f.cipher); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("rewrap to a missing key: exit %d, %q", code, stderr)
	}
	if _, _, code := f.run("rewrap", "--jobs", "0", f.cipher); code != 2 {
		t.Errorf("rewrap --jobs 0: exit %d, want 2", code)
	}
	if s := f.status(); s.KeyARN != newARN {
		t.Errorf("refused rewraps changed kmsfs.conf: %s", s.KeyARN)
	}
}

// TestRewrapOnlineWithWriter: rewrap --to through the mount while files
// are being written, appended and created; every file reads back, the
// files created during the rewrap are under the new key, and after
// disabling the old key and remounting everything still reads.
func TestRewrapOnlineWithWriter(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.kmsfs("keys", "create", "--alias", "rw-new")
	newARN := f.keyARNOf("alias/rw-new")
	f.mount()
	sums := writeFiles(t, f.mnt, 300)

	var mu sync.Mutex
	written := map[string][]byte{} // rel -> content the writer left
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := mrand.New(mrand.NewSource(1))
		// One file held open and overwritten in place the whole time.
		hot, err := os.OpenFile(filepath.Join(f.mnt, "hot.bin"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			t.Error(err)
			return
		}
		defer hot.Close()
		hotData := make([]byte, 20000)
		for i := 0; ; i++ {
			select {
			case <-stop:
				mu.Lock()
				written["hot.bin"] = append([]byte(nil), hotData...)
				mu.Unlock()
				return
			default:
			}
			off := rng.Intn(len(hotData) - 100)
			chunk := randBytes(t, 100)
			copy(hotData[off:], chunk)
			if _, err := hot.WriteAt(chunk, int64(off)); err != nil {
				t.Errorf("write to the open file during rewrap: %v", err)
				return
			}
			if i == 0 {
				if _, err := hot.WriteAt(hotData, 0); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
			rel := fmt.Sprintf("live/n%04d", i)
			b := randBytes(t, rng.Intn(5000))
			if err := os.MkdirAll(filepath.Join(f.mnt, "live"), 0o755); err != nil {
				t.Error(err)
				return
			}
			if err := os.WriteFile(filepath.Join(f.mnt, rel), b, 0o644); err != nil {
				t.Errorf("create during rewrap: %v", err)
				return
			}
			mu.Lock()
			written[rel] = b
			mu.Unlock()
		}
	}()
	// The writer runs before, during and after the rewrap: wait for its
	// creates instead of sleeping (a writer not yet started would leave
	// nothing written during the rewrap).
	createdAtLeast := func(what string, n int) int {
		t.Helper()
		deadline := time.Now().Add(f.limit())
		for {
			mu.Lock()
			got := len(written)
			mu.Unlock()
			if got >= n {
				return got
			}
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("creates %s: %d, want at least %d", what, got, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	before := createdAtLeast("before the rewrap", 2)
	out := f.kmsfs("rewrap", "--to", "alias/rw-new", "--jobs", "4", f.cipher)
	createdAtLeast("after the rewrap", createdAtLeast("by the rewrap's end", before)+2)
	close(stop)
	wg.Wait()
	if !strings.Contains(out, "through the mount") || !strings.Contains(out, "kmsfs.conf") {
		t.Errorf("online rewrap --to: %q", out)
	}
	for rel, b := range written {
		sums[rel] = sha256.Sum256(b)
	}
	readAll(t, "during the mount", f.mnt, sums)
	s := f.status()
	if s.KeyARN != newARN {
		t.Errorf("kmsfs.conf key_arn after online migration: %s, want %s", s.KeyARN, newARN)
	}
	wantKeys(t, "after online migration", s, map[string]int{newARN + "@1": len(sums)})
	f.unmount()

	f.kmsfs("keys", "disable", "alias/kmsfs/default")
	f.mount()
	readAll(t, "after remount with the old key disabled", f.mnt, sums)
	f.unmount()
	if _, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck: exit %d: %s", code, stderr)
	}
}

// TestRewrapKilled: SIGKILL at random points of rewraps over 2,000 files
// (rotations and a migration), each followed by a full read-back through
// a fresh mount (an empty DEK cache); a last run finishes the job.
func TestRewrapKilled(t *testing.T) {
	const n = 2000
	f := newFixture(t)
	f.init()
	f.kmsfs("keys", "create", "--alias", "rw-new")
	newARN := f.keyARNOf("alias/rw-new")
	f.mount()
	sums := writeFiles(t, f.mnt, n)
	f.unmount()

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewSource(seed))
	// kill starts kmsfs rewrap and SIGKILLs it once the audit log shows a
	// random number of its ReEncrypt calls (1..n-1), or after a random
	// delay when that comes first: a random point inside the job, not
	// only during its start-up (opening the keyring takes a moment).
	kill := func(round int, args ...string) {
		auditPath := filepath.Join(f.cipher, ".kmsfs", "audit.log")
		countReEncrypt := func() int {
			b, _ := os.ReadFile(auditPath)
			return bytes.Count(b, []byte(`"op":"ReEncrypt"`))
		}
		base := countReEncrypt()
		target := 1 + rng.Intn(n-1)
		delay := time.Duration(2000+rng.Intn(3000)) * time.Millisecond
		cmd, cancel := f.command(kmsfsBin, append([]string{"rewrap"}, args...)...)
		defer cancel()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		deadline := time.After(delay)
		for {
			select {
			case err := <-done:
				t.Logf("round %d: rewrap %v finished before the kill (%v)", round, args, err)
				t.Logf("round %d: status %v", round, keyCount(f.status()))
				return
			case <-deadline:
			case <-time.After(2 * time.Millisecond):
				if countReEncrypt()-base < target {
					continue
				}
			}
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			t.Logf("round %d: rewrap %v killed after %d ReEncrypt calls (target %d, or %v)", round, args, countReEncrypt()-base, target, delay)
			t.Logf("round %d: status %v", round, keyCount(f.status()))
			return
		}
	}
	for round := range 3 {
		f.kmsfs("keys", "rotate", "alias/kmsfs/default")
		kill(round, "--jobs", fmt.Sprint(1+rng.Intn(8)), f.cipher)
		f.mount()
		readAll(t, fmt.Sprintf("after kill %d", round), f.mnt, sums)
		f.unmount()
	}
	kill(3, "--to", "alias/rw-new", f.cipher)
	kill(4, "--to", "alias/rw-new", "--jobs", "16", f.cipher)
	f.mount()
	readAll(t, "after the killed migrations", f.mnt, sums)
	f.unmount()

	out := f.kmsfs("rewrap", "--to", "alias/rw-new", f.cipher)
	if _, _, _, failed := rewrapCounts(t, out); failed != 0 {
		t.Fatalf("final rewrap: %q", out)
	}
	s := f.status()
	if s.KeyARN != newARN {
		t.Errorf("key_arn after the final run: %s, want %s", s.KeyARN, newARN)
	}
	wantKeys(t, "after the final run", s, map[string]int{newARN + "@1": n})
	if _, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck: exit %d: %s", code, stderr)
	}
	f.kmsfs("keys", "disable", "alias/kmsfs/default")
	f.mount()
	readAll(t, "final, old key disabled", f.mnt, sums)
	f.unmount()
}

func readConf(t *testing.T, cipher string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func writeConf(t *testing.T, cipher string, c map[string]any) {
	t.Helper()
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cipher, "kmsfs.conf"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
