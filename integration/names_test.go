package integration

// names_test.go: encrypted names through the built binary. What the cipher
// directory shows of a tree with known names and symlink targets (nothing
// of them: names, targets, file bytes, logs), a tree whose plain paths
// reach 4,000 bytes in a cipher directory under a 200-byte path (every
// request works through directory handles, never a full path), and
// 255-byte names of 1- and 4-byte UTF-8 characters. The attacks on names
// are in names_attack_test.go; fs/names_test.go has the unit versions.

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNamesNothingInClear: kmsfs init (names encrypted by default), a tree
// of files, directories, a hard link, a rename, a long name, a UTF-8 name
// and symlinks with known names and targets; then every name in the
// cipher directory, every symlink target there and every byte of every
// file in it (the index, the logs, the names key head included) is
// searched for each plain name and target: none may appear.
func TestNamesNothingInClear(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.mount()
	// Every name and target at least 8 bytes (the byte scan's minimum),
	// distinct from anything kmsfs writes on its own.
	names := []string{
		"alpha-secret-name.txt", "bravo-project-dir", "charlie-notes.md", "delta-nested-dir",
		"echo-hardlink", "foxtrot-old-name", "golf-new-name", "hotel-symlink-rel", "india-symlink-abs",
		"juliet-empty-dir", "kilo-" + strings.Repeat("long-name-", 19), "lima-\u00e9chelle-\u00fcber-\u65e5\u672c\u8a9e",
		"mike-dangling-link", "november-file-in-deep",
	}
	targets := []string{
		"bravo-project-dir/charlie-notes.md", "/home/oscar-user/papa-document.txt", "quebec/does/not/exist",
	}
	p := func(rel ...string) string { return filepath.Join(append([]string{f.mnt}, rel...)...) }
	must(t, os.WriteFile(p(names[0]), []byte("content one"), 0o644))
	must(t, os.MkdirAll(p(names[1], names[3]), 0o755))
	must(t, os.WriteFile(p(names[1], names[2]), []byte("content two"), 0o600))
	must(t, os.WriteFile(p(names[1], names[3], names[13]), []byte("content three"), 0o644))
	must(t, os.Link(p(names[0]), p(names[1], names[4])))
	must(t, os.WriteFile(p(names[5]), []byte("renamed"), 0o644))
	must(t, os.Rename(p(names[5]), p(names[1], names[6])))
	must(t, os.Symlink(targets[0], p(names[7])))
	must(t, os.Symlink(targets[1], p(names[1], names[8])))
	must(t, os.Mkdir(p(names[9]), 0o700))
	must(t, os.WriteFile(p(names[10]), []byte("long"), 0o644))
	must(t, os.WriteFile(p(names[1], names[11]), []byte("utf-8"), 0o644))
	must(t, os.Symlink(targets[2], p(names[1], names[3], names[12])))
	must(t, unix.Setxattr(p(names[0]), "user.note", []byte("xattr values are sealed"), 0))
	// Through the mount everything reads back (the test is not vacuous).
	for link, want := range map[string]string{names[7]: targets[0], filepath.Join(names[1], names[8]): targets[1]} {
		if got, err := os.Readlink(p(link)); err != nil || got != want {
			t.Fatalf("readlink %s: %q, %v; want %q", link, got, err, want)
		}
	}
	if b, err := os.ReadFile(p(names[7])); err != nil || string(b) != "content two" {
		t.Fatalf("read through the symlink: %q, %v", b, err)
	}
	f.unmount()

	// The plain strings, and the components of the targets (a target
	// split at '/' must not show its parts either).
	secrets := map[string]bool{}
	for _, s := range append(append([]string(nil), names...), targets...) {
		secrets[s] = true
		for _, part := range strings.Split(s, "/") {
			if len(part) >= 5 {
				secrets[part] = true
			}
		}
	}
	var list [][]byte
	label := map[string]string{}
	for s := range secrets {
		for enc, b := range map[string][]byte{"raw": []byte(s), "hex": []byte(hex.EncodeToString([]byte(s)))} {
			if len(b) >= 8 {
				list = append(list, b)
				label[string(b)] = fmt.Sprintf("%q (%s)", s, enc)
			}
		}
	}
	n := newNeedles(list)
	lab := func(b []byte) string { return label[string(b)] }

	// Names and symlink targets in the cipher directory.
	entries, links, files := 0, 0, 0
	err := filepath.WalkDir(f.cipher, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(f.cipher, path)
		if rel == "." {
			return nil
		}
		entries++
		for s := range secrets {
			if strings.Contains(d.Name(), s) {
				t.Errorf("cipher entry %s shows the plain %q", rel, s)
			}
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			links++
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			for s := range secrets {
				if strings.Contains(target, s) {
					t.Errorf("cipher symlink %s -> %q shows the plain %q", rel, target, s)
				}
			}
		case d.Type().IsRegular():
			files++
		}
		return nil
	})
	must(t, err)
	if links != 3 {
		t.Errorf("cipher directory holds %d symlinks, want 3 (the test's)", links)
	}
	// The bytes of every file: cipher files, directory IDs, side files,
	// kmsfs.conf, the names key head, the index, the audit and mount logs.
	// The scanner self-check first: it finds a name where one is.
	probe := filepath.Join(t.TempDir(), "probe")
	must(t, os.WriteFile(probe, append(randBytes(t, 5000), []byte(names[2])...), 0o600))
	if hits, _ := scanDirFor(t, filepath.Dir(probe), n, lab); len(hits) != 1 {
		t.Fatalf("scanner self-check: got %d hits, want 1: %v", len(hits), hits)
	}
	hits, scanned := scanDirFor(t, f.cipher, n, lab)
	for _, h := range hits {
		t.Errorf("plain name or target in a cipher directory file: %s", h)
	}
	if scanned != files || files < 10 {
		t.Errorf("scanned %d files of the %d in the cipher directory, want all of them (at least 10)", scanned, files)
	}
	t.Logf("cipher directory: %d entries, %d symlinks, %d files scanned for %d strings: %d hits", entries, links, files, len(list), len(hits))
}

