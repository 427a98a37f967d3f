package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const envHardenHelper = "KMSFS_TEST_HARDEN_HELPER"

// hardenReport is what the helper process saw after hardenProcess.
type hardenReport struct {
	Err          string `json:"err,omitempty"`
	EnvironHolds bool   `json:"environ_holds"` // /proc/self/environ holds the secret
	EnvironErr   string `json:"environ_err,omitempty"`
	OSEnv        bool   `json:"os_env"`    // os.LookupEnv still finds it
	Lookup       string `json:"lookup"`    // what lookupEnv returns
	Dumpable     int    `json:"dumpable"`  // PR_GET_DUMPABLE
	CoreSoft     uint64 `json:"core_soft"` // RLIMIT_CORE
	CoreHard     uint64 `json:"core_hard"`
}

// TestHardenProcessHelper is not a test of its own: TestHardenProcess runs
// the test binary with it as a child process, whose environment block is
// a real one from execve.
func TestHardenProcessHelper(t *testing.T) {
	if os.Getenv(envHardenHelper) != "1" {
		t.Skip("the child process of TestHardenProcess")
	}
	secret := os.Getenv(envPassphrase)
	var r hardenReport
	ownsEnvironment = true
	if err := hardenProcess(slog.New(slog.DiscardHandler)); err != nil {
		r.Err = err.Error()
	}
	env, err := os.ReadFile("/proc/self/environ")
	if err != nil {
		r.EnvironErr = err.Error()
	}
	r.EnvironHolds = bytes.Contains(env, []byte(secret))
	_, r.OSEnv = os.LookupEnv(envPassphrase)
	r.Lookup, _ = lookupEnv(envPassphrase)
	r.Dumpable, _ = unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	var rl unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_CORE, &rl)
	r.CoreSoft, r.CoreHard = rl.Cur, rl.Max
	b, _ := json.Marshal(r)
	fmt.Printf("REPORT %s\n", b)
	os.Exit(0)
}

// TestHardenProcess: after hardenProcess the passphrase is gone from the
// environment children inherit and from the original environment block
// (/proc/PID/environ), yet the process itself still finds it; the process
// is not dumpable and cannot dump core.
func TestHardenProcess(t *testing.T) {
	buf := make([]byte, 16)
	rand.Read(buf)
	secret := "harden-secret-" + hex.EncodeToString(buf)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHardenProcessHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHardenHelper+"=1", envPassphrase+"="+secret, "KMSFS_TEST_AFTER=kept")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	i := bytes.Index(out, []byte("REPORT "))
	if i < 0 {
		t.Fatalf("helper printed no report:\n%s", out)
	}
	line, _, _ := bytes.Cut(out[i+len("REPORT "):], []byte("\n"))
	var r hardenReport
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("helper report %q: %v", line, err)
	}
	if r.Err != "" {
		t.Errorf("hardenProcess: %s", r.Err)
	}
	if r.EnvironErr != "" {
		t.Fatalf("read /proc/self/environ: %s", r.EnvironErr)
	}
	if r.EnvironHolds {
		t.Errorf("/proc/self/environ still holds the passphrase, want its value zeroed")
	}
	if r.OSEnv {
		t.Errorf("os.LookupEnv(%s) still finds it, want it unset (children inherit os.Environ)", envPassphrase)
	}
	if r.Lookup != secret {
		t.Errorf("lookupEnv: got %q, want the passphrase for this process", r.Lookup)
	}
	if r.Dumpable != 0 {
		t.Errorf("PR_GET_DUMPABLE: got %d, want 0", r.Dumpable)
	}
	if r.CoreSoft != 0 || r.CoreHard != 0 {
		t.Errorf("RLIMIT_CORE: got %d/%d, want 0/0", r.CoreSoft, r.CoreHard)
	}
}

// TestEnvBlockRange: env_start and env_end from /proc/self/stat span
// exactly the block /proc/self/environ shows.
func TestEnvBlockRange(t *testing.T) {
	start, end, err := envBlockRange()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("/proc/self/environ")
	if err != nil {
		t.Fatal(err)
	}
	if got := end - start; got != int64(len(want)) {
		t.Errorf("block size: got %d, want %d (the size of /proc/self/environ)", got, len(want))
	}
}
