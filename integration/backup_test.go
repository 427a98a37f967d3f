package integration

// backup_test.go: backups and restores as docs/backup.md describes them,
// through the built binary: whole-tree copies (cp -a, tar, rsync -a)
// unmounted and mounted-idle, a single file restored into a live cipher
// directory, a lost or corrupt index, a restore after a key rotation,
// cat/export/verify with and without a mount, and index backup/restore.
// Every comparison is by sha256 of every file (scanTree/compareTrees).

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// backupMtime is the fixed mtime of the tree's files: whole seconds plus
// nanoseconds, so copies that keep only seconds show up.
var backupMtime = time.Date(2025, 6, 1, 10, 20, 30, 123456789, time.UTC)

// writeBackupTree writes a representative plain tree through the mount:
// sizes around the chunk size, nested directories with several modes, an
// empty file, relative and absolute symlinks.
func writeBackupTree(t *testing.T, root string) {
	t.Helper()
	sizes := []int{0, 1, 4095, 4096, 4097, 100000, 1 << 20}
	for i, n := range sizes {
		p := filepath.Join(root, fmt.Sprintf("d%d/sub/f%d.bin", i%3, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, randBytes(t, n), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, backupMtime, backupMtime.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "top.txt"), []byte("hello, backup\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "private"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "private", "secret"), randBytes(t, 5000), 0o400); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{"d0/sub/f0.bin", "link"}, {"/etc/hostname", "abs-link"}, {"../top.txt", "d1/up"}} {
		if err := os.Symlink(l[0], filepath.Join(root, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "d1"), 0o750); err != nil {
		t.Fatal(err)
	}
	// Every file's mtime set explicitly: right after a write, the mount's
	// cached attributes may lag the cipher file's mtime by the time the
	// last write took, and the comparisons are exact.
	for _, p := range []string{"top.txt", "private/secret"} {
		if err := os.Chtimes(filepath.Join(root, p), backupMtime, backupMtime); err != nil {
			t.Fatal(err)
		}
	}
}

// copyTool copies a cipher directory src to a new path dst.
type copyTool struct {
	name     string
	mtimeRes time.Duration // what the copy keeps of mtimes
	need     string        // program that must be installed
	copy     func(f *fixture, src, dst string)
}

var copyTools = []copyTool{
	{name: "cp", mtimeRes: time.Nanosecond, need: "cp", copy: func(f *fixture, src, dst string) {
		f.execOK(nil, "cp", "-a", src, dst)
	}},
	{name: "tar", mtimeRes: time.Second, need: "tar", copy: func(f *fixture, src, dst string) {
		archive := dst + ".tar"
		f.execOK(nil, "tar", "-cf", archive, "-C", filepath.Dir(src), filepath.Base(src))
		if err := os.Mkdir(dst+".x", 0o700); err != nil {
			f.t.Fatal(err)
		}
		f.execOK(nil, "tar", "-xpf", archive, "-C", dst+".x")
		if err := os.Rename(filepath.Join(dst+".x", filepath.Base(src)), dst); err != nil {
			f.t.Fatal(err)
		}
	}},
	{name: "rsync", mtimeRes: time.Second, need: "rsync", copy: func(f *fixture, src, dst string) {
		f.execOK(nil, "rsync", "-a", src+"/", dst+"/")
	}},
}

// mountCopy mounts the cipher directory copy at a new mount point with f's
// keyring and returns its fixture.
func mountCopy(t *testing.T, f *fixture, cipher string) *fixture {
	t.Helper()
	g := f.sibling(cipher, cipher+".mnt")
	if err := os.Mkdir(g.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.checkMountLog)
	g.mount()
	return g
}

// TestBackupWholeTree copies the cipher directory with cp -a, tar and
// rsync -a, unmounted and then mounted and idle, restores each copy to
// another path, mounts it and compares every file by sha256 (and modes,
// symlinks, mtimes to what the tool keeps).
func TestBackupWholeTree(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// A copy taken while mounted may catch the index between writes: a
	// mount then moves it aside and rebuilds it (a warning).
	f.allowLog = regexp.MustCompile(`header index corrupt`)
	f.init()
	f.mount()
	writeBackupTree(t, f.mnt)
	want := scanTree(t, f.mnt)
	f.unmount()

	for _, mounted := range []bool{false, true} {
		if mounted {
			f.mount()
			// Idle: reading is all right, nothing writes.
			compareTrees(t, want, scanTree(t, f.mnt), time.Nanosecond)
		}
		for _, tool := range copyTools {
			if _, err := exec.LookPath(tool.need); err != nil {
				t.Logf("%s not installed: no copy with it", tool.need)
				continue
			}
			t.Logf("copy with %s, mounted=%v", tool.name, mounted)
			dst := filepath.Join(f.dir, fmt.Sprintf("copy-%s-%v", tool.name, mounted))
			tool.copy(f, f.cipher, dst)
			g := mountCopy(t, f, dst)
			compareTrees(t, want, scanTree(t, g.mnt), tool.mtimeRes)
			g.unmount()
			if out, stderr, code := g.run("verify", dst); code != 0 {
				t.Errorf("verify of the %s copy (mounted=%v): exit %d\n%s%s", tool.name, mounted, code, out, stderr)
			}
		}
		if mounted {
			f.unmount()
		}
	}
}

// TestBackupSingleFile restores one cipher file from an old backup into
// the live cipher directory after the file was deleted (its index entry
// gone with it), mounted and unmounted: it opens and reads, and the index
// learns it.
func TestBackupSingleFile(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.init()
	f.mount()
	writeBackupTree(t, f.mnt)
	want := scanTree(t, f.mnt)
	f.unmount()
	backup := filepath.Join(f.dir, "backup")
	f.execOK(nil, "cp", "-a", f.cipher, backup)

	f.mount()
	for _, rel := range []string{"d2/sub/f5.bin", "top.txt"} {
		if err := os.Remove(filepath.Join(f.mnt, rel)); err != nil {
			t.Fatal(err)
		}
	}
	// Where the backup holds each file and where it goes back: kmsfs
	// path, as docs/backup.md says (with encrypted names the backup's
	// cipher paths are the live directory's: same directory IDs).
	inBackup := func(plain string) string { return filepath.Join(backup, f.cipherRel(plain)) }
	// Restored while mounted, under a name the mount never looked up.
	f.execOK(nil, "cp", "-a", inBackup("d2/sub/f5.bin"), f.cipherPath("d2/sub/f5-restored.bin"))
	sum, err := fileSHA256(filepath.Join(f.mnt, "d2/sub/f5-restored.bin"))
	if wantSum := want["d2/sub/f5.bin"].sum; err != nil || sum != wantSum {
		t.Errorf("file restored into the mounted cipher dir: sha256 %x, %v; want %x", sum[:8], err, wantSum[:8])
	}
	f.unmount()
	// Restored while unmounted, under its own name.
	f.execOK(nil, "cp", "-a", inBackup("top.txt"), f.cipherPath("top.txt"))
	if err := os.Rename(f.cipherPath("d2/sub/f5-restored.bin"), f.cipherPath("d2/sub/f5.bin")); err != nil {
		t.Fatal(err)
	}
	f.mount()
	compareTrees(t, want, scanTree(t, f.mnt), time.Nanosecond)
	f.unmount()
	// The index learned both: fsck finds nothing to add.
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after the restores: exit %d\n%s%s", code, out, stderr)
	}
	if s := f.status(); s.Source != "index" || s.Files != countFiles(want) {
		t.Errorf("status: %d files from %s, want %d from the index", s.Files, s.Source, countFiles(want))
	}
}

func countFiles(tree map[string]treeEntry) int {
	n := 0
	for _, e := range tree {
		if e.mode.IsRegular() {
			n++
		}
	}
	return n
}

// TestBackupIndexLost: the index removed, then corrupted: the next mount,
// or fsck --repair, rebuilds it from the files and nothing is lost.
func TestBackupIndexLost(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.allowLog = regexp.MustCompile(`header index corrupt`)
	f.init()
	f.mount()
	writeBackupTree(t, f.mnt)
	want := scanTree(t, f.mnt)
	f.unmount()
	index := filepath.Join(f.cipher, ".kmsfs", "index")

	// Removed: the mount starts a fresh one and fills it as files open.
	if err := os.RemoveAll(index); err != nil {
		t.Fatal(err)
	}
	f.mount()
	compareTrees(t, want, scanTree(t, f.mnt), time.Nanosecond)
	f.unmount()
	if s := f.status(); s.Source != "index" || s.Files != countFiles(want) {
		t.Errorf("status after a mount healed the index: %d files from %s, want %d from the index", s.Files, s.Source, countFiles(want))
	}

	corrupt := func() {
		t.Helper()
		ents, err := os.ReadDir(index)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() == "LOCK" {
				continue
			}
			if err := os.WriteFile(filepath.Join(index, e.Name()), bytes.Repeat([]byte("garbage!"), 512), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Corrupted, repaired by fsck.
	corrupt()
	if _, _, code := f.run("fsck", f.cipher); code != 1 {
		t.Errorf("fsck of a corrupt index: exit %d, want 1", code)
	}
	if out, stderr, code := f.run("fsck", "--repair", f.cipher); code != 0 {
		t.Fatalf("fsck --repair: exit %d\n%s%s", code, out, stderr)
	}
	if s := f.status(); s.Source != "index" || s.Files != countFiles(want) {
		t.Errorf("status after fsck --repair: %d files from %s, want %d from the index", s.Files, s.Source, countFiles(want))
	}
	// Corrupted, healed by the mount.
	corrupt()
	f.mount()
	compareTrees(t, want, scanTree(t, f.mnt), time.Nanosecond)
	f.unmount()
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after the mount rebuilt the index: exit %d\n%s%s", code, out, stderr)
	}
}

// TestBackupAfterRotation: a backup whose files are wrapped under key
// version 1 restores and reads after the key was rotated, mounted and
// with cat, export and verify; with the key disabled nothing decrypts,
// with a clear error, and enabling it brings everything back.
func TestBackupAfterRotation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.allowLog = regexp.MustCompile(`cannot open file key|key is disabled`)
	f.init()
	f.mount()
	writeBackupTree(t, f.mnt)
	want := scanTree(t, f.mnt)
	f.unmount()
	backup := filepath.Join(f.dir, "backup.tar")
	f.execOK(nil, "tar", "-cf", backup, "-C", f.dir, "cipher")

	f.kmsfs("keys", "rotate", "alias/kmsfs/default")
	f.mount()
	if err := os.WriteFile(filepath.Join(f.mnt, "after-rotation"), []byte("v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.unmount()
	versions := map[uint32]int{}
	for _, k := range f.status().Keys {
		versions[k.KeyVersion] += k.Files
	}
	if versions[1] != countFiles(want) || versions[2] != 1 {
		t.Errorf("files per key version after rotation: %v, want %d under 1 and 1 under 2", versions, countFiles(want))
	}

	restored := filepath.Join(f.dir, "restored")
	if err := os.Mkdir(restored, 0o700); err != nil {
		t.Fatal(err)
	}
	f.execOK(nil, "tar", "-xpf", backup, "-C", restored)
	cipher := filepath.Join(restored, "cipher")
	g := mountCopy(t, f, cipher)
	compareTrees(t, want, scanTree(t, g.mnt), time.Second)
	g.unmount()
	if out, stderr, code := g.run("verify", cipher); code != 0 {
		t.Errorf("verify of the restore: exit %d\n%s%s", code, out, stderr)
	}
	out := f.kmsfs("cat", cipher, "d2/sub/f5.bin")
	if sha256.Sum256([]byte(out)) != want["d2/sub/f5.bin"].sum {
		t.Errorf("cat of the restore after rotation: wrong content")
	}

	f.kmsfs("keys", "disable", "alias/kmsfs/default")
	_, stderr, code := f.run("export", cipher, ".", filepath.Join(f.dir, "export-disabled"))
	if code != 1 || !strings.Contains(stderr, "disabled") {
		t.Errorf("export with the key disabled: exit %d, %q; want 1 saying disabled", code, stderr)
	}
	f.kmsfs("keys", "enable", "alias/kmsfs/default")
	dest := filepath.Join(f.dir, "export")
	f.kmsfs("export", cipher, ".", dest)
	compareTrees(t, want, scanTree(t, dest), time.Second)
}

// TestBackupOfflineReaders: cat, export and verify while the cipher
// directory is mounted (the index is locked) and unmounted, against the
// mount's own view.
func TestBackupOfflineReaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.init()
	f.mount()
	writeBackupTree(t, f.mnt)
	if err := syscall.Setxattr(filepath.Join(f.mnt, "top.txt"), "user.note", []byte("kept"), 0); err != nil {
		t.Fatalf("setxattr through the mount: %v", err)
	}
	want := scanTree(t, f.mnt)

	for _, mounted := range []bool{true, false} {
		dest := filepath.Join(f.dir, fmt.Sprintf("export-mounted=%v", mounted))
		f.kmsfs("export", f.cipher, ".", dest)
		compareTrees(t, want, scanTree(t, dest), time.Nanosecond)
		buf := make([]byte, 64)
		if n, err := syscall.Getxattr(filepath.Join(dest, "top.txt"), "user.note", buf); err != nil || string(buf[:n]) != "kept" {
			t.Errorf("export (mounted=%v): user.note of top.txt: %q, %v; want \"kept\"", mounted, buf[:max(n, 0)], err)
		}
		for rel, e := range want {
			if !e.mode.IsRegular() {
				continue
			}
			if got := sha256.Sum256([]byte(f.kmsfs("cat", f.cipher, rel))); got != e.sum {
				t.Errorf("cat %s (mounted=%v): sha256 %x, want %x", rel, mounted, got[:8], e.sum[:8])
			}
		}
		if out, stderr, code := f.run("verify", f.cipher); code != 0 || !strings.Contains(out, fmt.Sprintf("verified %d files", countFiles(want))) {
			t.Errorf("verify (mounted=%v): exit %d\n%s%s", mounted, code, out, stderr)
		}
		// Subtree and single file.
		sub := filepath.Join(f.dir, fmt.Sprintf("sub-mounted=%v", mounted))
		f.kmsfs("export", f.cipher, "d1", sub)
		if sum, err := fileSHA256(filepath.Join(sub, "sub", "f4.bin")); err != nil || sum != want["d1/sub/f4.bin"].sum {
			t.Errorf("export of a subtree (mounted=%v): %v", mounted, err)
		}
		if mounted {
			// The index stays the mount's: restore and backup refuse.
			for _, args := range [][]string{{"index", "backup", f.cipher, filepath.Join(f.dir, "ib")}, {"index", "restore", f.cipher, filepath.Join(f.dir, "ib")}} {
				if _, stderr, code := f.run(args...); code != 1 || !strings.Contains(stderr, "mounted") {
					t.Errorf("kmsfs %s while mounted: exit %d, %q; want 1 saying mounted", strings.Join(args, " "), code, stderr)
				}
			}
			f.unmount()
		}
	}
	// No overwrite without --force; nothing changes.
	dest := filepath.Join(f.dir, "export-mounted=false")
	if _, stderr, code := f.run("export", f.cipher, ".", dest); code != 1 || !strings.Contains(stderr, "--force") {
		t.Errorf("export over an earlier export: exit %d, %q", code, stderr)
	}
	f.kmsfs("export", "--force", f.cipher, ".", dest)
	compareTrees(t, want, scanTree(t, dest), time.Nanosecond)
}

// TestVerifyFindsFlippedByte writes 10,000 small files, then flips one
// byte at a time anywhere in one file (header, chunk, tail) and checks
// that verify names exactly that file, and the chunk when the byte is in
// the content.
func TestVerifyFindsFlippedByte(t *testing.T) {
	t.Parallel()
	const nFiles = 10000
	f := newFixture(t)
	f.init()
	f.mount()
	rels := make([]string, nFiles)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < nFiles; i += 4 {
				rels[i] = fmt.Sprintf("d%02d/e%d/f%05d", i%50, i%7, i)
				p := filepath.Join(f.mnt, rels[i])
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					errs <- err
					return
				}
				// 1..3 chunks of 4 KiB.
				if err := os.WriteFile(p, bytes.Repeat([]byte{byte(i)}, 100+(i*37)%9000), 0o644); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	f.unmount()
	if out, stderr, code := f.run("verify", f.cipher); code != 0 || !strings.Contains(out, "verified 10000 files") {
		t.Fatalf("verify of the sound tree: exit %d\n%s%s", code, out, stderr)
	}

	const contentOff, cipherChunk = 32 + 2*512, 4096 + 28
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	// Preamble, slot 0, slot 1, first chunk, last byte, and two anywhere.
	picks := []func(size int64) int64{
		func(int64) int64 { return 10 },
		func(int64) int64 { return 32 + 100 },
		func(int64) int64 { return 32 + 512 + 7 },
		func(int64) int64 { return contentOff + 20 },
		func(size int64) int64 { return size - 1 },
		func(size int64) int64 { return rng.Int64N(size) },
		func(size int64) int64 { return contentOff + rng.Int64N(size-contentOff) },
	}
	for i, pick := range picks {
		rel := rels[rng.IntN(nFiles)]
		p := f.cipherPath(rel)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		off := pick(fi.Size())
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bad := append([]byte(nil), orig...)
		bad[off] ^= 1 << rng.IntN(8)
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := f.run("verify", "--jobs", "2", f.cipher)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 1 || len(lines) < 2 || !strings.Contains(lines[len(lines)-1], "1 damaged") {
			t.Errorf("flip %d (%s at %d): verify exit %d, want 1 and one damaged file\n%s%s", i, rel, off, code, out, stderr)
		}
		for _, l := range lines[:len(lines)-1] {
			if !strings.HasPrefix(l, rel+" (file ") {
				t.Errorf("flip %d (%s at %d): verify names another file: %s", i, rel, off, l)
			}
		}
		if off >= contentOff {
			chunk := (off - contentOff) / cipherChunk
			if !strings.Contains(out, fmt.Sprintf("chunk %d fails authentication", chunk)) {
				t.Errorf("flip %d (%s at %d): verify does not name chunk %d:\n%s", i, rel, off, chunk, out)
			}
		}
		if err := os.WriteFile(p, orig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIndexBackupRestore: an index backup taken before more files were
// written, restored over a removed index, loses no file; the mount then
// reads everything and status counts every file from the index.
func TestIndexBackupRestore(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.init()
	f.mount()
	writeBackupTree(t, f.mnt)
	f.unmount()
	ib := filepath.Join(f.dir, "index.backup")
	if out := f.kmsfs("index", "backup", f.cipher, ib); !strings.Contains(out, "backed up") {
		t.Errorf("index backup: %q", out)
	}
	f.mount()
	for i := range 5 {
		p := filepath.Join(f.mnt, fmt.Sprintf("later-%d", i))
		if err := os.WriteFile(p, randBytes(t, 3000*i), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, backupMtime, backupMtime); err != nil {
			t.Fatal(err)
		}
	}
	want := scanTree(t, f.mnt)
	f.unmount()
	if err := os.RemoveAll(filepath.Join(f.cipher, ".kmsfs", "index")); err != nil {
		t.Fatal(err)
	}
	out := f.kmsfs("index", "restore", f.cipher, ib)
	if !strings.Contains(out, "5 headers added") {
		t.Errorf("index restore: want 5 headers added from the files\n%s", out)
	}
	if s := f.status(); s.Source != "index" || s.Files != countFiles(want) {
		t.Errorf("status after restore: %d files from %s, want %d from the index", s.Files, s.Source, countFiles(want))
	}
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after restore: exit %d\n%s%s", code, out, stderr)
	}
	f.mount()
	compareTrees(t, want, scanTree(t, f.mnt), time.Nanosecond)
	f.unmount()
}

// TestBackupDuringWrites copies the cipher directory while a writer keeps
// overwriting a file through the mount, as docs/backup.md describes: in
// each copy, every chunk of the file is a whole chunk of some version
// (old or new: a mix within the file reads without error, as the doc
// says), or fails authentication (a chunk caught half-written), and verify
// agrees with what cat reads. Never a wrong byte within a chunk.
func TestBackupDuringWrites(t *testing.T) {
	t.Parallel()
	const chunks, chunk = 16, 4096
	f := newFixture(t)
	f.init()
	f.mount()
	p := filepath.Join(f.mnt, "busy")
	w, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(bytes.Repeat([]byte{0}, chunks*chunk), 0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, chunks*chunk)
		for v := byte(1); ; v++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			for i := range buf {
				buf[i] = v
			}
			if _, err := w.WriteAt(buf, 0); err != nil {
				done <- err
				return
			}
		}
	}()
	var copies []string
	for i := range 4 {
		dst := filepath.Join(f.dir, fmt.Sprintf("busy-copy-%d", i))
		f.execOK(nil, "cp", "-a", f.cipher, dst)
		copies = append(copies, dst)
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	w.Close()
	f.unmount()

	for _, c := range copies {
		r := f.exec(nil, kmsfsBin, "cat", c, "busy")
		_, _, vcode := f.run("verify", c)
		switch r.code {
		case 0:
			if vcode != 0 {
				t.Errorf("%s: cat reads it whole but verify exits %d", c, vcode)
			}
			if len(r.stdout) != chunks*chunk {
				t.Errorf("%s: cat gave %d bytes, want %d", c, len(r.stdout), chunks*chunk)
				continue
			}
			versions := map[byte]bool{}
			for k := range chunks {
				ck := r.stdout[k*chunk : (k+1)*chunk]
				if strings.Count(ck, ck[:1]) != chunk {
					t.Errorf("%s: chunk %d holds bytes of several versions: a wrong byte", c, k)
				}
				versions[ck[0]] = true
			}
			t.Logf("%s: reads whole, %d versions across its chunks", filepath.Base(c), len(versions))
		case 1:
			if !strings.Contains(r.stderr, "fails authentication") || vcode != 1 {
				t.Errorf("%s: cat exit 1 (%q), verify exit %d: want a chunk failing authentication in both", c, r.stderr, vcode)
			}
			t.Logf("%s: %s", filepath.Base(c), strings.TrimSpace(r.stderr))
		default:
			t.Errorf("%s: cat exit %d: %s", c, r.code, r.stderr)
		}
	}
}
