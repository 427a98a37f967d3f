package integration

// names_attack_test.go: an attacker with write access to the cipher
// directory (but no key) goes after the names of a filesystem with
// encrypted names: an encrypted name moved into another directory, a
// directory's kmsfs.dirid deleted, cut, damaged or swapped with another
// directory's (with its user.kmsfs.dirid copy left alone, removed or
// altered the same way), a long name's side file deleted or swapped with
// another's; and, mounted, an intermediate cipher directory replaced by a
// symlink to a directory outside the cipher directory. Each case is read
// back through a fresh mount: a clear error (EIO or ENOENT, the name left
// out of its listing with a warning in the mount log, a finding of kmsfs
// fsck), never a wrong name and never another file's content. What
// docs/format.md says is not detected (whole directories moved with their
// kmsfs.dirid, entries swapped within a directory, a symlink target copied
// to another symlink) is not tried here.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const dirIDXattr = "user.kmsfs.dirid"

// namesAtk is the state shared by the names attack cases.
type namesAtk struct {
	t     *testing.T
	f     *fixture
	files map[string][]byte // every plain file written: path -> content
}

func (a *namesAtk) put(rel string) {
	a.t.Helper()
	b := []byte(fmt.Sprintf("content of %s: %x", rel, randBytes(a.t, 8)))
	writeFile(a.t, filepath.Join(a.f.mnt, rel), b)
	a.files[rel] = b
}

// renameSwap swaps two paths (files) of the cipher directory.
func renameSwap(t *testing.T, x, y string) {
	t.Helper()
	tmp := x + ".swap"
	must(t, os.Rename(x, tmp))
	must(t, os.Rename(y, x))
	must(t, os.Rename(tmp, y))
}

func getDirIDXattr(t *testing.T, dir string) []byte {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Getxattr(dir, dirIDXattr, buf)
	if err != nil {
		t.Fatalf("%s of %s: %v (the cipher directory's filesystem keeps user xattrs: the test needs the copy)", dirIDXattr, dir, err)
	}
	return buf[:n]
}

func setDirIDXattr(t *testing.T, dir string, id []byte) {
	t.Helper()
	must(t, unix.Setxattr(dir, dirIDXattr, id, 0))
}

func flipped(b []byte) []byte {
	c := append([]byte(nil), b...)
	c[len(c)/2] ^= 0x5a
	return c
}

// readErr reads rel through the mount: its content, or the error.
func (a *namesAtk) readErr(rel string) ([]byte, error) {
	return os.ReadFile(filepath.Join(a.f.mnt, rel))
}

// wantGone: rel cannot be read (ENOENT or EIO), and in particular never
// reads as some file's content.
func (a *namesAtk) wantGone(t *testing.T, rel string) {
	t.Helper()
	b, err := a.readErr(rel)
	switch {
	case err == nil:
		t.Errorf("read %s: %d bytes (%q), want ENOENT or EIO", rel, len(b), b[:min(len(b), 40)])
	case !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EIO):
		t.Errorf("read %s: %v, want ENOENT or EIO", rel, err)
	}
}

// wantOwn: rel reads as what was written to it.
func (a *namesAtk) wantOwn(t *testing.T, rel string) {
	t.Helper()
	if b, err := a.readErr(rel); err != nil || !bytes.Equal(b, a.files[rel]) {
		t.Errorf("read %s: %q, %v; want %q", rel, b, err, a.files[rel])
	}
}

// wantOwnOrGone: rel reads as its own content or fails (ENOENT, EIO).
func (a *namesAtk) wantOwnOrGone(t *testing.T, rel string) {
	t.Helper()
	b, err := a.readErr(rel)
	switch {
	case err == nil && bytes.Equal(b, a.files[rel]):
		t.Logf("%s still reads as its own content by name", rel)
	case err == nil:
		t.Errorf("read %s: %q, WRONG CONTENT; want its own %q or an error", rel, b, a.files[rel])
	case !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EIO):
		t.Errorf("read %s: %v, want its content, ENOENT or EIO", rel, err)
	}
}

