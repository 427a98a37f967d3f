package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOfflineCommandHardening: an offline command (kmsfs cat), run by an
// unprivileged user with KMSFS_PASSPHRASE set, hardens itself as mount
// does. While it is blocked writing to a full pipe, after it has used the
// passphrase:
//   - /proc/PID/environ no longer holds the passphrase (the value is
//     zeroed in the original environment block, not only unset);
//   - the process is not dumpable: its /proc files belong to root, and
//     another process of the same user cannot read its environ;
//   - it cannot dump core (RLIMIT_CORE 0).
func TestOfflineCommandHardening(t *testing.T) {
	u := needTestUser(t)
	f := newFixture(t)
	f.init()
	f.mount()
	// Far more than a pipe holds, so cat blocks on a pipe nobody reads.
	big := randBytes(t, 4<<20)
	if err := os.WriteFile(filepath.Join(f.mnt, "big"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	f.unmount()
	// Hand everything to the unprivileged user: a process of root is
	// never dumpable-checked by ownership, and its /proc files belong
	// to root either way.
	if err := filepath.WalkDir(f.dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(u.uid), int(u.gid))
	}); err != nil {
		t.Fatalf("chown the fixture to %s: %v", u.name, err)
	}
	f.owner = u

	cmd, cancel := f.command(kmsfsBin, "cat", f.cipher, "big")
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = pw, &stderr
	if err := cmd.Start(); err != nil {
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		pr.Close() // unblocks its write if the kill raced
		<-exited
	}()
	pid := cmd.Process.Pid

	// Wait until the pipe is full: cat has read the keyring and
	// decrypted, and blocks in write.
	pipeSize, err := unix.FcntlInt(pr.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	full := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("kmsfs cat exited before the pipe filled: %v\nstderr: %s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		n, err := unix.IoctlGetInt(int(pr.Fd()), unix.TIOCINQ) // FIONREAD
		if err != nil {
			t.Fatal(err)
		}
		if n >= pipeSize {
			full = true
			break
		}
	}
	if !full {
		t.Fatalf("kmsfs cat did not fill the %d-byte pipe in 30s\nstderr: %s", pipeSize, stderr.String())
	}

	// The process runs as the test user...
	if got := procStatusField(t, pid, "Uid"); !strings.HasPrefix(got, fmt.Sprint(u.uid)) {
		t.Fatalf("kmsfs cat %d runs as uid %q, want %d", pid, got, u.uid)
	}

	t.Run("no passphrase in environ", func(t *testing.T) {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		// The block is the real one: the fixture's HOME is there.
		if !bytes.Contains(env, []byte("HOME="+f.home+"\x00")) {
			t.Fatalf("/proc/%d/environ has no HOME=%s: not the command's environment block", pid, f.home)
		}
		if bytes.Contains(env, []byte(f.passphrase)) {
			t.Errorf("/proc/%d/environ holds the passphrase while kmsfs cat runs", pid)
		}
	})

	t.Run("not dumpable", func(t *testing.T) {
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/environ", pid), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 0 {
			t.Errorf("/proc/%d/environ belongs to uid %d, want 0 (a process that is not dumpable)", pid, st.Uid)
		}
		out, code := runAsUser(t, u, nil, "/bin/cat", fmt.Sprintf("/proc/%d/environ", pid))
		if code == 0 {
			t.Errorf("%s read the environ of its own kmsfs cat (%d bytes), want permission denied", u.name, len(out))
		}
	})

	t.Run("no core dumps", func(t *testing.T) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "Max core file size"); ok {
				found = true
				if fl := strings.Fields(rest); len(fl) < 2 || fl[0] != "0" || fl[1] != "0" {
					t.Errorf("kmsfs cat %d: %q, want soft and hard limit 0", pid, strings.TrimSpace(l))
				}
			}
		}
		if !found {
			t.Errorf("/proc/%d/limits has no Max core file size line:\n%s", pid, b)
		}
	})
}

// procStatusField is the value of name in /proc/PID/status.
func procStatusField(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/status has no %s line", pid, name)
	return ""
}