// deepBase makes a directory under f.dir whose absolute path is 200
// bytes long.
func deepBase(t *testing.T, f *fixture) string {
	t.Helper()
	base := f.dir
	for i := 0; len(base) < 200; i++ {
		base = filepath.Join(base, strings.Repeat(fmt.Sprint(i%10), min(60, 200-len(base)-1)))
	}
	must(t, os.MkdirAll(base, 0o755))
	return base
}

// TestNamesDeepTree: the cipher directory sits under a 200-byte path and
// the plain tree below the mount reaches 4,000-byte paths, so the cipher
// paths (each encrypted component longer than its plain name) pass
// PATH_MAX. At the bottom, through a directory fd and *at calls: create,
// stat, rename, link, symlink, readlink, chmod, truncate, readdir, unlink,
// mkdir and rmdir. Offline, kmsfs cat reads the bottom file and fsck and
// verify walk the whole tree.
func TestNamesDeepTree(t *testing.T) {
	eachNameKind(t, func(t *testing.T, k nameKind) {
		f := newFixture(t)
		f.cipher = filepath.Join(deepBase(t, f), "cipher")
		f.initKind(k)
		f.mount()
		// 99-byte components, the last one shorter: the bottom file's
		// plain path (relative to the mount root) is 4,000 bytes.
		const depth = 4000
		rel := ""
		for len(rel) < depth-len("/file2")-1 {
			comp := strings.Repeat("d", min(99, depth-len("/file2")-len(rel)-1))
			rel = filepath.Join(rel, comp)
			if err := os.Mkdir(filepath.Join(f.mnt, rel), 0o755); err != nil {
				t.Fatalf("mkdir at %d bytes: %v", len(rel), err)
			}
		}
		dir, err := os.Open(filepath.Join(f.mnt, rel))
		must(t, err)
		defer dir.Close()
		fd := int(dir.Fd())
		bottom := rel + "/file2"
		if len(bottom) != depth || len(filepath.Dir(f.cipher)) != 200 {
			t.Fatalf("bottom file at %d bytes, cipher directory under %d bytes: want %d and 200", len(bottom), len(filepath.Dir(f.cipher)), depth)
		}
		t.Logf("plain path of the bottom file: %d bytes; mount point %d bytes; cipher directory %d bytes", len(bottom), len(f.mnt), len(f.cipher))
		steps := []struct {
			name string
			op   func() error
		}{
			{"create", func() error {
				fh, err := openAtFile(fd, "file", os.O_RDWR|os.O_CREATE|os.O_EXCL)
				if err != nil {
					return err
				}
				defer fh.Close()
				_, err = fh.Write([]byte("at the bottom"))
				return err
			}},
			{"rename", func() error { return unix.Renameat(fd, "file", fd, "file2") }},
			{"link", func() error { return unix.Linkat(fd, "file2", fd, "file3", 0) }},
			{"symlink", func() error { return unix.Symlinkat("file2", fd, "sym") }},
			{"readlink", func() error {
				buf := make([]byte, 64)
				n, err := unix.Readlinkat(fd, "sym", buf)
				if err == nil && string(buf[:n]) != "file2" {
					return fmt.Errorf("target %q, want file2", buf[:n])
				}
				return err
			}},
			{"chmod", func() error { return unix.Fchmodat(fd, "file2", 0o600, 0) }},
			{"truncate", func() error {
				fh, err := openAtFile(fd, "file2", os.O_RDWR)
				if err != nil {
					return err
				}
				defer fh.Close()
				return fh.Truncate(6)
			}},
			{"stat", func() error {
				var st unix.Stat_t
				if err := unix.Fstatat(fd, "file2", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					return err
				}
				if st.Size != 6 || st.Mode&0o777 != 0o600 || st.Nlink != 2 {
					return fmt.Errorf("size %d mode %o nlink %d, want 6, 600, 2", st.Size, st.Mode&0o777, st.Nlink)
				}
				return nil
			}},
			{"read through the symlink", func() error {
				fh, err := openAtFile(fd, "sym", os.O_RDONLY)
				if err != nil {
					return err
				}
				defer fh.Close()
				b := make([]byte, 64)
				n, _ := fh.Read(b)
				if string(b[:n]) != "at the" {
					return fmt.Errorf("read %q, want %q", b[:n], "at the")
				}
				return nil
			}},
			{"readdir", func() error {
				got, err := dirNamesAt(fd)
				if err == nil && strings.Join(got, " ") != "file2 file3 sym" {
					return fmt.Errorf("listing %q, want file2 file3 sym", got)
				}
				return err
			}},
			{"unlink", func() error {
				for _, n := range []string{"file3", "sym"} {
					if err := unix.Unlinkat(fd, n, 0); err != nil {
						return err
					}
				}
				return nil
			}},
			{"mkdir+rmdir", func() error {
				if err := unix.Mkdirat(fd, "sub", 0o755); err != nil {
					return err
				}
				return unix.Unlinkat(fd, "sub", unix.AT_REMOVEDIR)
			}},
		}
		for _, s := range steps {
			if err := s.op(); err != nil {
				t.Errorf("%s at the bottom (%d-byte plain path): %v", s.name, len(bottom), err)
			}
		}
		dir.Close()
		f.unmount()
		// Its cipher path is longer than PATH_MAX with encrypted names
		// (and with plaintext names too, under the 200-byte path), and
		// kmsfs path finds it (with plaintext names: the plain path).
		cp := strings.TrimSuffix(f.kmsfs("path", f.cipher, bottom), "\n")
		if !k.encrypted && cp != filepath.Join(f.cipher, bottom) {
			t.Errorf("kmsfs path with plaintext names: %d bytes, want the plain path under the cipher directory", len(cp))
		}
		if len(cp) < 4096 {
			t.Errorf("cipher path of the bottom file: %d bytes, want more than PATH_MAX (the test is about that)", len(cp))
		} else {
			t.Logf("cipher path of the bottom file: %d bytes", len(cp))
		}
		// Offline commands walk by directory handles too.
		if got := f.kmsfs("cat", f.cipher, bottom); got != "at the" {
			t.Errorf("kmsfs cat of the bottom file: %q, want %q", got, "at the")
		}
		if out, stderr, code := f.run("verify", f.cipher); code != 0 || !strings.Contains(out, "verified 1 files") {
			t.Errorf("verify of the deep tree: exit %d\n%s%s", code, out, stderr)
		}
		if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
			t.Errorf("fsck of the deep tree: exit %d\n%s%s", code, out, stderr)
		}
		// And the mount again, from the top: the whole path resolves.
		f.mount()
		if b, err := os.ReadFile(filepath.Join(f.mnt, bottom)); err != nil || string(b) != "at the" {
			t.Errorf("read the bottom file after a remount: %q, %v", b, err)
		}
		f.unmount()
	})
}

