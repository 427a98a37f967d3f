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
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// launch validates what only a passphrase can show, then starts the mount
// process in a new session and waits for it to report.
func launch(g *globals, f *mountFlags, t mountTarget, pass passSource, out io.Writer) error {
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
	args := []string{"mount", "--foreground", "--passphrase-fd", "3", "--ready-fd", "4"}
	args = append(args, "--audit-max-size", keymgr.AuditSize(g.audit.MaxSize).String(), "--audit-keep", fmt.Sprint(g.audit.Keep))
	if t.spec.keyringPath != "" {
		args = append(args, "--keyring", t.spec.keyringPath)
	}
	for flag, v := range map[string]string{"--aws-region": t.spec.aws.region, "--aws-endpoint": t.spec.aws.endpoint, "--aws-profile": t.spec.aws.profile} {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	if f.readOnly {
		args = append(args, "--ro")
	}
	if f.allowOther {
		args = append(args, "--allow-other")
	}
	if f.noXattr {
		args = append(args, "--no-xattr")
	}
	if f.fuseDebug {
		args = append(args, "--fuse-debug")
	}
	args = append(args, "--", t.cipherDir, t.mountpoint)
	cmd := exec.Command(exe, args...)
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
