package integration

// cli_test.go: the command-line contract, driven through the built binary:
// init/mount/write/unmount/remount/read/status/keys/fsck, and the refusals
// (one line on stderr, non-zero exit, nothing changed).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needFUSE skips unless this process can mount: /dev/fuse exists and we
// are root or fusermount3 is installed.
func needFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse: FUSE tests need root or fuse3")
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			t.Skip("not root and no fusermount3: install fuse3")
		}
	}
}

// buildKmsfs builds the binary once per test into a temp dir.
func buildKmsfs(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kmsfs")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/kmsfs/kmsfs/cmd/kmsfs")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cli runs the kmsfs binary with a private keyring, passphrase and
// runtime directory.
type cli struct {
	t   *testing.T
	bin string
	env []string
}

type result struct {
	code           int
	stdout, stderr string
}

func newCLI(t *testing.T, base string) *cli {
	rt := filepath.Join(base, "run")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KMSFS_") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"KMSFS_KEYRING="+filepath.Join(base, "keyring", "keyring.json"),
		"KMSFS_PASSPHRASE=integration passphrase",
		"XDG_RUNTIME_DIR="+rt,
	)
	return &cli{t: t, bin: buildKmsfs(t), env: env}
}

func (c *cli) runEnv(extraEnv []string, args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(append([]string{}, c.env...), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("kmsfs %v: %v", args, err)
	}
	return r
}

func (c *cli) run(args ...string) result { c.t.Helper(); return c.runEnv(nil, args...) }

