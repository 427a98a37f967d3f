package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestUnprivilegedUser drives the binary as an ordinary user, as root's
// test harness can: init, mount through fusermount3 (no root), write and
// read a file, keys in locked memory within the user's default
// RLIMIT_MEMLOCK, a mount process other processes of the same user cannot
// inspect, unmount.
func TestUnprivilegedUser(t *testing.T) {
	requireKmsfs(t)
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skipf("fusermount3 not installed (%v): an unprivileged mount needs fuse3", err)
	}
	u := needTestUser(t)
	userCanOpenFUSE(t, u)
	f := newFixtureFor(t, u)

	// The limit is the one the user inherits; never raised here.
	lim := strings.TrimSpace(f.execOK(nil, "sh", "-c", "ulimit -l"))
	t.Logf("user %s (uid %d): ulimit -l = %s", u.name, u.uid, lim)
	if id := strings.TrimSpace(f.execOK(nil, "id", "-u")); id != strconv.Itoa(int(u.uid)) {
		t.Fatalf("commands run as uid %s, want %d", id, u.uid)
	}

	f.init()
	fi, err := os.Stat(f.cipher)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != u.uid {
		t.Errorf("cipher dir owner: got uid %d, want %d", st.Uid, u.uid)
	}

	pid := f.mount()
	if pid == 0 {
		t.Fatal("mount: no pid for the mount process")
	}
	line := mountinfoLine(f.mnt)
	if want := fmt.Sprintf("user_id=%d", u.uid); !strings.Contains(line, want) {
		t.Errorf("mountinfo of %s: got %q, want %s", f.mnt, line, want)
	}

	// Write and read a file as the user.
	content := randBytes(t, 3*4096+123)
	src := filepath.Join(f.dir, "src.bin")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(f.mnt, "user-file.bin")
	f.execOK(nil, "cp", src, dst)
	sum := sha256.Sum256(content)
	out := f.execOK(nil, "sha256sum", dst)
	if got := strings.Fields(out); len(got) == 0 || got[0] != hex.EncodeToString(sum[:]) {
		t.Errorf("sha256sum of the file read back as %s: got %q, want %x", u.name, out, sum)
	}
	if ls := f.execOK(nil, "ls", "-A", f.mnt); strings.TrimSpace(ls) != "user-file.bin" {
		t.Errorf("ls -A of the mount: got %q, want only user-file.bin", ls)
	}

	// The owner's own rights are those of a local filesystem: a script of
	// permission-sensitive operations, run as the user, prints the same
	// on the mount as in a plain directory of the user's. (The mount has
	// no default_permissions without --allow-other: the cipher files'
	// modes, checked by the backing filesystem against the mount
	// process's credentials, which are the user's, decide.)
	t.Run("owner permissions as on a local filesystem", func(t *testing.T) {
		f := f.withT(t)
		plain := filepath.Join(f.dir, "plain-perms")
		f.execOK(nil, "mkdir", plain)
		want := f.execOK(nil, "sh", "-c", ownerPermScript, "sh", plain)
		got := f.execOK(nil, "sh", "-c", ownerPermScript, "sh", filepath.Join(f.mnt, "perms"))
		if got != want {
			t.Errorf("permission script as %s:\non the mount:\n%s\nin a plain directory:\n%s", u.name, got, want)
		}
		if strings.Count(want, "denied") < 8 {
			t.Errorf("the script's reference run was refused only %d times, want at least 8 (is it running as root?):\n%s", strings.Count(want, "denied"), want)
		}
		f.execOK(nil, "sh", "-c", "chmod -R u+rwx \"$1\" && rm -rf \"$1\"", "sh", filepath.Join(f.mnt, "perms"))
	})

	// The mount is the user's alone: even root is refused without
	// allow_other (unless the fuse module lets admins in).
	if b, _ := os.ReadFile("/sys/module/fuse/parameters/allow_sys_admin_access"); strings.TrimSpace(string(b)) != "Y" {
		if _, err := os.Stat(dst); !errors.Is(err, syscall.EACCES) {
			t.Errorf("stat of the user's mount by root: got %v, want EACCES", err)
		}
	}

	t.Run("VmLck", func(t *testing.T) {
		if kb := procStatusKB(t, pid, "VmLck"); kb <= 0 {
			t.Errorf("mount process %d of %s: VmLck %d kB, want > 0 (ulimit -l %s)", pid, u.name, kb, lim)
		} else {
			t.Logf("mount process %d: VmLck %d kB (ulimit -l %s)", pid, kb, lim)
		}
	})

	t.Run("not dumpable", func(t *testing.T) {
		f := f.withT(t)
		if uid := procStatusKB(t, pid, "Uid"); uid != int64(u.uid) {
			t.Fatalf("mount process %d runs as uid %d, want %d", pid, uid, u.uid)
		}
		// A process that is not dumpable has its /proc files owned by
		// root, so other processes of the same user cannot read them.
		for _, name := range []string{"environ", "mem"} {
			p := fmt.Sprintf("/proc/%d/%s", pid, name)
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
				t.Errorf("%s is owned by uid %d, want 0 (PR_SET_DUMPABLE 0)", p, st.Uid)
			}
		}
		r := f.exec(nil, "head", "-c", "64", fmt.Sprintf("/proc/%d/environ", pid))
		if r.code == 0 || !strings.Contains(r.stderr, "Permission denied") {
			t.Errorf("reading /proc/%d/environ as %s: exit %d, stderr %q; want Permission denied", pid, u.name, r.code, r.stderr)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "Max core file size"); ok {
				if fl := strings.Fields(rest); len(fl) < 2 || fl[0] != "0" || fl[1] != "0" {
					t.Errorf("mount process %d: %q, want 0 0", pid, strings.TrimSpace(l))
				}
			}
		}
	})

	s := f.status()
	if !s.Mounted {
		t.Errorf("status as %s while mounted: mounted false", u.name)
	}
	f.unmount()
	if s := f.status(); s.Mounted || s.Files != 1 || s.Source != "index" {
		t.Errorf("status after unmount: got mounted %v, files %d, source %q; want false, 1, index", s.Mounted, s.Files, s.Source)
	}

	// --allow-other needs user_allow_other in /etc/fuse.conf for a user:
	// without it, mount fails with a message that says so.
	t.Run("allow-other needs user_allow_other", func(t *testing.T) {
		if fuseConfAllowsOther() {
			t.Skip("/etc/fuse.conf enables user_allow_other")
		}
		f.allowLog = regexp.MustCompile(`msg="mount failed"`) // this one is expected
		f := f.withT(t)
		_, stderr, code := f.run("mount", "--allow-other", f.cipher, f.mnt)
		if code == 0 {
			t.Errorf("mount --allow-other as %s without user_allow_other: exit 0, want an error", u.name)
			f.forceUnmount(f.mnt)
		} else if !strings.Contains(stderr, "user_allow_other") {
			t.Errorf("mount --allow-other as %s without user_allow_other: stderr %q, want it to name user_allow_other in /etc/fuse.conf", u.name, stderr)
		}
		if isMounted(f.mnt) {
			t.Errorf("a failed mount --allow-other left %s mounted", f.mnt)
			lazyUnmount(f.mnt)
		}
	})

	// Mount again (the unmount released everything) and read the file.
	f.mount()
	out = f.execOK(nil, "sha256sum", dst)
	if got := strings.Fields(out); len(got) == 0 || got[0] != hex.EncodeToString(sum[:]) {
		t.Errorf("sha256sum after remount: got %q, want %x", out, sum)
	}
	f.unmount()
}

