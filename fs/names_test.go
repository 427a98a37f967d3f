package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// cipherListing is every entry name below the cipher directory, and every
// symlink target, except kmsfs's own metadata directory.
func cipherListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Name() == ".kmsfs" && fi.IsDir() {
			return filepath.SkipDir
		}
		out = append(out, fi.Name())
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, target)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNamesHidden(t *testing.T) {
	e := newTestFS(t)
	plain := []string{"taxes-2025.pdf", "divorce", "lawyer-letter.docx", "secret-target", "kmsfs.conf", ".hidden"}
	if err := os.Mkdir(e.p("divorce"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"taxes-2025.pdf", "divorce/lawyer-letter.docx", "kmsfs.conf", ".hidden"} {
		if err := os.WriteFile(e.p(f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("divorce/secret-target", e.p("link")); err != nil {
		t.Fatal(err)
	}
	for _, name := range cipherListing(t, e.cipher) {
		for _, p := range plain {
			if strings.Contains(name, p) && !cipherdir.IsMeta(name) {
				t.Errorf("cipher directory shows %q (plain %q)", name, p)
			}
		}
	}
	// And the plain view shows them all, kmsfs.conf included (with
	// encrypted names no plain name is reserved).
	got := listDir(t, e.mnt)
	want := []string{".hidden", "divorce", "kmsfs.conf", "link", "taxes-2025.pdf"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("readdir: got %q, want %q", got, want)
	}
	if target, err := os.Readlink(e.p("link")); err != nil || target != "divorce/secret-target" {
		t.Errorf("readlink: got %q, %v", target, err)
	}
	// The real kmsfs.conf is untouched by the plain one.
	if b, err := os.ReadFile(filepath.Join(e.cipher, "kmsfs.conf")); err != nil || string(b) != "{}\n" {
		t.Errorf("cipher kmsfs.conf: got %q, %v", b, err)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// TestNamesBoundToDirectory: the same name in two directories is stored
// differently, and an encrypted name moved into another directory is left
// out of the listing and not found (never another name, never garbage).
func TestNamesBoundToDirectory(t *testing.T) {
	e := newTestFS(t)
	e.allowWarn = true
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(e.p(d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.p(d+"/same"), []byte(d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ca, cb := e.c("a/same"), e.c("b/same")
	if filepath.Base(ca) == filepath.Base(cb) {
		t.Fatalf("same name in two directories stored the same: %s", filepath.Base(ca))
	}
	if err := os.WriteFile(e.p("a/moved"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	moved := e.c("a/moved")
	e.unmount()
	if err := os.Rename(moved, filepath.Join(filepath.Dir(cb), filepath.Base(moved))); err != nil {
		t.Fatal(err)
	}
	e.mount(false)
	if got := listDir(t, e.p("b")); strings.Join(got, ",") != "same" {
		t.Errorf("b after a name moved in: got %q, want [same]", got)
	}
	if got := listDir(t, e.p("a")); strings.Join(got, ",") != "same" {
		t.Errorf("a after a name moved out: got %q, want [same]", got)
	}
	if _, err := os.Stat(e.p("b/moved")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("stat b/moved: got %v, want ENOENT", err)
	}
	warned := false
	for _, l := range e.logs.lines() {
		warned = warned || strings.Contains(l, "does not decrypt")
	}
	if !warned {
		t.Errorf("no warning about the name that does not decrypt: %q", e.logs.lines())
	}
}

// TestLongNames: names whose encoding passes 255 bytes work, with 1- and
// 4-byte UTF-8 characters, and renames between long and short names keep
// the side files in step.
func TestLongNames(t *testing.T) {
	eachNames(t, func(t *testing.T, e *testFS) {
		long1 := strings.Repeat("a", 255)
		long4 := strings.Repeat("😀", 63) + "abc" // 255 bytes
		for _, n := range []string{long1, long4} {
			if len(n) != 255 {
				t.Fatalf("test name of %d bytes", len(n))
			}
			if err := os.WriteFile(e.p(n), []byte(n[:4]), 0o644); err != nil {
				t.Fatalf("create %d-byte name: %v", len(n), err)
			}
			if b, err := os.ReadFile(e.p(n)); err != nil || !bytes.Equal(b, []byte(n[:4])) {
				t.Fatalf("read back: %q, %v", b, err)
			}
		}
		if err := os.Mkdir(e.p("d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(e.p(long1), e.p("d/"+long4)); err != nil {
			t.Fatalf("rename long to long: %v", err)
		}
		if err := os.Rename(e.p(long4), e.p("short")); err != nil {
			t.Fatalf("rename long to short: %v", err)
		}
		if err := os.Rename(e.p("short"), e.p(long1)); err != nil {
			t.Fatalf("rename short to long: %v", err)
		}
		if err := os.Link(e.p(long1), e.p("d/"+long1)); err != nil {
			t.Fatalf("link: %v", err)
		}
		if err := os.Symlink(long4, e.p("d/l"+long4[:250])); err != nil {
			t.Fatalf("symlink: %v", err)
		}
		if err := os.Mkdir(e.p("d/"+long1+"x"[:0]), 0o755); !errors.Is(err, os.ErrExist) {
			t.Fatalf("mkdir over a long name: got %v, want EEXIST", err)
		}
		if got := listDir(t, e.mnt); strings.Join(got, ",") != strings.Join([]string{long1, "d"}, ",") {
			t.Errorf("root: got %d names %q", len(got), got)
		}
		want := []string{long1, long4, "l" + long4[:250]}
		sort.Strings(want)
		if got := listDir(t, e.p("d")); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("d: got %q", got)
		}
		for _, n := range []string{long1, "d/" + long1, "d/" + long4, "d/l" + long4[:250]} {
			if err := os.Remove(e.p(n)); err != nil {
				t.Errorf("remove: %v", err)
			}
		}
		if err := os.Remove(e.p("d")); err != nil {
			t.Errorf("rmdir: %v", err)
		}
		// Nothing is left behind: no orphan side file.
		for _, name := range cipherListing(t, e.cipher) {
			if strings.HasPrefix(name, crypto.LongNamePrefix) {
				t.Errorf("left behind: %s", name)
			}
		}
	})
}

// TestDeepTree builds a plain tree whose paths reach 4,000 bytes in a
// cipher directory under a 200-byte path, and works at the bottom.
func TestDeepTree(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		t.Run(map[bool]string{true: "encrypted-names", false: "plaintext-names"}[encrypted], func(t *testing.T) {
			base := t.TempDir()
			for len(base) < 200-60 {
				base = filepath.Join(base, strings.Repeat("p", min(60, 200-60-len(base))))
			}
			if err := os.MkdirAll(base, 0o755); err != nil {
				t.Fatal(err)
			}
			deepTree(t, newTestFSMode(t, base, encrypted))
		})
	}
}

func deepTree(t *testing.T, e *testFS) {
	{
		rel := ""
		comp := strings.Repeat("d", 99)
		for len(rel)+len(comp)+1 < 4000-40 {
			rel = filepath.Join(rel, comp)
			if err := os.Mkdir(e.p(rel), 0o755); err != nil {
				t.Fatalf("mkdir at %d bytes: %v", len(rel), err)
			}
		}
		dir, err := os.Open(e.p(rel))
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		at := func(name string) string { return rel + "/" + name }
		fd := int(dir.Fd())
		if err := writeAt(fd, "file", []byte("bottom")); err != nil {
			t.Fatalf("create at the bottom: %v", err)
		}
		for _, step := range []struct {
			name string
			op   func() error
		}{
			{"rename", func() error { return syscall.Renameat(fd, "file", fd, "file2") }},
			{"link", func() error { return unix.Linkat(fd, "file2", fd, "file3", 0) }},
			{"symlink", func() error { return unix.Symlinkat("file2", fd, "sym") }},
			{"chmod", func() error { return syscall.Fchmodat(fd, "file2", 0o600, 0) }},
			{"truncate", func() error {
				f, err := openAt(fd, "file2", os.O_RDWR)
				if err != nil {
					return err
				}
				defer f.Close()
				return f.Truncate(3)
			}},
			{"stat", func() error {
				var st unix.Stat_t
				if err := fstatat(fd, "file2", &st); err != nil {
					return err
				}
				if st.Size != 3 || st.Mode&0o777 != 0o600 || st.Nlink != 2 {
					return errors.New("wrong attributes")
				}
				return nil
			}},
			{"unlink", func() error {
				for _, n := range []string{"file2", "file3", "sym"} {
					if err := syscall.Unlinkat(fd, n); err != nil {
						return err
					}
				}
				return nil
			}},
			{"mkdir+rmdir", func() error {
				if err := syscall.Mkdirat(fd, "sub", 0o755); err != nil {
					return err
				}
				return unlinkDirAt(fd, "sub")
			}},
		} {
			if err := step.op(); err != nil {
				t.Errorf("%s at %d bytes: %v", step.name, len(at("file2")), err)
			}
		}
	}
}

func writeAt(dirfd int, name string, data []byte) error {
	f, err := openAt(dirfd, name, os.O_RDWR|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(data)
	return err
}

func openAt(dirfd int, name string, flags int) (*os.File, error) {
	fd, err := syscall.Openat(dirfd, name, flags|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

func fstatat(dirfd int, name string, st *unix.Stat_t) error {
	return unix.Fstatat(dirfd, name, st, 0)
}

func unlinkDirAt(dirfd int, name string) error {
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// TestIntermediateSymlink: a writer of the cipher directory replaces an
// intermediate directory with a symlink to a directory outside it while
// mounted (as root with --allow-other). Nothing done through the mount
// may then reach outside the cipher directory: every operation fails or
// lands in the cipher directory.
func TestIntermediateSymlink(t *testing.T) {
	var r *root
	testMountHook = func(got *root) { r = got }
	t.Cleanup(func() { testMountHook = nil })
	eachNames(t, func(t *testing.T, e *testFS) {
		e.allowWarn = true
		outside := t.TempDir()
		if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, fresh := range []bool{false, true} {
			if err := os.MkdirAll(e.p("d/sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(e.p("d/sub/f"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			cd := e.c("d")
			// The kernel knows d as a directory (it resolves the
			// paths below to the mount's node for d); the mount has
			// d's handle open (fresh=false) or must reopen it by
			// name after the swap (fresh=true).
			if _, err := os.Stat(e.p("d/sub/f")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(cd, cd+".moved"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, cd); err != nil {
				t.Fatal(err)
			}
			if fresh {
				r.closeDirs()
			}
			victim := "d/" + "victim"
			ops := []struct {
				name string
				op   func() error
			}{
				{"create", func() error { return os.WriteFile(e.p("d/new"), []byte("x"), 0o644) }},
				{"mkdir", func() error { return os.Mkdir(e.p("d/newdir"), 0o755) }},
				{"symlink", func() error { return os.Symlink("x", e.p("d/newlink")) }},
				{"mknod", func() error { return syscall.Mkfifo(e.p("d/fifo"), 0o644) }},
				{"unlink", func() error { return os.Remove(e.p(victim)) }},
				{"chmod", func() error { return os.Chmod(e.p(victim), 0o777) }},
				{"chown", func() error { return os.Lchown(e.p(victim), 1234, 1234) }},
				{"truncate", func() error { return os.Truncate(e.p(victim), 0) }},
				{"utimes", func() error { return os.Chtimes(e.p(victim), time0, time0) }},
				{"rename out", func() error { return os.Rename(e.p(victim), e.p("stolen")) }},
				{"link", func() error { return os.Link(e.p(victim), e.p("stolen2")) }},
				{"rename in", func() error { return os.Rename(e.p("d/sub/f"), e.p("d/f")) }},
			}
			for _, op := range ops {
				_ = op.op() // may fail or land in the cipher directory; never outside
			}
			ents, err := os.ReadDir(outside)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 1 || ents[0].Name() != "victim" {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("fresh=%v: outside directory changed: %q", fresh, names)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(outside, "victim"), &st); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "victim")); string(b) != "precious" || st.Mode&0o777 != 0o600 || st.Uid != uint32(os.Getuid()) {
				t.Errorf("fresh=%v: outside file changed: %q mode %o uid %d", fresh, b, st.Mode&0o777, st.Uid)
			}
			// Clean up for the next round.
			e.unmount()
			os.Remove(cd)
			os.RemoveAll(cd + ".moved")
			os.RemoveAll(e.c("stolen"))
			e.mount(false)
			for _, n := range []string{"stolen", "stolen2"} {
				os.Remove(e.p(n))
			}
		}
	})
}

var time0 = time.Unix(0, 0)

// TestSwappedFileSymlink: a writer replaces a cipher file the kernel knows
// as a regular file with a symlink to a file outside the cipher directory.
// chmod, chown, utimes, truncate, xattrs, open and unlink through the
// mount must not touch the target.
func TestSwappedFileSymlink(t *testing.T) {
	eachNames(t, func(t *testing.T, e *testFS) {
		e.allowWarn = true
		outside := filepath.Join(t.TempDir(), "shadow")
		if err := os.WriteFile(outside, []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
		before, err := os.Stat(outside)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.p("f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(e.p("f")); err != nil {
			t.Fatal(err)
		}
		cf := e.c("f")
		if err := os.Remove(cf); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, cf); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(e.p("f"), 0o777)
		_ = os.Chown(e.p("f"), 1234, 1234)
		_ = os.Chtimes(e.p("f"), time0, time0)
		_ = os.Truncate(e.p("f"), 0)
		_ = unix.Setxattr(e.p("f"), "user.x", []byte("y"), 0)
		_ = unix.Removexattr(e.p("f"), "user.x")
		if f, err := os.OpenFile(e.p("f"), os.O_RDWR, 0); err == nil {
			f.Write([]byte("overwritten"))
			f.Close()
		}
		after, err := os.Stat(outside)
		if err != nil {
			t.Fatal(err)
		}
		st := after.Sys().(*syscall.Stat_t)
		if b, _ := os.ReadFile(outside); string(b) != "precious" || after.Mode() != before.Mode() ||
			!after.ModTime().Equal(before.ModTime()) || st.Uid != uint32(os.Getuid()) {
			t.Errorf("target changed: %q mode %v mtime %v uid %d", b, after.Mode(), after.ModTime(), st.Uid)
		}
		if _, err := unix.Getxattr(outside, "user.x", nil); err == nil {
			t.Errorf("target got an xattr")
		}
	})
}

// TestSymlinkSize: a symlink's size is its plain target's length, as
// lstat(2) promises, on both kinds of filesystem.
func TestSymlinkSize(t *testing.T) {
	eachNames(t, func(t *testing.T, e *testFS) {
		for _, target := range []string{"x", "divorce/secret-target", strings.Repeat("t", crypto.MaxPlainTarget)} {
			link := e.p("l")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(link)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != int64(len(target)) {
				t.Errorf("lstat size of a link to %d bytes: got %d", len(target), fi.Size())
			}
			if err := os.Remove(link); err != nil {
				t.Fatal(err)
			}
		}
	})
}
