package integration

// faults_test.go: the mount under faults of its surroundings: the key
// disabled (access revoked) and the keyring gone while mounted, a full
// disk, a read-only cipher directory, an index held by another process,
// the mount point detached or missing, and SIGTERM/SIGINT during heavy
// writes, each on both kinds of filesystem (names encrypted and plaintext
// names). The aws provider's network faults (KMS unreachable, slow,
// throttling, access denied) are covered in keymgr by the fault-injecting
// proxy: TestAWSHardOutage, TestAWSPersistentThrottling,
// TestAWSRetriesRideOutFaults, TestAWSCallerCancels, TestAWSAccessDenied,
// TestAWSDisabledKey (keymgr/aws_test.go, keymgr/awsproxy_test.go).

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/keymgr"
)

// writeSynced writes b to p and fsyncs it before closing.
func writeSynced(p string, b []byte) error {
	fh, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

func errnoName(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return fmt.Sprintf("%v (%d)", e, int(e))
	}
	return fmt.Sprint(err)
}

// TestFaultKeyDisabledWhileMounted: `kmsfs keys disable` while mounted.
// Files whose DEK is cached keep working (read and write); files not
// opened since the mount fail with EACCES; nothing already written is
// harmed, and after `keys enable` everything reads as written.
func TestFaultKeyDisabledWhileMounted(t *testing.T) {
	eachNameKind(t, testFaultKeyDisabledWhileMounted)
}

func testFaultKeyDisabledWhileMounted(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k)
	f.allowLog = regexp.MustCompile(`cannot open file key|KeyDisabled|key .*disabled`)
	f.mount()
	content := map[string][]byte{}
	for i := 0; i < 6; i++ {
		n := fmt.Sprintf("f%d", i)
		content[n] = randBytes(t, 5000+i*3000)
		must(t, os.WriteFile(filepath.Join(f.mnt, n), content[n], 0o644))
	}
	f.unmount()
	f.mount() // an empty DEK cache
	// f0, f1 are opened (their DEKs cached); the others are not.
	for _, n := range []string{"f0", "f1"} {
		if got, err := os.ReadFile(filepath.Join(f.mnt, n)); err != nil || !bytes.Equal(got, content[n]) {
			t.Fatalf("read %s: %v", n, err)
		}
	}
	f.kmsfs("keys", "disable", "alias/kmsfs/default")
	// The provider looks at the keyring file at most once a second.
	time.Sleep(1100 * time.Millisecond)
	for _, n := range []string{"f2", "f3"} {
		if fh, err := os.Open(filepath.Join(f.mnt, n)); !errors.Is(err, syscall.EACCES) {
			t.Errorf("open uncached %s after keys disable: %v, want EACCES", n, err)
			if err == nil {
				fh.Close()
			}
		}
	}
	// Cached files keep working, both ways.
	if got, err := os.ReadFile(filepath.Join(f.mnt, "f0")); err != nil || !bytes.Equal(got, content["f0"]) {
		t.Errorf("read cached f0 after keys disable: %d bytes, %v", len(got), err)
	}
	patch := randBytes(t, 3000)
	fh, err := os.OpenFile(filepath.Join(f.mnt, "f1"), os.O_WRONLY, 0)
	if err != nil {
		t.Errorf("open cached f1 for writing after keys disable: %v", err)
	} else {
		if _, err := fh.WriteAt(patch, 4000); err != nil {
			t.Errorf("write cached f1 after keys disable: %v", err)
		} else {
			copy(content["f1"][4000:], patch)
		}
		must(t, fh.Sync())
		must(t, fh.Close())
	}
	// Names need no call per file (the mount unwrapped the names key
	// when it mounted): listing, lookups and directories go on.
	if got, err := listNames(f.mnt); err != nil || len(got) != len(content) {
		t.Errorf("list the root after keys disable: %q, %v; want the %d files", got, err, len(content))
	}
	if err := os.Mkdir(filepath.Join(f.mnt, "dir-after-disable"), 0o755); err != nil {
		t.Errorf("mkdir after keys disable: %v", err)
	} else {
		must(t, os.Remove(filepath.Join(f.mnt, "dir-after-disable")))
	}
	// A new file is refused at once: `keys disable` told the mount, which
	// dropped the data keys its pool had generated ahead under the key.
	if err := os.WriteFile(filepath.Join(f.mnt, "new-after-disable"), []byte("new"), 0o644); !errors.Is(err, syscall.EACCES) {
		t.Errorf("create after keys disable: %v, want EACCES", err)
	}
	_ = os.Remove(filepath.Join(f.mnt, "new-after-disable"))
	f.kmsfs("keys", "enable", "alias/kmsfs/default")
	time.Sleep(1100 * time.Millisecond)
	for n, want := range content {
		if got, err := os.ReadFile(filepath.Join(f.mnt, n)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s after keys enable: %d bytes, %v; want %d bytes as written", n, len(got), err, len(want))
		}
	}
	f.unmount()
	f.mount()
	for n, want := range content {
		if got, err := os.ReadFile(filepath.Join(f.mnt, n)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s after a remount: %d bytes, %v", n, len(got), err)
		}
	}
	f.unmount()
	ops, _ := auditOps(t, f.cipher)
	b, _ := os.ReadFile(filepath.Join(f.cipher, ".kmsfs", "audit.log"))
	if !strings.Contains(string(b), `"outcome":"KeyDisabled"`) {
		t.Errorf("audit log records no refused call (KeyDisabled); ops %v", ops)
	}
}