// openAtFile opens name relative to the directory fd dirfd.
func openAtFile(dirfd int, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// dirNamesAt lists the directory fd dirfd (by a fresh fd of its own),
// sorted, without . and ..
func dirNamesAt(dirfd int) ([]string, error) {
	fh, err := openAtFile(dirfd, ".", os.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	names, err := fh.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// TestNamesLongUTF8: 255-byte names, of 1-byte and of 4-byte UTF-8
// characters, created, listed, renamed (long to long in another
// directory, long to short, short to long), hard-linked and removed; a
// 256-byte name is refused with ENAMETOOLONG. Afterwards no long-name
// side file is left in the cipher directory.
func TestNamesLongUTF8(t *testing.T) {
	eachNameKind(t, func(t *testing.T, k nameKind) {
		f := newFixture(t)
		f.initKind(k)
		f.mount()
		p := func(rel string) string { return filepath.Join(f.mnt, rel) }
		ascii := strings.Repeat("a", 255)
		utf8 := strings.Repeat("\U0001F600", 63) + "abc" // 252 + 3 bytes
		utf8b := strings.Repeat("\u00e9", 127) + "z"     // 254 + 1 bytes, 2-byte characters
		for _, n := range []string{ascii, utf8, utf8b} {
			if len(n) != 255 {
				t.Fatalf("test name of %d bytes", len(n))
			}
			if err := os.WriteFile(p(n), []byte(n[:8]), 0o644); err != nil {
				t.Fatalf("create a 255-byte name: %v", err)
			}
		}
		must(t, os.Mkdir(p("d"), 0o755))
		wantList := func(dir string, want ...string) {
			t.Helper()
			sort.Strings(want)
			got, err := listNames(p(dir))
			if err != nil || strings.Join(got, "/") != strings.Join(want, "/") {
				t.Errorf("list %q: %d names, %v; want %d names", dir, len(got), err, len(want))
			}
		}
		wantList(".", ascii, utf8, utf8b, "d")
		steps := []struct {
			name string
			op   func() error
		}{
			{"rename long to long in another directory", func() error { return os.Rename(p(ascii), p("d/"+utf8)) }},
			{"rename long to short", func() error { return os.Rename(p(utf8), p("short")) }},
			{"rename short to long", func() error { return os.Rename(p("short"), p(ascii)) }},
			{"rename long over long", func() error { return os.Rename(p(utf8b), p(ascii)) }},
			{"link long to long", func() error { return os.Link(p("d/"+utf8), p("d/"+utf8b)) }},
			{"symlink long to long", func() error { return os.Symlink(utf8, p("d/"+ascii)) }},
			{"mkdir long", func() error { return os.Mkdir(p(utf8), 0o755) }},
			{"create in a long-named directory", func() error { return os.WriteFile(p(utf8+"/"+ascii), []byte("in"), 0o644) }},
		}
		for _, s := range steps {
			if err := s.op(); err != nil {
				t.Errorf("%s: %v", s.name, err)
			}
		}
		wantList(".", ascii, utf8, "d")
		wantList("d", utf8, utf8b, ascii)
		wantList(utf8, ascii)
		for rel, want := range map[string]string{ascii: utf8b[:8], "d/" + utf8: ascii[:8], "d/" + utf8b: ascii[:8], utf8 + "/" + ascii: "in"} {
			if b, err := os.ReadFile(p(rel)); err != nil || string(b) != want {
				t.Errorf("read %d-byte path: %q, %v; want %q", len(rel), b, err, want)
			}
		}
		if got, err := os.Readlink(p("d/" + ascii)); err != nil || got != utf8 {
			t.Errorf("readlink of a long symlink: %d bytes, %v", len(got), err)
		}
		too := ascii + "b"
		if err := os.WriteFile(p(too), nil, 0o644); !errors.Is(err, syscall.ENAMETOOLONG) {
			t.Errorf("create a 256-byte name: %v, want ENAMETOOLONG", err)
		}
		if err := os.Rename(p(ascii), p(too)); !errors.Is(err, syscall.ENAMETOOLONG) {
			t.Errorf("rename to a 256-byte name: %v, want ENAMETOOLONG", err)
		}
		for _, rel := range []string{utf8 + "/" + ascii, "d/" + utf8, "d/" + utf8b, "d/" + ascii, ascii} {
			if err := os.Remove(p(rel)); err != nil {
				t.Errorf("remove a %d-byte path: %v", len(rel), err)
			}
		}
		for _, rel := range []string{utf8, "d"} {
			if err := os.Remove(p(rel)); err != nil {
				t.Errorf("rmdir a %d-byte path: %v", len(rel), err)
			}
		}
		wantList(".")
		f.unmount()
		// Nothing left behind in the cipher directory: no entry, no side
		// file, no directory.
		var left []string
		must(t, filepath.WalkDir(f.cipher, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(f.cipher, path)
			switch {
			case rel == ".kmsfs":
				return filepath.SkipDir
			case rel == "." || rel == "kmsfs.conf" || rel == "kmsfs.names" || rel == "kmsfs.dirid":
			default:
				left = append(left, rel)
			}
			return nil
		}))
		if len(left) > 0 {
			t.Errorf("cipher directory after removing everything: %q, want nothing", left)
		}
		if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
			t.Errorf("fsck: exit %d\n%s%s", code, out, stderr)
		}
	})
}

// TestPlaintextNamesLayout: kmsfs init --plaintext-names keeps the old
// layout: the cipher tree mirrors the plain tree name for name, symlink
// targets are stored as they are, and there is no names key and no
// directory ID.
func TestPlaintextNamesLayout(t *testing.T) {
	f := newFixture(t)
	f.init("--plaintext-names")
	f.mount()
	for _, rel := range []string{"top.txt", "dir/sub/nested.bin", "dir/" + strings.Repeat("\u00e9", 100)} {
		writeFile(t, filepath.Join(f.mnt, rel), []byte(rel))
	}
	must(t, os.Mkdir(filepath.Join(f.mnt, "empty"), 0o755))
	must(t, os.Symlink("../top.txt", filepath.Join(f.mnt, "dir", "link")))
	plain := plainTreeLines(t, f.mnt)
	f.unmount()
	var cipher []string
	for _, l := range plainTreeLines(t, f.cipher) {
		switch rel := l[2:]; {
		case rel == ".kmsfs" || strings.HasPrefix(rel, ".kmsfs/") || rel == "kmsfs.conf":
		default:
			cipher = append(cipher, l)
		}
	}
	if strings.Join(cipher, "\n") != strings.Join(plain, "\n") {
		t.Errorf("cipher tree:\n%s\nwant the plain tree:\n%s", strings.Join(cipher, "\n"), strings.Join(plain, "\n"))
	}
	if got, err := os.Readlink(filepath.Join(f.cipher, "dir", "link")); err != nil || got != "../top.txt" {
		t.Errorf("cipher symlink: %q, %v; want the plain target", got, err)
	}
	for _, p := range []string{"kmsfs.names", ".kmsfs/names", "kmsfs.dirid", "dir/kmsfs.dirid"} {
		if _, err := os.Lstat(filepath.Join(f.cipher, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s in a plaintext-names cipher directory: %v, want none", p, err)
		}
	}
}
