package main

// mount.go: the mount command: its flags, the checks made before anything
// starts (arguments, mount point, FUSE access), and the choice between
// serving here (-f, or the background child) and launching the background
// child. Launching is in mount_launch.go, serving in mount_serve.go.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

type mountFlags struct {
	foreground bool
	readOnly   bool
	allowOther bool
	noXattr    bool
	fuseDebug  bool
	cpuProfile string
	passFD     int // background child: passphrase pipe
	readyFD    int // background child: ready pipe
}

func newMountCmd(g *globals) *cobra.Command {
	f := &mountFlags{}
	cmd := &cobra.Command{
		Use:   "mount [-f] [--ro] [--allow-other] [--no-xattr] CIPHERDIR MOUNTPOINT",
		Short: "mount the plain view of a cipher directory",
		Long: `mount checks everything it can, then serves the plain view of CIPHERDIR at
MOUNTPOINT (an existing empty directory) from a background process, and
returns once the mount is ready. The background process logs to
CIPHERDIR/.kmsfs/mount.log. With -f it stays in the foreground and logs to
stderr; SIGINT or SIGTERM unmounts cleanly.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMount(g, f, cmd.Flags(), args[0], args[1], cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.foreground, "foreground", "f", false, "stay in the foreground, log to stderr")
	fl.BoolVar(&f.readOnly, "ro", false, "mount read-only")
	fl.BoolVar(&f.allowOther, "allow-other", false, "let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)")
	fl.BoolVar(&f.noXattr, "no-xattr", false, "refuse extended attributes: saves a kernel round trip per new file and per chown (faster small-file writes, tar)")
	fl.BoolVar(&f.fuseDebug, "fuse-debug", false, "log every FUSE request (debugging)")
	fl.StringVar(&f.cpuProfile, "cpuprofile", "", "with -f: write a CPU profile of the mount to FILE until unmount")
	fl.IntVar(&f.passFD, "passphrase-fd", -1, "internal: read the passphrase from this inherited fd")
	fl.IntVar(&f.readyFD, "ready-fd", -1, "internal: report readiness on this inherited fd")
	for _, n := range []string{"fuse-debug", "cpuprofile", "passphrase-fd", "ready-fd"} {
		_ = fl.MarkHidden(n)
	}
	return cmd
}

// loadCipherDir loads and validates kmsfs.conf with a message that says
// what to do.
func loadCipherDir(dir string) (cipherdir.Config, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return cipherdir.Config{}, fmt.Errorf("%s does not exist: create a cipher directory with kmsfs init %s", dir, dir)
		}
		return cipherdir.Config{}, fmt.Errorf("cipher directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return cipherdir.Config{}, fmt.Errorf("%s is not a kmsfs cipher directory (not a directory)", dir)
	}
	c, err := cipherdir.Load(dir)
	if errors.Is(err, cipherdir.ErrNotCipherDir) {
		return c, fmt.Errorf("%s is not a kmsfs cipher directory: run kmsfs init %s", dir, dir)
	}
	return c, err
}

// mountTarget is what mount resolved from its arguments.
type mountTarget struct {
	cipherDir  string
	mountpoint string
	conf       cipherdir.Config
	spec       providerSpec
	writable   bool // the cipher directory can be written to
}

func resolveMountTarget(g *globals, cipherArg, mntArg string) (mountTarget, error) {
	var t mountTarget
	var err error
	if t.cipherDir, err = canonicalPath(cipherArg); err != nil {
		return t, err
	}
	if t.mountpoint, err = canonicalPath(mntArg); err != nil {
		return t, err
	}
	if t.conf, err = loadCipherDir(t.cipherDir); err != nil {
		return t, err
	}
	mounts, err := readMountinfo()
	if err != nil {
		return t, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	if err := checkMountpoint(t.mountpoint, t.cipherDir, mounts); err != nil {
		return t, err
	}
	if t.spec, err = providerSpecOf(g, t.cipherDir, t.conf); err != nil {
		return t, err
	}
	// access(2) answers EROFS for a read-only mount, EACCES for modes.
	t.writable = unix.Access(t.cipherDir, unix.W_OK) == nil
	return t, nil
}

func runMount(g *globals, f *mountFlags, fl *pflag.FlagSet, cipherArg, mntArg string, out io.Writer) error {
	if err := harden(); err != nil {
		return err
	}
	// The inherited pipes must not leak into fusermount3 or other children.
	for _, fd := range []int{f.passFD, f.readyFD} {
		if fd >= 0 {
			syscall.CloseOnExec(fd)
		}
	}
	child := f.readyFD >= 0
	var ready *os.File
	if child {
		ready = os.NewFile(uintptr(f.readyFD), "ready-pipe")
		if ready == nil {
			return fmt.Errorf("ready pipe fd %d is not open", f.readyFD)
		}
		defer ready.Close()
	}
	report := func(err error) {
		if ready == nil {
			return
		}
		if err != nil {
			fmt.Fprintf(ready, "error: %s\n", oneLine(err.Error()))
		} else {
			fmt.Fprintln(ready, "ready")
		}
		ready.Close()
		ready = nil
	}
	t, err := resolveMountTarget(g, cipherArg, mntArg)
	if err != nil {
		report(err)
		return err
	}
	if err := checkFuseAccess(f.allowOther); err != nil {
		report(err)
		return err
	}
	if !t.writable && !f.readOnly {
		err := fmt.Errorf("%s cannot be written to (a read-only file system or its permissions): mount it with --ro", t.cipherDir)
		report(err)
		return err
	}
	pass := newPassSource(g)
	pass.fd = f.passFD
	if f.cpuProfile != "" {
		if !f.foreground || child {
			return errors.New("--cpuprofile needs -f (a foreground mount)")
		}
		stop, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if f.foreground || child {
		err := serve(g, f, t, pass, report)
		report(err) // no-op once reported
		return err
	}
	return launch(fl, t, pass, out)
}

// checkFuseAccess finds, before going to the background, what would make
// an unprivileged mount fail inside fusermount3, where the reason reaches
// only the mount log: no fusermount3, no access to /dev/fuse, or
// --allow-other without user_allow_other in /etc/fuse.conf.
func checkFuseAccess(allowOther bool) error {
	if os.Geteuid() == 0 {
		return nil // root mounts directly with mount(2)
	}
	if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
		return fmt.Errorf("cannot open /dev/fuse (%v): load the fuse module (modprobe fuse) and make /dev/fuse mode 0666, or mount as root", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return errors.New("fusermount3 not found: install fuse3 (apt-get install fuse3), or mount as root")
	}
	if allowOther && !fuseConfAllowsOther("/etc/fuse.conf") {
		return errors.New("--allow-other needs user_allow_other in /etc/fuse.conf: add that line as root, or mount without --allow-other")
	}
	return nil
}

// fuseConfAllowsOther reports whether a fuse.conf has an uncommented
// user_allow_other line.
func fuseConfAllowsOther(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "user_allow_other" {
			return true
		}
	}
	return false
}

// startCPUProfile profiles the process until stop (performance work: see
// docs/performance.md).
func startCPUProfile(path string) (stop func(), err error) {
	pf, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(pf); err != nil {
		pf.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); pf.Close() }, nil
}

func errMountedElsewhere(dir string) error {
	return fmt.Errorf("%s is already mounted elsewhere (its header index is locked): kmsfs unmount that mount first", dir)
}
