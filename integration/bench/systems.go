package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A system is one filesystem under test.
type system struct {
	name string
	// check says why the system cannot run here ("" when it can).
	check func(b *bench) string
	// mount sets up a fresh instance under work and mounts it.
	mount func(b *bench, work string) (*mounted, error)
	// groups are the workload groups it runs (nil: all of them).
	groups []string
}

// mounted is one mounted instance.
type mounted struct {
	sys   *system
	dir   string    // where the workloads run
	cmd   *exec.Cmd // the mount process, nil for plain disk
	pid   int
	log   *bytes.Buffer
	audit string // kmsfs: the audit log, one line per KMS call
	done  chan error
}

// kmsCalls counts the Decrypt calls in the kmsfs audit log (one line per
// KMS call): the calls an open can make. The DEK pool's GenerateDataKey
// refills run in the background, whenever creates have drawn it down.
func (m *mounted) kmsCalls() int {
	if m.audit == "" {
		return 0
	}
	data, err := os.ReadFile(m.audit)
	if err != nil {
		return 0
	}
	return bytes.Count(data, []byte(`"op":"Decrypt"`))
}

const benchPass = "kmsfs-bench-passphrase"

func systems() []*system {
	return []*system{
		{name: "plain", check: func(*bench) string { return "" }, mount: mountPlain},
		{name: "loopback", check: needTool("loopback", "go install github.com/hanwen/go-fuse/v2/example/loopback@v2.12.1"), mount: mountLoopback},
		{name: "loopback-nopt", check: func(*bench) string { return "" }, mount: mountLoopbackNoPassthrough},
		{name: "gocryptfs", check: needTool("gocryptfs", "apt-get install -y gocryptfs"), mount: mountGocryptfs},
		{name: "securefs", check: needTool("securefs", "apt-get install -y securefs"), mount: mountSecurefs},
		{name: "kmsfs", check: func(*bench) string { return "" }, mount: mountKmsfsLocal},
		// The same kmsfs with the old layout (init --plaintext-names): the
		// cost of encrypting names, in the same run (plainNamesTargets).
		{name: plainNames, check: checkPlaintextNames, mount: mountKmsfsLocalPlainNames},
		// An earlier build (-kmsfs-base), e.g. the one before a change
		// whose cost is in question, on the same workloads.
		{name: baseKmsfs, check: checkKmsfsBase, mount: mountKmsfsBase},
		{name: "kmsfs-aws", check: checkKmsfsAWS, mount: mountKmsfsAWS},
		// A KMS in the same region answers in several milliseconds, not
		// local-kms's fraction of one: the small files again, with every
		// KMS call delayed (does the DEK pool hide the round trip?).
		{name: "kmsfs-aws-10ms", check: checkKmsfsAWS, mount: mountKmsfsAWSDelayed, groups: []string{"small"}},
	}
}

func needTool(name, install string) func(*bench) string {
	return func(b *bench) string {
		if _, err := b.tool(name); err != nil {
			return fmt.Sprintf("%s not found (%s)", name, install)
		}
		return ""
	}
}

// tool finds a program in PATH or in $GOPATH/bin.
func (b *bench) tool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(dir, "bin", name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func mountPlain(b *bench, work string) (*mounted, error) {
	dir := filepath.Join(work, "plain")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &mounted{dir: dir}, nil
}

func mountLoopback(b *bench, work string) (*mounted, error) {
	orig, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	bin, _ := b.tool("loopback")
	args := []string{"-q"}
	if os.Geteuid() == 0 {
		args = append(args, "-directmount")
	}
	return b.startMount(exec.Command(bin, append(args, mnt, orig)...), mnt, nil)
}

// mountLoopbackNoPassthrough starts this binary as the loopback-nopt
// filesystem (loopbacknopt.go).
func mountLoopbackNoPassthrough(b *bench, work string) (*mounted, error) {
	orig, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), loopbackEnv+"="+mnt+" "+orig)
	return b.startMount(cmd, mnt, nil)
}

func mountGocryptfs(b *bench, work string) (*mounted, error) {
	cipher, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	pf := filepath.Join(work, "pass")
	if err := os.WriteFile(pf, []byte(benchPass+"\n"), 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.Command("gocryptfs", "-init", "-q", "-passfile", pf, cipher).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gocryptfs -init: %v: %s", err, out)
	}
	return b.startMount(exec.Command("gocryptfs", "-f", "-q", "-passfile", pf, cipher, mnt), mnt, nil)
}

func mountSecurefs(b *bench, work string) (*mounted, error) {
	cipher, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	if out, err := exec.Command("securefs", "create", "--pass", benchPass, cipher).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("securefs create: %v: %s", err, out)
	}
	return b.startMount(exec.Command("securefs", "mount", "--pass", benchPass, cipher, mnt), mnt, nil)
}

// plainNames is the kmsfs column with file names stored unencrypted.
const plainNames = "kmsfs-plainnames"

func mountKmsfsLocal(b *bench, work string) (*mounted, error) {
	return b.mountKmsfsLocal(work)
}

