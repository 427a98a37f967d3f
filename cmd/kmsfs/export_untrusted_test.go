package main

// export_untrusted_test.go: export and cat treat the cipher directory as
// untrusted input. Owners and set-ID bits are not restored unless asked
// for; a cipher entry swapped for a FIFO or a symlink after the walk is
// refused promptly and not followed; nothing the cipher tree or a race in
// the destination does makes export write outside DEST; holes stay holes.

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needRoot skips unless the test runs as root.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: cipher entries owned by other users, and set-ID bits on them")
	}
}

// lstat is the stat of p, not followed.
func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st
}

// setHook sets testHookBeforeOpen for the test.
func setHook(t *testing.T, fn func(rel string)) {
	t.Helper()
	testHookBeforeOpen = fn
	t.Cleanup(func() { testHookBeforeOpen = nil })
}

// kmsfsBounded runs kmsfs args in-process and fails the test if it does
// not return within d (a FIFO open that blocks, say).
func (e *offlineEnv) kmsfsBounded(d time.Duration, args ...string) (int, string, string) {
	e.t.Helper()
	type result struct {
		code        int
		out, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, out, stderr := e.kmsfs(args...)
		done <- result{code, out, stderr}
	}()
	select {
	case r := <-done:
		return r.code, r.out, r.stderr
	case <-time.After(d):
		e.t.Fatalf("kmsfs %s: still running after %s (blocked on a FIFO?)", strings.Join(args, " "), d)
		return 0, "", ""
	}
}

// TestExportOwnersAndSetID: a writer of the cipher directory gives a
// file set-user-ID root, another a foreign owner, a directory
// set-group-ID. Exported as root without --preserve-owner, all of it
// belongs to the runner with only the permission and sticky bits; with
// --preserve-owner owners and set-ID bits come back, with a warning
// naming each set-ID entry.
func TestExportOwnersAndSetID(t *testing.T) {
	needRoot(t)
	eachNames(t, testExportOwnersAndSetID)
}

