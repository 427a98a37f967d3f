package integration

// model_test.go: the randomized model test. Seeded random sequences of
// POSIX operations run against the mount and against a plain reference
// directory on the same kind of disk; after every operation the results
// (errno, byte counts, bytes read) must agree, the touched paths and open
// handles must agree (type, mode, size, link count, content; the
// modification time right after the model sets it, at the mount's
// resolution), and every checkEvery operations the worker's whole subtree
// is compared.
//
// Several workers run at once, each in its own subdirectory with its own
// seed. The model runs on both kinds of filesystem (subtests
// encrypted-names and plaintext-names; the second gets a quarter of the
// operations), and its namespace holds long names (an encoding longer
// than 255 bytes: a side file) and names of 4-byte UTF-8 characters. A
// failure prints the kind, the seed and the number of operations; replay
// it alone with
//
//	go test ./integration -run 'TestModel/encrypted-names$' -args -model.seed=N -model.ops=M

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	modelSeed    = flag.Int64("model.seed", 0, "TestModel: run one worker with this seed (0: several workers, seeds from the clock)")
	modelOps     = flag.Int("model.ops", 0, "TestModel: operations in total on each kind of filesystem (0: 160000 on encrypted-names and a quarter on plaintext-names, a tenth of both with -short)")
	modelWorkers = flag.Int("model.workers", 4, "TestModel: concurrent workers when -model.seed is not given")
)

const (
	modelChunk      = 4096
	modelCheckEvery = 500 // full subtree comparison every this many ops
	modelMaxHandles = 4
)

// modelNames is the namespace a worker draws paths from: few enough that
// operations collide (rename onto existing files, link to taken names,
// rmdir of non-empty directories).
var modelNames = []string{
	"a", "b", "c", "d", "e",
	"d0/a", "d0/b", "d0/c",
	"d1/a", "d1/b",
	"d0/d2/a", "d0/d2/b",
	modelLong, "d0/" + modelLong, "d1/" + modelUTF8,
}

// modelLong (200 bytes) and modelUTF8 (255 bytes, 4-byte characters) are
// long names with encrypted names: stored as kmsfs.long.<hash> with a side
// file, which renames, links and unlinks keep in step.
var (
	modelLong = strings.Repeat("long-", 40)
	modelUTF8 = strings.Repeat("\U0001F600", 63) + "xyz"
)

var modelDirs = []string{"d0", "d1", "d0/d2", "d3"}

// modelHandle is one open file on both sides.
type modelHandle struct {
	ref, mnt *os.File
	path     string // the name it was opened by (it may since have moved or gone)
	append   bool
}

type modelWorker struct {
	t        *testing.T
	timeRes  time.Duration // the mount's timestamp resolution
	seed     int64
	rng      *rand.Rand
	ref, mnt string // the worker's two roots
	handles  []*modelHandle
	op       int
	lastOps  []string // the last operations, for the failure report
	failed   bool
	msg      string
}

func TestModel(t *testing.T) {
	eachNameKind(t, func(t *testing.T, k nameKind) {
		total := *modelOps
		if total == 0 {
			total = 160000
			if testing.Short() {
				total = 16000
			}
			if !k.encrypted {
				total /= 4
			}
		}
		testModel(t, k, total)
	})
}

