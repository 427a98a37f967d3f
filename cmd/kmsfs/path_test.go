package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// TestPath maps plain paths to cipher paths and back, on both kinds of
// names, and checks the refusals.
func TestPath(t *testing.T) {
	eachNames(t, func(t *testing.T, e *offlineEnv) {
		longName := strings.Repeat("n", 200)
		e.write(map[string]plainEntry{
			"docs":              {dir: true, mode: 0o755},
			"docs/a.txt":        {data: []byte("a"), mode: 0o644},
			"docs/" + longName:  {data: []byte("long"), mode: 0o644},
			"docs/kmsfs.conf":   {data: []byte("a plain name like any other"), mode: 0o644},
			"docs/sub":          {dir: true, mode: 0o755},
			"docs/sub/deep.txt": {data: []byte("deep"), mode: 0o644},
		})
		rel := func(p string) string {
			r, err := filepath.Rel(e.dir, p)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		for _, plain := range []string{"docs/a.txt", "docs/" + longName, "docs/kmsfs.conf", "docs/sub", "docs/sub/deep.txt"} {
			cipher := e.cpath(plain)
			if !e.encrypted && cipher != filepath.Join(e.dir, plain) {
				t.Errorf("plaintext names: %s stored at %s", plain, cipher)
			}
			if code, out, stderr := e.kmsfs("path", e.dir, plain); code != 0 || out != cipher+"\n" {
				t.Errorf("path %.20s: exit %d, %q, %q; want %q", plain, code, out, stderr, cipher)
			}
			for _, arg := range []string{cipher, rel(cipher)} {
				if code, out, stderr := e.kmsfs("path", "--decrypt", "--", e.dir, arg); code != 0 || out != plain+"\n" {
					t.Errorf("path --decrypt %.40s: exit %d, %q, %q; want %q", arg, code, out, stderr, plain)
				}
			}
		}
		// A file that is not there (deleted since a backup) still maps,
		// and a note says so.
		code, out, stderr := e.kmsfs("path", e.dir, "/docs/gone.txt")
		if code != 0 || !strings.HasPrefix(out, filepath.Dir(e.cpath("docs/a.txt"))+"/") || !strings.Contains(stderr, "does not exist") {
			t.Errorf("path of a missing file: exit %d, %q, %q", code, out, stderr)
		}
		if code, back, _ := e.kmsfs("path", "--decrypt", "--", e.dir, strings.TrimSpace(out)); code != 0 || back != "docs/gone.txt\n" {
			t.Errorf("path --decrypt of a missing file's cipher path: exit %d, %q", code, back)
		}
		if code, out, _ := e.kmsfs("path", e.dir, "."); code != 0 || out != e.dir+"\n" {
			t.Errorf("path of the root: exit %d, %q", code, out)
		}
		if code, out, _ := e.kmsfs("path", "--decrypt", e.dir, e.dir); code != 0 || out != ".\n" {
			t.Errorf("path --decrypt of the root: exit %d, %q", code, out)
		}

		tests := []struct {
			name    string
			args    []string
			code    int
			wantErr string
		}{
			{"plain path climbs out", []string{"path", e.dir, "../x"}, exitUsage, "leaves the filesystem"},
			{"missing directory", []string{"path", e.dir, "nope/x"}, exitFail, "no such file or directory"},
			{"through a file", []string{"path", e.dir, "docs/a.txt/x"}, exitFail, "not a directory"},
			{"cipher path elsewhere", []string{"path", "--decrypt", e.dir, filepath.Join(e.base, "elsewhere")}, exitUsage, "is not under the cipher directory"},
			{"cipher path climbs out", []string{"path", "--decrypt", e.dir, "../x"}, exitUsage, "leaves the cipher directory"},
			{"kmsfs's own file", []string{"path", "--decrypt", e.dir, cipherdir.ConfName}, exitFail, "kmsfs's own entry"},
			{"no arguments", []string{"path", e.dir}, exitUsage, "takes 2 argument(s)"},
		}
		if e.encrypted {
			tests = append(tests, struct {
				name    string
				args    []string
				code    int
				wantErr string
			}{"not an encoded name", []string{"path", "--decrypt", "--", e.dir, filepath.Join(rel(e.cpath("docs")), "garbage")}, exitFail, "was moved from another directory or damaged"})
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				code, _, stderr := e.kmsfs(tc.args...)
				if code != tc.code || !strings.Contains(stderr, tc.wantErr) {
					t.Errorf("got exit %d, %q; want %d and %q", code, stderr, tc.code, tc.wantErr)
				}
			})
		}
	})
}

