package fs

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// posixSkip names the posixtest cases that cannot apply, and why.
var posixSkip = map[string]string{
	// Locks are the kernel's (no lock methods, so the kernel keeps
	// POSIX locks locally). This case takes a lock through one fd and
	// expects a second open in the same process to conflict, which
	// process-owned POSIX locks never do; go-fuse skips it on its own
	// loopback too.
	"FcntlFlockLocksFile": "process-owned POSIX locks do not conflict within one process",
}

func TestPosix(t *testing.T) {
	eachNames(t, runPosix)
}

func runPosix(t *testing.T, e *testFS) {
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fn := posixtest.All[name]
		t.Run(name, func(t *testing.T) {
			if why, ok := posixSkip[name]; ok {
				t.Skip(why)
			}
			dir := filepath.Join(e.mnt, name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatalf("Mkdir: %v", err)
			}
			fn(t, dir)
			if err := os.RemoveAll(dir); err != nil {
				t.Errorf("RemoveAll: %v", err)
			}
		})
	}
}

// TestPosixXAttrLargeTmpfs runs XAttrLarge over a cipher directory on
// tmpfs: ext4 (the usual TMPDIR here) limits an xattr value to one block,
// so the case skips itself there, while our sealed value is 8 KiB + 151.
func TestPosixXAttrLargeTmpfs(t *testing.T) {
	base, err := os.MkdirTemp("/dev/shm", "kmsfs-fs-test-")
	if err != nil {
		t.Skipf("no tmpfs at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	e := newTestFSIn(t, base)
	posixtest.XAttrLarge(t, e.mnt)
}