// TestFaultKeyringGoneWhileMounted: the keyring file removed while
// mounted: the provider keeps the keys it loaded (a failed reload is
// logged), so uncached files still open; the mount goes on.
func TestFaultKeyringGoneWhileMounted(t *testing.T) {
	eachNameKind(t, testFaultKeyringGoneWhileMounted)
}

func testFaultKeyringGoneWhileMounted(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k)
	f.allowLog = regexp.MustCompile(`keyring reload failed`)
	f.mount()
	want := randBytes(t, 9000)
	must(t, os.WriteFile(filepath.Join(f.mnt, "x"), want, 0o644))
	f.unmount()
	f.mount()
	aside := f.keyring + ".aside"
	must(t, os.Rename(f.keyring, aside))
	time.Sleep(1100 * time.Millisecond)
	if got, err := os.ReadFile(filepath.Join(f.mnt, "x")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read an uncached file with the keyring gone: %d bytes, %v", len(got), err)
	}
	must(t, os.WriteFile(filepath.Join(f.mnt, "y"), []byte("y"), 0o644))
	must(t, os.Rename(aside, f.keyring))
	f.unmount()
}

// TestFaultDiskFull: the cipher directory on an 8 MiB tmpfs. Writes fail
// with ENOSPC; the file being written reads as acknowledged, other files
// are unharmed; once space is freed everything works again.
func TestFaultDiskFull(t *testing.T) { eachNameKind(t, testFaultDiskFull) }