// userCanOpenFUSE makes sure u can open /dev/fuse, as fusermount3 opens it
// with the caller's rights. Distributions ship it 0666; some containers
// have it 0600. Then, as root, the test gives it the distribution's mode
// for its duration and restores the old mode afterwards.
func userCanOpenFUSE(t *testing.T, u *testUser) {
	t.Helper()
	probe := func() (string, int) {
		return runAsUser(t, u, []string{"PATH=/usr/bin:/bin"}, "sh", "-c", "exec 3<>/dev/fuse")
	}
	out, code := probe()
	if code == 0 {
		return
	}
	fi, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Skipf("/dev/fuse: %v", err)
	}
	old := fi.Mode().Perm()
	t.Logf("user %s cannot open /dev/fuse (mode %v: %s); setting the usual 0666 for this test", u.name, old, strings.TrimSpace(out))
	if err := os.Chmod("/dev/fuse", 0o666); err != nil {
		t.Skipf("/dev/fuse is mode %v, which %s cannot open, and chmod failed: %v", old, u.name, err)
	}
	t.Cleanup(func() {
		if err := os.Chmod("/dev/fuse", old); err != nil {
			t.Errorf("restore /dev/fuse mode %v: %v", old, err)
		}
	})
	if out, code := probe(); code != 0 {
		t.Skipf("%s still cannot open /dev/fuse after chmod 0666: %s", u.name, out)
	}
}

