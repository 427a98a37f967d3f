package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// Sizes of the key stores of a mount.
const (
	cacheEntries = 100000
	cacheTTL     = time.Hour
	poolSize     = keymgr.DefaultPoolSize
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
			return runMount(g, f, args[0], args[1], cmd.OutOrStdout())
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

func runMount(g *globals, f *mountFlags, cipherArg, mntArg string, out io.Writer) error {
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
	return launch(g, f, t, pass, out)
}

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

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func errMountedElsewhere(dir string) error {
	return fmt.Errorf("%s is already mounted elsewhere (its header index is locked): kmsfs unmount that mount first", dir)
}

// openIndexHealing opens the index read-write; a corrupt index is moved
// aside and replaced by a fresh one, which files refill from their header
// mirrors as they are opened.
func openIndexHealing(dir string, log *slog.Logger) (*keymgr.Index, error) {
	path := cipherdir.IndexDir(dir)
	ix, err := openCipherIndex(dir, keymgr.IndexOptions{Logger: log})
	switch {
	case err == nil:
		return ix, nil
	case errors.Is(err, keymgr.ErrIndexLocked):
		return nil, errMountedElsewhere(dir)
	case errors.Is(err, keymgr.ErrIndexCorrupt):
		cause := err
		ix, aside, err := replaceIndex(path, log)
		if err != nil {
			return nil, fmt.Errorf("header index %s is corrupt and cannot be replaced (%v): run kmsfs fsck --repair %s", path, err, dir)
		}
		log.Warn("header index corrupt: moved aside, starting a fresh one; files heal from their header mirrors on open; kmsfs fsck --repair rebuilds it at once",
			"index", path, "moved_to", aside, "error", cause)
		return ix, nil
	default:
		return nil, fmt.Errorf("header index %s: %w", path, err)
	}
}

// serve is the mount process: it wires the key stores, mounts, reports
// ready, and on SIGINT/SIGTERM (or an external unmount) tears down in
// order, zeroing keys.
func serve(g *globals, f *mountFlags, t mountTarget, pass passSource, report func(error)) (err error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).
		With("pid", os.Getpid())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func() {
		if err != nil {
			log.Error("mount failed", "cipherdir", t.cipherDir, "mountpoint", t.mountpoint, "error", err)
		}
	}()
	// Signals from here on: a SIGTERM before the mount is ready must not
	// kill the process with keys in memory un-zeroed.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// The mount record goes last, after every key store is closed.
	recordDir := ""
	defer func() {
		if recordDir != "" {
			if rerr := cipherdir.RemoveMountRecord(recordDir, t.mountpoint, os.Getpid()); rerr != nil {
				log.Warn("remove mount record", "error", rerr)
			}
		}
	}()

	so := stackOptions{
		index:        healingIndex,
		cacheEntries: cacheEntries,
		poolSize:     poolSize,
		logger:       log,
		audit:        g.audit,
	}
	if !t.writable {
		// A read-only cipher directory (checked: only with --ro): no
		// index to open or heal (each open reads the file's own
		// header), and no audit log to append to, which is said once.
		so.index, so.auditOptional, so.warn = noIndex, true, os.Stderr
	}
	ks, err := openKeyStack(ctx, t.cipherDir, t.conf, t.spec, pass, so)
	if err != nil {
		return err
	}
	defer func() {
		cancel()
		if cerr := ks.Close(); cerr != nil {
			log.Warn("close key stores", "error", cerr)
		}
	}()
	mgr := ks.mgr
	if t.conf.RewrapEpoch != 0 { // aws: new files carry the rewrap epoch (rewrap.go)
		if err := mgr.SetWrapKey(t.conf.KeyARN, t.conf.RewrapEpoch); err != nil {
			return err
		}
	}
	if !f.readOnly { // a read-only mount creates no file: no data keys ahead
		mgr.Start(ctx)
	}

	names, err := ks.nameCipher(ctx)
	if err != nil {
		return err
	}
	if names != nil {
		defer names.Zero()
	}
	server, err := kfs.Mount(t.mountpoint, kfs.Options{
		CipherDir: t.cipherDir,
		Layout:    t.conf.Layout(),
		Keys:      mgr,
		Names:     names,
		ReadOnly:  f.readOnly,
		Logger:    log,
	}, kfs.MountOptions{AllowOther: f.allowOther, NoXattr: f.noXattr, Debug: f.fuseDebug, FsName: "kmsfs:" + t.cipherDir})
	if err != nil {
		return mountError(t.mountpoint, err)
	}
	rtDir, rerr := cipherdir.RuntimeDir()
	if rerr == nil {
		rec := cipherdir.MountRecord{PID: os.Getpid(), CipherDir: t.cipherDir, Mountpoint: t.mountpoint}
		// The control socket (control.go): rewrap and status while mounted.
		ctl, cerr := startControl(controlOptions{
			Path:      cipherdir.ControlPath(rtDir, t.mountpoint),
			CipherDir: t.cipherDir,
			Conf:      t.conf,
			Provider:  keymgr.NewAuditingProvider(ks.prov.Provider, ks.audit, nil),
			Index:     ks.index,
			Manager:   mgr,
			Reload:    ks.prov.keyringReloader(),
			Trust:     trustFor(ks.prov.pinned, ks.conf.FilesystemID),
			Logger:    log,
		})
		if cerr != nil {
			log.Warn("no control socket: kmsfs rewrap and status cannot reach this mount", "error", cerr)
		} else {
			defer ctl.Close() // before the key stores close
			rec.Control = ctl.path
		}
		rerr = cipherdir.WriteMountRecord(rtDir, rec)
	}
	if rerr != nil {
		log.Warn("no mount record: kmsfs unmount will not wait for this process", "error", rerr)
	} else {
		recordDir = rtDir
	}
	log.Info("mounted", "cipherdir", t.cipherDir, "mountpoint", t.mountpoint, "key_arn", t.conf.KeyARN, "read_only", f.readOnly)
	report(nil)

	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	for {
		select {
		case <-done:
			log.Info("unmounted; closing key stores", "mountpoint", t.mountpoint)
			cancel()
			return nil
		case s := <-sigs:
			log.Info("signal: unmounting", "signal", s.String(), "mountpoint", t.mountpoint)
			go unmountRetry(server.Unmount, t.mountpoint, log)
		}
	}
}

// unmountRetry keeps trying while the mount is busy; the files open in it
// may close soon (go-fuse already retries briefly inside Unmount).
func unmountRetry(unmount func() error, mnt string, log *slog.Logger) {
	const tries = 10
	for i := 1; ; i++ {
		err := unmount()
		if err == nil {
			return
		}
		if i == tries {
			log.Error("unmount failed: still mounted; close the files open in it and run kmsfs unmount",
				"mountpoint", mnt, "error", err)
			return
		}
		log.Warn("unmount failed, retrying", "mountpoint", mnt, "try", i, "error", err)
		time.Sleep(time.Second)
	}
}

func mountError(mnt string, err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, os.ErrPermission) || strings.Contains(msg, "permission denied") || strings.Contains(msg, "Operation not permitted"):
		return fmt.Errorf("mount %s: %v: run as root, or as a user who can open /dev/fuse with fuse3's fusermount3 installed", mnt, err)
	case strings.Contains(msg, "fusermount"):
		return fmt.Errorf("mount %s: fusermount3 refused (%v): its reason is in the mount log", mnt, err)
	}
	return fmt.Errorf("mount %s: %w", mnt, err)
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