func testFaultDiskFull(t *testing.T, k nameKind) {
	requireKmsfs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	f := newFixture(t)
	small := filepath.Join(f.dir, "small")
	must(t, os.Mkdir(small, 0o755))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	// Registered before the kmsfs mount: runs after its unmount.
	t.Cleanup(func() {
		if err := syscall.Unmount(small, 0); err != nil {
			_ = syscall.Unmount(small, syscall.MNT_DETACH)
		}
	})
	f.cipher = filepath.Join(small, "cipher")
	f.initKind(k)
	f.allowLog = regexp.MustCompile(`no space left on device|unexpected error`)
	f.mount()
	a := randBytes(t, 1<<20)
	must(t, writeSynced(filepath.Join(f.mnt, "a"), a))
	u := randBytes(t, 10000)
	must(t, writeSynced(filepath.Join(f.mnt, "uncached"), u))
	// Small files to open one by one once the disk is full.
	const probes = 60
	for i := 0; i < probes; i++ {
		must(t, os.WriteFile(filepath.Join(f.mnt, fmt.Sprintf("probe-%02d", i)), []byte{byte(i)}, 0o644))
	}
	f.unmount()
	f.mount()
	if got, err := os.ReadFile(filepath.Join(f.mnt, "a")); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("read a: %v", err)
	}

	// Fill the disk through one file, 64 KiB at a time.
	bp := filepath.Join(f.mnt, "b")
	fh, err := os.OpenFile(bp, os.O_WRONLY|os.O_CREATE, 0o644)
	must(t, err)
	var b []byte
	var werr error
	for len(b) < 16<<20 {
		piece := randBytes(t, 64<<10)
		n, err := fh.WriteAt(piece, int64(len(b)))
		if err != nil {
			werr = err
			t.Logf("write at %d: %d bytes, %v", len(b), n, err)
			break
		}
		b = append(b, piece...)
	}
	fh.Close()
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Errorf("writing past the end of an 8 MiB disk: %v, want ENOSPC", werr)
	}
	t.Logf("acknowledged %d bytes before ENOSPC", len(b))
	// What was acknowledged reads back; the rest is absent or EIO.
	got, rerr := readRange(bp, 0, len(b))
	if rerr != nil || !bytes.Equal(got, b) {
		t.Errorf("read the %d acknowledged bytes of the file that hit ENOSPC: %d bytes, %v (first difference at %d)", len(b), len(got), rerr, firstDiff(got, b))
	}
	if fi, err := os.Stat(bp); err == nil {
		t.Logf("size of the file that hit ENOSPC: %d (acknowledged %d)", fi.Size(), len(b))
	}
	if got, err := os.ReadFile(filepath.Join(f.mnt, "a")); err != nil || !bytes.Equal(got, a) {
		t.Errorf("read a with the disk full: %d bytes, %v", len(got), err)
	}
	// Fill the last free pages (tmpfs) outside the cipher directory.
	filler, err := os.Create(filepath.Join(small, "filler"))
	must(t, err)
	for {
		if _, err := filler.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	filler.Close()
	// Opening a file whose DEK is not cached needs a KMS call, and every
	// KMS call an audit line: the audit log fails closed, so once it
	// cannot grow such opens fail. Files already open are not affected.
	opened, firstErr := 0, error(nil)
	for i := 0; i < probes; i++ {
		fh, err := os.Open(filepath.Join(f.mnt, fmt.Sprintf("probe-%02d", i)))
		if err != nil {
			firstErr = err
			break
		}
		fh.Close()
		opened++
	}
	if firstErr != nil {
		t.Logf("disk full: %d uncached files opened, then open failed with %s (the audit log fails closed)", opened, errnoName(firstErr))
		if !errors.Is(firstErr, syscall.ENOSPC) && !errors.Is(firstErr, syscall.EIO) {
			t.Errorf("open of an uncached file with the disk full: %v, want ENOSPC or EIO", firstErr)
		}
	} else {
		t.Logf("disk full: all %d uncached files opened (their audit lines fit)", probes)
	}
	if got, err := os.ReadFile(filepath.Join(f.mnt, "a")); err != nil || !bytes.Equal(got, a) {
		t.Errorf("read the cached file a with the disk and audit log full: %d bytes, %v", len(got), err)
	}
	if err := os.WriteFile(filepath.Join(f.mnt, "c"), []byte("new file"), 0o644); err != nil {
		t.Logf("create with the disk full: %s", errnoName(err))
	}
	// Free the space: everything works again.
	must(t, os.Remove(bp))
	must(t, os.Remove(filepath.Join(small, "filler")))
	for i := 0; i < probes; i++ {
		if got, err := os.ReadFile(filepath.Join(f.mnt, fmt.Sprintf("probe-%02d", i))); err != nil || !bytes.Equal(got, []byte{byte(i)}) {
			t.Errorf("read probe-%02d after freeing space: %q, %v", i, got, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(f.mnt, "uncached")); err != nil || !bytes.Equal(got, u) {
		t.Errorf("read the uncached file after freeing space: %d bytes, %v", len(got), err)
	}
	c := randBytes(t, 100000)
	if err := writeSynced(filepath.Join(f.mnt, "c"), c); err != nil {
		t.Errorf("write after freeing space: %v", err)
	}
	f.unmount()
	f.mount()
	for n, want := range map[string][]byte{"a": a, "uncached": u, "c": c} {
		if got, err := os.ReadFile(filepath.Join(f.mnt, n)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s after the disk-full episode and a remount: %d bytes, %v", n, len(got), err)
		}
	}
	f.unmount()
	// A create that failed for lack of space forgets the key it took:
	// fsck finds nothing, not even an orphan index entry.
	out, _, _ := f.run("fsck", "--repair", f.cipher)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, "checked ") {
			t.Errorf("fsck --repair after the disk-full episode: %q", l)
		}
	}
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after the repair: exit %d\n%s%s", code, out, stderr)
	}
}

