package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

var (
	long1 = strings.Repeat("1", 170) // long names: stored as kmsfs.long.H
	long2 = strings.Repeat("2", 170)
)

// namesTree writes the tree the names tests damage.
func namesTree(t *testing.T) *offlineEnv {
	t.Helper()
	e := newOfflineEnv(t)
	e.write(map[string]plainEntry{
		"a":          {dir: true, mode: 0o755},
		"a/f1":       {data: []byte("f1"), mode: 0o644},
		"a/f2":       {data: []byte("f2"), mode: 0o644},
		"a/" + long1: {data: []byte("long1"), mode: 0o644},
		"a/" + long2: {data: []byte("long2"), mode: 0o644},
		"b":          {dir: true, mode: 0o755},
		"b/g":        {data: []byte("g"), mode: 0o644},
		"c":          {dir: true, mode: 0o755},
		"c/h":        {data: []byte("h"), mode: 0o644},
		"empty":      {dir: true, mode: 0o755},
	})
	return e
}

func (e *offlineEnv) dirID(rel string) string {
	return filepath.Join(e.cpath(rel), cipherdir.DirIDName)
}

func (e *offlineEnv) side(rel string) string { return e.cpath(rel) + crypto.LongNameSuffix }

// hasDirIDXattr reports whether the directory rel carries its ID as an
// extended attribute (the filesystem under the test may have none).
func (e *offlineEnv) hasDirIDXattr(rel string) bool {
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(e.cpath(rel), "user.kmsfs.dirid", buf)
	return err == nil && n == crypto.DirIDSize
}