func testModel(t *testing.T, k nameKind, total int) {
	f := newFixture(t)
	f.initKind(k, "--chunk-size", fmt.Sprint(modelChunk))
	f.mount()
	timeRes := mountTimeResolution(t, f.mnt)

	var seeds []int64
	if *modelSeed != 0 {
		seeds = []int64{*modelSeed}
	} else {
		base := time.Now().UnixNano() & 0xffffffffffff
		for i := 0; i < max(*modelWorkers, 1); i++ {
			seeds = append(seeds, base+int64(i))
		}
	}
	perWorker := total / len(seeds)
	start := time.Now()
	var wg sync.WaitGroup
	workers := make([]*modelWorker, len(seeds))
	for i, seed := range seeds {
		w := &modelWorker{
			t:       t,
			timeRes: timeRes,
			seed:    seed,
			rng:     rand.New(rand.NewSource(seed)),
			ref:     filepath.Join(f.dir, "ref", fmt.Sprintf("w%d", i)),
			mnt:     filepath.Join(f.mnt, fmt.Sprintf("w%d", i)),
		}
		workers[i] = w
		for _, d := range []string{w.ref, w.mnt} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(perWorker)
		}()
	}
	wg.Wait()
	ops := 0
	for _, w := range workers {
		ops += w.op
		if w.failed {
			t.Errorf("model worker with seed %d failed at operation %d: %s\nlast operations:\n  %s\nreplay: go test ./integration -run 'TestModel/%s$' -args -model.seed=%d -model.ops=%d",
				w.seed, w.op, w.msg, strings.Join(w.lastOps, "\n  "), k.name, w.seed, w.op)
		}
	}
	t.Logf("%d operations by %d workers (seeds %v) in %s", ops, len(workers), seeds, time.Since(start).Round(time.Millisecond))
	if !t.Failed() {
		for _, w := range workers {
			w.closeAll()
			w.compareTree()
			if w.failed {
				t.Errorf("seed %d: final comparison: %s", w.seed, w.msg)
			}
		}
	}
	f.unmount()
	// The cipher directory is consistent after all of it.
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after the model run: exit %d\n%s%s", code, out, stderr)
	}
}

// mountTimeResolution finds the finest timestamp resolution the mount
// keeps (a power of ten nanoseconds, at most a second): it sets an mtime
// with nine significant fractional digits and reads it back.
func mountTimeResolution(t *testing.T, mnt string) time.Duration {
	t.Helper()
	p := filepath.Join(mnt, "time-resolution-probe")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	set := time.Unix(1700000000, 123456789)
	if err := os.Chtimes(p, set, set); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	for res := time.Nanosecond; res <= time.Second; res *= 10 {
		if fi.ModTime().Truncate(res).Equal(set.Truncate(res)) {
			t.Logf("mount timestamp resolution: %v", res)
			return res
		}
	}
	t.Fatalf("mtime set to %v reads back as %v: not even whole seconds kept", set, fi.ModTime())
	return 0
}

// modelTime is a random timestamp between 2001 and 2033 with a random
// nanosecond part.
func (w *modelWorker) modelTime() time.Time {
	return time.Unix(1e9+w.rng.Int63n(1e9), w.rng.Int63n(1e9))
}

func (w *modelWorker) run(n int) {
	defer func() {
		if p := recover(); p != nil {
			w.fail("panic: %v", p)
		}
		w.closeAll()
	}()
	for w.op = 0; w.op < n && !w.failed; w.op++ {
		w.step()
		if !w.failed && w.op%modelCheckEvery == modelCheckEvery-1 {
			w.compareTree()
		}
	}
}

func (w *modelWorker) fail(format string, args ...any) {
	if !w.failed {
		w.failed = true
		w.msg = fmt.Sprintf(format, args...)
	}
}

func (w *modelWorker) logOp(format string, args ...any) {
	s := fmt.Sprintf("#%d ", w.op) + fmt.Sprintf(format, args...)
	if len(w.lastOps) == 12 {
		w.lastOps = w.lastOps[1:]
	}
	w.lastOps = append(w.lastOps, s)
}

// errnoOf reduces an error to its errno (0: none, -1: not an errno).
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, io.EOF) {
		return 0
	}
	return syscall.Errno(^uintptr(0))
}

// same checks two results of one operation agree.
func (w *modelWorker) same(what string, refErr, mntErr error) bool {
	if errnoOf(refErr) != errnoOf(mntErr) {
		w.fail("%s: reference gave %v, mount gave %v", what, refErr, mntErr)
		return false
	}
	return true
}

// both runs fn on the reference and the mount with the path under each root.
func (w *modelWorker) both(what string, fn func(root string) error) bool {
	return w.same(what, fn(w.ref), fn(w.mnt))
}

func (w *modelWorker) name() string { return modelNames[w.rng.Intn(len(modelNames))] }
func (w *modelWorker) dir() string  { return modelDirs[w.rng.Intn(len(modelDirs))] }

// offset picks a plain offset near a chunk boundary most of the time.
func (w *modelWorker) offset() int64 {
	switch w.rng.Intn(4) {
	case 0:
		return int64(w.rng.Intn(4 * modelChunk))
	default:
		return max(0, int64(w.rng.Intn(4)*modelChunk+w.rng.Intn(9)-4))
	}
}

