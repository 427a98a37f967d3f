package main

// mount_launch.go: daemonizing. A mount without -f checks what only the
// passphrase can show, then starts itself again as the background mount
// process (a new session, its log in the cipher directory), hands it the
// passphrase and a ready pipe, and waits for it to report.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// launch validates what only a passphrase can show, then starts the mount
// process in a new session and waits for it to report. fl is the mount
// command's parsed flag set (its own flags and the global ones), from
// which the child's flags are derived (childArgs).
func launch(fl *pflag.FlagSet, t mountTarget, pass passSource, out io.Writer) error {
	var pp []byte
	if t.spec.kind == cipherdir.ProviderLocal {
		var err error
		if _, err := os.Stat(t.spec.keyringPath); errors.Is(err, os.ErrNotExist) {
			return keyringError(t.spec.keyringPath, keymgr.ErrKeyringNotFound)
		}
		if pp, err = pass.get(t.spec.keyringPath, false); err != nil {
			return err
		}
		defer crypto.Zero(pp)
		pass = passSource{fixed: pp, fd: -1}
	}
	// Fail here, before anything in the cipher directory changes, on a
	// wrong passphrase, a missing keyring, a disabled key or a held index.
	p, err := openProvider(t.spec, pass)
	if err != nil {
		return err
	}
	_, err = describeUsable(context.Background(), p, t.conf.KeyARN, p.where())
	p.Close()
	if err != nil {
		return err
	}
	if ix, err := openCipherIndex(t.cipherDir, keymgr.IndexOptions{ReadOnly: true}); err == nil {
		ix.Close()
	} else if errors.Is(err, keymgr.ErrIndexLocked) {
		return errMountedElsewhere(t.cipherDir)
	}

	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the kmsfs executable: %w", err)
	}
	passR, passW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	defer passR.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		passW.Close()
		return fmt.Errorf("pipe: %w", err)
	}
	defer readyR.Close()
	// A passphrase is far below the pipe buffer (64 KiB): write and close
	// before the child starts, so it reads it whole and sees EOF.
	_, werr := passW.Write(pp)
	passW.Close()
	if werr != nil {
		readyW.Close()
		return fmt.Errorf("pass the passphrase to the mount process: %w", werr)
	}
	var logf *os.File
	logPath := cipherdir.MountLogPath(t.cipherDir)
	if t.writable {
		// In .kmsfs, reached without following a symlink.
		logf, err = cipherdir.OpenMeta(t.cipherDir, "mount.log", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	} else {
		// A read-only cipher directory (--ro): the log goes to the
		// runtime directory, next to the mount record.
		rt, rerr := cipherdir.RuntimeDir()
		if rerr != nil {
			readyW.Close()
			return rerr
		}
		logPath = strings.TrimSuffix(cipherdir.RecordPath(rt, t.mountpoint), ".json") + ".log"
		logf, err = os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		readyW.Close()
		return fmt.Errorf("open mount log: %w", err)
	}
	cmd := exec.Command(exe, childArgs(fl, t)...)
	cmd.Dir = "/"
	cmd.Env = withoutEnv(os.Environ(), envPassphrase)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{passR, readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("start the mount process: %w", err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	line, rerr := bufio.NewReader(readyR).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ready":
		fmt.Fprintf(out, "mounted %s at %s (pid %d; log %s)\n", t.cipherDir, t.mountpoint, pid, logPath)
		return nil
	case strings.HasPrefix(line, "error: "):
		return errors.New(strings.TrimPrefix(line, "error: "))
	default:
		if rerr == nil {
			rerr = errors.New(line)
		}
		return fmt.Errorf("the mount process (pid %d) exited without mounting (%v): see %s", pid, rerr, logPath)
	}
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// childSets are the flags launch sets for the background mount process
// itself, whatever the user gave: it stays in the foreground of its own
// session and reads the passphrase and reports readiness on the pipes
// launch hands it as fds 3 and 4.
var childSets = map[string]string{
	"foreground":    "true",
	"passphrase-fd": "3",
	"ready-fd":      "4",
}

// childDrops are the flags the user may set that the background mount
// process must not get, each with the reason.
var childDrops = map[string]string{
	"passphrase-file": "read here; the passphrase reaches the child on fd 3",
	"cpuprofile":      "only with -f, refused before launch",
}

// childResolved are the flags whose value launch has already resolved
// (from the flag, the environment, kmsfs.conf and the trust record): the
// child gets the resolved value, so it uses the key store the parent
// checked, and an absolute path, since it runs in /. An empty value is
// not passed.
func childResolved(t mountTarget) map[string]string {
	return map[string]string{
		"keyring":      t.spec.keyringPath,
		"aws-region":   t.spec.aws.region,
		"aws-endpoint": t.spec.aws.endpoint,
		"aws-profile":  t.spec.aws.profile,
	}
}

// childArgs is the command line of the background mount process: the
// flags launch sets (childSets), the resolved ones (childResolved), then
// every other flag the user set on this command line, mount's own and
// the global ones alike (fl.Visit), as given, unless childDrops names
// it; a new flag reaches the child without a line here.
func childArgs(fl *pflag.FlagSet, t mountTarget) []string {
	args := []string{"mount"}
	for _, name := range slices.Sorted(maps.Keys(childSets)) {
		args = append(args, "--"+name+"="+childSets[name])
	}
	resolved := childResolved(t)
	for _, name := range slices.Sorted(maps.Keys(resolved)) {
		if v := resolved[name]; v != "" {
			args = append(args, "--"+name+"="+v)
		}
	}
	fl.Visit(func(f *pflag.Flag) {
		_, set := childSets[f.Name]
		_, res := resolved[f.Name]
		_, drop := childDrops[f.Name]
		if set || res || drop {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				args = append(args, "--"+f.Name+"="+v)
			}
			return
		}
		args = append(args, "--"+f.Name+"="+f.Value.String())
	})
	return append(args, "--", t.cipherDir, t.mountpoint)
}
