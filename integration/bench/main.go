// Command bench measures kmsfs against plain disk, a FUSE passthrough
// without crypto (go-fuse's loopback example), gocryptfs and securefs, on
// the same workloads in one run on one machine, and prints the medians with
// kmsfs's speed relative to each peer (docs/performance.md).
//
// The kmsfs column is the default filesystem (`kmsfs init`: file names
// encrypted); kmsfs-plainnames is the same kmsfs initialised with
// --plaintext-names, so that the targets can hold the cost of name
// encryption to 0.9x of the old layout, in the same run.
//
// Every system is mounted fresh for each round; rounds alternate the order
// of the systems (forward, then backward) so that drift in the machine's
// load falls on all of them. Run it as root (it drops the page cache with
// /proc/sys/vm/drop_caches and mounts directly):
//
//	go run ./integration/bench            # full: about 12 minutes
//	QUICK=1 go run ./integration/bench    # small sizes, for development
//
// Each system, in each round, runs on its own fresh ext4 filesystem (-fs
// ext4, the default): a sparse image file in the -dir directory, made with
// mkfs.ext4's defaults (so with a journal), attached to a loop device with
// direct I/O (the I/O reaches the disk under -dir, and pages are not cached
// twice) and mounted on the system's work dir, -dir/<system>. All systems
// thus start from the same state, whatever ran before them: on an ext4
// without a journal, for one, the inode allocator skips the inodes deleted
// in the last minutes, and creates in a directory churned by the previous
// system run up to 10x slower. -fs dir runs every system directly in -dir,
// as before; it is also the fallback when not root or when mkfs.ext4 or
// losetup is missing.
//
// Flags and environment: -rounds (ROUNDS, default 2), -dir (BENCH_DIR,
// default /var/tmp/kmsfs-bench: it must be on a real disk, not tmpfs),
// -fs ext4|dir (BENCH_FS, default ext4), -only a,b (BENCH_ONLY), -workloads
// seq,rand,small,tar (BENCH_WORKLOADS), -kmsfs BIN (default: built from
// this module), -cpuprofile DIR (kmsfs mounts write a CPU profile there),
// -gobench FILE (output of the crypto micro-benchmarks, for the crypto
// target), -mount-args "--no-xattr" (BENCH_KMSFS_MOUNT_ARGS: extra flags
// for every kmsfs mount, to measure a mount option).
//
// It is a tool, not a test: nothing imports it and `go test` has nothing
// to run in it.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cacheEntries is the DEK cache capacity of a kmsfs mount
// (cmd/kmsfs/mount.go), to express its locked memory per key.
const cacheEntries = 100000

type bench struct {
	dir        string
	fs         string // "ext4": a fresh ext4 per system and round; "dir": directly in dir
	dioOff     bool   // a loop device came up without direct I/O
	imgSize    int64  // bytes of the last ext4 image
	sizes      sizes
	rounds     int
	kmsfs      string
	kmsfsBase  string // -kmsfs-base: an earlier kmsfs binary, the kmsfs-base column
	profileDir string
	profiles   int
	goBench    string
	block      []byte
	tarball    string
	tarFiles   int64
	tarBytes   int64
	canDrop    bool
	dropWarned bool
	lkURL      string
	delayURL   string    // the delaying proxy in front of local-kms (kmsfs-aws-10ms)
	delayCmd   *exec.Cmd // its process
	lkCmd      *exec.Cmd
	verbose    bool
	workloads  []string // empty: all
	mountArgs  []string // extra kmsfs mount flags (A/B of mount options)
}

// want reports whether workload group w (seq, rand, small, tar) runs.
func (b *bench) want(w string) bool {
	return len(b.workloads) == 0 || slices.Contains(b.workloads, w)
}

