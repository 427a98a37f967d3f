package atomicfile

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// entries lists dir's names, sorted.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteFileContentAndMode(t *testing.T) {
	old := syscall.Umask(0o077) // perm is exact, whatever the umask
	defer syscall.Umask(old)
	for _, tc := range []struct {
		name     string
		existing bool
		perm     os.FileMode
		opts     []Option
	}{
		{"new 0600", false, 0o600, nil},
		{"new 0644", false, 0o644, nil},
		{"replace 0640", true, 0o640, nil},
		{"new exclusive 0400", false, 0o400, []Option{Exclusive()}},
		{"new with prefix", false, 0o600, []Option{TempPrefix(".record-")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tc.existing {
				if err := os.WriteFile(path, []byte("old content, longer"), 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFile(path, []byte("new"), tc.perm, tc.opts...); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, path); got != "new" {
				t.Errorf("content %q, want %q", got, "new")
			}
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode(); got != tc.perm {
				t.Errorf("mode %v, want %v", got, tc.perm)
			}
			if got := entries(t, dir); !slices.Equal(got, []string{"f"}) {
				t.Errorf("directory holds %q, want only f", got)
			}
		})
	}
}

func TestWriteFileAtOPathHandle(t *testing.T) {
	dir := t.TempDir()
	dirfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	var synced []string
	rec := withSync(func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		synced = append(synced, map[bool]string{true: "dir", false: "file"}[fi.IsDir()])
		return f.Sync()
	})
	if err := WriteFileAt(dirfd, "conf", []byte("x"), 0o644, rec); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "conf")); got != "x" {
		t.Errorf("content %q, want %q", got, "x")
	}
	if want := []string{"file", "dir"}; !slices.Equal(synced, want) {
		t.Errorf("fsyncs %q, want %q", synced, want)
	}
	// CallerSyncsDir: the file alone; the caller syncs the directory.
	synced = nil
	if err := WriteFileAt(dirfd, "conf2", []byte("y"), 0o644, rec, CallerSyncsDir()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"file"}; !slices.Equal(synced, want) {
		t.Errorf("fsyncs with CallerSyncsDir %q, want %q", synced, want)
	}
	// The handle is still the caller's.
	var st unix.Stat_t
	if err := unix.Fstat(dirfd, &st); err != nil {
		t.Errorf("dirfd closed by WriteFileAt: %v", err)
	}
}

// TestDirSyncAfterRename pins the order: the file is fsynced before the
// rename, the directory after it (when the new name is in place).
func TestDirSyncAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	type event struct {
		dir     bool
		content string // of path, when the fsync happened
	}
	var events []event
	hook := withSync(func(f *os.File) error {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		events = append(events, event{fi.IsDir(), readFile(t, path)})
		return f.Sync()
	})
	if err := WriteFile(path, []byte("new"), 0o600, hook); err != nil {
		t.Fatal(err)
	}
	want := []event{{false, "old"}, {true, "new"}}
	if !slices.Equal(events, want) {
		t.Errorf("fsyncs %+v, want %+v", events, want)
	}
}

func TestFailureKeepsOldFile(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) // makes the write fail
		opts  []Option
		want  error
	}{
		{"file fsync fails", nil, []Option{withSync(func(f *os.File) error {
			if fi, _ := f.Stat(); fi != nil && !fi.IsDir() {
				return errBoom
			}
			return nil
		})}, errBoom},
		{"exclusive over an existing file", nil, []Option{Exclusive()}, os.ErrExist},
		{"rename over a directory", func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, nil, unix.EISDIR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			name := "f"
			if tc.setup != nil {
				tc.setup(t, dir)
				name = "sub"
			} else if err := os.WriteFile(filepath.Join(dir, name), []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			before := entries(t, dir)
			err := WriteFile(filepath.Join(dir, name), []byte("new"), 0o600, tc.opts...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if got := entries(t, dir); !slices.Equal(got, before) {
				t.Errorf("directory holds %q after the failure, want %q (no temporary file)", got, before)
			}
			if tc.setup == nil {
				if got := readFile(t, filepath.Join(dir, name)); got != "old" {
					t.Errorf("content %q, want the old %q", got, "old")
				}
			}
		})
	}
}