func (w *modelWorker) size() int {
	switch w.rng.Intn(5) {
	case 0:
		return 1 + w.rng.Intn(16)
	case 1:
		return modelChunk + w.rng.Intn(9) - 4
	case 2:
		return 2*modelChunk + w.rng.Intn(200)
	default:
		return 1 + w.rng.Intn(modelChunk)
	}
}

func (w *modelWorker) data(n int) []byte {
	b := make([]byte, n)
	w.rng.Read(b)
	return b
}

func (w *modelWorker) step() {
	touched := []string{}
	var h *modelHandle
	switch op := w.rng.Intn(100); {
	case op < 8: // create (or truncate) a file with content
		p := w.name()
		b := w.data(w.rng.Intn(3 * modelChunk))
		excl := w.rng.Intn(4) == 0
		w.logOp("create %s %d bytes excl=%v", p, len(b), excl)
		flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		if excl {
			flags = os.O_WRONLY | os.O_CREATE | os.O_EXCL
		}
		w.both("create "+p, func(root string) error {
			fh, err := os.OpenFile(filepath.Join(root, p), flags, 0o644)
			if err != nil {
				return err
			}
			_, err = fh.Write(b)
			if cerr := fh.Close(); err == nil {
				err = cerr
			}
			return err
		})
		touched = append(touched, p)
	case op < 28: // write at an offset, by path or through a handle
		off, b := w.offset(), w.data(w.size())
		if h = w.pickHandle(); h != nil && w.rng.Intn(3) > 0 {
			w.logOp("write handle(%s) off %d len %d append=%v", h.path, off, len(b), h.append)
			var n1, n2 int
			var e1, e2 error
			if h.append {
				n1, e1 = h.ref.Write(b)
				n2, e2 = h.mnt.Write(b)
			} else {
				n1, e1 = h.ref.WriteAt(b, off)
				n2, e2 = h.mnt.WriteAt(b, off)
			}
			if w.same("write handle", e1, e2) && n1 != n2 {
				w.fail("write handle: reference wrote %d, mount %d", n1, n2)
			}
		} else {
			h = nil
			p := w.name()
			w.logOp("write %s off %d len %d", p, off, len(b))
			w.both("write "+p, func(root string) error {
				fh, err := os.OpenFile(filepath.Join(root, p), os.O_WRONLY, 0)
				if err != nil {
					return err
				}
				_, err = fh.WriteAt(b, off)
				if cerr := fh.Close(); err == nil {
					err = cerr
				}
				return err
			})
			touched = append(touched, p)
		}
	case op < 36: // truncate up or down
		size := int64(w.rng.Intn(5 * modelChunk))
		if w.rng.Intn(3) == 0 {
			size = int64(w.rng.Intn(5)*modelChunk + w.rng.Intn(5) - 2)
			size = max(size, 0)
		}
		if h = w.pickHandle(); h != nil && w.rng.Intn(2) == 0 {
			w.logOp("ftruncate handle(%s) %d", h.path, size)
			w.same("ftruncate", h.ref.Truncate(size), h.mnt.Truncate(size))
		} else {
			h = nil
			p := w.name()
			w.logOp("truncate %s %d", p, size)
			w.both("truncate "+p, func(root string) error { return os.Truncate(filepath.Join(root, p), size) })
			touched = append(touched, p)
		}
	case op < 44: // rename a file or directory
		var from, to string
		if w.rng.Intn(4) == 0 {
			from, to = w.dir(), w.dir()
			if w.rng.Intn(2) == 0 {
				to = w.name()
			}
		} else {
			from, to = w.name(), w.name()
		}
		w.logOp("rename %s %s", from, to)
		w.both("rename "+from+" "+to, func(root string) error {
			return os.Rename(filepath.Join(root, from), filepath.Join(root, to))
		})
		touched = append(touched, from, to)
	case op < 48: // hard link
		from, to := w.name(), w.name()
		w.logOp("link %s %s", from, to)
		w.both("link "+from+" "+to, func(root string) error {
			return os.Link(filepath.Join(root, from), filepath.Join(root, to))
		})
		touched = append(touched, from, to)
	case op < 54: // unlink (perhaps while open)
		p := w.name()
		w.logOp("unlink %s", p)
		w.both("unlink "+p, func(root string) error { return syscall.Unlink(filepath.Join(root, p)) })
		touched = append(touched, p)
	case op < 58: // mkdir
		d := w.dir()
		w.logOp("mkdir %s", d)
		w.both("mkdir "+d, func(root string) error { return syscall.Mkdir(filepath.Join(root, d), 0o755) })
		touched = append(touched, d)
	case op < 61: // rmdir
		d := w.dir()
		w.logOp("rmdir %s", d)
		w.both("rmdir "+d, func(root string) error { return syscall.Rmdir(filepath.Join(root, d)) })
		touched = append(touched, d)
	case op < 65: // chmod
		p := w.name()
		mode := []uint32{0o600, 0o644, 0o755, 0o640, 0o400, 0o4755}[w.rng.Intn(6)]
		if h = w.pickHandle(); h != nil && w.rng.Intn(2) == 0 {
			// Linked or unlinked: the kernel sends fchmod's SETATTR
			// without the handle; fs finds an unlinked inode by number.
			w.logOp("fchmod handle(%s) %o", h.path, mode)
			w.same("fchmod", syscall.Fchmod(int(h.ref.Fd()), mode), syscall.Fchmod(int(h.mnt.Fd()), mode))
		} else {
			h = nil
			w.logOp("chmod %s %o", p, mode)
			w.both("chmod "+p, func(root string) error { return syscall.Chmod(filepath.Join(root, p), mode) })
			touched = append(touched, p)
		}
	case op < 67: // set the modification time, by path or through a handle
		mtime := w.modelTime()
		if h = w.pickHandle(); h != nil && w.rng.Intn(2) == 0 {
			// utimes on /proc/self/fd/N, microseconds (linked or not).
			mtime = mtime.Truncate(time.Microsecond)
			tv := []unix.Timeval{unix.NsecToTimeval(mtime.UnixNano()), unix.NsecToTimeval(mtime.UnixNano())}
			w.logOp("futimes handle(%s) %v", h.path, mtime)
			if w.same("futimes", unix.Futimes(int(h.ref.Fd()), tv), unix.Futimes(int(h.mnt.Fd()), tv)) {
				w.compareHandleMtime(h, mtime)
			}
		} else {
			h = nil
			p := w.name()
			w.logOp("chtimes %s %v", p, mtime)
			if w.both("chtimes "+p, func(root string) error { return os.Chtimes(filepath.Join(root, p), mtime, mtime) }) {
				w.compareMtime(p, mtime)
			}
			touched = append(touched, p)
		}
	case op < 71: // open a handle
		if len(w.handles) >= modelMaxHandles {
			w.closeHandle(w.rng.Intn(len(w.handles)))
		}
		p := w.name()
		flags := os.O_RDWR
		app := w.rng.Intn(5) == 0
		if app {
			flags |= os.O_APPEND
		}
		if w.rng.Intn(3) == 0 {
			flags |= os.O_CREATE
		}
		w.logOp("open %s append=%v create=%v", p, app, flags&os.O_CREATE != 0)
		rf, e1 := os.OpenFile(filepath.Join(w.ref, p), flags, 0o644)
		mf, e2 := os.OpenFile(filepath.Join(w.mnt, p), flags, 0o644)
		if w.same("open "+p, e1, e2) && e1 == nil {
			h = &modelHandle{ref: rf, mnt: mf, path: p, append: app}
			w.handles = append(w.handles, h)
		} else {
			for _, f := range []*os.File{rf, mf} {
				if f != nil {
					f.Close()
				}
			}
		}
		touched = append(touched, p)
	case op < 75: // close a handle (reopen comes with the next open)
		if len(w.handles) > 0 {
			i := w.rng.Intn(len(w.handles))
			w.logOp("close handle(%s)", w.handles[i].path)
			w.closeHandle(i)
		}
	case op < 79: // fsync
		if h = w.pickHandle(); h != nil {
			w.logOp("fsync handle(%s)", h.path)
			w.same("fsync", h.ref.Sync(), h.mnt.Sync())
		}
	case op < 85: // read through a handle
		if h = w.pickHandle(); h != nil {
			off, n := w.offset(), w.size()
			w.logOp("pread handle(%s) off %d len %d", h.path, off, n)
			b1, b2 := make([]byte, n), make([]byte, n)
			n1, e1 := h.ref.ReadAt(b1, off)
			n2, e2 := h.mnt.ReadAt(b2, off)
			if w.same("pread", e1, e2) && (n1 != n2 || !bytes.Equal(b1[:n1], b2[:n2])) {
				w.fail("pread handle(%s) off %d: reference %d bytes, mount %d bytes (equal prefix %v)", h.path, off, n1, n2, bytes.Equal(b1[:min(n1, n2)], b2[:min(n1, n2)]))
			}
		}
	case op < 91: // mmap write
		p := w.name()
		off, b := w.offset(), w.data(1+w.rng.Intn(2*modelChunk))
		w.logOp("mmap write %s off %d len %d", p, off, len(b))
		w.both("mmap write "+p, func(root string) error { return mmapWrite(filepath.Join(root, p), off, b) })
		touched = append(touched, p)
	case op < 94: // symlink
		p, target := w.name(), w.name()
		w.logOp("symlink %s -> %s", p, target)
		w.both("symlink "+p, func(root string) error { return os.Symlink(target, filepath.Join(root, p)) })
		touched = append(touched, p)
	default: // whole-file read by path, and a directory listing
		d := w.dir()
		w.logOp("readdir %s", d)
		w.compareListing(d)
		touched = append(touched, w.name())
	}
	if w.failed {
		return
	}
	for _, p := range touched {
		w.comparePath(p)
	}
	if h != nil {
		w.compareHandle(h)
	}
}