func main() {
	if spec := os.Getenv(loopbackEnv); spec != "" {
		if err := serveLoopbackNoPassthrough(spec); err != nil {
			fmt.Fprintln(os.Stderr, "loopback-nopt:", err)
			os.Exit(1)
		}
		return
	}
	if spec := os.Getenv(delayProxyEnv); spec != "" {
		if err := serveDelayProxy(spec); err != nil {
			fmt.Fprintln(os.Stderr, "delay proxy:", err)
			os.Exit(1)
		}
		return
	}
	b := &bench{}
	quick := os.Getenv("QUICK") != "" && os.Getenv("QUICK") != "0"
	rounds := 2
	if v, err := strconv.Atoi(os.Getenv("ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	dir := os.Getenv("BENCH_DIR")
	if dir == "" {
		dir = "/var/tmp/kmsfs-bench"
	}
	flag.BoolVar(&quick, "quick", quick, "small sizes for development (env QUICK=1)")
	flag.IntVar(&b.rounds, "rounds", rounds, "rounds per system, alternating order (env ROUNDS)")
	flag.StringVar(&b.dir, "dir", dir, "work directory on the disk to measure (env BENCH_DIR)")
	fsMode := os.Getenv("BENCH_FS")
	if fsMode == "" {
		fsMode = "ext4"
	}
	flag.StringVar(&b.fs, "fs", fsMode, "where each system runs: ext4 (a fresh ext4 in a loop device, per system and round) or dir (directly in -dir) (env BENCH_FS)")
	only := flag.String("only", os.Getenv("BENCH_ONLY"), "comma-separated systems to run (plain,loopback,loopback-nopt,gocryptfs,securefs,kmsfs,kmsfs-plainnames,kmsfs-base,kmsfs-aws,kmsfs-aws-10ms)")
	flag.StringVar(&b.kmsfs, "kmsfs", "", "kmsfs binary (default: go build ./cmd/kmsfs)")
	flag.StringVar(&b.kmsfsBase, "kmsfs-base", os.Getenv("BENCH_KMSFS_BASE"), "an earlier kmsfs binary to measure beside this one as kmsfs-base, with its own init defaults (env BENCH_KMSFS_BASE; skipped when empty)")
	flag.StringVar(&b.profileDir, "cpuprofile", "", "directory for CPU profiles of the kmsfs mounts")
	flag.StringVar(&b.goBench, "gobench", "", "file with `go test -bench` output of ./crypto (crypto target)")
	flag.BoolVar(&b.verbose, "v", true, "log each step on stderr")
	mountArgs := flag.String("mount-args", os.Getenv("BENCH_KMSFS_MOUNT_ARGS"), "extra flags for kmsfs mount, space-separated, e.g. --no-xattr (env BENCH_KMSFS_MOUNT_ARGS)")
	wl := flag.String("workloads", os.Getenv("BENCH_WORKLOADS"), "comma-separated workload groups to run: seq,rand,small,tar (default all)")
	flag.Parse()
	b.mountArgs = strings.Fields(*mountArgs)
	if *wl != "" {
		b.workloads = strings.Split(*wl, ",")
	}
	b.sizes = fullSizes
	if quick {
		b.sizes = quickSizes
	}
	if err := b.run(*only, quick); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (b *bench) logf(format string, args ...any) {
	if b.verbose {
		fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
	}
}

func (b *bench) run(only string, quick bool) error {
	start := time.Now()
	var err error
	if b.dir, err = filepath.Abs(b.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return err
	}
	// The real path, as /proc/self/mountinfo and the loop devices' backing
	// files name it.
	if b.dir, err = filepath.EvalSymlinks(b.dir); err != nil {
		return err
	}
	switch b.fs {
	case "ext4":
		if why := ext4Unavailable(); why != "" {
			b.logf("warning: -fs ext4: %s: falling back to -fs dir (every system directly in %s)", why, b.dir)
			b.fs = "dir"
		}
	case "dir":
	default:
		return fmt.Errorf("-fs %q: want ext4 or dir", b.fs)
	}
	if b.profileDir != "" {
		if b.profileDir, err = filepath.Abs(b.profileDir); err != nil {
			return err
		}
		if err := os.MkdirAll(b.profileDir, 0o755); err != nil {
			return err
		}
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return fmt.Errorf("fio not found: apt-get install -y fio")
	}
	if err := b.buildKmsfs(); err != nil {
		return err
	}
	if err := b.makeTarball(); err != nil {
		return err
	}
	b.block = randomBlock()
	b.canDrop = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) == nil
	loadBefore := loadavg()

	var syss []*system
	skipped := map[string]string{}
	for _, s := range systems() {
		if only != "" && !slices.Contains(strings.Split(only, ","), s.name) {
			continue
		}
		if why := s.check(b); why != "" {
			skipped[s.name] = why
			b.logf("skip %s: %s", s.name, why)
			continue
		}
		syss = append(syss, s)
	}
	defer func() {
		if b.lkCmd != nil {
			b.lkCmd.Process.Kill()
		}
		if b.delayCmd != nil {
			b.delayCmd.Process.Kill()
			b.delayCmd.Wait()
		}
	}()

	// results[system][metric] holds one value per round.
	results := map[string]map[string][]float64{}
	failed := map[string]string{}
	for r := 0; r < b.rounds; r++ {
		order := slices.Clone(syss)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range order {
			if failed[s.name] != "" {
				continue
			}
			b.logf("round %d/%d: %s", r+1, b.rounds, s.name)
			res, err := b.runOne(s)
			if err != nil {
				failed[s.name] = err.Error()
				b.logf("%s failed: %v", s.name, err)
				continue
			}
			if results[s.name] == nil {
				results[s.name] = map[string][]float64{}
			}
			for k, v := range res {
				results[s.name][k] = append(results[s.name][k], v)
			}
			b.logf("  %s: %s", s.name, fmtRaw(res))
		}
	}
	if raw, err := json.MarshalIndent(results, "", " "); err == nil {
		_ = os.WriteFile(filepath.Join(b.dir, "results.json"), raw, 0o644)
	}
	b.report(os.Stdout, syss, results, skipped, failed, quick, loadBefore, loadavg(), time.Since(start))
	return nil
}

// runOne mounts s fresh (on a fresh ext4 with -fs ext4), runs the
// workloads, unmounts and cleans up, on errors too.
func (b *bench) runOne(s *system) (res map[string]float64, err error) {
	work := filepath.Join(b.dir, s.name)
	if err := b.cleanWork(work); err != nil {
		return nil, err
	}
	defer func() {
		if cerr := b.cleanWork(work); cerr != nil && err == nil {
			res, err = nil, cerr
		}
	}()
	if b.fs == "ext4" {
		if err := b.freshExt4(work); err != nil {
			return nil, err
		}
	}
	m, err := s.mount(b, work)
	if err != nil {
		return nil, err
	}
	m.sys = s
	res = map[string]float64{}
	werr := b.runWorkloads(m, res)
	uerr := m.unmount()
	if werr != nil {
		if m.log != nil && m.log.Len() > 0 {
			werr = fmt.Errorf("%w; mount log: %.2000s", werr, m.log.String())
		}
		return nil, werr
	}
	if uerr != nil {
		return nil, uerr
	}
	return res, nil
}

// imgSuffix names the ext4 image of work dir w: w + imgSuffix.
const imgSuffix = ".ext4img"

// cleanWork removes a previous instance and leaves work an empty
// directory: it unmounts a leftover mount on work/mnt, then a leftover
// ext4 on work, detaches the loop devices of its image and removes the
// image (left by an aborted run, whichever -fs it had).
func (b *bench) cleanWork(work string) error {
	mnt := filepath.Join(work, "mnt")
	if isMountpoint(mnt) {
		exec.Command("umount", "-l", mnt).Run()
	}
	for i := 0; isMountpoint(work); i++ {
		if i == 10 {
			return fmt.Errorf("%s is still a mount point after 10 umounts", work)
		}
		if err := unix.Unmount(work, 0); err != nil {
			// Busy (a mount process still holding files in it): detach
			// it; the kernel releases the loop device with its last user.
			b.logf("warning: umount %s: %v: detaching it (umount -l)", work, err)
			if err := unix.Unmount(work, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("umount -l %s: %w", work, err)
			}
		}
	}
	img := work + imgSuffix
	for _, dev := range loopDevices(img) {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			// Not fatal: the next image is a new file, and a busy device
			// is detached when released (losetup -d sets autoclear).
			b.logf("warning: losetup -d %s (%s): %v: %s", dev, img, err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.Remove(img); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	return os.MkdirAll(work, 0o755)
}

// ext4Unavailable says why -fs ext4 cannot run here ("" when it can).
func ext4Unavailable() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	for _, t := range []string{"mkfs.ext4", "losetup"} {
		if _, err := exec.LookPath(t); err != nil {
			return t + " not found"
		}
	}
	return ""
}

// imageSize is the size of the sparse ext4 image of one system: room for
// every workload's files at once, with their encrypted copies' overhead,
// and a margin.
func (b *bench) imageSize() int64 {
	sz := b.sizes
	n := sz.seq + sz.rand + 3*b.tarBytes + int64(sz.smallN)*int64(max(sz.smallSize, 4096)) + 1<<30
	n = max(n, 2<<30)
	return (n + 1<<20 - 1) &^ (1<<20 - 1)
}

// freshExt4 makes a fresh ext4 filesystem in a sparse image file next to
// work (work + imgSuffix), attaches it to a loop device with direct I/O and
// mounts it on work. cleanWork undoes it.
func (b *bench) freshExt4(work string) error {
	img := work + imgSuffix
	size := b.imageSize()
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ext4 image: %w", err)
	}
	// Initialize the inode tables and the journal now, so that no
	// ext4lazyinit thread writes them during the workloads.
	mkfs := exec.Command("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img)
	if out, err := mkfs.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %v: %s", img, err, out)
	}
	var stderr strings.Builder
	losetup := exec.Command("losetup", "--direct-io=on", "-f", "--show", img)
	losetup.Stderr = &stderr
	out, err := losetup.Output()
	dev := strings.TrimSpace(string(out))
	if err != nil || !strings.HasPrefix(dev, "/dev/") {
		return fmt.Errorf("losetup --direct-io=on -f --show %s: %v: %s %s", img, err, out, stderr.String())
	}
	if dio, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/dio"); err != nil || strings.TrimSpace(string(dio)) != "1" {
		if !b.dioOff {
			b.logf("warning: %s: direct I/O is off (%s): pages are cached twice", dev, strings.TrimSpace(stderr.String()))
		}
		b.dioOff = true
	}
	if err := unix.Mount(dev, work, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, work, err)
	}
	b.imgSize = size
	b.logf("  fresh ext4 on %s: %s, %d MiB sparse image", work, dev, size>>20)
	return nil
}