func TestAbort(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.File().Write([]byte("half")); err != nil {
		t.Fatal(err)
	}
	p.Abort()
	p.Abort()
	if got := entries(t, dir); !slices.Equal(got, []string{"f"}) {
		t.Errorf("directory holds %q after Abort, want only f", got)
	}
	if err := p.Commit(); err == nil {
		t.Error("Commit after Abort succeeded, want an error")
	}
	if got := readFile(t, path); got != "old" {
		t.Errorf("content %q, want %q", got, "old")
	}

	// Abort after Commit leaves the committed file.
	p, err = Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p.File().Write([]byte("new"))
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	p.Abort()
	if got := readFile(t, path); got != "new" {
		t.Errorf("content %q after Commit and Abort, want %q", got, "new")
	}

	// A failed Commit removes the temporary file by itself.
	p, err = Create(path, 0o600, withSync(func(*os.File) error { return errors.New("boom") }))
	if err != nil {
		t.Fatal(err)
	}
	p.File().Write([]byte("newer"))
	if err := p.Commit(); err == nil {
		t.Fatal("Commit with a failing fsync succeeded, want an error")
	}
	if got := entries(t, dir); !slices.Equal(got, []string{"f"}) {
		t.Errorf("directory holds %q after a failed Commit, want only f", got)
	}
}

// TestSymlinkAtTempName plants a symlink at the first temporary name the
// write will pick: it must be neither followed nor removed.
func TestSymlinkAtTempName(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("victim"), 0o600); err != nil {
		t.Fatal(err)
	}
	first, second := bytes.Repeat([]byte{1}, 8), bytes.Repeat([]byte{2}, 8)
	planted := filepath.Join(dir, ".f.tmp-"+hex.EncodeToString(first))
	if err := os.Symlink(victim, planted); err != nil {
		t.Fatal(err)
	}
	rnd := withRand(bytes.NewReader(append(first, second...)))
	if err := WriteFile(filepath.Join(dir, "f"), []byte("new"), 0o600, rnd); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, victim); got != "victim" {
		t.Errorf("victim holds %q, want %q: the symlink was followed", got, "victim")
	}
	if fi, err := os.Lstat(planted); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("planted symlink: %v, %v: want it left in place", fi, err)
	}
	if got := readFile(t, filepath.Join(dir, "f")); got != "new" {
		t.Errorf("content %q, want %q", got, "new")
	}
}

func TestSymlinkAtTarget(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exclusive bool
	}{
		{"rename replaces the symlink", false},
		{"exclusive refuses the symlink", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			victim := filepath.Join(dir, "victim")
			if err := os.WriteFile(victim, []byte("victim"), 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "f")
			if err := os.Symlink(victim, path); err != nil {
				t.Fatal(err)
			}
			var opts []Option
			if tc.exclusive {
				opts = append(opts, Exclusive())
			}
			err := WriteFile(path, []byte("new"), 0o600, opts...)
			if got := readFile(t, victim); got != "victim" {
				t.Errorf("victim holds %q, want %q: the symlink was followed", got, "victim")
			}
			fi, lerr := os.Lstat(path)
			if lerr != nil {
				t.Fatal(lerr)
			}
			if tc.exclusive {
				if !errors.Is(err, os.ErrExist) {
					t.Errorf("error %v, want os.ErrExist", err)
				}
				if fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("target mode %v, want the symlink left", fi.Mode())
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if !fi.Mode().IsRegular() || readFile(t, path) != "new" {
					t.Errorf("target mode %v, want a regular file holding %q", fi.Mode(), "new")
				}
			}
			if got := entries(t, dir); !slices.Equal(got, []string{"f", "victim"}) {
				t.Errorf("directory holds %q, want f and victim", got)
			}
		})
	}
}

func TestBadNames(t *testing.T) {
	dir := t.TempDir()
	for _, path := range []string{dir + "/", dir + "/.."} {
		if err := WriteFile(path, []byte("x"), 0o600); err == nil {
			t.Errorf("WriteFile(%q) succeeded, want an error", path)
		}
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, name := range []string{"", ".", "..", "a/b"} {
		if err := WriteFileAt(fd, name, []byte("x"), 0o600); err == nil {
			t.Errorf("WriteFileAt(%q) succeeded, want an error", name)
		}
	}
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("directory holds %q, want nothing", got)
	}
}
