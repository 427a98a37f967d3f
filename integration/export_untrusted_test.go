package integration

// export_untrusted_test.go: kmsfs export and kmsfs cat, the real binary,
// over a cipher directory its writer has tampered with: set-ID and
// foreign-owned cipher files, a planted symlink, a FIFO swapped in and
// out while the commands run. The writer may destroy data but gains no
// privilege, no read of anything outside the cipher directory, and no
// hung command. Holes of a sparse file stay holes in the export.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lstatT is the stat of p, not followed.
func lstatT(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st
}

// TestExportUntrustedOwners: a cipher file made set-user-ID root and one
// given to another uid by the writer export, run as root, as the
// runner's plain files; --preserve-owner restores both and warns, and is
// a usage error for anyone but root.
func TestExportUntrustedOwners(t *testing.T) {
	requireKmsfs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: set-user-ID root and foreign owners in the cipher directory")
	}
	const foreign = 4321
	f := newFixture(t)
	f.initKind(nameKinds[1])
	f.mount()
	writeFile(t, filepath.Join(f.mnt, "tool"), []byte("#!/bin/sh\nid\n"))
	writeFile(t, filepath.Join(f.mnt, "theirs"), []byte("theirs\n"))
	f.unmount()
	tool, theirs := f.cipherPath("tool"), f.cipherPath("theirs")
	must(t, os.Chown(tool, 0, 0))
	must(t, os.Chmod(tool, 0o755|os.ModeSetuid|os.ModeSetgid))
	must(t, os.Chown(theirs, foreign, foreign))

	dest := filepath.Join(f.dir, "out")
	stdout, stderr, code := f.run("export", f.cipher, ".", dest)
	if code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, stdout, stderr)
	}
	if st := lstatT(t, filepath.Join(dest, "tool")); st.Mode&0o7777 != 0o755 || st.Uid != 0 {
		t.Errorf("exported tool: mode %#o owner %d, want 0755 (no set-ID bits) owned by root, the runner", st.Mode&0o7777, st.Uid)
	}
	if st := lstatT(t, filepath.Join(dest, "theirs")); st.Uid != 0 || st.Gid != 0 {
		t.Errorf("exported theirs: owner %d:%d, want 0:0, the runner's", st.Uid, st.Gid)
	}

	kept := filepath.Join(f.dir, "kept")
	stdout, stderr, code = f.run("export", "--preserve-owner", f.cipher, ".", kept)
	if code != 0 {
		t.Fatalf("export --preserve-owner: exit %d\n%s%s", code, stdout, stderr)
	}
	if st := lstatT(t, filepath.Join(kept, "tool")); st.Mode&0o7777 != 0o6755 || st.Uid != 0 {
		t.Errorf("--preserve-owner tool: mode %#o owner %d, want 06755 owned by root", st.Mode&0o7777, st.Uid)
	}
	if st := lstatT(t, filepath.Join(kept, "theirs")); st.Uid != foreign || st.Gid != foreign {
		t.Errorf("--preserve-owner theirs: owner %d:%d, want %d:%d", st.Uid, st.Gid, foreign, foreign)
	}
	if !strings.Contains(stderr, "warning") || !strings.Contains(stderr, filepath.Join(kept, "tool")+": restored set-user-ID (owner uid 0)") {
		t.Errorf("export --preserve-owner: stderr %q, want a warning naming tool's set-user-ID bit", stderr)
	}

	u := needTestUser(t)
	out, code := runAsUser(t, u, f.env, kmsfsBin, "export", "--preserve-owner", f.cipher, ".", filepath.Join(f.dir, "user-out"))
	if code != 2 || !strings.Contains(out, "--preserve-owner") || !strings.Contains(out, "root") {
		t.Errorf("export --preserve-owner as %s: exit %d, %q; want a usage error (2) saying it needs root", u.name, code, out)
	}
}

// TestExportUntrustedSparse: a 64 MiB file holding 1 MiB of data (holes
// in the cipher file, and 1 MiB of written zeros) exports, and cats to a
// regular file, with few allocated blocks and the same content; cat to a
// pipe gives every byte.
func TestExportUntrustedSparse(t *testing.T) {
	f := newFixture(t)
	f.initKind(nameKinds[0])
	const size = 64 << 20
	want := make([]byte, size)
	data := randBytes(t, 1<<20)
	copy(want[20<<20:], data)
	f.mount()
	p := filepath.Join(f.mnt, "sparse")
	w, err := os.Create(p)
	must(t, err)
	must(t, w.Truncate(size))
	_, err = w.WriteAt(data, 20<<20)
	must(t, err)
	_, err = w.WriteAt(make([]byte, 1<<20), 40<<20) // sealed zeros, not a hole
	must(t, err)
	must(t, w.Close())
	f.unmount()

	check := func(what, p string) {
		t.Helper()
		got, err := os.ReadFile(p)
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes, content differs from what was written", what, len(got))
		}
		if st := lstatT(t, p); st.Blocks*512 > 4<<20 {
			t.Errorf("%s: %d bytes allocated for 1 MiB of data, want a sparse file", what, st.Blocks*512)
		}
	}
	dest := filepath.Join(f.dir, "out")
	f.kmsfs("export", f.cipher, ".", dest)
	check("export", filepath.Join(dest, "sparse"))
	one := filepath.Join(f.dir, "one")
	f.kmsfs("export", f.cipher, "sparse", one)
	check("export of the file alone", one)
	catOut := filepath.Join(f.dir, "cat.out")
	f.execOK(nil, "sh", "-c", `exec "$0" cat "$1" sparse > "$2"`, kmsfsBin, f.cipher, catOut)
	check("cat > file", catOut)
	if got := f.kmsfs("cat", f.cipher, "sparse"); got != string(want) {
		t.Errorf("cat to a pipe: %d bytes, content differs", len(got))
	}
}