// loopDevices lists the loop devices whose backing file is img, deleted
// or not (losetup -j needs the file to exist).
func loopDevices(img string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)") == img {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return devs
}

func (b *bench) buildKmsfs() error {
	if b.kmsfs != "" {
		var err error
		b.kmsfs, err = filepath.Abs(b.kmsfs)
		return err
	}
	b.kmsfs = filepath.Join(b.dir, "bin", "kmsfs")
	b.logf("go build -o %s ./cmd/kmsfs", b.kmsfs)
	cmd := exec.Command("go", "build", "-o", b.kmsfs, "./cmd/kmsfs")
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build kmsfs: %v: %s", err, out)
	}
	return nil
}

func moduleRoot() string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "."
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// makeTarball makes the tar of the Go source tree once per work dir.
func (b *bench) makeTarball() error {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return fmt.Errorf("go env GOROOT: %w", err)
	}
	goroot := strings.TrimSpace(string(out))
	src := filepath.Join(goroot, b.sizes.tarSrc)
	b.tarball = filepath.Join(b.dir, "gosrc-"+strings.ReplaceAll(b.sizes.tarSrc, "/", "_")+"-"+runtime.Version()+".tar")
	if _, err := os.Stat(b.tarball); err != nil {
		b.logf("tar -cf %s -C %s %s", b.tarball, goroot, b.sizes.tarSrc)
		tmp := b.tarball + ".tmp"
		if out, err := exec.Command("tar", "-cf", tmp, "-C", goroot, b.sizes.tarSrc).CombinedOutput(); err != nil {
			return fmt.Errorf("make tarball: %v: %s", err, out)
		}
		if err := os.Rename(tmp, b.tarball); err != nil {
			return err
		}
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b.tarFiles++
		b.tarBytes += fi.Size()
		return nil
	})
}