// TestFaultReadOnlyCipherDir: the cipher directory on a read-only bind
// mount. kmsfs mount --ro serves it and reads work; writes give EROFS. A
// read-write mount of it is refused with a clear message or also answers
// writes with EROFS.
func TestFaultReadOnlyCipherDir(t *testing.T) { eachNameKind(t, testFaultReadOnlyCipherDir) }

func testFaultReadOnlyCipherDir(t *testing.T, k nameKind) {
	requireKmsfs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root for a read-only bind mount")
	}
	f := newFixture(t)
	f.initKind(k)
	f.mount()
	want := randBytes(t, 20000)
	must(t, os.WriteFile(filepath.Join(f.mnt, "x"), want, 0o644))
	must(t, os.Mkdir(filepath.Join(f.mnt, "d"), 0o755))
	f.unmount()
	before := snapshot(t, f.cipher)

	ro := filepath.Join(f.dir, "ro-cipher")
	must(t, os.Mkdir(ro, 0o755))
	if out, err := exec.Command("mount", "--bind", f.cipher, ro).CombinedOutput(); err != nil {
		t.Skipf("bind mount: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(ro, syscall.MNT_DETACH) })
	if out, err := exec.Command("mount", "-o", "remount,ro,bind", ro).CombinedOutput(); err != nil {
		t.Skipf("remount read-only: %v: %s", err, out)
	}
	rf := f.sibling(ro, f.mnt)
	// --ro serves it: no index, no audit log, the mount log in the
	// runtime directory.
	if stdout, stderr, code := rf.run("mount", "--ro", ro, f.mnt); code != 0 {
		t.Fatalf("mount --ro of a read-only cipher dir: exit %d: %s%s", code, stdout, stderr)
	}
	t.Cleanup(func() { forceUnmountPath(rf, f.mnt) })
	if got, err := os.ReadFile(filepath.Join(f.mnt, "x")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read through --ro on a read-only cipher dir: %d bytes, %v", len(got), err)
	}
	for what, err := range map[string]error{
		"create":   os.WriteFile(filepath.Join(f.mnt, "new"), []byte("x"), 0o644),
		"write":    os.WriteFile(filepath.Join(f.mnt, "x"), []byte("x"), 0o644),
		"mkdir":    os.Mkdir(filepath.Join(f.mnt, "e"), 0o755),
		"remove":   os.Remove(filepath.Join(f.mnt, "x")),
		"rename":   os.Rename(filepath.Join(f.mnt, "x"), filepath.Join(f.mnt, "y")),
		"truncate": os.Truncate(filepath.Join(f.mnt, "x"), 0),
		"chmod":    os.Chmod(filepath.Join(f.mnt, "x"), 0o600),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a --ro mount: %v, want EROFS", what, err)
		}
	}
	rf.kmsfs("unmount", f.mnt)

	// Without --ro: a clear refusal naming --ro.
	stdout, stderr, code := rf.run("mount", ro, f.mnt)
	if code != 0 && !strings.Contains(stderr, "--ro") {
		t.Errorf("read-write mount of a read-only cipher dir: %q, want the fix --ro", stderr)
	}
	if code != 0 {
		if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "kmsfs: ") {
			t.Errorf("read-write mount of a read-only cipher dir: stderr %q, want one line starting kmsfs:", stderr)
		}
		t.Logf("read-write mount of a read-only cipher dir refused: %s", strings.TrimSpace(stderr))
	} else {
		t.Cleanup(func() { forceUnmountPath(rf, f.mnt) })
		t.Logf("read-write mount of a read-only cipher dir: %s", strings.TrimSpace(stdout))
		if err := os.WriteFile(filepath.Join(f.mnt, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("create on a read-write mount of a read-only cipher dir: %v, want EROFS", err)
		}
		rf.kmsfs("unmount", f.mnt)
	}
	if isMounted(f.mnt) {
		t.Errorf("%s still mounted", f.mnt)
	}
	_ = syscall.Unmount(ro, 0)
	if after := snapshot(t, f.cipher); after != before {
		t.Errorf("the read-only episode changed the cipher directory")
	}
}

