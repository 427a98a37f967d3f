package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cmdTimeout bounds every command a test runs.
const cmdTimeout = 60 * time.Second

// The kmsfs binary, built once by TestMain.
var (
	kmsfsBin string // absolute path, in a 0755 directory under os.TempDir()
	buildErr error  // why the build failed
	fuseSkip string // non-empty: why every FUSE test skips
)

// TestMain builds the kmsfs binary once for the whole run. Without
// /dev/fuse nothing is built and every test that needs a mount skips.
// KMSFS_IT_BUILDFLAGS adds flags to the build (e.g. "-race").
func TestMain(m *testing.M) {
	os.Exit(func() int {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			fuseSkip = fmt.Sprintf("no /dev/fuse (%v): the integration tests need FUSE (root, or fuse3 with fusermount3)", err)
			fmt.Fprintf(os.Stderr, "integration: %s; skipping every test that mounts\n", fuseSkip)
			return m.Run()
		}
		if os.Geteuid() != 0 {
			if _, err := exec.LookPath("fusermount3"); err != nil {
				fuseSkip = "not root and no fusermount3 in PATH: install fuse3 (apt-get install fuse3)"
				fmt.Fprintf(os.Stderr, "integration: %s; skipping every test that mounts\n", fuseSkip)
				return m.Run()
			}
		}
		dir, err := os.MkdirTemp("", "kmsfs-it-bin-")
		if err != nil {
			buildErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		// 0755: an unprivileged test user runs the binary from here.
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return m.Run()
		}
		kmsfsBin = filepath.Join(dir, "kmsfs")
		buildErr = buildBinary(kmsfsBin)
		if buildErr != nil {
			fmt.Fprintf(os.Stderr, "integration: %v\n", buildErr)
		}
		return m.Run()
	}())
}

// buildBinary runs `go build -o bin ./cmd/kmsfs` from the module root.
func buildBinary(bin string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"build"}
	args = append(args, strings.Fields(os.Getenv("KMSFS_IT_BUILDFLAGS"))...)
	args = append(args, "-o", bin, "./cmd/kmsfs")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), root, err, out)
	}
	return nil
}

// moduleRoot is the directory of go.mod above the package directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for i := 0; i < 10; i++ {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("go.mod not found above the integration package")
}

// requireKmsfs skips without FUSE and fails when the binary did not build.
func requireKmsfs(t *testing.T) {
	t.Helper()
	if fuseSkip != "" {
		t.Skip(fuseSkip)
	}
	if buildErr != nil {
		t.Fatalf("kmsfs binary: %v", buildErr)
	}
	if kmsfsBin == "" {
		t.Fatal("kmsfs binary not built (TestMain did not run?)")
	}
}

// fixture is one cipher directory with its own mount point, keyring,
// passphrase, HOME and runtime directory (mount records), all in a
// 0755 temp dir under os.TempDir(), removed after the test. Commands run
// with KMSFS_KEYRING and KMSFS_PASSPHRASE pointing at the fixture's own,
// never the user's ~/.config.
type fixture struct {
	t          *testing.T
	dir        string // root of the fixture, 0755
	cipher     string // the cipher directory (created by init)
	mnt        string // the mount point, an empty directory
	home       string
	runtime    string // XDG_RUNTIME_DIR
	keyring    string
	passphrase string
	env        []string
	owner      *testUser // non-nil: every command runs as this user
	// plaintextNames: initKind made the filesystem with --plaintext-names.
	plaintextNames bool
	// allowLog matches mount.log lines of level WARN or ERROR the test
	// expects; any other such line, a panic or a data race fails it.
	allowLog *regexp.Regexp
	// timeout bounds each command; 0 is cmdTimeout.
	timeout time.Duration

	mu     *sync.Mutex    // guards mounts, shared by withT copies
	mounts map[string]int // mount point -> pid of its mount process
}

