package fs

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Users the permission tests act as, through the filesystem credentials
// of one OS thread (asCaller); none needs to exist.
const (
	uidA, gidA = 4001, 4001 // owns the files other users try to open
	uidB, gidB = 4002, 4002 // the other user
	gidShared  = 4100       // a supplementary group B may be given
)

// caller is the filesystem identity of asCaller's thread.
type caller struct {
	uid, gid uint32
	groups   []uint32
}

// asCaller runs fn on an OS thread of its own whose filesystem uid, gid
// and supplementary groups are c's, and returns fn's error. The kernel
// sends the fsuid and fsgid in every FUSE request, checks the thread's
// groups with default_permissions, and drops the thread's filesystem
// capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, ...) once its
// fsuid is not 0: the thread is an ordinary user to the mount and to the
// plain directory alike. The thread is never handed back to the runtime
// (it ends with the goroutine) and no other goroutine runs on it.
func asCaller(t *testing.T, c caller, fn func() error) error {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as other users")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		// Raw syscalls: the syscall package's setters change every
		// thread of the process.
		var groups uintptr
		if len(c.groups) > 0 {
			groups = uintptr(unsafe.Pointer(&c.groups[0]))
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(c.groups)), groups, 0); e != 0 {
			errc <- errors.New("setgroups: " + e.Error())
			return
		}
		unix.RawSyscall(unix.SYS_SETFSGID, uintptr(c.gid), 0, 0)
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(c.uid), 0, 0)
		// setfs[ug]id answer the previous id and no error: ask again.
		if got, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0); uint32(got) != c.uid {
			errc <- errors.New("setfsuid did not take")
			return
		}
		if got, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0); uint32(got) != c.gid {
			errc <- errors.New("setfsgid did not take")
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// openAs opens path as c with flags and mode and closes it again.
func openAs(t *testing.T, c caller, path string, flags int, mode uint32) error {
	t.Helper()
	return asCaller(t, c, func() error {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, mode)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
}

// mountAllowOther remounts e as --allow-other mounts it (other users come
// in; default_permissions) with a root every user may enter and write.
func mountAllowOther(t *testing.T, e *testFS) {
	t.Helper()
	e.unmount()
	e.mo.AllowOther = true
	e.mount(false)
	if err := os.Chmod(e.mnt, 0o777); err != nil {
		t.Fatal(err)
	}
	searchable(t, filepath.Dir(e.mnt))
}

// searchable lets every user through dir and its parents up to the
// temporary directory (the test's directories are 0700).
func searchable(t *testing.T, dir string) {
	t.Helper()
	top := filepath.Clean(os.TempDir())
	for d := filepath.Clean(dir); d != top && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// plantBehind makes a file of content, owner uid:gid and mode appear as
// name in the root of the plain view behind the mount's back: the mount
// has already answered that name does not exist (the kernel keeps that
// negative entry), so an open(O_CREAT) of it reaches the filesystem as
// CREATE, not as LOOKUP and OPEN. The cipher file is made through the
// mount under another name and renamed in the cipher directory.
func plantBehind(t *testing.T, e *testFS, name string, content []byte, uid, gid int, mode os.FileMode) {
	t.Helper()
	if _, err := os.Lstat(e.p(name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lstat %s before planting: %v, want ENOENT", name, err)
	}
	tmp := name + ".planted"
	if err := os.WriteFile(e.p(tmp), content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(e.p(tmp), uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.p(tmp), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(e.c(tmp), e.c(name)); err != nil {
		t.Fatalf("rename in the cipher directory: %v", err)
	}
}

// cipherSize is the size of the cipher file of plain name.
func cipherSize(t *testing.T, e *testFS, name string) int64 {
	t.Helper()
	fi, err := os.Lstat(e.c(name))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestCreateExisting: open(O_CREAT) of a name the kernel believes absent
// but which exists in the cipher directory (it appeared behind the
// mount) reaches the filesystem as CREATE, and the kernel skips its own
// permission check for a create: the mount must answer as a local
// filesystem would, EEXIST with O_EXCL, else the access check of the
// caller's fsuid and groups against the file's owner and mode before
// anything is opened or truncated.
func TestCreateExisting(t *testing.T) {
	eachNames(t, func(t *testing.T, e *testFS) {
		mountAllowOther(t, e)
		a := caller{uid: uidA, gid: gidA}
		b := caller{uid: uidB, gid: gidB}
		bShared := caller{uid: uidB, gid: gidB, groups: []uint32{gidShared}}
		secret := []byte("A's secret\n")
		cases := []struct {
			name  string
			mode  os.FileMode
			group int
			who   caller
			flags int
			want  error // nil: opened
			trunc bool  // the content is gone after it
		}{
			{"other rw trunc 0600", 0o600, gidA, b, os.O_RDWR | os.O_CREATE | os.O_TRUNC, syscall.EACCES, false},
			{"other ro trunc 0600", 0o600, gidA, b, os.O_RDONLY | os.O_CREATE | os.O_TRUNC, syscall.EACCES, false},
			{"other ro 0600", 0o600, gidA, b, os.O_RDONLY | os.O_CREATE, syscall.EACCES, false},
			{"other wo 0644", 0o644, gidA, b, os.O_WRONLY | os.O_CREATE, syscall.EACCES, false},
			{"other trunc 0644", 0o644, gidA, b, os.O_RDONLY | os.O_CREATE | os.O_TRUNC, syscall.EACCES, false},
			{"other ro 0644", 0o644, gidA, b, os.O_RDONLY | os.O_CREATE, nil, false},
			{"other excl 0644", 0o644, gidA, b, os.O_RDONLY | os.O_CREATE | os.O_EXCL, syscall.EEXIST, false},
			{"owner excl 0600", 0o600, gidA, a, os.O_RDWR | os.O_CREATE | os.O_EXCL, syscall.EEXIST, false},
			{"owner trunc 0600", 0o600, gidA, a, os.O_RDWR | os.O_CREATE | os.O_TRUNC, nil, true},
			{"owner wo 0400", 0o400, gidA, a, os.O_WRONLY | os.O_CREATE, syscall.EACCES, false},
			{"owner ro 0066", 0o066, gidA, a, os.O_RDONLY | os.O_CREATE, syscall.EACCES, false},
			{"group member rw 0660", 0o660, gidShared, bShared, os.O_RDWR | os.O_CREATE, nil, false},
			{"group member trunc 0640", 0o640, gidShared, bShared, os.O_RDWR | os.O_CREATE | os.O_TRUNC, syscall.EACCES, false},
			{"not a member rw 0660", 0o660, gidShared, b, os.O_RDWR | os.O_CREATE, syscall.EACCES, false},
			{"root trunc 0000", 0o000, gidA, caller{}, os.O_RDWR | os.O_CREATE | os.O_TRUNC, nil, true},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				name := "victim" + string(rune('a'+i))
				plantBehind(t, e, name, secret, uidA, tc.group, tc.mode)
				before := cipherSize(t, e, name)
				var err error
				if tc.who.uid == 0 {
					var f *os.File
					if f, err = os.OpenFile(e.p(name), tc.flags, 0o666); err == nil {
						f.Close()
					}
				} else {
					err = openAs(t, tc.who, e.p(name), tc.flags, 0o666)
				}
				if !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
					t.Errorf("open(%#o) as uid %d of a %#o file of uid %d: got %v, want %v", tc.flags, tc.who.uid, tc.mode, uidA, err, tc.want)
				}
				after := cipherSize(t, e, name)
				if tc.trunc && after >= before {
					t.Errorf("cipher size after an O_TRUNC open: got %d, want less than %d", after, before)
				}
				if !tc.trunc && after != before {
					t.Errorf("cipher size: got %d, want %d (unchanged)", after, before)
				}
				fi, err := os.Lstat(e.c(name))
				if err != nil {
					t.Fatal(err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				if st.Uid != uidA || st.Gid != uint32(tc.group) || fi.Mode().Perm() != tc.mode {
					t.Errorf("cipher file: got uid %d gid %d mode %v, want %d %d %v", st.Uid, st.Gid, fi.Mode().Perm(), uidA, tc.group, tc.mode)
				}
			})
		}
	})
}

// TestCreateExistingPrivate: without --allow-other (no
// default_permissions) the mount's owner alone comes in, and CREATE of
// an existing name still answers EEXIST with O_EXCL and opens the file
// otherwise, truncating it for O_TRUNC.
func TestCreateExistingPrivate(t *testing.T) {
	eachNames(t, func(t *testing.T, e *testFS) {
		plantBehind(t, e, "x", []byte("old content\n"), 0, 0, 0o644)
		if _, err := os.OpenFile(e.p("x"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); !errors.Is(err, syscall.EEXIST) {
			t.Errorf("O_CREAT|O_EXCL of a name planted behind the mount: got %v, want EEXIST", err)
		}
		plantBehind(t, e, "y", []byte("old content\n"), 0, 0, 0o644)
		f, err := os.OpenFile(e.p("y"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatalf("O_CREAT|O_TRUNC of a name planted behind the mount: %v", err)
		}
		if _, err := f.WriteString("new"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if b, err := os.ReadFile(e.p("y")); err != nil || string(b) != "new" {
			t.Errorf("read back: got %q, %v; want %q", b, err, "new")
		}
	})
}

// TestNewEntryGroup: a new file, directory, symlink or node takes the
// group ext4 gives it, compared against a plain directory of the test's
// own file system side by side: the setgid directory's group (a new
// subdirectory keeps S_ISGID), else the creator's fsgid; and a new
// group-executable file with S_ISGID loses it when its creator is not in
// its group.
func TestNewEntryGroup(t *testing.T) {
	eachNames(t, func(t *testing.T, e *testFS) {
		mountAllowOther(t, e)
		plain := filepath.Join(t.TempDir(), "plain")
		searchable(t, filepath.Dir(plain))
		if err := os.Mkdir(plain, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(plain, 0o777); err != nil {
			t.Fatal(err)
		}
		b := caller{uid: uidB, gid: gidB}
		bShared := caller{uid: uidB, gid: gidB, groups: []uint32{gidShared}}
		type result struct {
			uid, gid uint32
			mode     os.FileMode
		}
		// run makes dir (owned by A, group gidShared, dirMode) in base
		// and then, as who, the entries of the table in it.
		run := func(base string, dirMode uint32, who caller) map[string]result {
			dir := filepath.Join(base, "d")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, uidA, gidShared); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(dir, dirMode); err != nil {
				t.Fatal(err)
			}
			err := asCaller(t, who, func() error {
				if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
					return err
				}
				fd, err := unix.Open(filepath.Join(dir, "sgid-exec"), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o2775)
				if err != nil {
					return err
				}
				unix.Close(fd)
				fd, err = unix.Open(filepath.Join(dir, "sgid-noexec"), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o2664)
				if err != nil {
					return err
				}
				unix.Close(fd)
				if err := unix.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
					return err
				}
				if err := unix.Mkdir(filepath.Join(dir, "sub", "subsub"), 0o750); err != nil {
					return err
				}
				if err := unix.Mknod(filepath.Join(dir, "fifo"), unix.S_IFIFO|0o2670, 0); err != nil {
					return err
				}
				return unix.Symlink("file", filepath.Join(dir, "link"))
			})
			if err != nil {
				t.Fatalf("as uid %d in a %#o directory: %v", who.uid, dirMode, err)
			}
			got := map[string]result{}
			for _, n := range []string{"file", "sgid-exec", "sgid-noexec", "sub", "sub/subsub", "fifo", "link"} {
				fi, err := os.Lstat(filepath.Join(dir, n))
				if err != nil {
					t.Fatal(err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				got[n] = result{st.Uid, st.Gid, fi.Mode()}
			}
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			return got
		}
		for _, tc := range []struct {
			name    string
			dirMode uint32
			who     caller
		}{
			{"setgid dir, not a member", 0o2777, b},
			{"setgid dir, member", 0o2777, bShared},
			{"plain dir", 0o777, bShared},
		} {
			t.Run(tc.name, func(t *testing.T) {
				want := run(plain, tc.dirMode, tc.who)
				got := run(e.mnt, tc.dirMode, tc.who)
				for n, w := range want {
					if g := got[n]; g != w {
						t.Errorf("%s: got uid %d gid %d mode %v, want (as on ext4) uid %d gid %d mode %v", n, g.uid, g.gid, g.mode, w.uid, w.gid, w.mode)
					}
				}
			})
		}
	})
}