func testExportOwnersAndSetID(t *testing.T, e *offlineEnv) {
	const foreign = 4321
	e.write(map[string]plainEntry{
		"suid":        {data: []byte("#!/bin/sh\nid\n"), mode: 0o755},
		"sgid":        {data: []byte("x"), mode: 0o755},
		"theirs":      {data: []byte("theirs"), mode: 0o644},
		"shared":      {dir: true, mode: 0o775},
		"shared/f":    {data: []byte("f"), mode: 0o644},
		"tmp":         {dir: true, mode: 0o777},
		"tmp/theirs2": {data: []byte("2"), mode: 0o600},
		"link":        {symlink: "suid"},
	})
	// What the writer does (chown before chmod: chown clears set-ID).
	for _, c := range []struct {
		rel      string
		uid, gid int
		mode     os.FileMode
	}{
		{"suid", 0, 0, 0o755 | os.ModeSetuid},
		{"sgid", foreign, foreign, 0o755 | os.ModeSetgid},
		{"theirs", foreign, foreign, 0o644},
		{"shared", foreign, foreign, os.ModeDir | 0o775 | os.ModeSetgid},
		{"tmp", 0, 0, os.ModeDir | 0o777 | os.ModeSticky},
		{"tmp/theirs2", foreign, 0, 0o600},
	} {
		p := e.cpath(c.rel)
		if err := os.Lchown(p, c.uid, c.gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, c.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Lchown(e.cpath("link"), foreign, foreign); err != nil {
		t.Fatal(err)
	}
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())

	dest := filepath.Join(e.base, "plain")
	code, out, stderr := e.kmsfs("export", e.dir, ".", dest)
	if code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, out, stderr)
	}
	if strings.Contains(stderr, "warning") {
		t.Errorf("export without --preserve-owner warned: %q", stderr)
	}
	for _, c := range []struct {
		rel  string
		mode uint32
	}{
		{"suid", 0o755}, {"sgid", 0o755}, {"theirs", 0o644}, {"shared", 0o775},
		{"shared/f", 0o644}, {"tmp", 0o777 | unix.S_ISVTX}, {"tmp/theirs2", 0o600},
	} {
		st := lstat(t, filepath.Join(dest, c.rel))
		if got := st.Mode & 0o7777; got != c.mode {
			t.Errorf("%s: mode %#o, want %#o (no set-ID bits)", c.rel, got, c.mode)
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: owner %d:%d, want the runner's %d:%d", c.rel, st.Uid, st.Gid, uid, gid)
		}
	}
	if st := lstat(t, filepath.Join(dest, "link")); st.Uid != uid {
		t.Errorf("link: owner %d, want the runner's %d", st.Uid, uid)
	}

	// One file, the root of a subtree: the same rule.
	one := filepath.Join(e.base, "one")
	if code, _, stderr := e.kmsfs("export", e.dir, "suid", one); code != 0 {
		t.Fatalf("export of one file: exit %d, %q", code, stderr)
	}
	if st := lstat(t, one); st.Mode&0o7777 != 0o755 {
		t.Errorf("one exported file: mode %#o, want 0755", st.Mode&0o7777)
	}
	sub := filepath.Join(e.base, "sub")
	if code, _, stderr := e.kmsfs("export", e.dir, "shared", sub); code != 0 {
		t.Fatalf("export of a subtree: exit %d, %q", code, stderr)
	}
	if st := lstat(t, sub); st.Mode&0o7777 != 0o775 || st.Uid != uid {
		t.Errorf("exported subtree root: mode %#o owner %d, want 0775 owned by %d", st.Mode&0o7777, st.Uid, uid)
	}

	kept := filepath.Join(e.base, "kept")
	code, out, stderr = e.kmsfs("export", "--preserve-owner", e.dir, ".", kept)
	if code != 0 {
		t.Fatalf("export --preserve-owner: exit %d\n%s%s", code, out, stderr)
	}
	for _, c := range []struct {
		rel      string
		uid, gid uint32
		mode     uint32
	}{
		{"suid", 0, 0, 0o755 | unix.S_ISUID},
		{"sgid", foreign, foreign, 0o755 | unix.S_ISGID},
		{"theirs", foreign, foreign, 0o644},
		{"shared", foreign, foreign, 0o775 | unix.S_ISGID},
		{"tmp/theirs2", foreign, 0, 0o600},
		{"link", foreign, foreign, 0o777},
	} {
		st := lstat(t, filepath.Join(kept, c.rel))
		if st.Mode&0o7777 != c.mode || st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("--preserve-owner %s: mode %#o owner %d:%d, want %#o %d:%d", c.rel, st.Mode&0o7777, st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	for _, want := range []string{"warning: --preserve-owner", filepath.Join(kept, "suid") + ": restored set-user-ID (owner uid 0)",
		filepath.Join(kept, "sgid") + ": restored set-group-ID", filepath.Join(kept, "shared") + ": restored set-group-ID"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("export --preserve-owner: stderr %q lacks %q", stderr, want)
		}
	}
	if strings.Contains(stderr, filepath.Join(kept, "theirs")+":") {
		t.Errorf("export --preserve-owner: warned of a set-ID bit theirs does not have: %q", stderr)
	}
}