// newFixture makes a fixture for commands run as the current user.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureFor(t, nil)
}

// newFixtureFor makes a fixture whose directories belong to u (nil: the
// current user) and whose commands run as u.
func newFixtureFor(t *testing.T, u *testUser) *fixture {
	t.Helper()
	requireKmsfs(t)
	dir, err := os.MkdirTemp("", "kmsfs-it-")
	if err != nil {
		t.Fatal(err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var f *fixture
	// Runs after every unmount cleanup, before the removal.
	t.Cleanup(func() { f.checkMountLog() })
	f = &fixture{
		t:          t,
		dir:        dir,
		cipher:     filepath.Join(dir, "cipher"),
		mnt:        filepath.Join(dir, "mnt"),
		home:       filepath.Join(dir, "home"),
		runtime:    filepath.Join(dir, "run"),
		passphrase: "it-passphrase-" + randHex(t, 8),
		owner:      u,
		mu:         &sync.Mutex{},
		mounts:     map[string]int{},
	}
	f.keyring = filepath.Join(f.home, ".config", "kmsfs", "keyring.json")
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{f.mnt, 0o755}, {f.home, 0o700}, {f.runtime, 0o700}} {
		if err := os.Mkdir(d.path, d.mode); err != nil {
			t.Fatal(err)
		}
	}
	if u != nil {
		for _, p := range []string{dir, f.mnt, f.home, f.runtime} {
			if err := os.Chown(p, int(u.uid), int(u.gid)); err != nil {
				t.Fatalf("chown %s to %s: %v", p, u.name, err)
			}
		}
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "KMSFS_"), name == "HOME", name == "XDG_RUNTIME_DIR",
			name == "XDG_CONFIG_HOME", name == "USER", name == "LOGNAME", strings.HasPrefix(name, "GIT_"):
			continue
		}
		f.env = append(f.env, kv)
	}
	f.env = append(f.env,
		"HOME="+f.home,
		"XDG_RUNTIME_DIR="+f.runtime,
		"KMSFS_KEYRING="+f.keyring,
		"KMSFS_PASSPHRASE="+f.passphrase,
	)
	if u != nil {
		f.env = append(f.env, "USER="+u.name, "LOGNAME="+u.name)
	}
	return f
}

// sibling is a fixture sharing f's directory, keyring, passphrase,
// environment and user, for another cipher dir and mount point.
func (f *fixture) sibling(cipher, mnt string) *fixture {
	return &fixture{
		t: f.t, dir: f.dir, cipher: cipher, mnt: mnt, home: f.home, runtime: f.runtime,
		keyring: f.keyring, passphrase: f.passphrase, env: f.env, owner: f.owner,
		allowLog: f.allowLog, mu: &sync.Mutex{}, mounts: map[string]int{}, plaintextNames: f.plaintextNames,
	}
}

// withT is f reporting to t (a subtest): same directories and mounts.
func (f *fixture) withT(t *testing.T) *fixture {
	g := *f
	g.t = t
	return &g
}

// cmdResult is what a command did.
type cmdResult struct {
	stdout, stderr string
	code           int // -1: did not run to an exit status (timeout, signal)
}

// limit is the bound of one command.
func (f *fixture) limit() time.Duration {
	if f.timeout > 0 {
		return f.timeout
	}
	return cmdTimeout
}

// command prepares name args with the fixture's environment and user,
// bounded by f.timeout (default cmdTimeout). The caller runs it and calls
// the cancel func.
func (f *fixture) command(name string, args ...string) (*exec.Cmd, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), f.limit())
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append([]string(nil), f.env...)
	cmd.Dir = f.dir
	// A background mount process must not keep our pipes open; if
	// anything does, Wait still returns.
	cmd.WaitDelay = 5 * time.Second
	if f.owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: f.owner.uid, Gid: f.owner.gid, Groups: []uint32{},
		}}
	}
	return cmd, cancel
}

