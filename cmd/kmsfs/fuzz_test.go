package main

import (
	"os"
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
	eachNames(t, func(t *testing.T, e *offlineEnv) {
		e.write(map[string]plainEntry{"empty": {mode: 0o644, bare: true}, "short": {mode: 0o644, bare: true}})
		if code, out, stderr := e.kmsfs("fsck", e.dir); code != 0 {
			t.Errorf("fsck with 0-byte cipher files: exit %d\n%s%s", code, out, stderr)
		}
		if err := os.WriteFile(e.cpath("short"), []byte("KMS"), 0o644); err != nil {
			t.Fatal(err)
		}
		if code, out, _ := e.kmsfs("fsck", e.dir); code != 1 || !strings.Contains(out, "short") {
			t.Errorf("fsck with a 3-byte cipher file: exit %d, output %q; want 1 and a finding naming it", code, out)
		}
	})
}