func forceUnmountPath(f *fixture, mnt string) {
	if isMounted(mnt) {
		f.exec(nil, kmsfsBin, "unmount", mnt)
		lazyUnmount(mnt)
	}
}

// TestFaultIndexHeld: another process holds the header index: mount says
// so in one line and changes nothing. (A second kmsfs mount of the same
// cipher dir is TestCLIErrors "mounted elsewhere".)
func TestFaultIndexHeld(t *testing.T) { eachNameKind(t, testFaultIndexHeld) }

func testFaultIndexHeld(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k)
	ixDir := filepath.Join(f.cipher, ".kmsfs", "index")
	ix, err := keymgr.OpenIndex(ixDir, keymgr.IndexOptions{})
	must(t, err)
	// The holder itself writes the index: compare the rest.
	snap := func() string { return snapshotSkip(t, f.cipher, ".kmsfs/index") }
	before := snap()
	_, stderr, code := f.run("mount", f.cipher, f.mnt)
	if code == 0 {
		t.Cleanup(func() { forceUnmountPath(f, f.mnt) })
		t.Fatalf("mount with the index held by another process: exit 0")
	}
	if !strings.Contains(stderr, "locked") || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "kmsfs: ") {
		t.Errorf("mount with the index held: stderr %q, want one kmsfs: line saying it is locked", stderr)
	}
	if isMounted(f.mnt) {
		t.Errorf("mounted although the index is held")
	}
	if after := snap(); after != before {
		t.Errorf("the refused mount changed the cipher directory")
	}
	ix.Close()

	// A second mount of a mounted cipher dir, at another mount point.
	f.mount()
	second := filepath.Join(f.dir, "second")
	must(t, os.Mkdir(second, 0o755))
	_, stderr, code = f.run("mount", f.cipher, second)
	if code == 0 {
		t.Cleanup(func() { forceUnmountPath(f, second) })
		t.Errorf("a second mount of a mounted cipher dir: exit 0")
	} else if !strings.Contains(stderr, "already mounted elsewhere") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("a second mount of a mounted cipher dir: stderr %q, want one line saying it is mounted elsewhere", stderr)
	}
	if isMounted(second) {
		t.Errorf("%s mounted", second)
	}
	f.unmount()
}

