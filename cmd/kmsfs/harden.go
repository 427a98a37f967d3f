package main

// harden.go: what every kmsfs process does before its command runs (the
// root command's PersistentPreRunE), so cat, export, verify, rewrap and
// keys hold keys as safely as mount does:
//
//  1. no core dumps (RLIMIT_CORE 0, soft and hard);
//  2. the passphrase leaves the environment: taken out of os.Environ (no
//     child inherits it) and zeroed in the process's original environment
//     block, the stack memory /proc/PID/environ shows (Go copies envp at
//     start, so os.Unsetenv alone leaves the bytes there);
//  3. not dumpable (PR_SET_DUMPABLE 0): no ptrace, /proc/PID/mem or
//     /proc/PID/environ for other processes of the same user.
//
// The order matters: once a process that is not root is not dumpable,
// its own /proc/self/mem belongs to root and cannot be opened for the
// scrub, so step 2 comes before step 3.

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// maxEnvBlock bounds the environment block read from /proc/self/mem: far
// above what execve accepts for envp on a default stack (a quarter of
// the 8 MiB stack limit).
const maxEnvBlock = 64 << 20

// ownsEnvironment is set by main: this process's environment is the
// command's own to change. Tests call run in-process many times under one
// t.Setenv and leave it false, so the environment is read, not changed.
var ownsEnvironment bool

// takenEnv holds the values hardenProcess took out of the environment,
// so lookupEnv still finds them for this process (and only for it).
var takenEnv struct {
	mu sync.Mutex
	m  map[string]string
}

// lookupEnv is os.LookupEnv that also sees the values hardenProcess took
// out of the environment.
func lookupEnv(name string) (string, bool) {
	takenEnv.mu.Lock()
	v, ok := takenEnv.m[name]
	takenEnv.mu.Unlock()
	if ok {
		return v, true
	}
	return os.LookupEnv(name)
}

// hardenProcess disables core dumps, takes the passphrase out of the
// environment (when the process owns it, see ownsEnvironment) and makes
// the process not dumpable. A failed scrub of the original environment
// block is logged at debug and ignored: not dumpable, the block is
// readable by root alone.
func hardenProcess(log *slog.Logger) error {
	// No core before the scrub, so a crash in it dumps nothing.
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("disable core dumps (setrlimit RLIMIT_CORE): %w: run kmsfs where no seccomp or container policy forbids it", err)
	}
	if ownsEnvironment {
		if err := takeEnv(envPassphrase); err != nil {
			log.Debug("passphrase left in the original environment block (the process is not dumpable, so only root can read it)", "err", err)
		}
	}
	return harden()
}

// harden keeps key material out of core dumps and away from ptrace by other
// processes of the user: the first thing a mount process does.
func harden() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("disable core dumps: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)
	}
	return nil
}

// takeEnv moves name from the environment into takenEnv and zeroes its
// value in the original environment block. The variable is gone from
// os.Environ even when the scrub fails (the error says why).
func takeEnv(name string) error {
	v, ok := os.LookupEnv(name)
	if !ok {
		return nil
	}
	takenEnv.mu.Lock()
	if takenEnv.m == nil {
		takenEnv.m = map[string]string{}
	}
	takenEnv.m[name] = v
	takenEnv.mu.Unlock()
	if err := os.Unsetenv(name); err != nil {
		return fmt.Errorf("unset %s: %w", name, err)
	}
	return scrubEnvBlock(name)
}

// envBlockRange returns [env_start, env_end) of this process from
// /proc/self/stat (fields 50 and 51, proc(5)). The command name (field 2)
// may hold spaces and parentheses, so fields are counted after its last
// ')'.
func envBlockRange() (start, end int64, err error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/self/stat: %w", err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("/proc/self/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	const envStart, envEnd = 50, 51
	if len(f) < envEnd-2 {
		return 0, 0, fmt.Errorf("/proc/self/stat has %d fields, want at least %d (a kernel before 3.5?)", len(f)+2, envEnd)
	}
	s, err1 := strconv.ParseUint(f[envStart-3], 10, 63)
	e, err2 := strconv.ParseUint(f[envEnd-3], 10, 63)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("/proc/self/stat env_start/env_end: %w", err)
	}
	if e <= s || e-s > maxEnvBlock {
		return 0, 0, fmt.Errorf("/proc/self/stat: environment block [%#x, %#x) is empty or too large", s, e)
	}
	return int64(s), int64(e), nil
}

// scrubEnvBlock overwrites with zero bytes the value of every name=value
// entry of the original environment block, through /proc/self/mem.
func scrubEnvBlock(name string) error {
	start, end, err := envBlockRange()
	if err != nil {
		return err
	}
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /proc/self/mem: %w", err)
	}
	defer mem.Close()
	block := make([]byte, end-start)
	if _, err := mem.ReadAt(block, start); err != nil {
		return fmt.Errorf("read the environment block from /proc/self/mem: %w", err)
	}
	defer clear(block)
	prefix := []byte(name + "=")
	var errs []error
	for off := 0; off < len(block); {
		n := bytes.IndexByte(block[off:], 0)
		if n < 0 {
			n = len(block) - off
		}
		entry := block[off : off+n]
		if bytes.HasPrefix(entry, prefix) && len(entry) > len(prefix) {
			val := entry[len(prefix):]
			clear(val)
			if _, err := mem.WriteAt(val, start+int64(off+len(prefix))); err != nil {
				errs = append(errs, fmt.Errorf("zero %s in the environment block: %w", name, err))
			}
		}
		off += n + 1
	}
	return errors.Join(errs...)
}
