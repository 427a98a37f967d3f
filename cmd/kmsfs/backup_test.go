package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// offlineEnv is a cipher directory made by init in a temp dir, with its
// own keyring and passphrase, driven in-process.
type offlineEnv struct {
	t         *testing.T
	base      string
	dir       string
	encrypted bool
	cipher    map[string]string // plain path -> full cipher path, of what write made
}

// newOfflineEnv makes a cipher directory with encrypted names, or with
// plaintext names when initArgs holds --plaintext-names.
func newOfflineEnv(t *testing.T, initArgs ...string) *offlineEnv {
	t.Helper()
	base := t.TempDir()
	t.Setenv(envKeyring, filepath.Join(base, "kr", "keyring.json"))
	t.Setenv(envPassphrase, "backup test passphrase")
	e := &offlineEnv{t: t, base: base, dir: filepath.Join(base, "c"), cipher: map[string]string{}}
	if code, _, stderr := e.kmsfs(append(append([]string{"init"}, initArgs...), e.dir)...); code != 0 {
		t.Fatalf("init: exit %d, stderr %q", code, stderr)
	}
	conf, err := cipherdir.Load(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	e.encrypted = conf.EncryptedNames()
	return e
}

// eachNames runs fn as a subtest on a cipher directory of each kind.
func eachNames(t *testing.T, fn func(t *testing.T, e *offlineEnv)) {
	t.Run("encrypted-names", func(t *testing.T) { fn(t, newOfflineEnv(t)) })
	t.Run("plaintext-names", func(t *testing.T) { fn(t, newOfflineEnv(t, "--plaintext-names")) })
}

func (e *offlineEnv) kmsfs(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// cpath is the full cipher path of rel, a plain path write made.
func (e *offlineEnv) cpath(rel string) string {
	e.t.Helper()
	p, ok := e.cipher[rel]
	if !ok {
		e.t.Fatalf("cpath(%s): not written by the test", rel)
	}
	return p
}

// plainEntry is one entry of a plain tree the tests write without FUSE.
type plainEntry struct {
	data    []byte
	mode    os.FileMode
	symlink string // non-empty: a symlink with this target
	dir     bool
	mtime   time.Time
	xattrs  map[string]string // user.* attributes of a regular file
	bare    bool              // a 0-byte cipher file with no header (a create cut short)
}

// write puts entries into the cipher directory as the mount would: names
// through the cipher tree (encrypted, each directory given its ID), each
// regular file a key from the Manager, its header and its content.
func (e *offlineEnv) write(entries map[string]plainEntry) {
	t := e.t
	t.Helper()
	conf, err := cipherdir.Load(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := providerSpecOf(&globals{}, e.dir, conf)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ks, err := openKeyStack(ctx, e.dir, conf, spec, newPassSource(&globals{}), stackOptions{index: healingIndex, cacheEntries: 64, poolSize: 1})
	if err != nil {
		t.Fatalf("key stack: %v", err)
	}
	defer ks.Close()
	nc, err := ks.nameCipher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if nc != nil {
		defer nc.Zero()
	}
	tree, err := cipherdir.OpenTree(e.dir, nc)
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	// create makes rel with mk(parent handle, entry) unless it exists.
	create := func(rel string, mk func(dirfd int, entry string) error) {
		t.Helper()
		loc, err := tree.Resolve(rel)
		if err != nil {
			t.Fatalf("resolve %s: %v", rel, err)
		}
		defer loc.Close()
		e.cipher[rel] = filepath.Join(e.dir, loc.Cipher)
		if _, err := loc.Lstat(); err == nil {
			return
		}
		if err := tree.PrepareEntry(loc.Parent, loc.Entry, loc.Encoded); err != nil {
			t.Fatal(err)
		}
		if err := mk(loc.Parent, loc.Entry); err != nil {
			t.Fatalf("create %s: %v", rel, err)
		}
	}
	mkdirAll := func(rel string) {
		parts := strings.Split(rel, "/")
		for i := range parts {
			create(strings.Join(parts[:i+1], "/"), func(dirfd int, entry string) error {
				if err := unix.Mkdirat(dirfd, entry, 0o755); err != nil {
					return err
				}
				fd, err := cipherdir.OpenDirAt(dirfd, entry)
				if err != nil {
					return err
				}
				defer unix.Close(fd)
				_, err = tree.NewDirID(fd)
				return err
			})
		}
	}
	rels := make([]string, 0, len(entries))
	for rel := range entries {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		if pe := entries[rel]; pe.dir {
			mkdirAll(rel)
		} else if dir := path.Dir(rel); dir != "." {
			mkdirAll(dir)
		}
	}
	for _, rel := range rels {
		pe := entries[rel]
		if pe.dir {
			continue
		}
		if pe.symlink != "" {
			create(rel, func(dirfd int, entry string) error {
				stored, err := tree.EncryptTarget([]byte(pe.symlink))
				if err != nil {
					return err
				}
				return unix.Symlinkat(string(stored), dirfd, entry)
			})
			continue
		}
		var f *os.File
		create(rel, func(dirfd int, entry string) error {
			fd, err := cipherdir.OpenAt(dirfd, entry, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, uint32(pe.mode.Perm()))
			f = os.NewFile(uintptr(fd), rel)
			return err
		})
		if pe.bare {
			f.Close()
			continue
		}
		h, cc, err := ks.mgr.NewFile(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := cipherfile.Create(f, conf.Layout(), h); err != nil {
			t.Fatal(err)
		}
		cf, err := cipherfile.New(f, cc)
		if err != nil {
			t.Fatal(err)
		}
		if len(pe.data) > 0 {
			if _, err := cf.WriteAt(pe.data, 0); err != nil {
				t.Fatal(err)
			}
		}
		for name, v := range pe.xattrs {
			sealed, err := cc.SealXattr(name, []byte(v))
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Fsetxattr(int(f.Fd()), name, sealed, 0); err != nil {
				t.Skipf("no user xattrs on %s: %v", e.dir, err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(e.cpath(rel), pe.mode); err != nil {
			t.Fatal(err)
		}
	}
	for rel, pe := range entries {
		p := e.cpath(rel)
		if pe.dir {
			if err := os.Chmod(p, pe.mode); err != nil {
				t.Fatal(err)
			}
		}
		if !pe.mtime.IsZero() && pe.symlink == "" {
			if err := os.Chtimes(p, pe.mtime, pe.mtime); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func randData(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// flipByte flips one bit of the byte at off in path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestChunkRanges(t *testing.T) {
	tests := []struct {
		in   []int64
		want string
	}{
		{[]int64{5}, "chunk 5 fails authentication"},
		{[]int64{5, 6, 7}, "chunks 5-7 fail authentication"},
		{[]int64{0, 2, 3, 9}, "chunks 0, 2-3, 9 fail authentication"},
		{[]int64{1, 2}, "chunks 1-2 fail authentication"},
	}
	for _, tt := range tests {
		if got := chunkRanges(tt.in); got != tt.want {
			t.Errorf("chunkRanges(%v): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCleanPlain(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "docs/a.txt", want: "docs/a.txt"},
		{in: "/docs//a.txt", want: "docs/a.txt"},
		{in: ".", want: "."},
		{in: "", want: "."},
		{in: "/", want: "."},
		{in: "docs/../b", want: "b"},
		{in: "..", wantErr: true},
		{in: "../etc/passwd", wantErr: true},
		{in: "/../x", wantErr: true},
		{in: "a\x00b", wantErr: true},
		// Refused by the tree, with plaintext names only.
		{in: "kmsfs.conf", want: "kmsfs.conf"},
		{in: "docs/.kmsfs", want: "docs/.kmsfs"},
	}
	for _, tt := range tests {
		got, err := cleanPlain(tt.in)
		var ue usageError
		if (err != nil) != tt.wantErr || (err == nil && got != tt.want) || (err != nil && !errors.As(err, &ue)) {
			t.Errorf("cleanPlain(%q): got %q, %v; want %q, a usage error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestCatExportVerifyOffline writes a tree without FUSE, then reads it
// back with cat and export, verifies it, damages it and checks that
// verify names every damaged file and chunk and export exports the rest.
func TestCatExportVerifyOffline(t *testing.T) {
	eachNames(t, testCatExportVerifyOffline)
}

func testCatExportVerifyOffline(t *testing.T, e *offlineEnv) {
	mt := time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)
	entries := map[string]plainEntry{
		"docs":           {dir: true, mode: 0o750, mtime: mt},
		"docs/a.txt":     {data: []byte("hello, world\n"), mode: 0o640, mtime: mt, xattrs: map[string]string{"user.tag": "blue", "user.empty": ""}},
		"docs/big.bin":   {data: randData(t, 10*4096+17), mode: 0o600, mtime: mt.Add(time.Hour)},
		"docs/link":      {symlink: "a.txt"},
		"empty":          {mode: 0o644, mtime: mt},
		"one":            {data: []byte{7}, mode: 0o755, mtime: mt, xattrs: map[string]string{"user.x": "damaged later"}},
		"d/e/f/chunk":    {data: randData(t, 4096), mode: 0o644, mtime: mt},
		"d/e/f/chunk+1":  {data: randData(t, 4097), mode: 0o644, mtime: mt},
		"d/e/f/chunk-1":  {data: randData(t, 4095), mode: 0o644, mtime: mt},
		"d/sub/deep.txt": {data: []byte("deep"), mode: 0o444, mtime: mt},
	}
	e.write(entries)

	for rel, pe := range entries {
		if pe.dir || pe.symlink != "" {
			continue
		}
		code, out, stderr := e.kmsfs("cat", e.dir, rel)
		if code != 0 || out != string(pe.data) {
			t.Errorf("cat %s: exit %d, %d bytes, stderr %q; want %d bytes", rel, code, len(out), stderr, len(pe.data))
		}
	}
	if code, _, stderr := e.kmsfs("cat", e.dir, "docs"); code != 1 || !strings.Contains(stderr, "is a directory") {
		t.Errorf("cat of a directory: exit %d, %q", code, stderr)
	}
	if code, _, stderr := e.kmsfs("cat", e.dir, "docs/link"); code != 1 || !strings.Contains(stderr, "symlink to a.txt") {
		t.Errorf("cat of a symlink: exit %d, %q", code, stderr)
	}
	if code, _, stderr := e.kmsfs("cat", e.dir, "nope"); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("cat of a missing file: exit %d, %q", code, stderr)
	}
	if code, _, _ := e.kmsfs("cat", e.dir, "../x"); code != 2 {
		t.Errorf("cat ../x: exit %d, want 2", code)
	}

	dest := filepath.Join(e.base, "out")
	if code, out, stderr := e.kmsfs("export", e.dir, ".", dest); code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, out, stderr)
	}
	checkExported(t, dest, "", entries)
	// Again: everything is in the way, nothing changes.
	if err := os.WriteFile(filepath.Join(dest, "one"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := e.kmsfs("export", e.dir, ".", dest); code != 1 || !strings.Contains(stderr, "--force") {
		t.Errorf("export over an existing tree: exit %d, %q; want 1 naming --force", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "one")); string(b) != "mine" {
		t.Errorf("export without --force changed an existing file: %q", b)
	}
	if code, out, stderr := e.kmsfs("export", "--force", e.dir, ".", dest); code != 0 {
		t.Fatalf("export --force: exit %d\n%s%s", code, out, stderr)
	}
	checkExported(t, dest, "", entries)
	// One file, into an existing directory, and to a new name.
	one := filepath.Join(e.base, "one")
	if err := os.Mkdir(one, 0o755); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := e.kmsfs("export", e.dir, "docs/a.txt", one); code != 0 {
		t.Fatalf("export of one file into a directory: exit %d, %q", code, stderr)
	}
	if code, _, stderr := e.kmsfs("export", e.dir, "d/sub", filepath.Join(e.base, "sub")); code != 0 {
		t.Fatalf("export of a subtree: exit %d, %q", code, stderr)
	}
	if b, err := os.ReadFile(filepath.Join(one, "a.txt")); err != nil || string(b) != "hello, world\n" {
		t.Errorf("exported single file: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(e.base, "sub", "deep.txt")); err != nil || string(b) != "deep" {
		t.Errorf("exported subtree: %q, %v", b, err)
	}
	if code, _, _ := e.kmsfs("export", e.dir, ".", filepath.Join(e.dir, "docs", "x")); code != 2 {
		t.Errorf("export into the cipher directory: exit %d, want 2", code)
	}

	if code, out, stderr := e.kmsfs("verify", e.dir); code != 0 || !strings.Contains(out, "verified 8 files") {
		t.Fatalf("verify of a sound tree: exit %d\n%s%s", code, out, stderr)
	}
	if code, _, _ := e.kmsfs("verify", "--jobs", "0", e.dir); code != 2 {
		t.Errorf("verify --jobs 0: exit %d, want 2", code)
	}

	// Damage: chunks 3 and 4 of big.bin, slot 1 (empty) of a.txt, the
	// preamble of chunk+1, the tail of chunk-1.
	l := cipherdir.Config{ChunkShift: 12, SlotShift: 9}.Layout()
	big := e.cpath("docs/big.bin")
	flipByte(t, big, l.CipherChunkOffset(3)+40)
	flipByte(t, big, l.CipherChunkOffset(4)+4000)
	flipByte(t, e.cpath("docs/a.txt"), l.SlotOffset(1)+100)
	flipByte(t, e.cpath("d/e/f/chunk+1"), 5) // version
	cm1 := e.cpath("d/e/f/chunk-1")
	fi, err := os.Stat(cm1)
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, cm1, fi.Size()-1) // the tag
	onePath := e.cpath("one")
	sealed := make([]byte, 256)
	n, err := unix.Getxattr(onePath, "user.x", sealed)
	if err != nil {
		t.Fatal(err)
	}
	sealed[n-1] ^= 1
	if err := unix.Setxattr(onePath, "user.x", sealed[:n], 0); err != nil {
		t.Fatal(err)
	}
	code, out, _ := e.kmsfs("verify", "--jobs", "3", e.dir)
	if code != 1 {
		t.Errorf("verify of a damaged tree: exit %d, want 1", code)
	}
	for _, want := range []string{
		"docs/big.bin (file ", "): chunks 3-4 fail authentication",
		"docs/a.txt (file ", "): header: slot 1 is damaged",
		"d/e/f/chunk+1 (file -): invalid preamble",
		"d/e/f/chunk-1 (file ", "): chunk 0 fails authentication",
		"one (file ", "): extended attribute user.x fails authentication",
		"verified 8 files", "5 damaged",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	if code, out, _ := e.kmsfs("verify", e.dir, "d/sub"); code != 0 || !strings.Contains(out, "verified 1 files") {
		t.Errorf("verify of a sound subtree: exit %d\n%s", code, out)
	}
	if code, _, stderr := e.kmsfs("cat", e.dir, "docs/big.bin"); code != 1 || !strings.Contains(stderr, "chunk 3 fails authentication") {
		t.Errorf("cat of a damaged file: exit %d, %q", code, stderr)
	}

	dest2 := filepath.Join(e.base, "out2")
	code, _, stderr := e.kmsfs("export", e.dir, ".", dest2)
	if code != 1 || !strings.Contains(stderr, "docs/big.bin") {
		t.Errorf("export of a damaged tree: exit %d, %q; want 1 naming docs/big.bin", code, stderr)
	}
	for _, bad := range []string{"docs/big.bin", "d/e/f/chunk+1", "d/e/f/chunk-1", "one"} {
		if _, err := os.Lstat(filepath.Join(dest2, bad)); !os.IsNotExist(err) {
			t.Errorf("export wrote damaged %s (%v)", bad, err)
		}
	}
	// a.txt's content and key are intact: exported.
	good := map[string]plainEntry{}
	for rel, pe := range entries {
		switch rel {
		case "docs/big.bin", "d/e/f/chunk+1", "d/e/f/chunk-1", "one":
		case "docs/a.txt": // flipByte moved its mtime
			pe.mtime = time.Time{}
			good[rel] = pe
		default:
			good[rel] = pe
		}
	}
	checkExported(t, dest2, "", good)
	if left, _ := filepath.Glob(filepath.Join(dest2, "*", ".*kmsfs-export*")); len(left) > 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// checkExported compares an exported tree with the entries written.
func checkExported(t *testing.T, dest, prefix string, entries map[string]plainEntry) {
	t.Helper()
	for rel, pe := range entries {
		p := filepath.Join(dest, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("exported %s: %v", rel, err)
			continue
		}
		switch {
		case pe.symlink != "":
			if got, err := os.Readlink(p); err != nil || got != pe.symlink {
				t.Errorf("exported symlink %s: %q, %v; want %q", rel, got, err, pe.symlink)
			}
			continue
		case pe.dir:
			if !fi.IsDir() {
				t.Errorf("exported %s is not a directory", rel)
			}
		default:
			b, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(b, pe.data) {
				t.Errorf("exported %s: %d bytes, %v; want %d bytes", rel, len(b), err, len(pe.data))
			}
		}
		for name, v := range pe.xattrs {
			buf := make([]byte, 256)
			n, err := unix.Getxattr(p, name, buf)
			if err != nil || string(buf[:n]) != v {
				t.Errorf("exported %s: xattr %s = %q, %v; want %q", rel, name, buf[:max(n, 0)], err, v)
			}
		}
		if got := fi.Mode().Perm(); got != pe.mode.Perm() {
			t.Errorf("exported %s: mode %v, want %v", rel, got, pe.mode.Perm())
		}
		if !pe.mtime.IsZero() && !fi.ModTime().Equal(pe.mtime) {
			t.Errorf("exported %s: mtime %v, want %v", rel, fi.ModTime(), pe.mtime)
		}
	}
}

// TestIndexBackupRestoreOffline: a backup taken before more files were
// written, restored over a deleted index, loses none of them; a backup of
// another filesystem and a damaged backup change nothing.
func TestIndexBackupRestoreOffline(t *testing.T) {
	eachNames(t, testIndexBackupRestoreOffline)
}

func testIndexBackupRestoreOffline(t *testing.T, e *offlineEnv) {
	first := map[string]plainEntry{}
	for i := range 5 {
		first["a/"+string(rune('a'+i))] = plainEntry{data: randData(t, 100*i), mode: 0o644}
	}
	e.write(first)
	backup := filepath.Join(e.base, "index.backup")
	if code, out, stderr := e.kmsfs("index", "backup", e.dir, backup); code != 0 || !strings.Contains(out, "backed up 5 index entries") {
		t.Fatalf("index backup: exit %d\n%s%s", code, out, stderr)
	}
	second := map[string]plainEntry{}
	for i := range 3 {
		second["b/"+string(rune('a'+i))] = plainEntry{data: randData(t, 5000), mode: 0o600}
	}
	e.write(second)
	if err := os.RemoveAll(cipherdir.IndexDir(e.dir)); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := e.kmsfs("index", "restore", e.dir, backup)
	if code != 0 {
		t.Fatalf("index restore: exit %d\n%s%s", code, out, stderr)
	}
	for _, want := range []string{"restored 5 index entries", "3 headers added", "holds 8 entries"} {
		if !strings.Contains(out, want) {
			t.Errorf("index restore output lacks %q:\n%s", want, out)
		}
	}
	if code, out, _ := e.kmsfs("fsck", e.dir); code != 0 {
		t.Errorf("fsck after restore: exit %d\n%s", code, out)
	}
	if files := statusFiles(t, e); files != 8 {
		t.Errorf("status after restore: %d files, want 8", files)
	}

	// Restore onto a complete index: nothing to add.
	if code, out, _ := e.kmsfs("index", "restore", e.dir, backup); code != 0 || !strings.Contains(out, "(5 already present)") {
		t.Errorf("second restore: exit %d\n%s", code, out)
	}
	// Refusals: not a backup, a damaged one, another filesystem's.
	raw, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	nl := bytes.IndexByte(raw, '\n')
	damaged := append(append([]byte{}, raw[:nl+1]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3)
	other := append([]byte("kmsfs-index-backup/1 00000000000000000000000000000000\n"), raw[nl+1:]...)
	for name, b := range map[string][]byte{"text": []byte("hello\n"), "damaged": damaged, "other": other, "empty": nil} {
		p := filepath.Join(e.base, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if code, _, stderr := e.kmsfs("index", "restore", e.dir, p); code != 1 {
			t.Errorf("restore of a %s backup: exit %d, %q; want 1", name, code, stderr)
		}
	}
	if files := statusFiles(t, e); files != 8 {
		t.Errorf("status after refused restores: %d files, want 8", files)
	}
	if left, _ := filepath.Glob(filepath.Join(cipherdir.MetaDir(e.dir), "index-restore-*")); len(left) > 0 {
		t.Errorf("scratch index left behind: %v", left)
	}
	// Backup to stdout.
	if code, out, _ := e.kmsfs("index", "backup", e.dir, "-"); code != 0 || !strings.HasPrefix(out, indexBackupMagic+" ") {
		t.Errorf("index backup to stdout: exit %d, starts %q", code, out[:min(len(out), 40)])
	}
}

func statusFiles(t *testing.T, e *offlineEnv) int {
	t.Helper()
	code, out, stderr := e.kmsfs("status", "--json", e.dir)
	if code != 0 {
		t.Fatalf("status: exit %d, %q", code, stderr)
	}
	var st struct {
		Files  int    `json:"files"`
		Source string `json:"source"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Source != "index" {
		t.Errorf("status source: got %q, want index", st.Source)
	}
	return st.Files
}