// snapshotSkip is snapshot without the subtree skip (relative to dir).
func snapshotSkip(t *testing.T, dir, skip string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v %d %d\n", rel, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestFaultMountpointGone: a mount point that does not exist is refused
// in one line; a mount detached behind kmsfs's back (umount -l) makes the
// mount process exit cleanly, and the cipher dir mounts again.
func TestFaultMountpointGone(t *testing.T) { eachNameKind(t, testFaultMountpointGone) }

func testFaultMountpointGone(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k)
	_, stderr, code := f.run("mount", f.cipher, filepath.Join(f.dir, "no-such-dir"))
	if code == 0 || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "kmsfs: ") {
		t.Errorf("mount on a missing mount point: exit %d, stderr %q; want non-zero and one kmsfs: line", code, stderr)
	}
	pid := f.mount()
	must(t, os.WriteFile(filepath.Join(f.mnt, "x"), []byte("kept"), 0o644))
	lazyUnmount(f.mnt)
	if pid > 0 && !waitGone(pid, 10*time.Second) {
		t.Errorf("mount process %d still running 10 s after its mount was detached", pid)
	}
	if log := f.mountLog(); !strings.Contains(log, "unmounted; closing key stores") {
		t.Errorf("mount.log does not record the exit after the detach:\n%s", log)
	}
	// And the mount point itself removed and made again.
	must(t, os.Remove(f.mnt))
	must(t, os.Mkdir(f.mnt, 0o755))
	f.mount()
	if got, err := os.ReadFile(filepath.Join(f.mnt, "x")); err != nil || string(got) != "kept" {
		t.Errorf("read after the detach and a remount: %q, %v", got, err)
	}
	f.unmount()
}

// TestFaultSignalsDuringWrites: SIGTERM and SIGINT to a foreground mount
// under heavy writes: the writers stop soon after the signal (as a shell
// would when the user hits Ctrl-C), the mount unmounts cleanly and exits
// 0, and every file closed (fsynced on close) before then reads exactly.
func TestFaultSignalsDuringWrites(t *testing.T) { eachNameKind(t, testFaultSignalsDuringWrites) }

func testFaultSignalsDuringWrites(t *testing.T, k nameKind) {
	sigs := []syscall.Signal{syscall.SIGTERM, syscall.SIGINT}
	if !k.encrypted {
		sigs = sigs[:1] // the signal handling is the same; one is enough here
	}
	for _, sig := range sigs {
		t.Run(sig.String(), func(t *testing.T) {
			f := newFixture(t)
			f.initKind(k)
			logPath := filepath.Join(f.dir, "mount-f.log")
			cmd := f.foreground(t, logPath)
			var mu sync.Mutex
			closed := map[string][]byte{}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						n := fmt.Sprintf("w%d-%03d", w, i)
						b := randBytes(t, 50000+i*1000%200000)
						if err := writeSynced(filepath.Join(f.mnt, n), b); err != nil {
							return
						}
						mu.Lock()
						closed[n] = b
						mu.Unlock()
					}
				}()
			}
			time.Sleep(400 * time.Millisecond)
			must(t, cmd.Process.Signal(sig))
			time.Sleep(100 * time.Millisecond)
			close(stop)
			wg.Wait()
			err, ok := waitExit(cmd, 30*time.Second)
			if !ok {
				t.Fatalf("mount -f still running 30 s after %v", sig)
			}
			if err != nil {
				b, _ := os.ReadFile(logPath)
				t.Errorf("mount -f after %v: %v, want exit 0\n%s", sig, err, b)
			}
			if isMounted(f.mnt) {
				t.Fatalf("still mounted after %v", sig)
			}
			// A writer that opened a file after the unmount wrote into the
			// bare mount point directory, not into kmsfs: not ours.
			ents, err := os.ReadDir(f.mnt)
			must(t, err)
			for _, e := range ents {
				delete(closed, e.Name())
				must(t, os.Remove(filepath.Join(f.mnt, e.Name())))
			}
			f.mount()
			for n, want := range closed {
				if got, err := os.ReadFile(filepath.Join(f.mnt, n)); err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s (closed before the signal): %d bytes, %v; want %d bytes", n, len(got), err, len(want))
				}
			}
			t.Logf("%v: %d files written and closed before the mount exited", sig, len(closed))
			f.unmount()
			if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
				t.Errorf("fsck after %v: exit %d\n%s%s", sig, code, out, stderr)
			}
		})
	}
}
