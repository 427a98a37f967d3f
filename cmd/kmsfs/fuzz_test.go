package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseMountinfo: parseMountinfo and unescapeOctal never panic on any
// mountinfo text (mount points are user-chosen names, escaped by the
// kernel), and every entry they return came from a line with a separator.
func FuzzParseMountinfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - fuse.kmsfs kmsfs:/c rw,user_id=0\n")
	f.Add("1 2 3:4 / / rw - ext4 /dev/root rw\n1 2\n- - - - - - - -\n")
	f.Add("a b c d \\1 e - f \\777\\\\ g\n")
	f.Add(strings.Repeat("x ", 5000))
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := parseMountinfo(strings.NewReader(s))
		if err != nil {
			return
		}
		if n := strings.Count(s, "\n") + 1; len(entries) > n {
			t.Fatalf("%d entries from %d lines", len(entries), n)
		}
		for _, e := range entries {
			_ = unescapeOctal(e.mountpoint)
		}
		_, _ = findMount(entries, "/mnt/a b")
	})
}

// TestFsckEmptyCipherFile: a 0-byte cipher file (a create cut short by a
// crash, or mknod) is an empty file the mount reads as empty: fsck finds
// nothing wrong with it, while a short non-empty file is still a finding.
func TestFsckEmptyCipherFile(t *testing.T) {
	base := t.TempDir()
	t.Setenv(envKeyring, filepath.Join(base, "kr", "keyring.json"))
	t.Setenv(envPassphrase, "correct horse")
	kmsfs := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	c := filepath.Join(base, "c")
	if code, _, stderr := kmsfs("init", c); code != 0 {
		t.Fatalf("init: exit %d, stderr %q", code, stderr)
	}
	if err := os.WriteFile(filepath.Join(c, "empty"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := kmsfs("fsck", c); code != 0 {
		t.Errorf("fsck with a 0-byte cipher file: exit %d\n%s%s", code, out, stderr)
	}
	if err := os.WriteFile(filepath.Join(c, "short"), []byte("KMS"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := kmsfs("fsck", c); code != 1 || !strings.Contains(out, "short") {
		t.Errorf("fsck with a 3-byte cipher file: exit %d, output %q; want 1 and a finding", code, out)
	}
}