// exec runs any program with the fixture's environment and user.
func (f *fixture) exec(stdin io.Reader, name string, args ...string) cmdResult {
	f.t.Helper()
	cmd, cancel := f.command(name, args...)
	defer cancel()
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := cmdResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		r.code = -1
		r.stderr += fmt.Sprintf("\n[harness: %v]", err)
	}
	if d := time.Since(start); d >= f.limit()-time.Second {
		f.t.Errorf("%s %s: timed out after %s", name, strings.Join(args, " "), d.Round(time.Second))
	}
	return r
}

// execOK runs a program that must exit 0 and returns its stdout.
func (f *fixture) execOK(stdin io.Reader, name string, args ...string) string {
	f.t.Helper()
	r := f.exec(stdin, name, args...)
	if r.code != 0 {
		f.t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// run runs kmsfs args and returns its stdout, stderr and exit code.
func (f *fixture) run(args ...string) (stdout, stderr string, code int) {
	f.t.Helper()
	r := f.exec(nil, kmsfsBin, args...)
	return r.stdout, r.stderr, r.code
}

// kmsfs runs kmsfs args, which must exit 0, and returns its stdout.
func (f *fixture) kmsfs(args ...string) string {
	f.t.Helper()
	return f.execOK(nil, kmsfsBin, args...)
}

// init runs kmsfs init on the fixture's cipher directory.
func (f *fixture) init(args ...string) {
	f.t.Helper()
	f.kmsfs(append(append([]string{"init"}, args...), f.cipher)...)
}

// nameKind is one kind of filesystem: names and symlink targets
// encrypted (what kmsfs init makes by default) or stored as they are
// (kmsfs init --plaintext-names, the cipher tree mirroring the plain
// tree name for name).
type nameKind struct {
	name      string   // the subtest's name
	initArgs  []string // what kmsfs init needs for it
	encrypted bool
}

var nameKinds = []nameKind{
	{name: "encrypted-names", encrypted: true},
	{name: "plaintext-names", initArgs: []string{"--plaintext-names"}},
}

// eachNameKind runs fn as one subtest per kind of filesystem.
func eachNameKind(t *testing.T, fn func(t *testing.T, k nameKind)) {
	t.Helper()
	for _, k := range nameKinds {
		t.Run(k.name, func(t *testing.T) { fn(t, k) })
	}
}

// initKind runs kmsfs init for a filesystem of kind k.
func (f *fixture) initKind(k nameKind, args ...string) {
	f.t.Helper()
	f.init(append(append([]string(nil), k.initArgs...), args...)...)
	f.plaintextNames = !k.encrypted
}

// cipherPath is the absolute path in the cipher directory of plain (a
// path relative to the plain root), as `kmsfs path` prints it: the
// directories above it must exist, the last component need not. With
// plaintext names (initKind) it is f.cipher joined with plain, without a
// run of kmsfs path (a quarter second each, for the keyring's KDF);
// TestNamesDeepTree checks that kmsfs path says the same.
func (f *fixture) cipherPath(plain string) string {
	f.t.Helper()
	if f.plaintextNames {
		return filepath.Join(f.cipher, plain)
	}
	r := f.exec(nil, kmsfsBin, "path", f.cipher, plain)
	p := strings.TrimSuffix(r.stdout, "\n")
	if r.code != 0 || !strings.HasPrefix(p, f.cipher+"/") || strings.Contains(p, "\n") {
		f.t.Fatalf("kmsfs path %s %s: exit %d\nstdout: %s\nstderr: %s", f.cipher, plain, r.code, r.stdout, r.stderr)
	}
	return p
}

// cipherRel is cipherPath relative to the cipher directory.
func (f *fixture) cipherRel(plain string) string {
	f.t.Helper()
	return strings.TrimPrefix(f.cipherPath(plain), f.cipher+"/")
}

// isOwnCipherEntry reports whether name, an entry of a cipher directory
// (any, not only the root), is kmsfs's own bookkeeping rather than the
// cipher file of a plain file: a directory ID, the names key head, a long
// name's side file.
func isOwnCipherEntry(name string) bool {
	return name == "kmsfs.dirid" || name == "kmsfs.names" ||
		strings.HasPrefix(name, "kmsfs.long.") && strings.HasSuffix(name, ".name")
}

var pidRE = regexp.MustCompile(`\(pid (\d+)[;)]`)

// mount mounts the cipher directory at the fixture's mount point and
// returns the mount process's pid. A cleanup always unmounts.
func (f *fixture) mount(args ...string) int {
	f.t.Helper()
	return f.mountAt(f.mnt, args...)
}

func (f *fixture) mountAt(mnt string, args ...string) int {
	f.t.Helper()
	argv := append(append([]string{"mount"}, args...), f.cipher, mnt)
	stdout, stderr, code := f.run(argv...)
	// Register the cleanup first: a failed mount may still have mounted.
	f.t.Cleanup(func() { f.forceUnmount(mnt) })
	if code != 0 {
		f.t.Fatalf("kmsfs %s: exit %d\nstdout: %s\nstderr: %s\nmount.log:\n%s", strings.Join(argv, " "), code, stdout, stderr, f.mountLog())
	}
	if !isMounted(mnt) {
		f.t.Fatalf("kmsfs mount exited 0 but %s is not in /proc/self/mountinfo\nstdout: %s", mnt, stdout)
	}
	pid := 0
	if m := pidRE.FindStringSubmatch(stdout); m != nil {
		pid, _ = strconv.Atoi(m[1])
	}
	if pid == 0 {
		pid = f.pidFromRecord(mnt)
	}
	if pid == 0 {
		f.t.Logf("mount: no pid in %q nor in a mount record under %s", stdout, f.runtime)
	}
	f.mu.Lock()
	f.mounts[mnt] = pid
	f.mu.Unlock()
	return pid
}

// pidFromRecord reads the mount records in the fixture's runtime dir.
func (f *fixture) pidFromRecord(mnt string) int {
	paths, _ := filepath.Glob(filepath.Join(f.runtime, "kmsfs", "*.json"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var rec struct {
			PID        int    `json:"pid"`
			Mountpoint string `json:"mountpoint"`
		}
		if json.Unmarshal(b, &rec) == nil && rec.Mountpoint == mnt {
			return rec.PID
		}
	}
	return 0
}

// unmount runs kmsfs unmount, which must succeed, unmount and leave the
// mount process gone.
func (f *fixture) unmount() {
	f.t.Helper()
	f.unmountAt(f.mnt)
}

func (f *fixture) unmountAt(mnt string) {
	f.t.Helper()
	f.kmsfs("unmount", mnt)
	if isMounted(mnt) {
		f.t.Fatalf("kmsfs unmount %s exited 0, but it is still mounted", mnt)
	}
	f.mu.Lock()
	pid := f.mounts[mnt]
	delete(f.mounts, mnt)
	f.mu.Unlock()
	if pid > 0 && !waitGone(pid, 10*time.Second) {
		f.t.Errorf("mount process %d still running 10 s after kmsfs unmount %s", pid, mnt)
	}
}

// forceUnmount is the cleanup: kmsfs unmount, then a lazy unmount, then
// SIGKILL for a mount process that does not exit.
func (f *fixture) forceUnmount(mnt string) {
	f.mu.Lock()
	pid := f.mounts[mnt]
	delete(f.mounts, mnt)
	f.mu.Unlock()
	if isMounted(mnt) {
		r := f.exec(nil, kmsfsBin, "unmount", mnt)
		if r.code != 0 || isMounted(mnt) {
			f.t.Logf("cleanup: kmsfs unmount %s: exit %d: %s", mnt, r.code, strings.TrimSpace(r.stderr))
			lazyUnmount(mnt)
		}
	}
	if isMounted(mnt) {
		f.t.Errorf("cleanup: %s is still mounted", mnt)
	}
	if pid > 0 && !waitGone(pid, 5*time.Second) {
		if isOurMountProcess(pid) {
			f.t.Logf("cleanup: killing mount process %d", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 5*time.Second)
		}
	}
}

// lazyUnmount detaches mnt with umount2(MNT_DETACH) as root, else
// fusermount3 -uz, bounded.
func lazyUnmount(mnt string) {
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err == nil {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, "fusermount3", "-uz", mnt).Run()
	if isMounted(mnt) {
		_ = exec.CommandContext(ctx, "umount", "-l", mnt).Run()
	}
}

// isOurMountProcess: pid runs our kmsfs binary (not a recycled pid).
func isOurMountProcess(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.HasPrefix(string(b), kmsfsBin+"\x00")
}

// waitGone polls until pid has exited (or is a zombie) or d passed.
func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var (
	badLogRE = regexp.MustCompile(`level=(WARN|ERROR)|^panic:|WARNING: DATA RACE|fatal error:`)
	// interruptedRE: a FUSE INTERRUPT (the Go runtime's SIGURG preemption
	// of a test process blocked in open(2) is enough) cancels the request
	// context and the mount logs a warning, though the caller only sees
	// EINTR and retries. Reported as a product issue; logged, not failed,
	// because it depends on timing.
	interruptedRE = regexp.MustCompile(`level=WARN .*context canceled`)
)

// checkMountLog fails the test on mount.log lines it did not expect.
func (f *fixture) checkMountLog() {
	var bad []string
	for _, l := range strings.Split(f.mountLog(), "\n") {
		if !badLogRE.MatchString(l) || (f.allowLog != nil && f.allowLog.MatchString(l)) {
			continue
		}
		if interruptedRE.MatchString(l) {
			f.t.Logf("mount.log: warning on an interrupted request (known issue): %s", l)
			continue
		}
		bad = append(bad, l)
	}
	for i, l := range bad {
		if i == 10 {
			f.t.Errorf("mount.log: ... and %d more", len(bad)-10)
			break
		}
		f.t.Errorf("mount.log: unexpected line: %s", l)
	}
}

// mountLog is CIPHERDIR/.kmsfs/mount.log ("" when absent).
func (f *fixture) mountLog() string {
	b, _ := os.ReadFile(filepath.Join(f.cipher, ".kmsfs", "mount.log"))
	return string(b)
}

// statusJSON runs kmsfs status --json.
func (f *fixture) status() statusJSON {
	f.t.Helper()
	out := f.kmsfs("status", "--json", f.cipher)
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		f.t.Fatalf("kmsfs status --json: %v\n%s", err, out)
	}
	return s
}

// mountinfoLine returns the /proc/self/mountinfo line of mnt.
func mountinfoLine(mnt string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	line := ""
	for _, l := range strings.Split(string(b), "\n") {
		fl := strings.Fields(l)
		if len(fl) > 4 && fl[4] == mnt {
			line = l
		}
	}
	return line
}

// procStatusKB reads a "Name:   N kB" field of /proc/PID/status.
func procStatusKB(t *testing.T, pid int, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			fl := strings.Fields(v)
			if len(fl) == 0 {
				break
			}
			n, err := strconv.ParseInt(fl[0], 10, 64)
			if err != nil {
				t.Fatalf("/proc/%d/status %s: %q", pid, name, l)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/status has no %s line", pid, name)
	return 0
}

// randHex is n random bytes in hex.
func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// randBytes is n random bytes.
func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// testUser is the unprivileged user the tests run programs as.
type testUser struct {
	name     string
	uid, gid uint32
}

const testUserName = "kmsfs-test"

var testUserMu sync.Mutex

// needTestUser returns kmsfs-test, creating it with useradd when missing.
// It skips unless we are root and the user exists or can be created.
func needTestUser(t *testing.T) *testUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run programs as the unprivileged user " + testUserName)
	}
	testUserMu.Lock()
	defer testUserMu.Unlock()
	u, err := user.Lookup(testUserName)
	if err != nil {
		path, lerr := exec.LookPath("useradd")
		if lerr != nil {
			t.Skipf("user %s missing and useradd not available: %v", testUserName, lerr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, path, "--no-create-home", "--shell", "/bin/sh",
			"--home-dir", "/nonexistent", "--user-group", testUserName).CombinedOutput()
		if err != nil {
			t.Skipf("cannot create user %s: useradd: %v: %s", testUserName, err, out)
		}
		if u, err = user.Lookup(testUserName); err != nil {
			t.Skipf("user %s created but not found: %v", testUserName, err)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		t.Skipf("user %s has uid %q gid %q: not an unprivileged user", testUserName, u.Uid, u.Gid)
	}
	return &testUser{name: testUserName, uid: uint32(uid), gid: uint32(gid)}
}

// runAsUser runs name args as u (no supplementary groups) with env,
// bounded; it returns the combined output and the exit code.
func runAsUser(t *testing.T, u *testUser, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	default:
		return string(out) + fmt.Sprintf("[harness: %v]", err), -1
	}
}

// treeEntry is what compareTrees checks of one path.
type treeEntry struct {
	mode  fs.FileMode // type and permission bits
	size  int64       // regular files
	sum   [32]byte    // sha256 of a regular file's content
	link  string      // symlink target
	mtime int64       // regular files, ns
}

// scanTree walks root (not following symlinks) and describes every entry
// below it by slash-separated relative path.
func scanTree(t *testing.T, root string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := treeEntry{mode: fi.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
		switch {
		case fi.Mode().IsRegular():
			e.size = fi.Size()
			e.mtime = fi.ModTime().UnixNano()
			if e.sum, err = fileSHA256(p); err != nil {
				return err
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			if e.link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", root, err)
	}
	return out
}

func fileSHA256(p string) ([32]byte, error) {
	var sum [32]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("read %s: %w", p, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// compareTrees fails t for every difference between two scans (at most
// 20 reported): missing and extra paths, types, modes, sizes, contents,
// symlink targets and, with mtimeRes > 0, regular files' modification
// times truncated to mtimeRes (tar keeps whole seconds).
func compareTrees(t *testing.T, want, got map[string]treeEntry, mtimeRes time.Duration) {
	t.Helper()
	var diffs []string
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w := want[k]
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing", k))
		case g.mode != w.mode:
			diffs = append(diffs, fmt.Sprintf("%s: mode got %v, want %v", k, g.mode, w.mode))
		case g.size != w.size:
			diffs = append(diffs, fmt.Sprintf("%s: size got %d, want %d", k, g.size, w.size))
		case g.sum != w.sum:
			diffs = append(diffs, fmt.Sprintf("%s: sha256 got %x, want %x", k, g.sum[:8], w.sum[:8]))
		case g.link != w.link:
			diffs = append(diffs, fmt.Sprintf("%s: symlink target got %q, want %q", k, g.link, w.link))
		case mtimeRes > 0 && g.mtime/int64(mtimeRes) != w.mtime/int64(mtimeRes):
			diffs = append(diffs, fmt.Sprintf("%s: mtime got %s, want %s", k,
				time.Unix(0, g.mtime).UTC().Format(time.RFC3339Nano), time.Unix(0, w.mtime).UTC().Format(time.RFC3339Nano)))
		}
	}
	var extra []string
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		diffs = append(diffs, fmt.Sprintf("%s: unexpected entry", k))
	}
	for i, d := range diffs {
		if i == 20 {
			t.Errorf("... and %d more differences", len(diffs)-20)
			break
		}
		t.Errorf("tree difference: %s", d)
	}
}

// needles finds any of a set of byte strings in streams, by an 8-byte
// prefix table (every needle is at least 8 bytes long).
type needles struct {
	byPrefix map[uint64][][]byte
	maxLen   int
}

func newNeedles(list [][]byte) *needles {
	n := &needles{byPrefix: map[uint64][][]byte{}}
	for _, b := range list {
		if len(b) < 8 {
			panic("needle shorter than 8 bytes")
		}
		k := binary.LittleEndian.Uint64(b)
		n.byPrefix[k] = append(n.byPrefix[k], b)
		n.maxLen = max(n.maxLen, len(b))
	}
	return n
}

// scan returns the needles found in r (each once) and the offset of the
// first hit of each.
func (n *needles) scan(r io.Reader) (map[string]int64, error) {
	found := map[string]int64{}
	if len(n.byPrefix) == 0 {
		return found, nil
	}
	const block = 1 << 20
	buf := make([]byte, 0, block+n.maxLen)
	var base int64 // stream offset of buf[0]
	br := bufio.NewReaderSize(r, block)
	for {
		m, err := io.ReadFull(br, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			return found, err
		}
		// Offsets whose needle could still extend past buf wait for the
		// next block, unless this is the end.
		limit := len(buf) - n.maxLen + 1
		if eof {
			limit = len(buf) - 7
		}
		if len(n.byPrefix) == 1 && limit > 0 {
			// One needle (the canary): bytes.Index is much faster.
			for _, cands := range n.byPrefix {
				for _, c := range cands {
					end := min(limit-1+len(c), len(buf))
					if j := bytes.Index(buf[:end], c); j >= 0 {
						if _, seen := found[string(c)]; !seen {
							found[string(c)] = base + int64(j)
						}
					}
				}
			}
			limit = max(limit, 0)
			if eof {
				return found, nil
			}
			copy(buf, buf[limit:])
			buf = buf[:len(buf)-limit]
			base += int64(limit)
			continue
		}
		for i := 0; i < limit; i++ {
			cands, ok := n.byPrefix[binary.LittleEndian.Uint64(buf[i:])]
			if !ok {
				continue
			}
			for _, c := range cands {
				if i+len(c) <= len(buf) && bytes.Equal(buf[i:i+len(c)], c) {
					if _, seen := found[string(c)]; !seen {
						found[string(c)] = base + int64(i)
					}
				}
			}
		}
		if eof {
			return found, nil
		}
		if limit < 0 {
			limit = 0
		}
		copy(buf, buf[limit:])
		buf = buf[:len(buf)-limit]
		base += int64(limit)
	}
}

// scanDirFor scans every regular file below root for the needles and
// returns "path: needle-label @offset" lines; label names a needle.
func scanDirFor(t *testing.T, root string, n *needles, label func([]byte) string) (hits []string, files int) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		files++
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		found, err := n.scan(f)
		if err != nil {
			return fmt.Errorf("scan %s: %w", p, err)
		}
		for s, off := range found {
			hits = append(hits, fmt.Sprintf("%s: %s at offset %d", p, label([]byte(s)), off))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", root, err)
	}
	sort.Strings(hits)
	return hits, files
}

// auditOps counts the audit log's lines per op, and apart per purpose
// and op ("names:Decrypt": the names key's) as well, and collects the file
// IDs of successful GenerateDataKey calls.
func auditOps(t *testing.T, cipher string) (ops map[string]int, generated map[string]bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cipher, ".kmsfs", "audit.log"))
	if err != nil {
		t.Fatalf("audit log: %v", err)
	}
	ops, generated = map[string]int{}, map[string]bool{}
	for i, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var rec struct {
			Op      string `json:"op"`
			FileID  string `json:"file_id"`
			Purpose string `json:"purpose"`
			Outcome string `json:"outcome"`
		}
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Errorf("audit log line %d is not JSON: %v: %q", i+1, err, line)
			continue
		}
		ops[rec.Op]++
		if rec.Purpose != "" {
			ops[rec.Purpose+":"+rec.Op]++ // e.g. "names:Decrypt", counted in "Decrypt" too
		}
		if rec.Op == "GenerateDataKey" && rec.Outcome == "ok" {
			generated[rec.FileID] = true
		}
	}
	return ops, generated
}

