package integration

// golden_names_test.go: the names format is a promise too.
// testdata/golden-v1-names is a cipher directory with encrypted names made
// by the first kmsfs that had them (format version 1, features
// name_encryption), with its local keyring and passphrase: a few files, a
// directory tree, a long name, a name of 4-byte UTF-8 characters, an empty
// directory and symlinks. Besides the sha256 of every plain file it pins
// the plain tree (expected.tree), every symlink target (expected.links)
// and the cipher path of every plain path (expected.paths, kmsfs path), so
// a later kmsfs that encrypted or decrypted a name differently fails here.
//
// Regenerate it (only when the format itself changes, with a new
// directory name) with
//
//	KMSFS_WRITE_GOLDEN=1 go test ./integration -run 'TestGoldenV1NamesWrite$'

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const goldenNames = "testdata/golden-v1-names"

// goldenNamesLong (200 bytes) is a long name; goldenNamesUTF8 (240 bytes)
// is one of 4-byte UTF-8 characters: both stored as kmsfs.long.<hash>.
var (
	goldenNamesLong = strings.Repeat("long-name-", 20)
	goldenNamesUTF8 = strings.Repeat("\U0001F600", 60)
)

func TestGoldenV1Names(t *testing.T) {
	f := newFixture(t)
	passFile, err := filepath.Abs(filepath.Join(goldenNames, "passphrase"))
	must(t, err)
	// A copy: a mount writes (audit log, index), the checked-in tree must not change.
	if out, err := exec.Command("cp", "-a", filepath.Join(goldenNames, "cipher"), f.cipher).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	kr, err := os.ReadFile(filepath.Join(goldenNames, "keyring.json"))
	must(t, err)
	must(t, os.MkdirAll(filepath.Dir(f.keyring), 0o700))
	must(t, os.WriteFile(f.keyring, kr, 0o600))
	// Every command uses the golden passphrase, never the fixture's: from
	// the file where k passes it, else from the environment.
	pass, err := os.ReadFile(passFile)
	must(t, err)
	f.passphrase = strings.TrimSuffix(string(pass), "\n")
	f.env = append(f.env, "KMSFS_PASSPHRASE="+f.passphrase)
	k := func(args ...string) string {
		t.Helper()
		return f.kmsfs(append([]string{"--keyring", f.keyring, "--passphrase-file", passFile}, args...)...)
	}
	f.trustCopied()
	sums := readSumFile(t, filepath.Join(goldenNames, "expected.sha256"))
	links := readTabFile(t, filepath.Join(goldenNames, "expected.links"))
	paths := readTabFile(t, filepath.Join(goldenNames, "expected.paths"))
	tree := readLines(t, filepath.Join(goldenNames, "expected.tree"))
	if len(sums) < 5 || len(links) < 2 || len(paths) < len(sums)+len(links) || len(tree) < len(paths) {
		t.Fatalf("golden lists %d files, %d links, %d paths, %d tree entries: not the golden set", len(sums), len(links), len(paths), len(tree))
	}
	if b, err := os.ReadFile(filepath.Join(f.cipher, "kmsfs.conf")); err != nil || !bytes.Contains(b, []byte(`"name_encryption": true`)) {
		t.Fatalf("golden kmsfs.conf: names not encrypted (%v):\n%s", err, b)
	}

	// Offline: the names map to the cipher paths they were stored under,
	// and the long ones back (the mount below decrypts every name).
	for plain, cipherRel := range paths {
		if got := strings.TrimSuffix(k("path", f.cipher, plain), "\n"); got != filepath.Join(f.cipher, cipherRel) {
			t.Errorf("kmsfs path %s: got %s, want %s", plain, got, filepath.Join(f.cipher, cipherRel))
		}
		if !strings.Contains(plain, goldenNamesLong) && !strings.Contains(plain, goldenNamesUTF8) {
			continue
		}
		if got := strings.TrimSuffix(k("path", "--decrypt", f.cipher, cipherRel), "\n"); got != plain {
			t.Errorf("kmsfs path --decrypt %s: got %q, want %q", cipherRel, got, plain)
		}
	}
	// Every chunk authenticates; every file decrypts.
	k("verify", f.cipher)
	for rel, sum := range sums {
		if got := sha256Hex([]byte(k("cat", f.cipher, rel))); got != sum {
			t.Errorf("kmsfs cat %s: sha256 %s, want %s", rel, got, sum)
		}
	}

	// Mounted: the same tree, names, targets and bytes.
	f.mount("--keyring", f.keyring, "--passphrase-file", passFile)
	if got := plainTreeLines(t, f.mnt); strings.Join(got, "\n") != strings.Join(tree, "\n") {
		t.Errorf("the plain tree through the mount:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tree, "\n"))
	}
	for rel, sum := range sums {
		b, err := os.ReadFile(filepath.Join(f.mnt, rel))
		if err != nil {
			t.Errorf("read %s: %v", rel, err)
			continue
		}
		if got := sha256Hex(b); got != sum {
			t.Errorf("%s through the mount: sha256 %s, want %s", rel, got, sum)
		}
	}
	for rel, target := range links {
		if got, err := os.Readlink(filepath.Join(f.mnt, rel)); err != nil || got != target {
			t.Errorf("readlink %s: %q, %v; want %q", rel, got, err, target)
		}
	}
	f.unmount()
	// fsck exits non-zero on any finding; the index and both slots agree.
	k("fsck", f.cipher)
}

// TestGoldenV1NamesWrite makes testdata/golden-v1-names (see the file
// comment). It runs only with KMSFS_WRITE_GOLDEN=1 and refuses to replace
// an existing golden directory.
func TestGoldenV1NamesWrite(t *testing.T) {
	if os.Getenv("KMSFS_WRITE_GOLDEN") != "1" {
		t.Skip("writes testdata/golden-v1-names: set KMSFS_WRITE_GOLDEN=1 to regenerate it")
	}
	if _, err := os.Stat(goldenNames); err == nil {
		t.Fatalf("%s exists: remove it first (the golden directory is a promise: only a new format gets a new one)", goldenNames)
	}
	f := newFixture(t)
	const passphrase = "golden-names-passphrase"
	passFile := filepath.Join(f.dir, "passphrase")
	must(t, os.WriteFile(passFile, []byte(passphrase+"\n"), 0o600))
	f.passphrase = passphrase
	f.env = append(f.env, "KMSFS_PASSPHRASE="+passphrase)
	k := func(args ...string) string {
		t.Helper()
		return f.kmsfs(append([]string{"--keyring", f.keyring, "--passphrase-file", passFile}, args...)...)
	}
	k("init", f.cipher)
	f.mount("--keyring", f.keyring, "--passphrase-file", passFile)
	files := map[string][]byte{
		"hello.txt":                  []byte("Hello, encrypted names!\n"),
		"empty":                      nil,
		"two-chunks":                 bytes.Repeat([]byte("0123456789abcdef"), 400), // 6400 bytes
		"dir/sub/nested.txt":         []byte("nested\n"),
		goldenNamesLong:              []byte("a file with a long name\n"),
		"dir/" + goldenNamesUTF8:     []byte("a name of 4-byte characters\n"),
		"dir/sub/" + goldenNamesLong: []byte("the same long name in another directory\n"),
	}
	links := map[string]string{
		"dir/link":    "../hello.txt",
		"abs-link":    "/etc/hostname",
		"dir/sub/far": "../../" + goldenNamesLong,
	}
	must(t, os.Mkdir(filepath.Join(f.mnt, "emptydir"), 0o755))
	var sums []string
	for rel, b := range files {
		writeFile(t, filepath.Join(f.mnt, rel), b)
		sums = append(sums, fmt.Sprintf("%s  ./%s", sha256Hex(b), rel))
	}
	var linkLines []string
	for rel, target := range links {
		must(t, os.Symlink(target, filepath.Join(f.mnt, rel)))
		linkLines = append(linkLines, rel+"\t"+target)
	}
	tree := plainTreeLines(t, f.mnt)
	f.unmount()
	var pathLines []string
	for _, l := range tree {
		rel := l[2:]
		pathLines = append(pathLines, rel+"\t"+f.cipherRel(rel))
	}

	out := goldenNames
	must(t, os.MkdirAll(out, 0o755))
	// The cipher directory without the logs of this session (the mount
	// log and the audit log are no part of the format).
	if b, err := exec.Command("cp", "-a", f.cipher, filepath.Join(out, "cipher")).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, b)
	}
	for _, p := range []string{".kmsfs/mount.log", ".kmsfs/audit.log"} {
		if err := os.Remove(filepath.Join(out, "cipher", p)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	kr, err := os.ReadFile(f.keyring)
	must(t, err)
	for name, lines := range map[string][]string{
		"expected.sha256": sums, "expected.links": linkLines, "expected.paths": pathLines, "expected.tree": tree,
	} {
		sort.Strings(lines)
		must(t, os.WriteFile(filepath.Join(out, name), []byte(strings.Join(lines, "\n")+"\n"), 0o644))
	}
	must(t, os.WriteFile(filepath.Join(out, "keyring.json"), kr, 0o644))
	must(t, os.WriteFile(filepath.Join(out, "passphrase"), []byte(passphrase+"\n"), 0o644))
	t.Logf("wrote %s: %d files, %d symlinks, %d paths", out, len(files), len(links), len(pathLines))
}

// plainTreeLines lists the tree below root, sorted: "d rel", "f rel" or
// "l rel" per entry.
func plainTreeLines(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		kind := "f"
		switch {
		case d.IsDir():
			kind = "d"
		case d.Type()&fs.ModeSymlink != 0:
			kind = "l"
		}
		out = append(out, kind+" "+filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	sort.Strings(out)
	return out
}

// readTabFile reads "key<TAB>value" lines.
func readTabFile(t *testing.T, path string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range readLines(t, path) {
		k, v, ok := strings.Cut(l, "\t")
		if !ok {
			t.Fatalf("%s: bad line %q", path, l)
		}
		m[k] = v
	}
	return m
}

// readLines reads the non-empty lines of a file.
func readLines(t *testing.T, path string) []string {
	t.Helper()
	fh, err := os.Open(path)
	must(t, err)
	defer fh.Close()
	var out []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if sc.Text() != "" {
			out = append(out, sc.Text())
		}
	}
	must(t, sc.Err())
	return out
}
