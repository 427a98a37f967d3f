package integration

// localkms_test.go: a real KMS API server for the tests of the aws provider
// through the binary: local-kms (github.com/nsmithuk/local-kms), one
// process per test, from $KMSFS_LOCAL_KMS or $GOPATH/bin/local-kms. Without
// it the tests skip, unless KMSFS_REQUIRE_LOCAL_KMS=1 (CI), where they fail.
//
// local-kms has no bind option: it listens on ":"+PORT, every interface.
// As root it runs in a network namespace of its own (only a loopback
// device in it), and the test serves it on 127.0.0.1 through a forwarder
// whose dialer lives in that namespace; otherwise it runs in ours, on a
// free port of every interface, and the tests still talk to 127.0.0.1.
//
// Other tests use it through newAWSFixture, which returns the usual
// fixture with its cipher directory made by kmsfs init --kms aws.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	localKMSModule  = "github.com/nsmithuk/local-kms"
	localKMSVersion = "v0.0.0-20260228092603-2a5e92d09ab6"
	lkRegion        = "eu-west-2"
	lkAccount       = "111122223333"

	// Seeded keys (KMS_SEED_PATH), each with an alias. Key A has two
	// backing keys (one past rotation).
	lkKeyA   = "0b6f5a3c-1d2e-4f70-8a9b-0c1d2e3f4a5b"
	lkKeyB   = "7c2d9e41-5a6b-4c8d-9e0f-1a2b3c4d5e6f"
	lkAliasA = "alias/kmsfs-it-a"
	lkAliasB = "alias/kmsfs-it-b"

	// lkNSPort is local-kms's port inside its own network namespace.
	lkNSPort = "4599"
)

const lkSeed = `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: ` + lkKeyA + `
          Description: kmsfs integration key A
        BackingKeys:
          - 34743777217A25432A46294A404E635266556A586E3272357538782F413F4428
          - 5cdaead27fe7da2de47945d73cd6d79e36494e73802f3cd3869f1d2cb0b5d7a9
      - Metadata:
          KeyId: ` + lkKeyB + `
          Description: kmsfs integration key B
        BackingKeys:
          - 614E645267556B58703273357638792F423F4528472B4B6250655368566D5971
Aliases:
  - AliasName: ` + lkAliasA + `
    TargetKeyId: ` + lkKeyA + `
  - AliasName: ` + lkAliasB + `
    TargetKeyId: ` + lkKeyB + `
`

func lkKeyARN(id string) string {
	return "arn:aws:kms:" + lkRegion + ":" + lkAccount + ":key/" + id
}

func lkAliasARN(alias string) string {
	return "arn:aws:kms:" + lkRegion + ":" + lkAccount + ":" + alias
}

// localKMSBinary finds local-kms or skips (fails under
// KMSFS_REQUIRE_LOCAL_KMS=1).
func localKMSBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("KMSFS_LOCAL_KMS"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("KMSFS_LOCAL_KMS=%s: %v", p, err)
		}
		return p
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", "local-kms")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("local-kms not found in $KMSFS_LOCAL_KMS or $GOPATH/bin: go install %s@%s", localKMSModule, localKMSVersion)
	if os.Getenv("KMSFS_REQUIRE_LOCAL_KMS") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// localKMS is one local-kms server, reached at url (127.0.0.1). stop and
// start make a hard outage and bring the same server (same keys, same
// address) back.
type localKMS struct {
	t        *testing.T
	bin      string
	dir      string // seed and KMS_DATA_PATH, kept across restarts
	addr     string // 127.0.0.1:port
	url      string // http://addr
	isolated bool   // in its own network namespace, behind fwd

	mu   sync.Mutex
	log  bytes.Buffer // local-kms's output, shown when a test fails
	proc *lkProc      // nil while stopped
	fwd  *lkForwarder // isolated and running
}

// lkProc is one run of the local-kms process.
type lkProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when it has exited
	dialer *nsDialer     // isolated: dials inside its namespace
}

var lkStartedRE = regexp.MustCompile(`Local KMS started on [0-9.:\[\]]*:(\d+)`)

// startLocalKMS runs local-kms with the seed keys and stops it at the end
// of the test.
func startLocalKMS(t *testing.T) *localKMS {
	t.Helper()
	k := &localKMS{t: t, bin: localKMSBinary(t), dir: t.TempDir()}
	if err := os.WriteFile(filepath.Join(k.dir, "seed.yaml"), []byte(lkSeed), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.stop()
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(k.logText()), "\n")
			if len(lines) > 30 {
				lines = append([]string{"..."}, lines[len(lines)-30:]...)
			}
			t.Logf("local-kms log (end):\n%s", strings.Join(lines, "\n"))
		}
	})
	k.isolated = os.Geteuid() == 0
	k.start()
	return k
}