// fileIDOf reads the file ID from a cipher file's preamble (bytes 8..24).
func fileIDOf(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var pre [32]byte
	if _, err := io.ReadFull(f, pre[:]); err != nil {
		return "", fmt.Errorf("preamble of %s: %w", path, err)
	}
	if string(pre[:4]) != "KMSF" {
		return "", fmt.Errorf("%s: no KMSF magic: %q", path, pre[:4])
	}
	return hex.EncodeToString(pre[8:24]), nil
}

// TestNeedlesScan checks the harness's scanner (the plaintext and DEK
// tests rely on it) across block boundaries, with one and many needles.
func TestNeedlesScan(t *testing.T) {
	a, b := []byte("needle-number-one"), []byte("another-needle-2")
	const block = 1 << 20
	tests := []struct {
		name   string
		list   [][]byte
		size   int
		put    map[int][]byte // offset -> needle
		wantAt map[string]int64
	}{
		{"none", [][]byte{a}, 3 * block, nil, map[string]int64{}},
		{"single at start", [][]byte{a}, 100, map[int][]byte{0: a}, map[string]int64{string(a): 0}},
		{"single at end", [][]byte{a}, 5000, map[int][]byte{5000 - len(a): a}, map[string]int64{string(a): int64(5000 - len(a))}},
		{"single across a block", [][]byte{a}, 3 * block, map[int][]byte{block - 5: a}, map[string]int64{string(a): block - 5}},
		{"single across the buffer end", [][]byte{a}, 3 * block, map[int][]byte{block + 5: a}, map[string]int64{string(a): block + 5}},
		{"many across the buffer end", [][]byte{a, b}, 3 * block, map[int][]byte{block + 8: b}, map[string]int64{string(b): block + 8}},
		{"single at the file end after blocks", [][]byte{a}, 2*block + 77, map[int][]byte{2*block + 77 - len(a): a}, map[string]int64{string(a): int64(2*block + 77 - len(a))}},
		{"many across blocks", [][]byte{a, b}, 3 * block, map[int][]byte{block - 3: a, 2*block - 10: b},
			map[string]int64{string(a): block - 3, string(b): 2*block - 10}},
		{"many, first hit wins", [][]byte{a, b}, 3 * block, map[int][]byte{10: b, 2 * block: b}, map[string]int64{string(b): 10}},
		{"many at the very end", [][]byte{a, b}, block + 30, map[int][]byte{block + 30 - len(b): b}, map[string]int64{string(b): int64(block + 30 - len(b))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, tt.size)
			for i := range data {
				data[i] = byte('a' + i%7)
			}
			for off, nd := range tt.put {
				copy(data[off:], nd)
			}
			got, err := newNeedles(tt.list).scan(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantAt) {
				t.Errorf("got %v, want %v", got, tt.wantAt)
			}
		})
	}
}

// trustCopied accepts a cipher directory the fixture did not make (a
// golden tree, a copy from elsewhere) the way a user restoring it would:
// kmsfs trust --key with the key ARN its kmsfs.conf names.
func (f *fixture) trustCopied() {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.cipher, "kmsfs.conf"))
	if err != nil {
		f.t.Fatal(err)
	}
	var conf struct {
		KeyARN string `json:"key_arn"`
	}
	if err := json.Unmarshal(b, &conf); err != nil || conf.KeyARN == "" {
		f.t.Fatalf("kmsfs.conf of %s: no key_arn (%v)", f.cipher, err)
	}
	f.kmsfs("trust", "--key", conf.KeyARN, f.cipher)
}