// wantList: dir lists exactly want.
func (a *namesAtk) wantList(t *testing.T, dir string, want ...string) {
	t.Helper()
	sort.Strings(want)
	got, err := listNames(filepath.Join(a.f.mnt, dir))
	if err != nil || strings.Join(got, "/") != strings.Join(want, "/") {
		t.Errorf("list %s: %q, %v; want %q", dir, got, err, want)
	}
}

// wantListFails: listing dir fails with EIO (its names cannot be read).
func (a *namesAtk) wantListFails(t *testing.T, dir string) {
	t.Helper()
	got, err := listNames(filepath.Join(a.f.mnt, dir))
	if !errors.Is(err, syscall.EIO) || len(got) != 0 {
		t.Errorf("list %s: %q, %v; want EIO and no name", dir, got, err)
	}
}

type namesCase struct {
	name   string
	files  []string // plain files to write, relative to the case's directory
	tamper func(a *namesAtk, c func(rel string) string, d string)
	check  func(t *testing.T, a *namesAtk, d string)
	fsck   string // what kmsfs fsck must say on a line about the case's directory
	// repaired: kmsfs fsck --repair puts it right (it says which it
	// can), after which every file reads whole under its own name.
	repaired bool
}

func TestNamesAttacks(t *testing.T) {
	f := newFixture(t)
	f.init()
	// Names that do not decrypt and directories without an ID are logged
	// at warning level by design.
	f.allowLog = regexp.MustCompile(`directory ID unreadable|entry name does not decrypt`)
	a := &namesAtk{t: t, f: f, files: map[string][]byte{}}
	long1, long2 := "long-1-"+strings.Repeat("x", 193), "long-2-"+strings.Repeat("\U0001F511", 48)

	cases := []namesCase{
		{name: "name-moved", files: []string{"src/secret", "src/other", "src/" + long1, "dst/secret", "dst/keep"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				// src's encrypted "secret" into dst, beside dst's own
				// "secret"; and src's long name with its side file.
				s := c("src/secret")
				must(a.t, os.Rename(s, filepath.Join(c("dst"), filepath.Base(s))))
				l := c("src/" + long1)
				must(a.t, os.Rename(l, filepath.Join(c("dst"), filepath.Base(l))))
				must(a.t, os.Rename(l+".name", filepath.Join(c("dst"), filepath.Base(l)+".name")))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				a.wantList(t, d+"/src", "other")
				a.wantList(t, d+"/dst", "keep", "secret")
				a.wantOwn(t, d+"/dst/secret") // dst's own, never src's
				a.wantGone(t, d+"/src/secret")
				a.wantGone(t, d+"/dst/"+long1)
				a.wantGone(t, d+"/src/"+long1)
			},
			fsck: "it decrypts in directory name-moved/src"},
		{name: "dirid-deleted-xattr-kept", files: []string{"a", "b"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				must(a.t, os.Remove(filepath.Join(c(""), "kmsfs.dirid")))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				// The copy in the directory's attribute serves.
				a.wantList(t, d, "a", "b")
				a.wantOwn(t, d+"/a")
				a.wantOwn(t, d+"/b")
			},
			fsck: "kmsfs.dirid is missing", repaired: true},
		{name: "dirid-deleted-xattr-removed", files: []string{"a", "b"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				must(a.t, os.Remove(filepath.Join(c(""), "kmsfs.dirid")))
				must(a.t, unix.Removexattr(c(""), dirIDXattr))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				a.wantListFails(t, d)
				a.wantGone(t, d+"/a")
				// Nothing is created under a made-up ID.
				if err := os.WriteFile(filepath.Join(a.f.mnt, d, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EIO) {
					t.Errorf("create in a directory without an ID: %v, want EIO", err)
				}
				if err := os.Mkdir(filepath.Join(a.f.mnt, d, "newdir"), 0o755); !errors.Is(err, syscall.EIO) {
					t.Errorf("mkdir in a directory without an ID: %v, want EIO", err)
				}
			},
			fsck: "kmsfs.dirid is missing"},
		{name: "dirid-cut-xattr-kept", files: []string{"a", "b"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				p := filepath.Join(c(""), "kmsfs.dirid")
				must(a.t, os.Truncate(p, 15))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				// Not 16 bytes: the attribute's copy serves.
				a.wantList(t, d, "a", "b")
				a.wantOwn(t, d+"/a")
			},
			fsck: "kmsfs.dirid is damaged", repaired: true},
		{name: "dirid-damaged-xattr-kept", files: []string{"a", "b"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				p := filepath.Join(c(""), "kmsfs.dirid")
				id, err := os.ReadFile(p)
				must(a.t, err)
				must(a.t, os.WriteFile(p, flipped(id), 0o444))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				// 16 bytes: the file is the ID (docs/format.md), under
				// which no name decrypts.
				a.wantList(t, d)
				a.wantGone(t, d+"/a")
				a.wantGone(t, d+"/b")
			},
			fsck: "do not decrypt under its kmsfs.dirid", repaired: true},
		{name: "dirid-damaged-xattr-too", files: []string{"a", "b"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				p := filepath.Join(c(""), "kmsfs.dirid")
				id, err := os.ReadFile(p)
				must(a.t, err)
				must(a.t, os.WriteFile(p, flipped(id), 0o444))
				setDirIDXattr(a.t, c(""), flipped(id))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				a.wantList(t, d)
				a.wantGone(t, d+"/a")
			},
			fsck: "name does not decrypt"},
		{name: "dirid-swapped", files: []string{"one/x", "one/y", "two/x", "two/z"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				// Files and attributes both: nothing to fall back on.
				renameSwap(a.t, filepath.Join(c("one"), "kmsfs.dirid"), filepath.Join(c("two"), "kmsfs.dirid"))
				x1, x2 := getDirIDXattr(a.t, c("one")), getDirIDXattr(a.t, c("two"))
				setDirIDXattr(a.t, c("one"), x2)
				setDirIDXattr(a.t, c("two"), x1)
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				a.wantList(t, d+"/one")
				a.wantList(t, d+"/two")
				for _, rel := range []string{"one/x", "one/y", "two/x", "two/z", "one/z", "two/y"} {
					a.wantGone(t, d+"/"+rel)
				}
			},
			fsck: "it decrypts in directory dirid-swapped/"},
		{name: "dirid-swapped-xattr-kept", files: []string{"one/x", "two/x"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				renameSwap(a.t, filepath.Join(c("one"), "kmsfs.dirid"), filepath.Join(c("two"), "kmsfs.dirid"))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				// The files are the IDs; the attributes are not consulted.
				a.wantList(t, d+"/one")
				a.wantList(t, d+"/two")
				a.wantGone(t, d+"/one/x")
				a.wantGone(t, d+"/two/x")
			},
			fsck: "do not decrypt under its kmsfs.dirid", repaired: true},
		{name: "long-side-deleted", files: []string{long1, long2, "short"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				must(a.t, os.Remove(c(long1)+".name"))
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				a.wantList(t, d, long2, "short")
				// Named, it may still open (its entry is the hash of its
				// own encoding), but never as another file.
				a.wantOwnOrGone(t, d+"/"+long1)
				a.wantOwn(t, d+"/"+long2)
			},
			fsck: ".name is missing"},
		{name: "long-side-swapped", files: []string{long1, long2, "short"},
			tamper: func(a *namesAtk, c func(string) string, d string) {
				renameSwap(a.t, c(long1)+".name", c(long2)+".name")
			},
			check: func(t *testing.T, a *namesAtk, d string) {
				a.wantList(t, d, "short")
				a.wantOwnOrGone(t, d+"/"+long1)
				a.wantOwnOrGone(t, d+"/"+long2)
			},
			fsck: "holds another entry's name", repaired: true},
	}

	f.mount()
	for _, c := range cases {
		for _, rel := range c.files {
			a.put(c.name + "/" + rel)
		}
	}
	f.unmount()
	for _, c := range cases {
		cipher := func(rel string) string { return f.cipherPath(strings.TrimSuffix(c.name+"/"+rel, "/")) }
		c.tamper(a, cipher, c.name)
	}
	fsckOut, _, code := f.run("fsck", f.cipher)
	if code != 1 {
		t.Errorf("fsck of the tampered cipher directory: exit %d, want 1 (findings)\n%s", code, fsckOut)
	}
	t.Logf("fsck:\n%s", fsckOut)

	f.mount()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.check(t, a, c.name)
			found := false
			for _, l := range strings.Split(fsckOut, "\n") {
				if (strings.HasPrefix(l, c.name+" ") || strings.HasPrefix(l, c.name+"/")) && strings.Contains(l, c.fsck) {
					found = true
				}
			}
			if !found {
				t.Errorf("fsck printed no line about %s containing %q", c.name, c.fsck)
			}
		})
	}
	// Whatever the whole tree shows, every file it shows is under its
	// own name with its own content.
	a.checkNoWrongName(t)
	f.unmount()
	log := f.mountLog()

	// fsck --repair fixes what it says it can, and nothing wrong comes of
	// what it cannot.
	out, _, _ := f.run("fsck", "--repair", f.cipher)
	t.Logf("fsck --repair:\n%s", out)
	f.mount()
	for _, c := range cases {
		if !c.repaired {
			continue
		}
		t.Run("repaired/"+c.name, func(t *testing.T) {
			for _, rel := range c.files {
				a.wantOwn(t, c.name+"/"+rel)
			}
		})
	}
	a.checkNoWrongName(t)
	f.unmount()
	for _, want := range []string{"entry name does not decrypt", "directory ID unreadable"} {
		if !strings.Contains(log, want) {
			t.Errorf("mount.log has no warning %q", want)
		}
	}
	for rel := range a.files {
		for _, part := range strings.Split(rel, "/") {
			if len(part) > 6 && strings.Contains(log, part) {
				t.Errorf("mount.log shows the plain name %q", part)
			}
		}
	}
}

