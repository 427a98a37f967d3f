package integration

// golden_test.go: the format is a promise. testdata/golden-v1 is a cipher
// directory made by the first release of format version 1 (with its local
// keyring, its passphrase and the sha256 of every plain file); every later
// kmsfs must still read it, offline and mounted, byte for byte.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestGoldenV1(t *testing.T) {
	const golden = "testdata/golden-v1"
	f := newFixture(t)
	passFile, err := filepath.Abs(filepath.Join(golden, "passphrase"))
	if err != nil {
		t.Fatal(err)
	}
	// A copy: a mount writes (audit log, index), the checked-in tree must not change.
	if out, err := exec.Command("cp", "-a", filepath.Join(golden, "cipher"), f.cipher).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	kr, err := os.ReadFile(filepath.Join(golden, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(f.keyring), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.keyring, kr, 0o600); err != nil {
		t.Fatal(err)
	}
	f.trustCopied()
	want := readSumFile(t, filepath.Join(golden, "expected.sha256"))
	if len(want) < 5 {
		t.Fatalf("expected.sha256 lists %d files, want the golden set", len(want))
	}

	// Offline, without FUSE: every chunk authenticates, every file decrypts.
	f.kmsfs("--keyring", f.keyring, "--passphrase-file", passFile, "verify", f.cipher)
	for rel, sum := range want {
		if got := sha256Hex([]byte(f.kmsfs("--keyring", f.keyring, "--passphrase-file", passFile, "cat", f.cipher, rel))); got != sum {
			t.Errorf("kmsfs cat %s: sha256 %s, want %s", rel, got, sum)
		}
	}

	// Mounted: the same bytes, and the symlink and directory shape.
	f.mount("--keyring", f.keyring, "--passphrase-file", passFile)
	for rel, sum := range want {
		b, err := os.ReadFile(filepath.Join(f.mnt, rel))
		if err != nil {
			t.Errorf("read %s: %v", rel, err)
			continue
		}
		if got := sha256Hex(b); got != sum {
			t.Errorf("%s through the mount: sha256 %s, want %s", rel, got, sum)
		}
	}
	if target, err := os.Readlink(filepath.Join(f.mnt, "dir", "link")); err != nil || target != "../hello.txt" {
		t.Errorf("dir/link: %q, %v; want ../hello.txt", target, err)
	}
	f.unmount()
	// fsck exits non-zero on any finding; the index and both slots agree.
	f.kmsfs("--keyring", f.keyring, "--passphrase-file", passFile, "fsck", f.cipher)
}

// readSumFile parses `sha256sum` output: "<hex>  ./rel" per line.
func readSumFile(t *testing.T, path string) map[string]string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		sum, rel, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("%s: bad line %q", path, sc.Text())
		}
		sums[strings.TrimPrefix(rel, "./")] = sum
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sums
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