// TestReadersUnreadableName: a cipher entry moved to another directory
// no longer decrypts; verify and export report it and go on with the
// rest, cat no longer finds it, path --decrypt says why, and nothing
// prints what it failed to decrypt to.
func TestReadersUnreadableName(t *testing.T) {
	e := newOfflineEnv(t)
	e.write(map[string]plainEntry{
		"a":   {dir: true, mode: 0o755},
		"a/x": {data: []byte("x"), mode: 0o644},
		"a/y": {data: []byte("y"), mode: 0o644},
		"b":   {dir: true, mode: 0o755},
		"b/z": {data: []byte("z"), mode: 0o644},
	})
	moved := filepath.Join(e.cpath("b"), filepath.Base(e.cpath("a/x")))
	mustRename(t, e.cpath("a/x"), moved)
	movedRel, _ := filepath.Rel(e.dir, moved)

	code, out, stderr := e.kmsfs("verify", e.dir)
	if code != 1 || !strings.Contains(out, "cipher entry "+movedRel+" in directory b does not decrypt: it was moved from another directory or damaged") ||
		!strings.Contains(out, "verified 2 files") || !strings.Contains(stderr, "kmsfs fsck") {
		t.Errorf("verify: exit %d\n%s%s", code, out, stderr)
	}
	dest := filepath.Join(e.base, "out")
	code, out, stderr = e.kmsfs("export", e.dir, ".", dest)
	if code != 1 || !strings.Contains(stderr, movedRel) || !strings.Contains(out, "exported 2 files") {
		t.Errorf("export: exit %d\n%s%s", code, out, stderr)
	}
	for dir, want := range map[string][]string{"a": {"y"}, "b": {"z"}} {
		ents, _ := os.ReadDir(filepath.Join(dest, dir))
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
		}
		if !slices.Equal(got, want) {
			t.Errorf("exported %s: got %q, want %q", dir, got, want)
		}
	}
	if code, _, stderr := e.kmsfs("cat", e.dir, "a/x"); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("cat of the moved file: exit %d, %q", code, stderr)
	}
	if code, _, stderr := e.kmsfs("path", "--decrypt", "--", e.dir, moved); code != 1 || !strings.Contains(stderr, "moved from another directory or damaged") {
		t.Errorf("path --decrypt of the moved entry: exit %d, %q", code, stderr)
	}
}

// TestCipherFileWalksSkipOwnEntries: with encrypted names, the walks of
// cipher files (rewrap's list, status from the headers, index restore)
// count the files of the plain view only, long names included, and
// rewrap moves them all.
func TestCipherFileWalksSkipOwnEntries(t *testing.T) {
	e := namesTree(t)
	files, err := cipherdir.ListFiles(e.dir)
	if err != nil || len(files) != 6 {
		t.Fatalf("ListFiles: %d files %v, %v; want the 6 files", len(files), files, err)
	}
	for _, f := range files {
		if base := filepath.Base(f); base == cipherdir.DirIDName || strings.HasSuffix(base, ".name") {
			t.Errorf("ListFiles lists kmsfs's own %s", f)
		}
	}
	if err := os.RemoveAll(cipherdir.IndexDir(e.dir)); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := e.kmsfs("status", e.dir)
	if code != 0 || !strings.Contains(out, "files: 6\n") || strings.Contains(out, "unreadable") {
		t.Errorf("status from the headers: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr := e.kmsfs("fsck", "--repair", e.dir); code != 0 {
		t.Fatalf("fsck --repair: exit %d\n%s%s", code, out, stderr)
	}
	// 6 files and the two copies of the names key.
	if code, out, stderr := e.kmsfs("rewrap", e.dir); code != 0 || !strings.Contains(out, "files: 8;") || !strings.Contains(out, "failed: 0;") {
		t.Errorf("rewrap: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, _ := e.kmsfs("fsck", e.dir); code != 0 {
		t.Errorf("fsck after rewrap: exit %d\n%s", code, out)
	}
}