// checkNoWrongName walks the mount: every regular file it reaches (errors
// on the way are the attacks' and are skipped) is a file written under
// that path and reads as what was written there.
func (a *namesAtk) checkNoWrongName(t *testing.T) {
	t.Helper()
	seen := 0
	_ = filepath.WalkDir(a.f.mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(a.f.mnt, p)
		want, ok := a.files[rel]
		if !ok {
			t.Errorf("the mount shows %s, a name never written (WRONG NAME)", rel)
			return nil
		}
		seen++
		if b, err := os.ReadFile(p); err == nil && !bytes.Equal(b, want) {
			t.Errorf("%s reads as %q, not what was written there (WRONG CONTENT)", rel, b)
		}
		return nil
	})
	if seen == 0 {
		t.Errorf("the walk of the mount reached no file")
	}
}

// TestNamesIntermediateSymlink: while mounted (as root, --allow-other), a
// writer of the cipher directory replaces an intermediate cipher directory
// with a symlink to a directory outside the cipher directory, a copy of
// the original (so its names would decrypt if anything followed the
// link). Creates, unlinks, renames, links, symlinks, mkdir, rmdir, chmod,
// chown, utimes, truncate, writes and xattrs through the mount below it
// must fail or land inside the cipher directory: the outside directory is
// compared entry by entry (content, mode, owner, times, xattrs) before and
// after. Once for a directory the mount has looked up (its handle cached),
// once for one it has not (swapped before a remount: the plain view then
// shows a symlink whose target does not decrypt, EIO on readlink). With
// the originals put back, the cached one shows what was done through it
// (its handle followed the directory, not the symlink) and the other is
// untouched.
func TestNamesIntermediateSymlink(t *testing.T) {
	requireKmsfs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the operations run as root through an --allow-other mount")
	}
	f := newFixture(t)
	f.init()
	f.allowLog = regexp.MustCompile(`symlink target failed authentication`)
	f.mount("--allow-other")
	for _, top := range []string{"cached", "fresh"} {
		for _, rel := range []string{"mid/victim", "mid/sub/f", "keep", "mid/sub2/g"} {
			writeFile(t, filepath.Join(f.mnt, top, rel), []byte(top+" "+rel))
		}
		must(t, os.Symlink("victim", filepath.Join(f.mnt, top, "mid", "vlink")))
	}
	f.unmount()

	outside := map[string]string{}
	parked := map[string]string{} // where the original directory went, in the cipher directory
	orig := map[string]string{}   // its cipher path
	swap := func(top string) {
		t.Helper()
		orig[top] = f.cipherPath(top + "/mid")
		parked[top] = filepath.Join(filepath.Dir(orig[top]), "parked.x")
		must(t, os.Rename(orig[top], parked[top]))
		must(t, os.Symlink(outside[top], orig[top]))
	}
	for _, top := range []string{"cached", "fresh"} {
		outside[top] = filepath.Join(f.dir, "outside-"+top)
		if out, err := exec.Command("cp", "-a", f.cipherPath(top+"/mid"), outside[top]).CombinedOutput(); err != nil {
			t.Fatalf("cp -a: %v: %s", err, out)
		}
	}
	before := map[string]string{}
	for top, dir := range outside {
		before[top] = describeTree(t, dir)
	}
	siblings := dirNames(t, f.dir)

	// fresh: swapped before the mount, never looked up by it.
	swap("fresh")
	f.mount("--allow-other")
	// cached: looked up (the kernel and the mount hold it), then swapped.
	if _, err := os.Stat(filepath.Join(f.mnt, "cached/mid/victim")); err != nil {
		t.Fatal(err)
	}
	if _, err := listNames(filepath.Join(f.mnt, "cached/mid")); err != nil {
		t.Fatal(err)
	}
	swap("cached")

	for _, top := range []string{"cached", "fresh"} {
		p := func(rel string) string { return filepath.Join(f.mnt, top, rel) }
		t0 := time.Unix(1, 0)
		ops := []struct {
			name string
			op   func() error
		}{
			{"create", func() error { return os.WriteFile(p("mid/new"), []byte("x"), 0o644) }},
			{"mkdir", func() error { return os.Mkdir(p("mid/newdir"), 0o755) }},
			{"symlink", func() error { return os.Symlink("x", p("mid/newlink")) }},
			{"mknod", func() error { return syscall.Mkfifo(p("mid/fifo"), 0o644) }},
			{"write", func() error {
				fh, err := os.OpenFile(p("mid/victim"), os.O_RDWR, 0)
				if err != nil {
					return err
				}
				_, err = fh.WriteAt([]byte("overwritten"), 0)
				if cerr := fh.Close(); err == nil {
					err = cerr
				}
				return err
			}},
			{"chmod", func() error { return os.Chmod(p("mid/victim"), 0o777) }},
			{"chown", func() error { return os.Lchown(p("mid/victim"), 1234, 1234) }},
			{"chown through a symlink", func() error { return os.Chown(p("mid/vlink"), 4321, 4321) }},
			{"utimes", func() error { return os.Chtimes(p("mid/victim"), t0, t0) }},
			{"truncate", func() error { return os.Truncate(p("mid/victim"), 1) }},
			{"setxattr", func() error { return unix.Setxattr(p("mid/victim"), "user.planted", []byte("x"), 0) }},
			{"link in", func() error { return os.Link(p("keep"), p("mid/linked-in")) }},
			{"link out", func() error { return os.Link(p("mid/victim"), p("linked-out")) }},
			{"rename in", func() error { return os.Rename(p("keep"), p("mid/renamed-in")) }},
			{"rename within", func() error { return os.Rename(p("mid/sub2/g"), p("mid/g-moved")) }},
			{"rename out", func() error { return os.Rename(p("mid/victim"), p("renamed-out")) }},
			{"unlink", func() error { return os.Remove(p("mid/sub/f")) }},
			{"rmdir", func() error { return os.Remove(p("mid/sub")) }},
			{"unlink symlink", func() error { return os.Remove(p("mid/vlink")) }},
		}
		var res []string
		for _, op := range ops {
			err := op.op()
			res = append(res, fmt.Sprintf("%s: %v", op.name, errnoName(err)))
		}
		t.Logf("%s: operations below the swapped directory:\n  %s", top, strings.Join(res, "\n  "))
		if top == "fresh" {
			// The kernel sees a symlink whose target does not decrypt.
			fi, err := os.Lstat(p("mid"))
			if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
				t.Errorf("fresh: lstat of the swapped directory: %v, %v; want a symlink", fi, err)
			}
			if got, err := os.Readlink(p("mid")); !errors.Is(err, syscall.EIO) {
				t.Errorf("fresh: readlink of the swapped directory: %q, %v; want EIO", got, err)
			}
		}
	}
	f.unmount()

	for top, dir := range outside {
		if after := describeTree(t, dir); after != before[top] {
			t.Errorf("%s: the directory outside the cipher directory changed:\nbefore:\n%s\nafter:\n%s", top, before[top], after)
		}
	}
	if got := dirNames(t, f.dir); strings.Join(got, " ") != strings.Join(siblings, " ") {
		t.Errorf("entries beside the outside directories: %q, want %q", got, siblings)
	}
	// The originals back in place: what the cached handle did landed in
	// its original (it followed the directory, inside the cipher
	// directory, not the symlink); the fresh one is as it was.
	for top, p := range parked {
		if !strings.HasPrefix(p, f.cipher+"/") {
			t.Fatalf("%s parked at %s, outside the cipher directory", top, p)
		}
		must(t, os.Remove(orig[top]))
		must(t, os.Rename(p, orig[top]))
	}
	f.mount()
	a := &namesAtk{t: t, f: f}
	a.wantList(t, "fresh", "keep", "mid")
	a.wantList(t, "fresh/mid", "sub", "sub2", "victim", "vlink")
	if b, err := os.ReadFile(filepath.Join(f.mnt, "fresh/mid/victim")); err != nil || string(b) != "fresh mid/victim" {
		t.Errorf("fresh/mid/victim after the episode: %q, %v", b, err)
	}
	a.wantList(t, "cached", "linked-out", "mid", "renamed-out")
	a.wantList(t, "cached/mid", "fifo", "g-moved", "linked-in", "new", "newdir", "newlink", "renamed-in", "sub2")
	var st syscall.Stat_t
	if b, err := os.ReadFile(filepath.Join(f.mnt, "cached/renamed-out")); err != nil || string(b) != "o" {
		t.Errorf("cached/renamed-out (victim, written, truncated to 1 byte): %q, %v; want \"o\"", b, err)
	} else if err := syscall.Stat(filepath.Join(f.mnt, "cached/renamed-out"), &st); err != nil || st.Mode&0o7777 != 0o777 || st.Uid != 4321 {
		t.Errorf("cached/renamed-out: mode %o uid %d, %v; want the chmod and chown done through the swapped directory (777, 4321)", st.Mode&0o7777, st.Uid, err)
	}
	f.unmount()
}

// describeTree is every entry below dir with its type, mode, owner, size,
// times, content hash, symlink target and xattrs, one line each.
func describeTree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		l := fmt.Sprintf("%s mode %o uid %d gid %d size %d mtime %d.%09d ctime %d.%09d nlink %d",
			rel, st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Nlink)
		switch {
		case d.Type().IsRegular():
			sum, err := fileSHA256(p)
			if err != nil {
				return err
			}
			l += fmt.Sprintf(" sha256 %x", sum[:8])
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			l += " -> " + target
		}
		buf := make([]byte, 4096)
		if n, err := unix.Llistxattr(p, buf); err == nil {
			names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
			sort.Strings(names)
			for _, x := range names {
				if x == "" {
					continue
				}
				v := make([]byte, 4096)
				m, _ := unix.Lgetxattr(p, x, v)
				l += fmt.Sprintf(" xattr %s=%x", x, v[:max(m, 0)])
			}
		}
		lines = append(lines, l)
		return nil
	})
	if err != nil {
		t.Fatalf("describe %s: %v", dir, err)
	}
	return strings.Join(lines, "\n")
}

// dirNames lists dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	names, err := listNames(dir)
	must(t, err)
	return names
}
