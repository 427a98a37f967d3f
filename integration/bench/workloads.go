package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// A metric is one number a workload reports. Higher is better unless
// lowerBetter (seconds, memory).
type metric struct {
	key, title, unit string
	lowerBetter      bool
	kmsfsOnly        bool // only kmsfs mounts report it
}

var metrics = []metric{
	{key: "seqwrite", title: "seq write 1 MiB blocks + fsync", unit: "MiB/s"},
	{key: "seqread", title: "seq read 1 MiB blocks, cold cache", unit: "MiB/s"},
	{key: "randread", title: "random read 4 KiB (fio)", unit: "IOPS"},
	{key: "randwrite", title: "random write 4 KiB (fio, end fsync)", unit: "IOPS"},
	{key: "smallcreate", title: "small files: create 4 KiB + syncfs", unit: "files/s"},
	{key: "smallstat", title: "small files: stat", unit: "files/s"},
	{key: "smallread", title: "small files: read, cold cache", unit: "files/s"},
	{key: "smalldelete", title: "small files: delete", unit: "files/s"},
	{key: "tarextract", title: "tar extract Go src + syncfs", unit: "s", lowerBetter: true},
	{key: "tarread", title: "read the tree back, cold cache", unit: "s", lowerBetter: true},
	{key: "tarremove", title: "remove the tree", unit: "s", lowerBetter: true},
	{key: "rss", title: "mount process peak RSS (VmHWM) after tar", unit: "MiB", lowerBetter: true},
	{key: "locked", title: "mount process locked memory (VmLck)", unit: "KiB", lowerBetter: true},
	{key: "kmscalls", title: "KMS Decrypt calls while re-reading cached files", unit: "calls", lowerBetter: true, kmsfsOnly: true},
}

// sizes are the workload sizes: full, or QUICK for development.
type sizes struct {
	seq       int64 // bytes
	rand      int64 // bytes
	fioTime   time.Duration
	smallN    int
	smallSize int
	tarSrc    string // directory under GOROOT made into the tarball
}

var fullSizes = sizes{seq: 512 << 20, rand: 256 << 20, fioTime: 10 * time.Second, smallN: 5000, smallSize: 4096, tarSrc: "src"}
var quickSizes = sizes{seq: 64 << 20, rand: 32 << 20, fioTime: 3 * time.Second, smallN: 500, smallSize: 4096, tarSrc: "src/net"}

// runWorkloads runs every workload on dir (the mount point, or a plain
// directory) and records the results in res. kms, if not nil, counts the
// KMS calls made so far by the mount.
func (b *bench) runWorkloads(m *mounted, res map[string]float64) error {
	dir := m.dir
	sz := b.sizes
	step := func(name string) { b.logf("  %s: %s", m.sys.name, name) }
	want := func(group string) bool {
		return b.want(group) && (m.sys.groups == nil || slices.Contains(m.sys.groups, group))
	}

	if want("seq") {
		if err := b.seq(m, res); err != nil {
			return err
		}
	}
	if want("rand") {
		step("random read/write (fio)")
		rnd := filepath.Join(dir, "rand.bin")
		if _, err := writeFile(rnd, sz.rand, b.block); err != nil {
			return fmt.Errorf("random: lay out: %w", err)
		}
		b.dropCaches()
		var err error
		if res["randread"], err = b.fio(rnd, "randread", sz); err != nil {
			return err
		}
		if res["randwrite"], err = b.fio(rnd, "randwrite", sz); err != nil {
			return err
		}
		if err := os.Remove(rnd); err != nil {
			return err
		}
	}
	if want("small") {
		step("small files")
		if err := b.smallFiles(m, res); err != nil {
			return fmt.Errorf("small files: %w", err)
		}
	}
	if want("tar") {
		step("tar")
		if err := b.tarTree(m, res); err != nil {
			return fmt.Errorf("tar: %w", err)
		}
	}
	if m.pid > 0 {
		hwm, lck, err := procMem(m.pid)
		if err != nil {
			return err
		}
		res["rss"] = float64(hwm) / 1024
		res["locked"] = float64(lck)
	}
	return nil
}

// seq writes a file sequentially, then reads it back with a cold cache.
func (b *bench) seq(m *mounted, res map[string]float64) error {
	dir := m.dir
	sz := b.sizes
	b.logf("  %s: sequential write", m.sys.name)
	seq := filepath.Join(dir, "seq.bin")
	d, err := writeFile(seq, sz.seq, b.block)
	if err != nil {
		return fmt.Errorf("sequential write: %w", err)
	}
	res["seqwrite"] = mibps(sz.seq, d)
	b.dropCaches()
	b.logf("  %s: sequential read", m.sys.name)
	d, err = readFile(seq, sz.seq)
	if err != nil {
		return fmt.Errorf("sequential read: %w", err)
	}
	res["seqread"] = mibps(sz.seq, d)
	return os.Remove(seq)
}