// mmapWrite maps the file MAP_SHARED and copies b at off, clipped to the
// file's size (a store past EOF would be SIGBUS), then msyncs.
func mmapWrite(p string, off int64, b []byte) error {
	fh, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if !fi.Mode().IsRegular() || size == 0 {
		return nil
	}
	off %= size
	n := min(int64(len(b)), size-off)
	m, err := syscall.Mmap(int(fh.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return err
	}
	copy(m[off:off+n], b)
	err = unix.Msync(m, unix.MS_SYNC)
	if uerr := syscall.Munmap(m); err == nil {
		err = uerr
	}
	return err
}

func (w *modelWorker) pickHandle() *modelHandle {
	if len(w.handles) == 0 {
		return nil
	}
	return w.handles[w.rng.Intn(len(w.handles))]
}

func (w *modelWorker) closeHandle(i int) {
	h := w.handles[i]
	w.handles = append(w.handles[:i], w.handles[i+1:]...)
	w.same("close handle("+h.path+")", h.ref.Close(), h.mnt.Close())
}

func (w *modelWorker) closeAll() {
	for len(w.handles) > 0 {
		w.closeHandle(0)
	}
}

// modelEntry is what is compared of one path.
type modelEntry struct {
	exists bool
	mode   fs.FileMode
	size   int64
	nlink  uint64
	link   string
	data   []byte
	err    syscall.Errno
}

func describe(p string, readContent bool) modelEntry {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return modelEntry{err: errnoOf(err)}
	}
	e := modelEntry{exists: true, size: st.Size, nlink: uint64(st.Nlink)}
	fi, err := os.Lstat(p)
	if err != nil {
		return modelEntry{err: errnoOf(err)}
	}
	e.mode = fi.Mode()
	switch {
	case fi.Mode().IsRegular():
		if readContent {
			b, err := os.ReadFile(p)
			e.data = b
			if err != nil {
				e.err = errnoOf(err)
			}
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		e.link, _ = os.Readlink(p)
		e.size = 0 // symlink sizes are the target length on both; kept out
	case fi.IsDir():
		e.size = 0 // directory sizes are the backing filesystem's business
	}
	return e
}

func (w *modelWorker) compareEntry(rel string, a, b modelEntry) {
	switch {
	case a.exists != b.exists || a.err != b.err:
		w.fail("%s: reference exists=%v err=%v, mount exists=%v err=%v", rel, a.exists, a.err, b.exists, b.err)
	case !a.exists:
	case a.mode != b.mode:
		w.fail("%s: mode: reference %v, mount %v", rel, a.mode, b.mode)
	case a.size != b.size:
		w.fail("%s: size: reference %d, mount %d", rel, a.size, b.size)
	case a.nlink != b.nlink:
		w.fail("%s: link count: reference %d, mount %d", rel, a.nlink, b.nlink)
	case a.link != b.link:
		w.fail("%s: symlink: reference %q, mount %q", rel, a.link, b.link)
	case !bytes.Equal(a.data, b.data):
		w.fail("%s: content differs (%d vs %d bytes, first difference at %d)", rel, len(a.data), len(b.data), firstDiff(a.data, b.data))
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func (w *modelWorker) comparePath(rel string) {
	w.compareEntry(rel, describe(filepath.Join(w.ref, rel), true), describe(filepath.Join(w.mnt, rel), true))
}

// compareHandle compares what an open handle sees (the file may be
// unlinked): size, link count, content.
func (w *modelWorker) compareHandle(h *modelHandle) {
	var s1, s2 syscall.Stat_t
	e1, e2 := syscall.Fstat(int(h.ref.Fd()), &s1), syscall.Fstat(int(h.mnt.Fd()), &s2)
	if !w.same("fstat handle("+h.path+")", e1, e2) || e1 != nil {
		return
	}
	if s1.Size != s2.Size || s1.Nlink != s2.Nlink || s1.Mode != s2.Mode {
		w.fail("fstat handle(%s): reference size %d nlink %d mode %o, mount size %d nlink %d mode %o",
			h.path, s1.Size, s1.Nlink, s1.Mode, s2.Size, s2.Nlink, s2.Mode)
		return
	}
	b1, b2 := make([]byte, s1.Size), make([]byte, s2.Size)
	n1, r1 := h.ref.ReadAt(b1, 0)
	n2, r2 := h.mnt.ReadAt(b2, 0)
	if w.same("read handle("+h.path+")", r1, r2) && !bytes.Equal(b1[:n1], b2[:n2]) {
		w.fail("read handle(%s): content differs (%d vs %d bytes, first difference at %d)", h.path, n1, n2, firstDiff(b1[:n1], b2[:n2]))
	}
}

// compareMtime compares the modification times of rel (followed, as
// chtimes set them) right after the model set them to want.
func (w *modelWorker) compareMtime(rel string, want time.Time) {
	f1, e1 := os.Stat(filepath.Join(w.ref, rel))
	f2, e2 := os.Stat(filepath.Join(w.mnt, rel))
	if !w.same("stat after chtimes "+rel, e1, e2) || e1 != nil {
		return
	}
	w.checkMtime(rel, want, f1.ModTime(), f2.ModTime())
}

func (w *modelWorker) compareHandleMtime(h *modelHandle, want time.Time) {
	f1, e1 := h.ref.Stat()
	f2, e2 := h.mnt.Stat()
	if !w.same("fstat after futimes handle("+h.path+")", e1, e2) || e1 != nil {
		return
	}
	w.checkMtime("handle("+h.path+")", want, f1.ModTime(), f2.ModTime())
}

// checkMtime: both sides hold the time the model set, at the mount's
// resolution (the reference keeps at least as much).
func (w *modelWorker) checkMtime(what string, want, ref, mnt time.Time) {
	want = want.Truncate(w.timeRes)
	if !ref.Truncate(w.timeRes).Equal(want) || !mnt.Truncate(w.timeRes).Equal(want) {
		w.fail("%s: mtime: set %v, reference %v, mount %v (resolution %v)", what, want, ref, mnt, w.timeRes)
	}
}

func (w *modelWorker) compareListing(rel string) {
	l1, e1 := listNames(filepath.Join(w.ref, rel))
	l2, e2 := listNames(filepath.Join(w.mnt, rel))
	if w.same("readdir "+rel, e1, e2) && strings.Join(l1, "/") != strings.Join(l2, "/") {
		w.fail("readdir %s: reference %v, mount %v", rel, l1, l2)
	}
}

func listNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, err
}

// compareTree compares the worker's whole subtree.
func (w *modelWorker) compareTree() {
	walk := func(root string) map[string]modelEntry {
		out := map[string]modelEntry{}
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			rel, rerr := filepath.Rel(root, p)
			if rerr != nil {
				w.fail("tree: %s is not under %s: %v", p, root, rerr)
				return filepath.SkipAll
			}
			if err != nil {
				// Keyed by the relative path, as the entries are, so
				// the same error on both sides compares equal.
				out[rel] = modelEntry{err: errnoOf(err)}
				return nil
			}
			out[rel] = describe(p, true)
			return nil
		})
		return out
	}
	a, b := walk(w.ref), walk(w.mnt)
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "." && a[k].err == 0 && b[k].err == 0 {
			continue // the two roots themselves, both readable
		}
		w.compareEntry("tree:"+k, a[k], b[k])
		if w.failed {
			return
		}
	}
}
