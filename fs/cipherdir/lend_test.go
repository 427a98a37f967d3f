package cipherdir

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenLending: the open gets the lent bit, the mode is the owner's
// again afterwards, and every entry that may not be lent anything is
// refused with its mode untouched.
func TestOpenLending(t *testing.T) {
	tests := []struct {
		name    string
		mk      func(t *testing.T, p string) // makes the entry at p
		flags   int
		lend    uint32
		wantErr error  // nil: opens
		mode    uint32 // st_mode of the entry afterwards; 0: none
	}{
		{"read-only file lent write", mkFile(0o444), unix.O_RDWR, LendWrite, nil, unix.S_IFREG | 0o444},
		{"write-only file lent read", mkFile(0o200), unix.O_RDWR | unix.O_NOATIME, LendRead, nil, unix.S_IFREG | 0o200},
		{"set-ID bits kept", mkFile(0o4440), unix.O_RDWR, LendWrite, nil, unix.S_IFREG | 0o4440},
		{"owner holds the bit already", mkFile(0o644), unix.O_RDWR, LendWrite, unix.EACCES, unix.S_IFREG | 0o644},
		{"owner lacks both halves", mkFile(0o000), unix.O_RDWR, LendWrite, unix.EACCES, unix.S_IFREG},
		{"another owner", func(t *testing.T, p string) {
			mkFile(0o444)(t, p)
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Skipf("chown: %v", err)
			}
		}, unix.O_RDWR, LendWrite, unix.EACCES, unix.S_IFREG | 0o444},
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o555); err != nil {
				t.Fatal(err)
			}
		}, unix.O_RDONLY, LendWrite, unix.EACCES, unix.S_IFDIR | 0o555},
		{"symlink", func(t *testing.T, p string) {
			mkFile(0o444)(t, p+".target")
			if err := os.Symlink(filepath.Base(p)+".target", p); err != nil {
				t.Fatal(err)
			}
		}, unix.O_RDWR, LendWrite, unix.EACCES, unix.S_IFLNK | 0o777},
		{"missing", func(t *testing.T, p string) {}, unix.O_RDWR, LendWrite, unix.EACCES, 0},
		{"not a bit to lend", mkFile(0o444), unix.O_RDWR, 0o100, unix.EINVAL, unix.S_IFREG | 0o444},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "f")
			tc.mk(t, p)
			dirfd, err := OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dirfd)
			fd, err := OpenLending(dirfd, "f", tc.flags, tc.lend)
			if (err == nil) != (tc.wantErr == nil) || (err != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("OpenLending: got %v, want %v", err, tc.wantErr)
			}
			if err == nil {
				defer unix.Close(fd)
				if got, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || got&unix.O_ACCMODE != unix.O_RDWR {
					t.Errorf("access mode: got %#o (%v), want O_RDWR", got&unix.O_ACCMODE, err)
				}
				if _, err := unix.Pwrite(fd, []byte("x"), 0); err != nil {
					t.Errorf("write through the lent fd: %v", err)
				}
				if _, err := unix.Pread(fd, make([]byte, 1), 0); err != nil {
					t.Errorf("read through the lent fd: %v", err)
				}
			}
			if tc.mode == 0 {
				return
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != tc.mode {
				t.Errorf("mode after: got %#o, want %#o", st.Mode, tc.mode)
			}
		})
	}
}

// mkFile makes a regular file of mode (set-ID bits included).
func mkFile(mode uint32) func(t *testing.T, p string) {
	return func(t *testing.T, p string) {
		t.Helper()
		if err := os.WriteFile(p, []byte("content"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := unix.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpenLendingUnprivileged runs as a user the permission bits bind
// (root's open needs no lending): a plain open(2) O_RDWR is refused, the
// lending one opens, and the mode is the owner's again. As root the test
// re-runs itself as nobody.
func TestOpenLendingUnprivileged(t *testing.T) {
	dir := os.Getenv("KMSFS_LEND_TEST_DIR")
	if dir == "" {
		if os.Geteuid() != 0 {
			dir = t.TempDir()
		} else {
			runAsNobody(t, "^TestOpenLendingUnprivileged$")
			return
		}
	}
	for _, tc := range []struct {
		name string
		mode uint32
		lend uint32
	}{
		{"read-only", 0o444, LendWrite},
		{"write-only", 0o200, LendRead},
	} {
		p := filepath.Join(dir, tc.name)
		mkFile(tc.mode)(t, p)
		dirfd, err := OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(dirfd)
		if fd, err := OpenAt(dirfd, tc.name, unix.O_RDWR, 0); err != unix.EACCES {
			unix.Close(fd)
			t.Fatalf("%s: plain open O_RDWR: got %v, want EACCES (the test proves nothing)", tc.name, err)
		}
		fd, err := OpenLending(dirfd, tc.name, unix.O_RDWR, tc.lend)
		if err != nil {
			t.Fatalf("%s: OpenLending: %v", tc.name, err)
		}
		if _, err := unix.Pwrite(fd, []byte("x"), 0); err != nil {
			t.Errorf("%s: write: %v", tc.name, err)
		}
		if _, err := unix.Pread(fd, make([]byte, 1), 0); err != nil {
			t.Errorf("%s: read: %v", tc.name, err)
		}
		unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Mode&0o7777 != tc.mode {
			t.Errorf("%s: mode after: got %#o (%v), want %#o", tc.name, st.Mode&0o7777, err, tc.mode)
		}
	}
}

// runAsNobody re-runs the tests matching run from a copy of the test
// binary as uid/gid 65534, in a directory that user owns.
func runAsNobody(t *testing.T, run string) {
	t.Helper()
	base, err := os.MkdirTemp("", "kmsfs-lend-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	work := filepath.Join(base, "work")
	bin := filepath.Join(base, "test.bin")
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(work, 65534, 65534); err != nil {
		t.Skipf("chown: %v", err)
	}
	cmd := exec.Command(bin, "-test.run="+run, "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "KMSFS_LEND_TEST_DIR="+work)
	cmd.Dir = work
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("as nobody: %s did not run and pass:\n%s", t.Name(), out)
	}
}