// dropCaches writes back and drops the page cache, dentries and inodes.
func (b *bench) dropCaches() {
	exec.Command("sync").Run()
	if !b.canDrop {
		if !b.dropWarned {
			b.logf("warning: cannot drop caches (not root): cold-cache numbers are warm")
			b.dropWarned = true
		}
		return
	}
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func fmtRaw(res map[string]float64) string {
	var parts []string
	for _, m := range metrics {
		if v, ok := res[m.key]; ok {
			parts = append(parts, fmt.Sprintf("%s=%s", m.key, fmtNum(v)))
		}
	}
	return strings.Join(parts, " ")
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtNum(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// machine describes the machine for the report.
func (b *bench) machine() []string {
	cpu := "?"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	disk := "?"
	if out, err := exec.Command("df", "--output=source,fstype", b.dir).Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		f := strings.Fields(lines[len(lines)-1])
		disk = strings.Join(f, " ")
		var notes []string
		dev := filepath.Base(f[0])
		if rot, err := os.ReadFile("/sys/block/" + dev + "/queue/rotational"); err == nil {
			if strings.TrimSpace(string(rot)) == "0" {
				notes = append(notes, "non-rotational")
			} else {
				notes = append(notes, "rotational")
			}
		}
		// A journaled ext3/ext4 has a /proc/fs/jbd2/<dev>-<ino> directory.
		if _, err := os.Stat("/proc/fs/ext4/" + dev); err == nil && len(f) > 1 && f[1] == "ext4" {
			if j, _ := filepath.Glob("/proc/fs/jbd2/" + dev + "-*"); len(j) == 0 {
				notes = append(notes, "no journal")
			} else {
				notes = append(notes, "journal")
			}
		}
		if len(notes) > 0 {
			disk += " (" + strings.Join(notes, ", ") + ")"
		}
	}
	if b.fs == "ext4" {
		dio := "with direct I/O"
		if b.dioOff {
			dio = "(direct I/O requested but off: pages cached twice)"
		}
		disk += fmt.Sprintf("; each system on a fresh ext4 (mkfs.ext4 defaults, journal) in a loop device %s on a %d MiB sparse image file on that disk, work dir %s", dio, b.imgSize>>20, b.dir)
	} else {
		disk += "; every system directly in the work dir " + b.dir + " (-fs dir)"
	}
	mem := "?"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if m := regexp.MustCompile(`MemTotal:\s+(\d+)`).FindSubmatch(data); m != nil {
			kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
			mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return []string{
		fmt.Sprintf("CPU: %s, %d cores (nproc); memory %s", cpu, runtime.NumCPU(), mem),
		"kernel: " + strings.TrimSpace(string(kernel)),
		"disk: " + disk,
		"go: " + runtime.Version() + "; " + toolVersions(),
	}
}

func toolVersions() string {
	var parts []string
	for _, t := range [][]string{{"gocryptfs", "-version"}, {"securefs", "version"}, {"fio", "--version"}} {
		out, err := exec.Command(t[0], t[1:]...).CombinedOutput()
		if err != nil {
			continue
		}
		line := strings.TrimSpace(strings.Split(string(out), "\n")[0])
		if t[0] == "gocryptfs" {
			line = strings.Split(line, ";")[0]
		}
		if t[0] == "securefs" {
			line = "securefs (Debian " + debVersion("securefs") + ")"
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, "; ")
}

func debVersion(pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", pkg).Output()
	if err != nil {
		return "?"
	}
	return string(out)
}
