package integration

// backup_aws_test.go: the backup and restore paths of backup_test.go with
// the aws provider, against local-kms (localkms_test.go): a tar copy
// restored elsewhere without its index, cat/export/verify mounted and
// not, and index backup/restore. (A restore after a rotation needs a KMS
// that rotates on demand, which local-kms does not: AWS keeps every old
// backing key, so old EDKs decrypt; the local provider's test covers the
// path through kmsfs.)

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBackupAWS(t *testing.T) {
	f, _ := newAWSFixture(t)
	f.mount()
	writeBackupTree(t, f.mnt)
	want := scanTree(t, f.mnt)

	// Offline readers while mounted.
	dest := filepath.Join(f.dir, "export-mounted")
	f.kmsfs("export", f.cipher, ".", dest)
	compareTrees(t, want, scanTree(t, dest), time.Nanosecond)
	if out, stderr, code := f.run("verify", f.cipher); code != 0 {
		t.Errorf("verify while mounted: exit %d\n%s%s", code, out, stderr)
	}
	f.unmount()
	ib := filepath.Join(f.dir, "index.backup")
	f.kmsfs("index", "backup", f.cipher, ib)

	// A tar copy without its index, restored elsewhere.
	archive := filepath.Join(f.dir, "backup.tar")
	f.execOK(nil, "tar", "-cf", archive, "-C", f.dir, "--exclude=./cipher/.kmsfs/index", "./cipher")
	restored := filepath.Join(f.dir, "restored")
	if err := os.Mkdir(restored, 0o700); err != nil {
		t.Fatal(err)
	}
	f.execOK(nil, "tar", "-xpf", archive, "-C", restored)
	cipher := filepath.Join(restored, "cipher")
	for rel, e := range want {
		if e.mode.IsRegular() && e.size > 0 {
			if out := f.kmsfs("cat", cipher, rel); len(out) != int(e.size) {
				t.Errorf("cat %s from the restore: %d bytes, want %d", rel, len(out), e.size)
			}
			break
		}
	}
	out := f.kmsfs("index", "restore", cipher, ib)
	if !strings.Contains(out, fmt.Sprintf("holds %d entries", countFiles(want))) {
		t.Errorf("index restore: want %d entries\n%s", countFiles(want), out)
	}
	g := mountCopy(t, f, cipher)
	compareTrees(t, want, scanTree(t, g.mnt), time.Second)
	g.unmount()
	if out, stderr, code := g.run("verify", cipher); code != 0 {
		t.Errorf("verify of the restore: exit %d\n%s%s", code, out, stderr)
	}
	if out, stderr, code := g.run("fsck", cipher); code != 0 {
		t.Errorf("fsck of the restore: exit %d\n%s%s", code, out, stderr)
	}
	dest2 := filepath.Join(f.dir, "export-restored")
	f.kmsfs("export", cipher, ".", dest2)
	compareTrees(t, want, scanTree(t, dest2), time.Second)
}
