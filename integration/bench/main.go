// Command bench measures kmsfs against plain disk, a FUSE passthrough
// without crypto (go-fuse's loopback example), gocryptfs and securefs, on
// the same workloads in one run on one machine, and prints the medians with
// kmsfs's speed relative to each peer (docs/performance.md).
//
// Every system is mounted fresh for each round; rounds alternate the order
// of the systems (forward, then backward) so that drift in the machine's
// load falls on all of them. Run it as root (it drops the page cache with
// /proc/sys/vm/drop_caches and mounts directly):
//
//	go run ./integration/bench            # full: about 12 minutes
//	QUICK=1 go run ./integration/bench    # small sizes, for development
//
// Flags and environment: -rounds (ROUNDS, default 2), -dir (BENCH_DIR,
// default /var/tmp/kmsfs-bench: it must be on a real disk, not tmpfs),
// -only a,b (BENCH_ONLY), -kmsfs BIN (default: built from this module),
// -cpuprofile DIR (kmsfs mounts write a CPU profile there), -gobench FILE
// (output of the crypto micro-benchmarks, for the crypto target).
//
// It is a tool, not a test: nothing imports it and `go test` has nothing
// to run in it.
package main

import (
	"bufio"
	"encoding/json"
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
)

// cacheEntries is the DEK cache capacity of a kmsfs mount
// (cmd/kmsfs/mount.go), to express its locked memory per key.
const cacheEntries = 100000

type bench struct {
	dir        string
	sizes      sizes
	rounds     int
	kmsfs      string
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
	lkCmd      *exec.Cmd
	verbose    bool
	workloads  []string // empty: all
}

// want reports whether workload group w (seq, rand, small, tar) runs.
func (b *bench) want(w string) bool {
	return len(b.workloads) == 0 || slices.Contains(b.workloads, w)
}

func main() {
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
	only := flag.String("only", os.Getenv("BENCH_ONLY"), "comma-separated systems to run (plain,loopback,gocryptfs,securefs,kmsfs,kmsfs-aws)")
	flag.StringVar(&b.kmsfs, "kmsfs", "", "kmsfs binary (default: go build ./cmd/kmsfs)")
	flag.StringVar(&b.profileDir, "cpuprofile", "", "directory for CPU profiles of the kmsfs mounts")
	flag.StringVar(&b.goBench, "gobench", "", "file with `go test -bench` output of ./crypto (crypto target)")
	flag.BoolVar(&b.verbose, "v", true, "log each step on stderr")
	wl := flag.String("workloads", os.Getenv("BENCH_WORKLOADS"), "comma-separated workload groups to run: seq,rand,small,tar (default all)")
	flag.Parse()
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

// runOne mounts s fresh, runs the workloads and unmounts.
func (b *bench) runOne(s *system) (map[string]float64, error) {
	work := filepath.Join(b.dir, s.name)
	if err := cleanWork(work); err != nil {
		return nil, err
	}
	m, err := s.mount(b, work)
	if err != nil {
		return nil, err
	}
	m.sys = s
	res := map[string]float64{}
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
	if err := cleanWork(work); err != nil {
		return nil, err
	}
	return res, nil
}

// cleanWork removes a previous instance, unmounting a leftover mount.
func cleanWork(work string) error {
	mnt := filepath.Join(work, "mnt")
	if isMountpoint(mnt) {
		exec.Command("umount", "-l", mnt).Run()
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	return os.MkdirAll(work, 0o755)
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
		disk = strings.Join(strings.Fields(lines[len(lines)-1]), " ")
		dev := filepath.Base(strings.Fields(lines[len(lines)-1])[0])
		if rot, err := os.ReadFile("/sys/block/" + dev + "/queue/rotational"); err == nil {
			if strings.TrimSpace(string(rot)) == "0" {
				disk += " (non-rotational)"
			} else {
				disk += " (rotational)"
			}
		}
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
		"disk: " + disk + ", work dir " + b.dir,
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