func (e *offlineEnv) dropDirIDXattr(rel string) {
	unix.Lremovexattr(e.cpath(rel), "user.kmsfs.dirid")
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func swapFiles(t *testing.T, a, b string) {
	t.Helper()
	mustRename(t, a, a+".swap")
	mustRename(t, b, a)
	mustRename(t, a+".swap", b)
}

// TestFsckNames damages an encrypted-names tree in one way per case and
// checks what fsck reports, what --repair fixes and that a fixed tree
// reads again.
func TestFsckNames(t *testing.T) {
	tests := []struct {
		name      string
		xattr     bool // needs the directory-ID attribute
		damage    func(t *testing.T, e *offlineEnv)
		want      []string // in fsck's output
		fixable   bool     // fsck --repair leaves nothing
		readAfter string   // a plain file that reads after the repair
	}{
		{
			name: "moved name",
			damage: func(t *testing.T, e *offlineEnv) {
				mustRename(t, e.cpath("a/f1"), filepath.Join(e.cpath("b"), filepath.Base(e.cpath("a/f1"))))
			},
			want: []string{"b/? (cipher ", "name does not decrypt under its directory's ID: it was moved here from another directory, or damaged; it decrypts in directory a (cipher "},
		},
		{
			name: "name moved out of a directory it emptied",
			damage: func(t *testing.T, e *offlineEnv) {
				mustRename(t, e.cpath("c/h"), filepath.Join(e.cpath("empty"), filepath.Base(e.cpath("c/h"))))
			},
			want: []string{"empty/? (cipher ", "it decrypts in directory c (cipher "},
		},
		{
			name:  "directory ID missing, its attribute holds it",
			xattr: true,
			damage: func(t *testing.T, e *offlineEnv) {
				os.Remove(e.dirID("a"))
			},
			want:      []string{"a (cipher ", "kmsfs.dirid is missing; its user.kmsfs.dirid attribute holds the ID its names decrypt under [--repair fixes it]"},
			fixable:   true,
			readAfter: "a/f1",
		},
		{
			name: "directory ID missing and nowhere else",
			damage: func(t *testing.T, e *offlineEnv) {
				os.Remove(e.dirID("c"))
				e.dropDirIDXattr("c")
			},
			want: []string{"c (cipher ", "kmsfs.dirid is missing: restore ", "kmsfs.dirid from a backup of the cipher directory"},
		},
		{
			name: "directory ID damaged in an empty directory",
			damage: func(t *testing.T, e *offlineEnv) {
				os.Remove(e.dirID("empty"))
				os.WriteFile(e.dirID("empty"), []byte("short"), 0o444)
				e.dropDirIDXattr("empty")
			},
			want:    []string{"empty (cipher ", "kmsfs.dirid is damaged (5 bytes, want 16); the directory is empty, so a new ID serves [--repair fixes it]"},
			fixable: true,
		},
		{
			name: "directory IDs swapped",
			damage: func(t *testing.T, e *offlineEnv) {
				swapFiles(t, e.dirID("a"), e.dirID("b"))
				e.dropDirIDXattr("a")
				e.dropDirIDXattr("b")
			},
			want: []string{
				"a (cipher ", "its names do not decrypt under its kmsfs.dirid (0 of 4: swapped with another directory's, or damaged); its names all decrypt under the kmsfs.dirid of directory b (cipher ",
				"b (cipher ", "its names do not decrypt under its kmsfs.dirid (0 of 1: swapped with another directory's, or damaged); its names all decrypt under the kmsfs.dirid of directory a (cipher ",
			},
			fixable:   true,
			readAfter: "a/" + long2,
		},
		{
			name:  "directory IDs swapped, the attributes hold them",
			xattr: true,
			damage: func(t *testing.T, e *offlineEnv) {
				swapFiles(t, e.dirID("a"), e.dirID("b"))
			},
			want:      []string{"swapped with another directory's, or damaged); its user.kmsfs.dirid attribute holds the ID its names decrypt under [--repair fixes it]"},
			fixable:   true,
			readAfter: "b/g",
		},
		{
			name: "long-name side file missing",
			damage: func(t *testing.T, e *offlineEnv) {
				os.Remove(e.side("a/" + long1))
			},
			want: []string{"a/? (cipher ", "its long-name side file kmsfs.long.", ".name is missing: the entry cannot be named: restore "},
		},
		{
			name: "long-name side files swapped",
			damage: func(t *testing.T, e *offlineEnv) {
				swapFiles(t, e.side("a/"+long1), e.side("a/"+long2))
			},
			want:      []string{".name holds another entry's name (swapped or damaged); another side file holds its name [--repair fixes it]"},
			fixable:   true,
			readAfter: "a/" + long1,
		},
		{
			name: "orphan side file",
			damage: func(t *testing.T, e *offlineEnv) {
				orphan := crypto.LongName(strings.Repeat("x", 300)) + crypto.LongNameSuffix
				if err := os.WriteFile(filepath.Join(e.cpath("b"), orphan), []byte("x"), 0o444); err != nil {
					t.Fatal(err)
				}
			},
			want:    []string{"b (cipher ", "orphan long-name side file: no entry kmsfs.long."},
			fixable: true,
		},
		{
			name: "names key lost",
			damage: func(t *testing.T, e *offlineEnv) {
				for _, p := range cipherdir.NamesKeyPaths(e.dir) {
					os.Remove(p)
				}
			},
			want: []string{". -: names were not checked (only directory IDs and side files are): the names key of ", "restore kmsfs.names from a backup"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := namesTree(t)
			if code, out, stderr := e.kmsfs("fsck", e.dir); code != 0 {
				t.Fatalf("fsck of a sound tree: exit %d\n%s%s", code, out, stderr)
			}
			if tc.xattr && !e.hasDirIDXattr("a") {
				t.Skip("no user extended attributes on the test's filesystem")
			}
			tc.damage(t, e)
			code, out, stderr := e.kmsfs("fsck", e.dir)
			if code != 1 {
				t.Errorf("fsck: exit %d, want 1\n%s%s", code, out, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("fsck output lacks %q:\n%s", w, out)
				}
			}
			code, out, stderr = e.kmsfs("fsck", "--repair", e.dir)
			if want := map[bool]int{true: 0, false: 1}[tc.fixable]; code != want {
				t.Errorf("fsck --repair: exit %d, want %d\n%s%s", code, want, out, stderr)
			}
			if tc.fixable && !strings.Contains(out, "[repaired]") {
				t.Errorf("fsck --repair repaired nothing:\n%s", out)
			}
			if !tc.fixable && strings.Contains(out, "[repaired]") {
				t.Errorf("fsck --repair repaired what needs a guess:\n%s", out)
			}
			code, out, _ = e.kmsfs("fsck", e.dir)
			if want := map[bool]int{true: 0, false: 1}[tc.fixable]; code != want {
				t.Errorf("fsck after --repair: exit %d, want %d\n%s", code, want, out)
			}
			if tc.readAfter != "" {
				if code, got, stderr := e.kmsfs("cat", e.dir, tc.readAfter); code != 0 || got == "" {
					t.Errorf("cat %.20s after the repair: exit %d, %q, %q", tc.readAfter, code, got, stderr)
				}
			}
		})
	}
}