func mountKmsfsLocalPlainNames(b *bench, work string) (*mounted, error) {
	return b.mountKmsfsLocal(work, "--plaintext-names")
}

// mountKmsfsLocal inits a cipher directory under work on the local
// provider, with the extra init flags, and mounts it.
func (b *bench) mountKmsfsLocal(work string, initFlags ...string) (*mounted, error) {
	cipher, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	keyring := filepath.Join(b.dir, "keyring", "keyring.json")
	args := append(append([]string{"--keyring", keyring, "init"}, initFlags...), cipher)
	if err := b.kmsfsInit(nil, args...); err != nil {
		return nil, err
	}
	return b.mountKmsfs(cipher, mnt, nil, "--keyring", keyring)
}

// baseKmsfs is the column of the -kmsfs-base binary.
const baseKmsfs = "kmsfs-base"

func checkKmsfsBase(b *bench) string {
	if b.kmsfsBase == "" {
		return "no -kmsfs-base binary given"
	}
	if _, err := os.Stat(b.kmsfsBase); err != nil {
		return fmt.Sprintf("-kmsfs-base %s: %v", b.kmsfsBase, err)
	}
	return ""
}

// mountKmsfsBase inits and mounts with the -kmsfs-base binary (its own
// defaults) and a keyring of its own.
func mountKmsfsBase(b *bench, work string) (*mounted, error) {
	cur := b.kmsfs
	b.kmsfs = b.kmsfsBase
	defer func() { b.kmsfs = cur }()
	cipher, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	keyring := filepath.Join(b.dir, "keyring-base", "keyring.json")
	if err := b.kmsfsInit(nil, "--keyring", keyring, "init", cipher); err != nil {
		return nil, err
	}
	return b.mountKmsfs(cipher, mnt, nil, "--keyring", keyring)
}

func checkPlaintextNames(b *bench) string {
	out, _ := exec.Command(b.kmsfs, "init", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("--plaintext-names")) {
		return "TODO: this kmsfs has no `init --plaintext-names` yet"
	}
	return ""
}

// kmsfsInit runs kmsfs init (its output goes to the log on failure).
func (b *bench) kmsfsInit(env []string, args ...string) error {
	cmd := exec.Command(b.kmsfs, args...)
	cmd.Env = append(append(os.Environ(), "KMSFS_PASSPHRASE="+benchPass), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kmsfs %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (b *bench) mountKmsfs(cipher, mnt string, env []string, global ...string) (*mounted, error) {
	args := append(append(global, "mount", "-f"), b.mountArgs...)
	if b.profileDir != "" {
		b.profiles++
		args = append(args, "--cpuprofile", filepath.Join(b.profileDir, fmt.Sprintf("kmsfs-%d.pprof", b.profiles)))
	}
	cmd := exec.Command(b.kmsfs, append(args, cipher, mnt)...)
	cmd.Env = append(append(os.Environ(), "KMSFS_PASSPHRASE="+benchPass), env...)
	m, err := b.startMount(cmd, mnt, nil)
	if err != nil {
		return nil, err
	}
	m.audit = filepath.Join(cipher, ".kmsfs", "audit.log")
	return m, nil
}

// The aws provider runs against local-kms on loopback, seeded with one key.
const (
	lkRegion  = "eu-west-2"
	lkAccount = "111122223333"
	lkKeyID   = "5b1f4e2a-7c3d-4e8f-9a0b-1c2d3e4f5a6b"
	lkAlias   = "alias/kmsfs-bench"
	lkSeed    = `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: ` + lkKeyID + `
          Description: kmsfs bench key
        BackingKeys:
          - 3f8a2b6c1d4e5f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8
Aliases:
  - AliasName: ` + lkAlias + `
    TargetKeyId: ` + lkKeyID + `
`
)

func checkKmsfsAWS(b *bench) string {
	if _, err := b.tool("local-kms"); err != nil {
		return "TODO: local-kms not found (go install github.com/nsmithuk/local-kms@latest)"
	}
	out, _ := exec.Command(b.kmsfs, "init", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("--aws-endpoint")) {
		return "TODO: this kmsfs has no `init --kms aws` yet"
	}
	return ""
}

var lkStartedRE = regexp.MustCompile(`Local KMS started on [0-9.:\[\]]*:(\d+)`)

// localKMS starts local-kms once per run (it is stopped at the end).
func (b *bench) localKMS() (string, error) {
	if b.lkURL != "" {
		return b.lkURL, nil
	}
	bin, err := b.tool("local-kms")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(b.dir, "local-kms")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	seed := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(lkSeed), 0o600); err != nil {
		return "", err
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT=0", "KMS_DATA_PATH="+filepath.Join(dir, "data"),
		"KMS_REGION="+lkRegion, "KMS_ACCOUNT_ID="+lkAccount, "KMS_SEED_PATH="+seed)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return "", err
	}
	b.lkCmd = cmd
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := lkStartedRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() { cmd.Wait(); pw.Close() }()
	select {
	case p := <-port:
		b.lkURL = "http://127.0.0.1:" + p
		return b.lkURL, nil
	case <-time.After(30 * time.Second):
		return "", errors.New("local-kms did not start within 30s")
	}
}