// writeFile writes size bytes to a new file at path in 1 MiB blocks and
// fsyncs it; the time includes the fsync and close.
func writeFile(path string, size int64, block []byte) (time.Duration, error) {
	t0 := time.Now()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	for done := int64(0); done < size; {
		n := min(int64(len(block)), size-done)
		if _, err := f.Write(block[:n]); err != nil {
			f.Close()
			return 0, err
		}
		done += n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// readFile reads the file in 1 MiB blocks and checks its length.
func readFile(path string, size int64) (time.Duration, error) {
	t0 := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var got int64
	for {
		n, err := f.Read(buf)
		got += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if got != size {
		return 0, fmt.Errorf("read %d bytes of %s, want %d", got, path, size)
	}
	return time.Since(t0), nil
}

func mibps(bytes int64, d time.Duration) float64 {
	return float64(bytes) / (1 << 20) / d.Seconds()
}

// fio runs one 4 KiB random job on path with the psync engine through the
// page cache (no O_DIRECT: it is what applications do, and every FUSE
// filesystem here then gets the same kernel caching it asks for). The
// write job ends with an fsync, inside the timed run, so a filesystem that
// only parks writes in a cache pays for writing them out.
func (b *bench) fio(path, rw string, sz sizes) (float64, error) {
	args := []string{
		"--name=" + rw, "--filename=" + path, "--rw=" + rw, "--bs=4k",
		"--size=" + strconv.FormatInt(sz.rand, 10), "--ioengine=psync",
		"--runtime=" + strconv.Itoa(int(sz.fioTime.Seconds())), "--time_based",
		"--invalidate=1", "--randrepeat=1", "--output-format=json",
	}
	if rw == "randwrite" {
		args = append(args, "--end_fsync=1")
	}
	cmd := exec.Command("fio", args...)
	cmd.Dir = filepath.Dir(path) // fio may drop files in its cwd
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return 0, fmt.Errorf("fio %s: %w", rw, err)
	}
	var r struct {
		Jobs []struct {
			JobRuntime int64 `json:"job_runtime"` // ms
			Read       struct {
				TotalIOs int64 `json:"total_ios"`
			} `json:"read"`
			Write struct {
				TotalIOs int64 `json:"total_ios"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &r); err != nil || len(r.Jobs) != 1 || r.Jobs[0].JobRuntime <= 0 {
		return 0, fmt.Errorf("fio %s: unexpected output (%v): %.200s", rw, err, out)
	}
	j := r.Jobs[0]
	return float64(j.Read.TotalIOs+j.Write.TotalIOs) / (float64(j.JobRuntime) / 1000), nil
}

// smallFiles creates, stats, reads (cold) and deletes smallN files of
// smallSize bytes in one directory, one at a time.
func (b *bench) smallFiles(m *mounted, res map[string]float64) error {
	sz := b.sizes
	dir := filepath.Join(m.dir, "small")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	names := make([]string, sz.smallN)
	for i := range names {
		names[i] = filepath.Join(dir, fmt.Sprintf("f%05d", i))
	}
	data := b.block[:sz.smallSize]
	rate := func(d time.Duration) float64 { return float64(sz.smallN) / d.Seconds() }

	t0 := time.Now()
	for _, n := range names {
		f, err := os.OpenFile(n, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if err := syncfs(dir); err != nil {
		return err
	}
	res["smallcreate"] = rate(time.Since(t0))

	t0 = time.Now()
	var st unix.Stat_t
	for _, n := range names {
		if err := unix.Lstat(n, &st); err != nil {
			return err
		}
		if st.Size != int64(sz.smallSize) {
			return fmt.Errorf("%s: size %d, want %d", n, st.Size, sz.smallSize)
		}
	}
	res["smallstat"] = rate(time.Since(t0))

	b.dropCaches()
	kms0 := m.kmsCalls()
	t0 = time.Now()
	buf := make([]byte, sz.smallSize+1)
	for _, n := range names {
		f, err := os.Open(n)
		if err != nil {
			return err
		}
		got, err := io.ReadFull(f, buf)
		f.Close()
		if got != sz.smallSize || !errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%s: read %d bytes (%v), want %d", n, got, err, sz.smallSize)
		}
	}
	res["smallread"] = rate(time.Since(t0))
	kmsSmall := m.kmsCalls() - kms0

	t0 = time.Now()
	for _, n := range names {
		if err := os.Remove(n); err != nil {
			return err
		}
	}
	res["smalldelete"] = rate(time.Since(t0))
	if m.audit != "" {
		res["kmscalls"] += float64(kmsSmall)
	}
	return os.Remove(dir)
}

// tarTree extracts the Go source tarball, reads every file of the tree
// back with a cold cache, and removes it.
func (b *bench) tarTree(m *mounted, res map[string]float64) error {
	tree := filepath.Join(m.dir, "tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	cmd := exec.Command("tar", "-xf", b.tarball, "-C", tree)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tar -xf: %v: %s", err, out)
	}
	if err := syncfs(tree); err != nil {
		return err
	}
	res["tarextract"] = time.Since(t0).Seconds()

	b.dropCaches()
	kms0 := m.kmsCalls()
	t0 = time.Now()
	var files, bytes int64
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		for {
			n, err := f.Read(buf)
			bytes += int64(n)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
		}
		files++
		return nil
	})
	if err != nil {
		return err
	}
	if files != b.tarFiles || bytes != b.tarBytes {
		return fmt.Errorf("read back %d files, %d bytes; the tarball has %d, %d", files, bytes, b.tarFiles, b.tarBytes)
	}
	res["tarread"] = time.Since(t0).Seconds()
	if m.audit != "" {
		res["kmscalls"] += float64(m.kmsCalls() - kms0)
	}

	t0 = time.Now()
	if err := os.RemoveAll(tree); err != nil {
		return err
	}
	res["tarremove"] = time.Since(t0).Seconds()
	return nil
}

// syncfs flushes the filesystem holding path: a filesystem that keeps
// writes in a cache pays for writing them here, inside the timed step.
func syncfs(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// randomBlock is 1 MiB of random bytes (incompressible, never a hole).
func randomBlock() []byte {
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}