// TestExportUntrustedEntries: a symlink the writer plants in the cipher
// directory (pointing at a valid cipher file outside it) is exported as
// a symlink and never read through; a FIFO planted where a file was
// makes cat fail at once; a FIFO swapped in and out while cat and
// export run never hangs them nor gives wrong bytes.
func TestExportUntrustedEntries(t *testing.T) {
	f := newFixture(t)
	f.initKind(nameKinds[1])
	f.timeout = 30 * time.Second
	content := []byte("victim content\n")
	secret := []byte("secret content of another file\n")
	f.mount()
	writeFile(t, filepath.Join(f.mnt, "victim"), content)
	writeFile(t, filepath.Join(f.mnt, "secret"), secret)
	writeFile(t, filepath.Join(f.mnt, "keep"), []byte("keep\n"))
	f.unmount()
	victim := f.cipherPath("victim")
	orig, err := os.ReadFile(victim)
	must(t, err)
	outside := filepath.Join(f.dir, "outside.cipher")
	b, err := os.ReadFile(f.cipherPath("secret"))
	must(t, err)
	must(t, os.WriteFile(outside, b, 0o644))
	must(t, os.Remove(f.cipherPath("secret")))
	restore := func() {
		t.Helper()
		os.Remove(victim)
		must(t, os.WriteFile(victim, orig, 0o644))
	}

	t.Run("symlink", func(t *testing.T) {
		f := f.withT(t)
		must(t, os.Remove(victim))
		must(t, os.Symlink(outside, victim))
		defer restore()
		stdout, stderr, code := f.run("cat", f.cipher, "victim")
		if code != 1 || strings.Contains(stdout, string(secret)) || !strings.Contains(stderr, "symlink") {
			t.Errorf("cat of a planted symlink: exit %d, stdout %q, stderr %q; want 1, nothing read through it", code, stdout, stderr)
		}
		dest := filepath.Join(f.dir, "out-symlink")
		f.kmsfs("export", f.cipher, ".", dest)
		if target, err := os.Readlink(filepath.Join(dest, "victim")); err != nil || target != outside {
			t.Errorf("exported victim: link %q, %v; want the planted symlink itself, not its target's content", target, err)
		}
	})

	t.Run("fifo", func(t *testing.T) {
		f := f.withT(t)
		must(t, os.Remove(victim))
		must(t, unix.Mkfifo(victim, 0o644))
		defer restore()
		start := time.Now()
		_, stderr, code := f.run("cat", f.cipher, "victim")
		if code != 1 || !strings.Contains(stderr, "victim") || !strings.Contains(stderr, "not a regular file") {
			t.Errorf("cat of a FIFO: exit %d, %q; want 1 naming victim as not a regular file", code, stderr)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("cat of a FIFO took %s", d)
		}
	})

	t.Run("fifo-race", func(t *testing.T) {
		f := f.withT(t)
		defer restore()
		parked := filepath.Join(filepath.Dir(victim), "parked.x")
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			// Swap victim between its cipher file and a FIFO until told
			// to stop (at most 200000 swaps).
			defer wg.Done()
			for i := 0; i < 200000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if i%2 == 0 {
					os.Rename(victim, parked)
					unix.Mkfifo(victim, 0o644)
				} else {
					os.Remove(victim)
					os.Rename(parked, victim)
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
		defer func() {
			close(stop)
			wg.Wait()
			os.Remove(parked)
		}()
		for i := range 8 {
			stdout, stderr, code := f.run("cat", f.cipher, "victim")
			if code == -1 || (code == 0) != (stdout == string(content)) || code != 0 && stdout != "" {
				t.Errorf("cat %d during swaps: exit %d, %d bytes, %q; want the content or an error", i, code, len(stdout), stderr)
			}
			dest := filepath.Join(f.dir, "race-out", strings.Repeat("x", i+1))
			_, stderr, code = f.run("export", f.cipher, ".", dest)
			if code == -1 {
				t.Errorf("export %d during swaps: did not finish: %q", i, stderr)
			}
			if b, err := os.ReadFile(filepath.Join(dest, "keep")); err != nil || string(b) != "keep\n" {
				t.Errorf("export %d during swaps: keep %q, %v", i, b, err)
			}
			if st, err := os.Lstat(filepath.Join(dest, "victim")); err == nil && st.Mode().IsRegular() {
				if b, _ := os.ReadFile(filepath.Join(dest, "victim")); !bytes.Equal(b, content) {
					t.Errorf("export %d during swaps: victim %q, want %q", i, b, content)
				}
			}
		}
	})
}
