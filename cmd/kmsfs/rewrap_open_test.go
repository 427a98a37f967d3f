package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

// TestRewrapOpener: the command's cipher-file I/O for keymgr.Rewrap. A
// header written through it is the one read back; a read-only file is
// written and keeps its mode; hard links after the first, empty files and
// fifos are skipped; a symlink is never followed. As root it also re-runs
// itself as nobody, for whom the read-only file needs the lent write bit.
func TestRewrapOpener(t *testing.T) {
	dir := os.Getenv("KMSFS_REWRAP_OPENER_DIR")
	if dir == "" {
		dir = t.TempDir()
		if os.Geteuid() == 0 {
			defer rerunAsNobody(t)
		}
	}
	layout := crypto.DefaultLayout()
	mk := func(rel string, id byte, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		h := crypto.Header{FileID: crypto.FileID{id}, Generation: 1,
			Keys: []crypto.WrappedKey{{KeyARN: "arn:test:key/a", KeyVersion: 1, EDK: []byte{id}}}}
		if err := cipherfile.Create(f, layout, h); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := mk("a", 1, 0o644)
	ro := mk("sub/ro", 2, 0o444)
	link := filepath.Join(dir, "sub", "link-of-a")
	if err := os.Link(a, link); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sym := filepath.Join(dir, "sub", "sym")
	if err := os.Symlink("ro", sym); err != nil {
		t.Fatal(err)
	}

	open := rewrapOpener(dir, layout)
	for _, tc := range []struct {
		name, path string
		want       error // nil: a file to rewrap
	}{
		{"file", a, nil},
		{"read-only file", ro, nil},
		{"second link", link, keymgr.ErrRewrapSkip},
		{"empty", empty, keymgr.ErrRewrapSkip},
		{"fifo", fifo, keymgr.ErrRewrapSkip},
		{"symlink", sym, syscall.ELOOP},
		{"gone", filepath.Join(dir, "gone"), os.ErrNotExist},
	} {
		f, err := open(tc.path, true)
		if tc.want != nil {
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
			}
			if f != nil {
				f.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		h, err := f.ReadHeader()
		if err != nil {
			t.Fatalf("%s: ReadHeader: %v", tc.name, err)
		}
		h.Generation++
		h.Keys[0].KeyARN = "arn:test:key/b"
		if err := f.WriteHeader(h); err != nil {
			t.Fatalf("%s: WriteHeader: %v", tc.name, err)
		}
		if f.Unlinked() {
			t.Errorf("%s: Unlinked: got true, want false", tc.name)
		}
		f.Close()
		// A new pass reads it back (dry: read-only).
		g, err := rewrapOpener(dir, layout)(tc.path, false)
		if err != nil {
			t.Fatalf("%s: reopen: %v", tc.name, err)
		}
		got, err := g.ReadHeader()
		g.Close()
		if err != nil || !got.Equal(h) {
			t.Errorf("%s: header read back: got %+v (%v), want %+v", tc.name, got, err, h)
		}
	}
	if fi, err := os.Stat(ro); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("mode of the read-only file: got %v (%v), want 0444", fi.Mode().Perm(), err)
	}
}

// rerunAsNobody runs t's test again from a copy of the test binary as uid
// and gid 65534, in a directory that user owns.
func rerunAsNobody(t *testing.T) {
	t.Helper()
	if t.Failed() {
		return
	}
	base, err := os.MkdirTemp("", "kmsfs-rewrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	work, bin := filepath.Join(base, "work"), filepath.Join(base, "test.bin")
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
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "KMSFS_REWRAP_OPENER_DIR="+work, "TMPDIR="+work)
	cmd.Dir = work
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
}
