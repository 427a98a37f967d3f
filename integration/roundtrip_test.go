package integration

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// roundTripSizes straddle the 4 KiB chunk: empty, one byte, a chunk less
// one, a chunk, a chunk plus one, and a large file of many chunks.
var roundTripSizes = []int{0, 1, 4095, 4096, 4097, 10 << 20}

// TestRoundTrip writes random files of the interesting sizes, a tree of
// modes and symlinks, a plaintext canary and a copy of the Go source tree
// through the mount; unmounts; checks the cipher directory holds no
// plaintext, that status and the audit log account for every file; then
// mounts again and compares everything.
func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.mount()

	ref := filepath.Join(f.dir, "ref") // plain reference copy of own/
	own := filepath.Join(f.mnt, "own")
	canary := "kmsfs-plaintext-canary-" + randHex(t, 16)
	mtime := time.Date(2024, 2, 29, 12, 34, 56, 789000000, time.UTC)

	// put writes the same file to the reference tree and the mount.
	put := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		for _, root := range []string{ref, own} {
			p := filepath.Join(root, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatalf("write %s: %v", p, err)
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatalf("chmod %s: %v", p, err)
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatalf("chtimes %s: %v", p, err)
			}
		}
	}
	both := func(what string, fn func(root string) error) {
		t.Helper()
		for _, root := range []string{ref, own} {
			if err := fn(root); err != nil {
				t.Fatalf("%s in %s: %v", what, root, err)
			}
		}
	}
	for _, n := range roundTripSizes {
		put(fmt.Sprintf("sizes/size-%d.bin", n), randBytes(t, n), 0o644)
	}
	put("canary.txt", []byte("header line\n"+canary+"\ntrailer line\n"), 0o644)
	put("modes/exec.sh", []byte("#!/bin/sh\necho hi\n"), 0o755)
	put("modes/private", randBytes(t, 100), 0o600)
	put("modes/readonly", randBytes(t, 5000), 0o444)
	put("deep/a/b/c/d/e/leaf", randBytes(t, 8192+7), 0o640)
	both("mkdir", func(root string) error { return os.MkdirAll(filepath.Join(root, "empty-dir"), 0o755) })
	put("private-dir/x", []byte("x"), 0o644)
	// Sparse files: a write far past the end, and an extending truncate.
	both("sparse", func(root string) error {
		fh, err := os.OpenFile(filepath.Join(root, "sparse", "holes.bin"), os.O_RDWR|os.O_CREATE, 0o644)
		if errors.Is(err, os.ErrNotExist) {
			if err = os.MkdirAll(filepath.Join(root, "sparse"), 0o755); err == nil {
				fh, err = os.OpenFile(filepath.Join(root, "sparse", "holes.bin"), os.O_RDWR|os.O_CREATE, 0o644)
			}
		}
		if err != nil {
			return err
		}
		defer fh.Close()
		for _, off := range []int64{3*4096 + 5, 5<<20 + 3, 1 << 20} {
			if _, err := fh.WriteAt([]byte("data at "+fmt.Sprint(off)), off); err != nil {
				return err
			}
		}
		if err := fh.Truncate(7<<20 + 11); err != nil {
			return err
		}
		return os.Chtimes(fh.Name(), mtime, mtime)
	})
	both("symlink", func(root string) error { return os.Symlink("sizes/size-1.bin", filepath.Join(root, "link-rel")) })
	both("symlink", func(root string) error { return os.Symlink("does/not/exist", filepath.Join(root, "link-dangling")) })
	both("symlink", func(root string) error { return os.Symlink("deep/a", filepath.Join(root, "link-dir")) })
	both("chmod", func(root string) error { return os.Chmod(filepath.Join(root, "private-dir"), 0o700) })

	// The Go source tree, copied with cp -a (modes, times, symlinks).
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	gosrc := filepath.Join(strings.TrimSpace(string(goroot)), "src")
	start := time.Now()
	// The one long command: 157 MB in 11,000 files; give it more than
	// the usual minute on a loaded machine or under -race.
	long := f.withT(t)
	long.timeout = 5 * time.Minute
	long.execOK(nil, "cp", "-a", gosrc, filepath.Join(f.mnt, "gosrc"))
	t.Logf("cp -a %s onto the mount: %s", gosrc, time.Since(start).Round(time.Millisecond))

	refScan := scanTree(t, ref)
	goScan := scanTree(t, gosrc)
	regular := 0
	for _, s := range []map[string]treeEntry{refScan, goScan} {
		for _, e := range s {
			if e.mode.IsRegular() {
				regular++
			}
		}
	}
	t.Logf("%d regular files written through the mount", regular)

	f.unmount()

	t.Run("no plaintext canary in the cipher dir", func(t *testing.T) {
		n := newNeedles([][]byte{[]byte(canary)})
		label := func([]byte) string { return "the canary" }
		// The scanner must see the canary where it is (the test can fail).
		if hits, _ := scanDirFor(t, ref, n, label); len(hits) != 1 {
			t.Fatalf("scanner self-check: got %d hits in the plain reference, want 1: %v", len(hits), hits)
		}
		hits, files := scanDirFor(t, f.cipher, n, label)
		for _, h := range hits {
			t.Errorf("plaintext on disk: %s", h)
		}
		// The keyring and HOME must not hold it either.
		hits, _ = scanDirFor(t, f.home, n, label)
		for _, h := range hits {
			t.Errorf("plaintext on disk: %s", h)
		}
		if files < regular {
			t.Errorf("scanned %d files in the cipher dir, want at least %d", files, regular)
		}
		for _, p := range []string{".kmsfs/index", ".kmsfs/audit.log", "kmsfs.conf"} {
			if _, err := os.Stat(filepath.Join(f.cipher, p)); err != nil {
				t.Errorf("cipher dir: %v", err)
			}
		}
	})

	t.Run("cipher sizes", func(t *testing.T) {
		for _, n := range roundTripSizes {
			f := f.withT(t)
			p := f.cipherPath(fmt.Sprintf("own/sizes/size-%d.bin", n))
			fi, err := os.Stat(p)
			if err != nil {
				t.Errorf("cipher file: %v", err)
				continue
			}
			want := int64(1056 + (n+4095)/4096*28 + n)
			if got := fi.Size(); got != want {
				t.Errorf("cipher size of a %d-byte file: got %d, want %d", n, got, want)
			}
		}
	})

	t.Run("status counts from the index", func(t *testing.T) {
		f := f.withT(t)
		s := f.status()
		if s.Mounted || s.Source != "index" {
			t.Errorf("status: got mounted %v, source %q; want false, index", s.Mounted, s.Source)
		}
		if s.Files != regular {
			t.Errorf("status files: got %d, want %d", s.Files, regular)
		}
		sum := 0
		for _, k := range s.Keys {
			sum += k.Files
			if k.KeyARN != s.KeyARN || k.KeyVersion != 1 {
				t.Errorf("status keys: got %s version %d, want %s version 1", k.KeyARN, k.KeyVersion, s.KeyARN)
			}
		}
		if sum != regular {
			t.Errorf("status keys: %d files in all, want %d", sum, regular)
		}
	})

	t.Run("audit log", func(t *testing.T) {
		ops, generated := auditOps(t, f.cipher)
		t.Logf("audit ops: %v", ops)
		if ops["GenerateDataKey"] < regular {
			t.Errorf("audit log: got %d GenerateDataKey lines, want at least %d (one per file)", ops["GenerateDataKey"], regular)
		}
		// Every cipher file's DEK came from an audited GenerateDataKey
		// naming its file ID.
		missing := 0
		err := filepath.WalkDir(f.cipher, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(f.cipher, p)
			if rel == ".kmsfs" {
				return filepath.SkipDir
			}
			if rel == "kmsfs.conf" || isOwnCipherEntry(d.Name()) || !d.Type().IsRegular() {
				return nil
			}
			id, err := fileIDOf(p)
			if err != nil {
				return err
			}
			if !generated[id] {
				missing++
				if missing <= 5 {
					t.Errorf("audit log: no GenerateDataKey for file ID %s (%s)", id, rel)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if missing > 5 {
			t.Errorf("audit log: %d files in all without a GenerateDataKey line", missing)
		}
	})

	f.mount("--ro")
	t.Run("plain view after remount", func(t *testing.T) {
		ents, err := os.ReadDir(f.mnt)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		if got, want := strings.Join(names, " "), "gosrc own"; got != want {
			t.Errorf("mount root: got %q, want %q (kmsfs.conf and .kmsfs hidden)", got, want)
		}
		compareTrees(t, refScan, scanTree(t, own), time.Nanosecond)
		compareTrees(t, goScan, scanTree(t, filepath.Join(f.mnt, "gosrc")), time.Nanosecond)
		if fi, err := os.Stat(filepath.Join(f.mnt, "gosrc")); err != nil {
			t.Error(err)
		} else if gi, err := os.Stat(gosrc); err == nil && fi.Mode() != gi.Mode() {
			t.Errorf("gosrc mode: got %v, want %v", fi.Mode(), gi.Mode())
		}
		got, err := os.ReadFile(filepath.Join(own, "canary.txt"))
		if err != nil || !bytes.Contains(got, []byte(canary)) {
			t.Errorf("canary file after remount: %q, %v", got, err)
		}
	})
	t.Run("read-only mount refuses writes", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(own, "new-file"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("create on a --ro mount: got %v, want EROFS", err)
		}
		if err := os.WriteFile(filepath.Join(own, "canary.txt"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("overwrite on a --ro mount: got %v, want EROFS", err)
		}
		if err := os.Remove(filepath.Join(own, "canary.txt")); !errors.Is(err, syscall.EROFS) {
			t.Errorf("unlink on a --ro mount: got %v, want EROFS", err)
		}
		if !strings.Contains(mountinfoLine(f.mnt), " ro,") && !strings.Contains(mountinfoLine(f.mnt), " ro ") {
			t.Errorf("mountinfo of a --ro mount: got %q, want ro", mountinfoLine(f.mnt))
		}
	})
	f.unmount()

	// The new mount process had no DEK cached: every file it opened was
	// unwrapped by an audited Decrypt.
	ops, _ := auditOps(t, f.cipher)
	if ops["Decrypt"] < regular {
		t.Errorf("audit log after reading every file: got %d Decrypt lines, want at least %d", ops["Decrypt"], regular)
	}
}

// TestCrashRecovery kills the mount process (SIGKILL: no clean shutdown,
// the index not closed) and checks the dead mount is reported and cleared
// by kmsfs unmount, and that a new mount reads everything written before
// the crash, keeps working, and fsck finds the cipher dir consistent.
func TestCrashRecovery(t *testing.T) {
	f := newFixture(t)
	f.init()
	pid := f.mount()
	if pid == 0 || !isOurMountProcess(pid) {
		t.Fatalf("mount pid %d is not a kmsfs process", pid)
	}
	files := map[string][]byte{}
	for i := 0; i < 30; i++ {
		name := fmt.Sprintf("before-crash-%02d", i)
		files[name] = randBytes(t, i*3001)
		if err := os.WriteFile(filepath.Join(f.mnt, name), files[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitGone(pid, 10*time.Second) {
		t.Fatalf("mount process %d survived SIGKILL", pid)
	}
	// The kernel answers ENOTCONN, or ECONNABORTED after an abort.
	if _, err := os.Stat(filepath.Join(f.mnt, "before-crash-01")); !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("stat on the dead mount: %v, want ENOTCONN or ECONNABORTED", err)
	}
	// mount refuses the dead mount point, naming the fix.
	if _, stderr, code := f.run("mount", f.cipher, f.mnt); code == 0 {
		t.Errorf("mount on a dead mount point: exit 0, want an error")
	} else if !strings.Contains(stderr, "kmsfs unmount") {
		t.Errorf("mount on a dead mount point: stderr %q, want it to name kmsfs unmount", stderr)
	} else {
		t.Logf("mount on a dead mount point: %s", strings.TrimSpace(stderr))
	}
	f.kmsfs("unmount", f.mnt)
	if isMounted(f.mnt) {
		t.Fatalf("kmsfs unmount of a dead mount: still mounted")
	}

	f.mount()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(f.mnt, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s after the crash: %d bytes, %v; want %d bytes", name, len(got), err, len(want))
		}
	}
	after := randBytes(t, 12345)
	if err := os.WriteFile(filepath.Join(f.mnt, "after-crash"), after, 0o644); err != nil {
		t.Fatal(err)
	}
	f.unmount()
	if s := f.status(); s.Files != len(files)+1 || s.Source != "index" {
		t.Errorf("status after the crash: got %d files from %q, want %d from the index", s.Files, s.Source, len(files)+1)
	}
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after the crash: exit %d\nstdout: %s\nstderr: %s", code, out, stderr)
	}
}

// TestConcurrentReadWrite runs writers that share chunks of one file
// (each owns interleaved 1000-byte ranges, so every 4 KiB chunk is
// read-modify-written by several of them at once) and readers of another
// file, through the CLI mount. Lost updates or torn chunks show up as
// wrong bytes; build the binary with KMSFS_IT_BUILDFLAGS=-race to race-check
// the mount process too.
func TestConcurrentReadWrite(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.mount()
	const (
		writers   = 4
		span      = 1000
		rounds    = 150
		sharedLen = 64 * 4096
	)
	shared := filepath.Join(f.mnt, "shared.bin")
	if err := os.WriteFile(shared, make([]byte, sharedLen), 0o644); err != nil {
		t.Fatal(err)
	}
	static := randBytes(t, 1<<20+77)
	if err := os.WriteFile(filepath.Join(f.mnt, "static.bin"), static, 0o644); err != nil {
		t.Fatal(err)
	}
	final := make([]byte, sharedLen) // each writer fills its own ranges
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			fh, err := os.OpenFile(shared, os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer fh.Close()
			var last map[int64][]byte
			for r := 0; r < rounds; r++ {
				last = map[int64][]byte{}
				for off := int64(g * span); off+span <= sharedLen; off += writers * span {
					b := make([]byte, span)
					if _, err := rand.Read(b); err != nil {
						errs <- err
						return
					}
					if r%2 == 0 && off > sharedLen/2 {
						continue // leave some ranges from an earlier round
					}
					if _, err := fh.WriteAt(b, off); err != nil {
						errs <- fmt.Errorf("writer %d round %d: write at %d: %w", g, r, off, err)
						return
					}
					last[off] = b
				}
				// Read back one of our own ranges: no other writer touches it.
				for off, want := range last {
					got := make([]byte, span)
					if _, err := fh.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
						errs <- fmt.Errorf("writer %d round %d: read back at %d: equal %v, %v", g, r, off, bytes.Equal(got, want), err)
						return
					}
					break
				}
			}
			for off, b := range last {
				copy(final[off:], b) // ranges are disjoint between writers
			}
		}(g)
	}
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for r := 0; r < 40; r++ {
				got, err := os.ReadFile(filepath.Join(f.mnt, "static.bin"))
				if err != nil || !bytes.Equal(got, static) {
					errs <- fmt.Errorf("reader %d round %d: %d bytes, %v", g, r, len(got), err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	// Ranges written in the last (odd) round hold its bytes; the others
	// were written in round rounds-2 and kept by final only if last.
	got, err := os.ReadFile(shared)
	if err != nil {
		t.Fatal(err)
	}
	f.unmount()
	f.mount()
	again, err := os.ReadFile(shared)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, again) {
		t.Errorf("shared file differs between before and after remount")
	}
	// Compare only ranges whose final bytes we know (written in the last round).
	bad := 0
	for g := 0; g < writers; g++ {
		for off := int64(g * span); off+span <= sharedLen; off += writers * span {
			want := final[off : off+span]
			if bytes.Equal(want, make([]byte, span)) {
				continue // not written in the last round
			}
			if !bytes.Equal(again[off:off+span], want) {
				bad++
				if bad <= 5 {
					t.Errorf("shared file [%d, %d) of writer %d: lost update (chunk %d)", off, off+span, g, off/4096)
				}
			}
		}
	}
	if bad > 5 {
		t.Errorf("%d ranges lost in all", bad)
	}
	f.unmount()
}

// TestChunkSizes round-trips files straddling the chunk boundaries of the
// other chunk sizes init accepts, and checks their cipher sizes.
func TestChunkSizes(t *testing.T) {
	for _, chunk := range []int{1 << 16, 1 << 20} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			f := newFixture(t)
			f.init("--chunk-size", fmt.Sprint(chunk))
			f.mount()
			sizes := []int{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + 5}
			want := map[string][]byte{}
			for _, n := range sizes {
				name := fmt.Sprintf("size-%d", n)
				want[name] = randBytes(t, n)
				if err := os.WriteFile(filepath.Join(f.mnt, name), want[name], 0o644); err != nil {
					t.Fatal(err)
				}
			}
			// A write in the middle of the last full chunk of the largest.
			name := fmt.Sprintf("size-%d", 3*chunk+5)
			fh, err := os.OpenFile(filepath.Join(f.mnt, name), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			patch := randBytes(t, 333)
			if _, err := fh.WriteAt(patch, int64(2*chunk+chunk/2)); err != nil {
				t.Fatal(err)
			}
			fh.Close()
			copy(want[name][2*chunk+chunk/2:], patch)
			f.unmount()
			for _, n := range sizes {
				fi, err := os.Stat(f.cipherPath(fmt.Sprintf("size-%d", n)))
				if err != nil {
					t.Fatal(err)
				}
				if got, want := fi.Size(), int64(1056+(n+chunk-1)/chunk*28+n); got != want {
					t.Errorf("cipher size of %d bytes in %d-byte chunks: got %d, want %d", n, chunk, got, want)
				}
			}
			f.mount()
			for name, b := range want {
				got, err := os.ReadFile(filepath.Join(f.mnt, name))
				if err != nil || !bytes.Equal(got, b) {
					t.Errorf("read %s: %d bytes, %v; want %d bytes", name, len(got), err, len(b))
				}
			}
			f.unmount()
		})
	}
}

// TestUnmountBusy: kmsfs unmount refuses a mount with an open file,
// naming the cause, and leaves it working; after the close it unmounts.
func TestUnmountBusy(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.mount()
	p := filepath.Join(f.mnt, "held-open")
	if err := os.WriteFile(p, []byte("open while unmounting\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	_, stderr, code := f.run("unmount", f.mnt)
	if code == 0 {
		t.Fatalf("unmount with an open file: exit 0, want busy")
	}
	if !strings.Contains(stderr, "busy") {
		t.Errorf("unmount with an open file: stderr %q, want it to say busy", stderr)
	}
	if !isMounted(f.mnt) {
		t.Fatalf("a refused unmount unmounted")
	}
	b := make([]byte, 100)
	if n, err := fh.ReadAt(b, 0); string(b[:n]) != "open while unmounting\n" {
		t.Errorf("read after the refused unmount: %q, %v", b[:n], err)
	}
	fh.Close()
	f.unmount()
}