// ok runs a command that must succeed.
func (c *cli) ok(args ...string) result {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("kmsfs %s: exit %d\nstderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// mount mounts and registers a cleanup that always unmounts.
func (c *cli) mount(cipher, mnt string, args ...string) {
	c.t.Helper()
	c.ok(append(append([]string{"mount"}, args...), cipher, mnt)...)
	c.t.Cleanup(func() { forceUnmount(c, mnt) })
}

func forceUnmount(c *cli, mnt string) {
	if !isMounted(mnt) {
		return
	}
	if r := c.run("unmount", mnt); r.code == 0 {
		return
	}
	_ = syscall.Unmount(mnt, syscall.MNT_DETACH)
	_ = exec.Command("fusermount3", "-uz", mnt).Run()
}

func isMounted(mnt string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

// snapshot hashes every entry of a tree: path, mode, size, mtime, content.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
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

type statusJSON struct {
	CipherDir    string `json:"cipherdir"`
	FilesystemID string `json:"filesystem_id"`
	Provider     string `json:"provider"`
	Key          string `json:"key"`
	KeyARN       string `json:"key_arn"`
	Mounted      bool   `json:"mounted"`
	Source       string `json:"source"`
	Files        int    `json:"files"`
	Keys         []struct {
		KeyARN     string `json:"key_arn"`
		KeyVersion uint32 `json:"key_version"`
		Files      int    `json:"files"`
	} `json:"keys"`
}

// cipherPath is the cipher path of plain in cipher, from kmsfs path.
func (c *cli) cipherPath(cipher, plain string) string {
	c.t.Helper()
	r := c.ok("path", cipher, plain)
	p := strings.TrimSuffix(r.stdout, "\n")
	if !strings.HasPrefix(p, cipher+"/") {
		c.t.Fatalf("kmsfs path %s %s: got %q, want a path under %s", cipher, plain, r.stdout, cipher)
	}
	return p
}

func (c *cli) status(cipher string) statusJSON {
	c.t.Helper()
	r := c.ok("status", "--json", cipher)
	var s statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		c.t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return s
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCLIEndToEnd(t *testing.T) {
	needFUSE(t)
	base := t.TempDir()
	k := newCLI(t, base)
	cipher, mnt := filepath.Join(base, "cipher"), filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	k.ok("init", cipher)

	secret := []byte("the plaintext that must never reach the disk\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320000 bytes, 79 chunks
	files := map[string][]byte{
		"hello.txt":         secret,
		"dir/sub/big.bin":   big,
		"dir/empty":         nil,
		"name with space.x": []byte("x"),
	}

	k.mount(cipher, mnt)
	for name, b := range files {
		writeFile(t, filepath.Join(mnt, name), b)
	}
	// Mounted, status asks the mount (its control socket) for its index.
	if s := k.status(cipher); !s.Mounted || s.Source != "mount" || s.Files != len(files) {
		t.Errorf("status while mounted: got mounted %v, source %q, files %d; want true, mount, %d", s.Mounted, s.Source, s.Files, len(files))
	}
	if r := k.ok("status", cipher); !strings.Contains(r.stdout, "counted from: index (asked the mount)") {
		t.Errorf("status while mounted: got %q, want it to say counted from index (asked the mount)", r.stdout)
	}
	k.ok("unmount", mnt)
	if isMounted(mnt) {
		t.Fatalf("%s still mounted after kmsfs unmount", mnt)
	}

	// Each plain file has its cipher file (where kmsfs path says, under
	// encrypted names), without the plaintext.
	cipherOf := map[string]string{}
	for name := range files {
		cipherOf[name] = k.cipherPath(cipher, name)
		if strings.Contains(strings.TrimPrefix(cipherOf[name], cipher), filepath.Base(name)) {
			t.Errorf("cipher path of %s is %s: the plain name shows", name, cipherOf[name])
		}
	}
	for name, b := range files {
		c, err := os.ReadFile(cipherOf[name])
		if err != nil {
			t.Fatalf("cipher file of %s: %v", name, err)
		}
		if len(b) > 16 && bytes.Contains(c, b[:16]) {
			t.Errorf("cipher file of %s holds its plaintext", name)
		}
		if got, want := len(c), 1056+len(b)+28*((len(b)+4095)/4096); got != want {
			t.Errorf("cipher size of %s: got %d, want %d", name, got, want)
		}
	}

	k.mount(cipher, mnt)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s after remount: got %d bytes, %v; want %d bytes", name, len(got), err, len(want))
		}
	}
	k.ok("unmount", mnt)

	s := k.status(cipher)
	if s.Mounted || s.Source != "index" || s.Files != len(files) || len(s.Keys) != 1 || s.Keys[0].KeyVersion != 1 || s.Keys[0].Files != len(files) {
		t.Errorf("status: got %+v, want unmounted, from the index, %d files under version 1", s, len(files))
	}
	if s.Key != "alias/kmsfs/default" || !strings.HasPrefix(s.KeyARN, "arn:kmsfs:local:") || s.Provider != "local" {
		t.Errorf("status: key %q, key_arn %q, provider %q", s.Key, s.KeyARN, s.Provider)
	}

	// Rotation: new files are wrapped under version 2, old ones stay at 1.
	if r := k.ok("keys", "list"); !strings.Contains(r.stdout, "alias/kmsfs/default") || !strings.Contains(r.stdout, "Enabled") {
		t.Errorf("keys list: got %q", r.stdout)
	}
	if r := k.ok("keys", "rotate", "alias/kmsfs/default"); !strings.Contains(r.stdout, " 2 ") {
		t.Errorf("keys rotate: got %q, want version 2", r.stdout)
	}
	k.mount(cipher, mnt)
	writeFile(t, filepath.Join(mnt, "after-rotation"), []byte("v2"))
	if got, err := os.ReadFile(filepath.Join(mnt, "hello.txt")); err != nil || !bytes.Equal(got, secret) {
		t.Errorf("read an old file after rotation: %q, %v", got, err)
	}
	k.ok("unmount", mnt)
	s = k.status(cipher)
	if s.Files != len(files)+1 || len(s.Keys) != 2 || s.Keys[1].KeyVersion != 2 || s.Keys[1].Files != 1 {
		t.Errorf("status after rotation: got %+v, want %d files under version 1 and 1 under version 2", s, len(files))
	}

	if r := k.ok("fsck", cipher); !strings.Contains(r.stdout, "0 findings") {
		t.Errorf("fsck: got %q, want 0 findings", r.stdout)
	}
	// Damage: an orphan (a cipher file removed behind kmsfs's back).
	if err := os.Remove(cipherOf["name with space.x"]); err != nil {
		t.Fatal(err)
	}
	if r := k.run("fsck", cipher); r.code != 1 || !strings.Contains(r.stdout, "orphan") {
		t.Errorf("fsck with an orphan: exit %d, stdout %q, want 1 and an orphan line", r.code, r.stdout)
	}
	k.ok("fsck", "--repair", cipher)
	k.ok("fsck", cipher)

	// Foreground mount: SIGTERM unmounts cleanly and exits 0.
	cmd := exec.Command(k.bin, "mount", "-f", cipher, mnt)
	cmd.Env = k.env
	var ferr bytes.Buffer
	cmd.Stderr = &ferr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { forceUnmount(k, mnt) })
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(mnt) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("mount -f did not mount within 30 s: %s", ferr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("mount -f after SIGTERM: %v, want exit 0\n%s", err, ferr.String())
	}
	if isMounted(mnt) {
		t.Errorf("mount -f: still mounted after SIGTERM")
	}
}

func TestCLIErrors(t *testing.T) {
	needFUSE(t)
	base := t.TempDir()
	k := newCLI(t, base)
	cipher, other := filepath.Join(base, "cipher"), filepath.Join(base, "other")
	k.ok("init", cipher)
	k.ok("init", other)
	mnt, busy, full, plain := filepath.Join(base, "mnt"), filepath.Join(base, "busy"), filepath.Join(base, "full"), filepath.Join(base, "plain")
	for _, d := range []string{mnt, busy, full, plain} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(full, "x"), []byte("x"))
	writeFile(t, filepath.Join(plain, "x"), []byte("x"))
	k.mount(other, busy)

	tests := []struct {
		name    string
		setup   func()
		undo    func()
		env     []string
		args    []string
		dir     string // must not change
		wantMsg string
	}{
		{name: "wrong passphrase", env: []string{"KMSFS_PASSPHRASE=not it"}, args: []string{"mount", cipher, mnt}, dir: cipher,
			wantMsg: "wrong passphrase for keyring"},
		{name: "missing keyring", args: []string{"mount", "--keyring", filepath.Join(base, "nokeyring.json"), cipher, mnt}, dir: cipher,
			wantMsg: "not found"},
		{name: "disabled key",
			setup: func() { k.ok("keys", "disable", "alias/kmsfs/default") },
			undo:  func() { k.ok("keys", "enable", "alias/kmsfs/default") },
			args:  []string{"mount", cipher, mnt}, dir: cipher, wantMsg: "kmsfs keys enable"},
		{name: "non-empty mount point", args: []string{"mount", cipher, full}, dir: cipher, wantMsg: "is not empty"},
		{name: "busy mount point", args: []string{"mount", cipher, busy}, dir: cipher, wantMsg: "is busy"},
		{name: "mounted elsewhere", args: []string{"mount", other, mnt}, dir: other, wantMsg: "already mounted elsewhere"},
		{name: "not a cipher dir", args: []string{"mount", plain, mnt}, dir: plain, wantMsg: "is not a kmsfs cipher directory"},
		{name: "init into non-empty dir", args: []string{"init", plain}, dir: plain, wantMsg: "is not empty"},
		{name: "init twice", args: []string{"init", cipher}, dir: cipher, wantMsg: "is already a kmsfs cipher directory"},
		{name: "status of a plain dir", args: []string{"status", plain}, dir: plain, wantMsg: "is not a kmsfs cipher directory"},
		{name: "fsck while mounted", args: []string{"fsck", other}, dir: other, wantMsg: "kmsfs unmount it first"},
		{name: "unmount a plain dir", args: []string{"unmount", plain}, dir: plain, wantMsg: "is not a kmsfs mount"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			if tt.undo != nil {
				defer tt.undo()
			}
			before := snapshot(t, tt.dir)
			r := k.runEnv(tt.env, tt.args...)
			if r.code == 0 {
				t.Fatalf("exit 0, want non-zero; stdout %q", r.stdout)
			}
			if !strings.Contains(r.stderr, tt.wantMsg) {
				t.Errorf("stderr: got %q, want it to contain %q", r.stderr, tt.wantMsg)
			}
			if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "kmsfs: ") {
				t.Errorf("stderr: got %q, want one line starting with kmsfs:", r.stderr)
			}
			if after := snapshot(t, tt.dir); after != before {
				t.Errorf("%s changed", tt.dir)
			}
			if isMounted(mnt) {
				t.Errorf("%s mounted after a failed command", mnt)
				forceUnmount(k, mnt)
			}
		})
	}
	// The busy mount is still served.
	if _, err := os.ReadDir(busy); err != nil {
		t.Errorf("the mount at %s broke: %v", busy, err)
	}

	// unmount refuses while a file is open in the mount, then succeeds.
	writeFile(t, filepath.Join(busy, "open"), []byte("x"))
	held, err := os.Open(filepath.Join(busy, "open"))
	if err != nil {
		t.Fatal(err)
	}
	r := k.run("unmount", busy)
	if r.code != 1 || !strings.Contains(r.stderr, "is busy: close the files open in it") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("unmount with an open file: exit %d, stderr %q; want 1 and the busy message", r.code, r.stderr)
	}
	if !isMounted(busy) {
		t.Errorf("%s unmounted although busy", busy)
	}
	held.Close()
	k.ok("unmount", busy)
	if isMounted(busy) {
		t.Errorf("%s still mounted", busy)
	}
}

// TestMountNoXattr: `mount --no-xattr` reaches the background mount
// process: xattr calls fail with EOPNOTSUPP, files work, and a mount
// without the flag finds the attribute set before.
func TestMountNoXattr(t *testing.T) {
	requireKmsfs(t)
	f := newFixture(t)
	f.init()
	p := filepath.Join(f.mnt, "f")
	f.mount()
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "user.k", []byte("v"), 0); err != nil {
		t.Fatalf("setxattr on a default mount: %v", err)
	}
	f.unmount()
	f.mount("--no-xattr")
	if err := unix.Setxattr(p, "user.k2", []byte("v"), 0); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("setxattr with --no-xattr: got %v, want EOPNOTSUPP", err)
	}
	if err := os.WriteFile(p, []byte("still a file system"), 0o644); err != nil {
		t.Errorf("write with --no-xattr: %v", err)
	}
	f.unmount()
	f.mount()
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(p, "user.k", buf); err != nil || string(buf[:n]) != "v" {
		t.Errorf("getxattr after remounting without --no-xattr: %q, %v; want \"v\"", buf[:n], err)
	}
	f.unmount()
}