func awsEnv() []string {
	return []string{"AWS_ACCESS_KEY_ID=kmsfsbench", "AWS_SECRET_ACCESS_KEY=kmsfsbench", "AWS_REGION=" + lkRegion,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
}

func mountKmsfsAWS(b *bench, work string) (*mounted, error) {
	url, err := b.localKMS()
	if err != nil {
		return nil, err
	}
	cipher, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	if err := b.kmsfsInit(awsEnv(), "init", "--kms", "aws", "--key", lkAlias, "--aws-region", lkRegion, "--aws-endpoint", url, cipher); err != nil {
		return nil, err
	}
	return b.mountKmsfs(cipher, mnt, awsEnv())
}

// kmsDelay is the round trip kmsfs-aws-10ms adds to every KMS call.
const kmsDelay = 10 * time.Millisecond

func mountKmsfsAWSDelayed(b *bench, work string) (*mounted, error) {
	backend, err := b.localKMS()
	if err != nil {
		return nil, err
	}
	if b.delayURL == "" {
		if b.delayURL, err = b.startDelayProxy(backend, kmsDelay); err != nil {
			return nil, err
		}
	}
	cipher, mnt, err := mkdirs(work)
	if err != nil {
		return nil, err
	}
	if err := b.kmsfsInit(awsEnv(), "init", "--kms", "aws", "--key", lkAlias, "--aws-region", lkRegion, "--aws-endpoint", b.delayURL, cipher); err != nil {
		return nil, err
	}
	return b.mountKmsfs(cipher, mnt, awsEnv())
}

// delayProxyEnv, set to "BACKEND DELAY", turns the bench binary into the
// delaying proxy: it runs in a process of its own, as a remote KMS would,
// so the bench's own blocking syscalls on the mount cannot stall it.
const delayProxyEnv = "KMSFS_BENCH_DELAY_PROXY"

// startDelayProxy starts this binary as a reverse proxy on 127.0.0.1 to
// backend that holds every request for delay before passing it on; it is
// stopped at the end of the run.
func (b *bench) startDelayProxy(backend string, delay time.Duration) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), delayProxyEnv+"="+backend+" "+delay.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	b.delayCmd = cmd
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("delay proxy did not start: %w", err)
	}
	return "http://" + strings.TrimSpace(addr), nil
}

// serveDelayProxy is the proxy process: spec is "BACKEND DELAY". It prints
// its address, then serves until killed.
func serveDelayProxy(spec string) error {
	backend, ds, _ := strings.Cut(spec, " ")
	delay, err := time.ParseDuration(ds)
	if err != nil {
		return fmt.Errorf("%s=%q: %w", delayProxyEnv, spec, err)
	}
	u, err := url.Parse(backend)
	if err != nil {
		return err
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		rp.ServeHTTP(w, r)
	}))
}

func mkdirs(work string) (cipher, mnt string, err error) {
	cipher, mnt = filepath.Join(work, "cipher"), filepath.Join(work, "mnt")
	for _, d := range []string{cipher, mnt} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", "", err
		}
	}
	return cipher, mnt, nil
}

// startMount starts a foreground mount process and waits until mnt is a
// mount point.
func (b *bench) startMount(cmd *exec.Cmd, mnt string, _ []string) (*mounted, error) {
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &mounted{dir: mnt, cmd: cmd, pid: cmd.Process.Pid, log: &log, done: make(chan error, 1)}
	go func() { m.done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !isMountpoint(mnt) {
		select {
		case err := <-m.done:
			return nil, fmt.Errorf("%s exited before mounting (%v): %s", cmd.Path, err, log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-m.done
			return nil, fmt.Errorf("%s did not mount within 60s: %s", cmd.Path, log.String())
		}
	}
	return m, nil
}

// unmount unmounts and waits for the mount process to exit.
func (m *mounted) unmount() error {
	if m.cmd == nil {
		return nil
	}
	var err error
	for i := 0; i < 20; i++ {
		var out []byte
		if os.Geteuid() == 0 {
			out, err = exec.Command("umount", m.dir).CombinedOutput()
		} else {
			out, err = exec.Command("fusermount3", "-u", m.dir).CombinedOutput()
		}
		if err == nil {
			break
		}
		err = fmt.Errorf("unmount %s: %v: %s", m.dir, err, out)
		time.Sleep(500 * time.Millisecond)
	}
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
			m.cmd.Process.Kill()
			<-m.done
		}
		if err == nil {
			err = fmt.Errorf("%s did not exit after unmount", m.cmd.Path)
		}
	}
	return err
}

func isMountpoint(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == dir {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// procMem reads VmHWM and VmLck (KiB) of a process.
func procMem(pid int) (hwm, lck int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmHWM:":
			hwm = v
		case "VmLck:":
			lck = v
		}
	}
	return hwm, lck, nil
}
