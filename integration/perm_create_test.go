package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The owner of the files the test user tries to open (no such user need
// exist), and the group of the setgid directories (the test user is not
// in it).
const (
	permOtherUID = 4001
	permGroup    = 4100
)

// permFile is a file (or directory) prepared for permCreateScript: its
// owner, mode and content.
type permFile struct {
	name  string
	uid   int // -1: the test user
	mode  os.FileMode
	dir   bool
	bytes string
}

var permFiles = []permFile{
	{name: "other-0600-rdwr", uid: permOtherUID, mode: 0o600},
	{name: "other-0600-trunc", uid: permOtherUID, mode: 0o600},
	{name: "other-0600-append", uid: permOtherUID, mode: 0o600},
	{name: "other-0644-trunc", uid: permOtherUID, mode: 0o644},
	{name: "other-0644-rdwr", uid: permOtherUID, mode: 0o644},
	{name: "other-0644-excl", uid: permOtherUID, mode: 0o644},
	{name: "other-0666-trunc", uid: permOtherUID, mode: 0o666},
	{name: "own-0600-trunc", uid: -1, mode: 0o600},
	{name: "own-0400-rdwr", uid: -1, mode: 0o400},
	{name: "other-dir", uid: permOtherUID, mode: 0o777, dir: true},
}

// permCreateScript runs, in directory $1 where permFiles exist, one
// open(O_CREAT) of each as sh makes them (<> O_RDWR, > O_TRUNC, >>
// O_APPEND, set -C O_EXCL) and prints the outcome; then, in the setgid
// directory $1/sg and the plain one $1/nosg (both of group permGroup,
// mode 2777 and 0777), makes a file, a directory in a directory, a
// symlink and a fifo, tries chmod g+s on a file of a group it is not in,
// and prints the group and mode of each. Run as the test user, who is in
// no supplementary group.
const permCreateScript = `
set -u
cd "$1" || exit 2
r() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name ok"; else echo "$name denied"; fi; }
r "rdwr 0600 of another" sh -c 'exec 3<>other-0600-rdwr'
r "trunc 0600 of another" sh -c ': >other-0600-trunc'
r "append 0600 of another" sh -c ': >>other-0600-append'
r "trunc 0644 of another" sh -c ': >other-0644-trunc'
r "rdwr 0644 of another" sh -c 'exec 3<>other-0644-rdwr'
r "excl 0644 of another" sh -c 'set -C; : >other-0644-excl'
r "trunc 0666 of another" sh -c ': >other-0666-trunc'
r "trunc own 0600" sh -c ': >own-0600-trunc'
r "rdwr own 0400" sh -c 'exec 3<>own-0400-rdwr'
r "rdwr a directory" sh -c 'exec 3<>other-dir'
for d in sg nosg; do
	touch $d/f && mkdir $d/d && mkdir $d/d/e && ln -s f $d/l && mkfifo $d/p || echo "$d: make failed"
	touch $d/x && chmod 2755 $d/x
	for e in f d d/e l p x; do echo "$d/$e $(stat -c '%g %A' $d/$e)"; done
done
exit 0
`

// TestPermCreateAllowOther compares, on a root mount with --allow-other
// (default_permissions) and in a plain directory of the local filesystem,
// what another user gets from open(O_CREAT) of files that exist (on the
// mount they appeared in the cipher directory behind its back, after a
// lookup of the name failed, so the kernel sends CREATE and checks
// nothing itself) and from making entries in setgid directories. The
// lines the user's script prints, and the content of every file after
// (remounted), must be the same.
func TestPermCreateAllowOther(t *testing.T) {
	requireKmsfs(t)
	u := needTestUser(t)
	eachNameKind(t, func(t *testing.T, k nameKind) {
		f := newFixture(t)
		f.initKind(k)
		f.mount("--allow-other")
		plain := filepath.Join(f.dir, "plain")
		must(t, os.Mkdir(plain, 0o777))
		for _, base := range []string{plain, f.mnt} {
			must(t, os.Chmod(base, 0o777))
			for _, d := range []struct {
				name string
				mode uint32
			}{{"sg", 0o2777}, {"nosg", 0o777}} {
				p := filepath.Join(base, d.name)
				must(t, os.Mkdir(p, 0o700))
				must(t, os.Chown(p, 0, permGroup))
				must(t, syscall.Chmod(p, d.mode))
			}
		}
		owner := func(pf permFile) (int, int) {
			if pf.uid < 0 {
				return int(u.uid), int(u.gid)
			}
			return pf.uid, pf.uid
		}
		plant := func(p string, pf permFile) {
			t.Helper()
			if pf.dir {
				must(t, os.Mkdir(p, 0o700))
			} else {
				must(t, os.WriteFile(p, []byte("content of "+pf.name+"\n"), 0o600))
			}
			uid, gid := owner(pf)
			must(t, os.Chown(p, uid, gid))
			must(t, os.Chmod(p, pf.mode))
		}
		for _, pf := range permFiles {
			plant(filepath.Join(plain, pf.name), pf)
			// On the mount: the name is looked up and found absent
			// (the kernel keeps that answer), then the entry is made
			// under another name and renamed in the cipher directory.
			p := filepath.Join(f.mnt, pf.name)
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Fatalf("lstat %s before planting it: %v, want ENOENT", pf.name, err)
			}
			plant(p+".tmp", pf)
			must(t, os.Rename(f.cipherPath(pf.name+".tmp"), f.cipherPath(pf.name)))
		}

		env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/", "LC_ALL=C"}
		want, code := runAsUser(t, u, env, "sh", "-c", permCreateScript, "sh", plain)
		if code != 0 {
			t.Fatalf("script in the plain directory: exit %d:\n%s", code, want)
		}
		got, code := runAsUser(t, u, env, "sh", "-c", permCreateScript, "sh", f.mnt)
		if code != 0 {
			t.Fatalf("script on the mount: exit %d:\n%s", code, got)
		}
		if got != want {
			t.Errorf("as %s, on the mount:\n%s\nin a plain directory:\n%s", u.name, got, want)
		}
		if n := strings.Count(want, "denied"); n != 8 {
			t.Errorf("the reference run was refused %d times, want 8 (running as root?):\n%s", n, want)
		}
		if !strings.Contains(want, "sg/d 4100 drwxr-sr-x") {
			t.Errorf("the reference run shows no setgid subdirectory of group %d:\n%s", permGroup, want)
		}

		// Nothing refused was truncated or written: the content of
		// every file as the mount shows it afresh.
		f.unmount()
		f.mount("--allow-other")
		for _, pf := range permFiles {
			if pf.dir {
				continue
			}
			w, werr := os.ReadFile(filepath.Join(plain, pf.name))
			g, gerr := os.ReadFile(filepath.Join(f.mnt, pf.name))
			if werr != nil || gerr != nil || string(g) != string(w) {
				t.Errorf("%s after the script: mount %q (%v), plain directory %q (%v)", pf.name, g, gerr, w, werr)
			}
		}
		f.unmount()
	})
}
