package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// unmountWait bounds how long unmount waits for the mount process to exit
// (it closes the index and zeroes its keys first).
const unmountWait = 10 * time.Second

func newUnmountCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unmount MOUNTPOINT",
		Short: "unmount a kmsfs mount and wait for its process to exit",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runUnmount(args[0], cmd.OutOrStdout())
		},
	}
}

func runUnmount(arg string, out io.Writer) error {
	mnt, err := canonicalPath(arg)
	if err != nil {
		return err
	}
	mounts, err := readMountinfo()
	if err != nil {
		return fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	rtDir, rtErr := cipherdir.RuntimeDir()
	var rec cipherdir.MountRecord
	hasRec := false
	if rtErr == nil {
		if r, err := cipherdir.ReadMountRecord(rtDir, mnt); err == nil {
			rec, hasRec = r, true
		}
	}
	e, mounted := findMount(mounts, mnt)
	if !mounted {
		if hasRec && !processAlive(rec.PID) {
			cipherdir.RemoveMountRecord(rtDir, mnt, rec.PID)
		}
		return fmt.Errorf("%s is not a kmsfs mount (nothing is mounted there)", mnt)
	}
	if e.fstype != fstypeKmsfs && !(hasRec && strings.HasPrefix(e.fstype, "fuse")) {
		return fmt.Errorf("%s is not a kmsfs mount (it is a %s mount): use umount", mnt, e.fstype)
	}
	if err := unmountOnce(mnt); err != nil {
		return err
	}
	if hasRec {
		if !waitExit(rec.PID, unmountWait) {
			return fmt.Errorf("unmounted %s, but its kmsfs process %d is still running after %s: see %s", mnt, rec.PID, unmountWait, cipherdir.MountLogPath(rec.CipherDir))
		}
		cipherdir.RemoveMountRecord(rtDir, mnt, rec.PID)
	}
	fmt.Fprintf(out, "unmounted %s\n", mnt)
	return nil
}

func busyError(mnt string) error {
	return fmt.Errorf("%s is busy: close the files open in it (see `fuser -vm %s`)", mnt, mnt)
}

// unmountOnce unmounts mnt: umount(2) as root, fusermount3 -u otherwise.
func unmountOnce(mnt string) error {
	if os.Geteuid() == 0 {
		err := syscall.Unmount(mnt, 0)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EBUSY):
			return busyError(mnt)
		case errors.Is(err, syscall.EINVAL):
			return fmt.Errorf("%s is not a kmsfs mount (nothing is mounted there)", mnt)
		}
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return fmt.Errorf("unmount %s: fusermount3 not found: install fuse3 (apt-get install fuse3)", mnt)
		}
	}
	outb, err := exec.Command(bin, "-u", mnt).CombinedOutput()
	if err == nil {
		return nil
	}
	msg := oneLine(string(outb))
	switch {
	case strings.Contains(msg, "busy"):
		return busyError(mnt)
	case strings.Contains(msg, "not found in") || strings.Contains(msg, "Invalid argument"):
		return fmt.Errorf("%s is not a kmsfs mount (nothing is mounted there)", mnt)
	case strings.Contains(msg, "Operation not permitted") || strings.Contains(msg, "Permission denied"):
		return fmt.Errorf("unmount %s: %s: only the user who mounted it (or root) can unmount it", mnt, msg)
	}
	return fmt.Errorf("unmount %s: %s -u: %v %s", mnt, bin, err, msg)
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// waitExit polls until pid has exited or d has passed.
func waitExit(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !processAlive(pid) || isZombie(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isZombie: a mount process started by a test (not in a new session) may
// linger as a zombie until its parent reaps it; it has exited all the same.
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}