// start runs the server (again). A restart keeps the address: the cipher
// directories record it in kmsfs.conf.
func (k *localKMS) start() {
	k.t.Helper()
	if k.proc != nil {
		k.t.Fatal("local-kms: start while running")
	}
	port := "0"
	if k.isolated {
		port = lkNSPort
	} else if k.addr != "" {
		_, port, _ = net.SplitHostPort(k.addr)
	}
	cmd := exec.Command(k.bin)
	cmd.Env = append(os.Environ(),
		"PORT="+port,
		"KMS_DATA_PATH="+filepath.Join(k.dir, "data"),
		"KMS_REGION="+lkRegion,
		"KMS_ACCOUNT_ID="+lkAccount,
		"KMS_SEED_PATH="+filepath.Join(k.dir, "seed.yaml"),
	)
	if k.isolated {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		if k.isolated && k.addr == "" && errors.Is(err, syscall.EPERM) {
			k.t.Logf("local-kms: no network namespace (%v): it listens on every interface", err)
			k.isolated = false
			k.start()
			return
		}
		k.t.Fatalf("start %s: %v", k.bin, err)
	}
	p := &lkProc{cmd: cmd, exited: make(chan struct{})}
	k.proc = p
	started := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			k.mu.Lock()
			k.log.WriteString(line + "\n")
			k.mu.Unlock()
			if m := lkStartedRE.FindStringSubmatch(line); m != nil {
				select {
				case started <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() { _ = cmd.Wait(); _ = pw.Close(); close(p.exited) }()
	var got string
	select {
	case got = <-started:
	case <-p.exited:
		k.proc = nil
		k.t.Fatalf("local-kms exited before listening\n%s", k.logText())
	case <-time.After(30 * time.Second):
		k.stop()
		k.t.Fatalf("local-kms did not start within 30 s\n%s", k.logText())
	}
	if !k.isolated {
		k.addr = "127.0.0.1:" + got
		k.url = "http://" + k.addr
		return
	}
	d, err := newNSDialer(cmd.Process.Pid)
	if err != nil {
		k.stop()
		if k.addr == "" { // first start: run it in our namespace instead
			k.t.Logf("local-kms: cannot enter its network namespace (%v): it listens on every interface", err)
			k.isolated = false
			k.start()
			return
		}
		k.t.Fatalf("local-kms: dialer in its network namespace: %v", err)
	}
	p.dialer = d
	listenAddr := k.addr
	if listenAddr == "" {
		listenAddr = "127.0.0.1:0"
	}
	fwd, err := newLKForwarder(listenAddr, func() (net.Conn, error) { return d.dial("127.0.0.1:" + lkNSPort) })
	if err != nil {
		k.stop()
		k.t.Fatalf("local-kms: forwarder on %s: %v", listenAddr, err)
	}
	k.fwd = fwd
	k.addr = fwd.ln.Addr().String()
	k.url = "http://" + k.addr
}

// stop kills the server: connections drop and the address refuses new
// ones, as in a hard outage.
func (k *localKMS) stop() {
	if k.fwd != nil {
		k.fwd.close()
		k.fwd = nil
	}
	if p := k.proc; p != nil {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if p.dialer != nil {
			p.dialer.close()
		}
		k.proc = nil
	}
}

func (k *localKMS) logText() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.log.String()
}

// call makes one KMS API call with a JSON body (local-kms checks no
// signature) and decodes the answer; a KMS error is returned as its
// __type and message.
func (k *localKMS) call(op string, in map[string]any) (map[string]any, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, k.url+"/", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	out := map[string]any{}
	if len(bytes.TrimSpace(b)) == 0 && resp.StatusCode == http.StatusOK {
		return out, nil // DisableKey, EnableKey, CreateAlias answer nothing
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: HTTP %d: %q", op, resp.StatusCode, b)
	}
	if resp.StatusCode != http.StatusOK {
		return out, fmt.Errorf("%s: HTTP %d: %v: %v", op, resp.StatusCode, out["__type"], out["message"])
	}
	return out, nil
}

// must is call, failing the test on an error.
func (k *localKMS) must(op string, in map[string]any) map[string]any {
	k.t.Helper()
	out, err := k.call(op, in)
	if err != nil {
		k.t.Fatalf("local-kms %v", err)
	}
	return out
}

// createKey makes a key (in: extra CreateKey fields, e.g. KeySpec) and
// returns its key ID and ARN.
func (k *localKMS) createKey(in map[string]any) (id, arn string) {
	k.t.Helper()
	if in == nil {
		in = map[string]any{}
	}
	if _, ok := in["Description"]; !ok {
		in["Description"] = "kmsfs " + k.t.Name()
	}
	md, _ := k.must("CreateKey", in)["KeyMetadata"].(map[string]any)
	id, _ = md["KeyId"].(string)
	arn, _ = md["Arn"].(string)
	if id == "" || arn == "" {
		k.t.Fatalf("local-kms CreateKey: no KeyId/Arn in %v", md)
	}
	return id, arn
}

// keyState is DescribeKey's KeyState of ref.
func (k *localKMS) keyState(ref string) string {
	k.t.Helper()
	md, _ := k.must("DescribeKey", map[string]any{"KeyId": ref})["KeyMetadata"].(map[string]any)
	s, _ := md["KeyState"].(string)
	return s
}

// awsEnv points a fixture's commands at static test credentials and away
// from the user's AWS configuration and the instance metadata service.
func (f *fixture) awsEnv() {
	f.t.Helper()
	empty := filepath.Join(f.dir, "aws-empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		f.t.Fatal(err)
	}
	env := f.env[:0:0]
	for _, kv := range f.env {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	f.env = append(env,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE="+empty,
		"AWS_SHARED_CREDENTIALS_FILE="+empty,
		"AWS_ACCESS_KEY_ID=AKIAKMSFSTESTEXAMPLE",
		"AWS_SECRET_ACCESS_KEY=kmsfs/test/secret/key/not/a/real/one/000",
	)
}

// initArgs are the kmsfs init flags for an aws cipher directory on key
// ref of this server.
func (k *localKMS) initArgs(ref string) []string {
	return []string{"--kms", "aws", "--key", ref, "--aws-region", lkRegion, "--aws-endpoint", k.url}
}

// newAWSFixture starts a local-kms and returns a fixture whose cipher
// directory kmsfs init --kms aws made against it with key alias A (extra
// init flags may follow), and the server.
func newAWSFixture(t *testing.T, initArgs ...string) (*fixture, *localKMS) {
	t.Helper()
	requireKmsfs(t)
	lk := startLocalKMS(t)
	f := newFixture(t)
	f.awsEnv()
	f.init(append(lk.initArgs(lkAliasA), initArgs...)...)
	return f, lk
}

// nsDialer dials from inside another process's network namespace: one
// goroutine, locked to its own OS thread for good, moves that thread into
// the namespace and makes every connection there. (A socket keeps the
// namespace it was made in, whichever thread uses it later.)
type nsDialer struct {
	reqs chan nsDial
	once sync.Once
}

type nsDial struct {
	addr  string
	reply chan nsDialed
}

type nsDialed struct {
	c   net.Conn
	err error
}

func newNSDialer(pid int) (*nsDialer, error) {
	d := &nsDialer{reqs: make(chan nsDial)}
	ready := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of
		// going back to the scheduler in another namespace.
		runtime.LockOSThread()
		err := enterNetNS(pid)
		ready <- err
		if err != nil {
			return
		}
		for r := range d.reqs {
			c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			r.reply <- nsDialed{c, err}
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return d, nil
}

// enterNetNS moves this thread into pid's network namespace and brings
// its loopback device up.
func enterNetNS(pid int) error {
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace of %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns: %w", err)
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

func (d *nsDialer) dial(addr string) (net.Conn, error) {
	r := nsDial{addr: addr, reply: make(chan nsDialed, 1)}
	d.reqs <- r
	got := <-r.reply
	return got.c, got.err
}

func (d *nsDialer) close() { d.once.Do(func() { close(d.reqs) }) }

// lkForwarder serves 127.0.0.1:port and copies each connection to one
// made by dial.
type lkForwarder struct {
	ln    net.Listener
	dial  func() (net.Conn, error)
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newLKForwarder(addr string, dial func() (net.Conn, error)) (*lkForwarder, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	f := &lkForwarder{ln: ln, dial: dial, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *lkForwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.pipe(c)
	}
}

func (f *lkForwarder) track(c net.Conn, on bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	if on {
		f.conns[c] = true
	} else {
		delete(f.conns, c)
	}
	return true
}

func (f *lkForwarder) pipe(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	if !f.track(c, true) {
		return
	}
	defer f.track(c, false)
	up, err := f.dial()
	if err != nil {
		return
	}
	defer up.Close()
	if !f.track(up, true) {
		return
	}
	defer f.track(up, false)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// close stops listening and drops every connection.
func (f *lkForwarder) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		_ = c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}