// TestExportSparse: a 64 MiB file holding 1 MiB of data, written densely
// (every chunk sealed, zeros included), exports as a sparse file with
// the same content; cat to a regular file does the same, cat to a pipe
// writes every byte.
func TestExportSparse(t *testing.T) {
	e := newOfflineEnv(t, "--plaintext-names")
	const size = 64 << 20
	data := make([]byte, size)
	copy(data[20<<20:], randData(t, 1<<20))
	data[size-1] = 1 // the last chunk is data
	e.write(map[string]plainEntry{"big": {data: data, mode: 0o644}})

	checkSparse := func(what, p string) {
		t.Helper()
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, content differs from what was written", what, len(got))
		}
		// 1 MiB and a chunk of data, and some slack for the filesystem.
		if st := lstat(t, p); st.Blocks*512 > 4<<20 {
			t.Errorf("%s: %d bytes allocated for 1 MiB of data, want a sparse file", what, st.Blocks*512)
		}
	}
	dest := filepath.Join(e.base, "out")
	if code, out, stderr := e.kmsfs("export", e.dir, ".", dest); code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, out, stderr)
	}
	checkSparse("exported", filepath.Join(dest, "big"))

	catOut := filepath.Join(e.base, "cat.out")
	f, err := os.Create(catOut)
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	code := run([]string{"cat", e.dir, "big"}, f, &errb)
	if pos, err := f.Seek(0, 1); err != nil || pos != size {
		t.Errorf("cat to a file: offset %d after, want %d (%v)", pos, size, err)
	}
	f.Close()
	if code != 0 {
		t.Fatalf("cat: exit %d, %q", code, errb.String())
	}
	checkSparse("cat to a file", catOut)

	// A file written at an offset: cat starts there, keeps what is before.
	pre := filepath.Join(e.base, "pre.out")
	if err := os.WriteFile(pre, []byte("head"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err = os.OpenFile(pre, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Seek(4, 0)
	code = run([]string{"cat", e.dir, "big"}, f, &errb)
	f.Close()
	if got, err := os.ReadFile(pre); code != 0 || err != nil || string(got[:4]) != "head" || !bytes.Equal(got[4:], data) {
		t.Errorf("cat after 4 bytes of a file: exit %d, %d bytes (%v); want head + the content", code, len(got), err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	code = run([]string{"cat", e.dir, "big"}, w, &errb)
	w.Close()
	if b := <-got; code != 0 || !bytes.Equal(b, data) {
		t.Errorf("cat to a pipe: exit %d, %d bytes; want the %d bytes written", code, len(b), size)
	}
	r.Close()
}

// TestExportSwappedEntry: between the walk's look at a cipher file and
// its open, the writer puts a FIFO (no writer on the other end) or a
// symlink (to a valid cipher file outside the cipher directory) in its
// place. cat and export report the entry promptly and read nothing
// through it; export exports the rest.
func TestExportSwappedEntry(t *testing.T) {
	eachNames(t, testExportSwappedEntry)
}

func testExportSwappedEntry(t *testing.T, e *offlineEnv) {
	secret := []byte("the content of a file elsewhere\n")
	e.write(map[string]plainEntry{
		"a.txt":     {data: []byte("a\n"), mode: 0o644},
		"victim":    {data: []byte("victim\n"), mode: 0o644},
		"elsewhere": {data: secret, mode: 0o644},
	})
	victim := e.cpath("victim")
	outside := filepath.Join(e.base, "outside-copy")
	b, err := os.ReadFile(e.cpath("elsewhere"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(outside, b, 0o644); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	swaps := []struct {
		name string
		swap func() error
		want string
	}{
		{"fifo", func() error { return unix.Mkfifo(victim, 0o644) }, "FIFO"},
		{"symlink", func() error { return os.Symlink(outside, victim) }, "symlink"},
	}
	for _, s := range swaps {
		t.Run(s.name, func(t *testing.T) {
			setHook(t, func(rel string) {
				if rel != "victim" {
					return
				}
				if err := os.Remove(victim); err != nil {
					t.Error(err)
				}
				if err := s.swap(); err != nil {
					t.Error(err)
				}
			})
			restore := func() {
				os.Remove(victim)
				if err := os.WriteFile(victim, orig, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			defer restore()

			code, out, stderr := e.kmsfsBounded(20*time.Second, "cat", e.dir, "victim")
			if code != 1 || !strings.Contains(stderr, "victim") || !strings.Contains(stderr, s.want) || strings.Contains(out, string(secret)) {
				t.Errorf("cat of a swapped entry: exit %d, stdout %q, stderr %q; want 1 naming victim and %s", code, out, stderr, s.want)
			}
			restore()
			dest := filepath.Join(t.TempDir(), "out")
			code, out, stderr = e.kmsfsBounded(20*time.Second, "export", e.dir, ".", dest)
			if code != 1 || !strings.Contains(stderr, "victim") || !strings.Contains(stderr, s.want) {
				t.Errorf("export of a swapped entry: exit %d, stderr %q; want 1 naming victim and %s", code, stderr, s.want)
			}
			if _, err := os.Lstat(filepath.Join(dest, "victim")); err == nil {
				t.Errorf("export wrote victim from the swapped entry")
			}
			if b, err := os.ReadFile(filepath.Join(dest, "a.txt")); err != nil || string(b) != "a\n" {
				t.Errorf("export of the rest: a.txt %q, %v", b, err)
			}
			restore()
			one := filepath.Join(t.TempDir(), "one")
			if code, _, stderr := e.kmsfsBounded(20*time.Second, "export", e.dir, "victim", one); code != 1 || !strings.Contains(stderr, s.want) {
				t.Errorf("export of one swapped file: exit %d, %q", code, stderr)
			}
			if _, err := os.Lstat(one); err == nil {
				t.Errorf("export of one swapped file wrote %s", one)
			}
			left, _ := filepath.Glob(filepath.Join(filepath.Dir(one), ".*kmsfs-export*"))
			if len(left) > 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
		})
	}
}

// TestExportDestinationRace: between the plan and the export, a symlink
// to a directory outside DEST appears where export makes a directory,
// and one to a file outside where it writes a file. Nothing is written
// outside DEST, with or without --force.
func TestExportDestinationRace(t *testing.T) {
	e := newOfflineEnv(t, "--plaintext-names")
	e.write(map[string]plainEntry{
		"d":     {dir: true, mode: 0o755},
		"d/f":   {data: []byte("inside d\n"), mode: 0o644},
		"f":     {data: []byte("f\n"), mode: 0o644},
		"ln":    {symlink: "../../outside"},
		"z.txt": {data: []byte("z\n"), mode: 0o644},
	})
	for _, force := range []bool{false, true} {
		name := "plain"
		if force {
			name = "force"
		}
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			outsideFile := filepath.Join(base, "outside-file")
			if err := os.WriteFile(outsideFile, []byte("keep me\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			dest := filepath.Join(base, "dest")
			setHook(t, func(rel string) {
				var err error
				switch rel {
				case "d":
					err = os.Symlink(outside, filepath.Join(dest, "d"))
				case "f":
					err = os.Symlink(outsideFile, filepath.Join(dest, "f"))
				}
				if err != nil {
					t.Error(err)
				}
			})
			args := []string{"export", e.dir, ".", dest}
			if force {
				args = []string{"export", "--force", e.dir, ".", dest}
			}
			code, _, stderr := e.kmsfsBounded(20*time.Second, args...)
			if code != 1 || !strings.Contains(stderr, filepath.Join(dest, "d")) {
				t.Errorf("export with d raced to a symlink: exit %d, %q; want 1 naming d", code, stderr)
			}
			if ents, _ := os.ReadDir(outside); len(ents) > 0 {
				t.Errorf("export wrote %d entries outside DEST (into %s)", len(ents), outside)
			}
			if b, err := os.ReadFile(outsideFile); err != nil || string(b) != "keep me\n" {
				t.Errorf("the file outside DEST: %q, %v; want it unchanged", b, err)
			}
			st := lstat(t, filepath.Join(dest, "f"))
			if force && st.Mode&unix.S_IFMT != unix.S_IFREG {
				t.Errorf("export --force: f is %#o, want the exported regular file in place of the symlink", st.Mode&unix.S_IFMT)
			}
			if !force && (st.Mode&unix.S_IFMT != unix.S_IFLNK || !strings.Contains(stderr, filepath.Join(dest, "f"))) {
				t.Errorf("export: f raced to a symlink: %#o, stderr %q; want it left and reported", st.Mode&unix.S_IFMT, stderr)
			}
			if target, err := os.Readlink(filepath.Join(dest, "ln")); err != nil || target != "../../outside" {
				t.Errorf("exported symlink ln: %q, %v", target, err)
			}
			if b, err := os.ReadFile(filepath.Join(dest, "z.txt")); err != nil || string(b) != "z\n" {
				t.Errorf("export of the rest: z.txt %q, %v", b, err)
			}
		})
	}
}