// fuseConfAllowsOther reports whether /etc/fuse.conf enables
// user_allow_other.
func fuseConfAllowsOther() bool {
	b, err := os.ReadFile("/etc/fuse.conf")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == "user_allow_other" {
			return true
		}
	}
	return false
}

// ownerPermScript runs permission-sensitive operations in directory $1
// (made if missing) and prints one line per operation: its name and "ok"
// or "denied"; then the modes of entries made in a setgid directory (a
// subdirectory keeps S_ISGID). Run as a non-root user.
const ownerPermScript = `
set -u
mkdir -p "$1" && cd "$1" || exit 2
r() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name ok"; else echo "$name denied"; fi; }
echo data > ro.txt && chmod 0444 ro.txt
r "append to 0444" sh -c 'echo x >> ro.txt'
r "truncate-open 0444" sh -c 'echo x > ro.txt'
r "truncate(2) 0444" truncate -s 0 ro.txt
r "access W_OK 0444" test -w ro.txt
r "access R_OK 0444" test -r ro.txt
r "read 0444" cat ro.txt
echo data > none.txt && chmod 0000 none.txt
r "read 0000" cat none.txt
r "access R_OK 0000" test -r none.txt
r "chmod own file" chmod 0600 none.txt
r "read after chmod" cat none.txt
r "chown to root" chown 0 none.txt
echo data > wo.txt && chmod 0200 wo.txt
r "append to 0200" sh -c 'echo x >> wo.txt'
r "overwrite 0200" sh -c 'echo y > wo.txt'
r "read 0200" cat wo.txt
chmod 0600 wo.txt
r "read after 0200 writes" sh -c 'test "$(cat wo.txt)" = y'
r "exec 0644 script" sh -c 'printf "#!/bin/sh\ntrue\n" > s.sh && chmod 0644 s.sh && ./s.sh'
r "exec 0755 script" sh -c 'chmod 0755 s.sh && ./s.sh'
mkdir rodir && echo f > rodir/f && chmod 0555 rodir
r "create in 0555 dir" touch rodir/new
r "mkdir in 0555 dir" mkdir rodir/sub
r "unlink in 0555 dir" rm -f rodir/f
r "rename in 0555 dir" mv rodir/f rodir/g
r "rename out of 0555 dir" mv rodir/f moved
r "access W_OK 0555 dir" test -w rodir
chmod 0755 rodir
mkdir nox && echo f > nox/f && chmod 0600 nox
r "read through 0600 dir" cat nox/f
r "stat through 0600 dir" stat nox/f
r "cd into 0600 dir" sh -c 'cd nox'
chmod 0700 nox
mkdir noread && chmod 0300 noread
r "list 0300 dir" ls noread
r "create in 0300 dir" touch noread/x
chmod 0700 noread
r "utimes own file" touch -d 2001-01-01 ro.txt
r "rmdir own dir" rmdir noread
mkdir sg && chmod 2755 sg
touch sg/f && mkdir sg/d && mkdir sg/d/e && mkfifo sg/p && touch sg/x && chmod 2755 sg/x
for e in f d d/e p x; do echo "setgid dir: $e $(stat -c %A sg/$e)"; done
exit 0
`
