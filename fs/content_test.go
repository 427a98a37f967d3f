package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

const marker = "KMSFS-PLAINTEXT-MARKER"

// markedContent is n bytes of pattern with the marker written every 1000
// bytes, so a leak of any chunk shows.
func markedContent(n int, seed byte) []byte {
	b := pattern(n, seed)
	for off := 0; off+len(marker) <= n; off += 1000 {
		copy(b[off:], marker)
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	return b
}

func checkContent(t *testing.T, path string, want []byte) {
	t.Helper()
	got := readFile(t, path)
	if !bytes.Equal(got, want) {
		t.Errorf("%s: got %d bytes, want %d (equal prefix %d)", filepath.Base(path), len(got), len(want), commonPrefix(got, want))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if fi.Size() != int64(len(want)) {
		t.Errorf("%s: stat size got %d, want %d", filepath.Base(path), fi.Size(), len(want))
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

func TestRoundTrip(t *testing.T) {
	e := newTestFS(t)
	sizes := []int{0, 1, 4095, 4096, 4097, 10 << 20}
	want := map[string][]byte{}
	for i, n := range sizes {
		name := filepath.Join("f" + string(rune('a'+i)))
		want[name] = markedContent(n, byte(i))
		if err := os.WriteFile(e.p(name), want[name], 0o644); err != nil {
			t.Fatalf("WriteFile %d: %v", n, err)
		}
		checkContent(t, e.p(name), want[name])
	}
	e.remount()
	for name, w := range want {
		checkContent(t, e.p(name), w)
		raw, err := os.ReadFile(e.c(name))
		if err != nil {
			t.Fatal(err)
		}
		if got, wantSize := int64(len(raw)), e.layout.CipherSize(int64(len(w))); got != wantSize {
			t.Errorf("%s: cipher size got %d, want %d", name, got, wantSize)
		}
		if bytes.Contains(raw, []byte(marker)) {
			t.Errorf("%s: cipher file contains the plaintext marker", name)
		}
	}
}

func TestHiddenNames(t *testing.T) {
	e := newTestFSPlain(t)
	if err := os.WriteFile(e.p("visible"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(e.mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
	}
	if len(names) != 1 || names[0] != "visible" {
		t.Errorf("readdir: got %q, want [visible]", names)
	}
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"stat conf", func() error { _, err := os.Lstat(e.p("kmsfs.conf")); return err }, syscall.ENOENT},
		{"stat .kmsfs", func() error { _, err := os.Lstat(e.p(".kmsfs")); return err }, syscall.ENOENT},
		{"create conf", func() error { return os.WriteFile(e.p("kmsfs.conf"), nil, 0o644) }, syscall.EPERM},
		{"mkdir .kmsfs", func() error { return os.Mkdir(e.p(".kmsfs"), 0o755) }, syscall.EPERM},
		{"symlink conf", func() error { return os.Symlink("x", e.p("kmsfs.conf")) }, syscall.EPERM},
		{"rename onto conf", func() error { return os.Rename(e.p("visible"), e.p("kmsfs.conf")) }, syscall.EPERM},
		{"remove conf", func() error { return os.Remove(e.p("kmsfs.conf")) }, syscall.ENOENT},
	}
	for _, tc := range tests {
		if err := tc.op(); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	// A subdirectory may hold those names: only the root's are kmsfs's.
	if err := os.Mkdir(e.p("sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.p("sub/kmsfs.conf"), []byte("y"), 0o644); err != nil {
		t.Errorf("create sub/kmsfs.conf: %v", err)
	}
	if _, err := os.Stat(e.c("kmsfs.conf")); err != nil {
		t.Errorf("cipher kmsfs.conf: %v", err)
	}
}

func TestOpenFlags(t *testing.T) {
	e := newTestFS(t)
	f := e.p("f")
	if err := os.WriteFile(f, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	// O_APPEND: every write goes to the end, whatever the offset.
	a, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.OpenFile(f, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte(" world")); err != nil {
		t.Fatal(err)
	}
	if _, err := other.WriteAt([]byte("!!"), 11); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte(" again")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	other.Close()
	checkContent(t, f, []byte("hello world!! again"))

	// O_TRUNC empties the file.
	tr, err := os.OpenFile(f, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, f, nil)
	if _, err := tr.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	tr.Close()
	checkContent(t, f, []byte("new"))

	// O_EXCL refuses an existing file and creates a new one.
	if _, err := os.OpenFile(f, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("O_EXCL on existing: got %v, want %v", err, syscall.EEXIST)
	}
	x, err := os.OpenFile(e.p("excl"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatalf("O_EXCL new: %v", err)
	}
	x.Close()
	// O_CREAT without O_EXCL on an existing file opens it.
	c, err := os.OpenFile(f, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	n, _ := c.Read(buf)
	c.Close()
	if got := string(buf[:n]); got != "new" {
		t.Errorf("O_CREAT existing: got %q, want %q", got, "new")
	}
	// Read-only, write-only, read-write.
	for _, flag := range []int{os.O_RDONLY, os.O_WRONLY, os.O_RDWR} {
		h, err := os.OpenFile(f, flag, 0)
		if err != nil {
			t.Errorf("open flag %d: %v", flag, err)
			continue
		}
		h.Close()
	}
	fi, err := os.Stat(e.p("excl"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("mode: got %o, want %o", got, 0o600)
	}
}

func TestTruncate(t *testing.T) {
	e := newTestFS(t)
	tests := []struct {
		name     string
		from, to int
		byHandle bool
	}{
		{"shrink inside chunk", 3000, 1000, false},
		{"shrink across chunks", 10000, 5000, true},
		{"shrink to boundary", 10000, 4096, false},
		{"shrink to zero", 10000, 0, true},
		{"grow inside chunk", 100, 4000, false},
		{"grow across chunks", 100, 9000, true},
		{"grow from boundary", 4096, 4097, false},
		{"grow from empty", 0, 20000, true},
		{"grow far", 5000, 3 << 20, false},
	}
	want := map[string][]byte{}
	for i, tc := range tests {
		name := "t" + string(rune('a'+i))
		content := markedContent(tc.from, byte(i))
		if err := os.WriteFile(e.p(name), content, 0o644); err != nil {
			t.Fatal(err)
		}
		if tc.byHandle {
			f, err := os.OpenFile(e.p(name), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(int64(tc.to)); err != nil {
				t.Errorf("%s: ftruncate: %v", tc.name, err)
			}
			f.Close()
		} else if err := os.Truncate(e.p(name), int64(tc.to)); err != nil {
			t.Errorf("%s: truncate: %v", tc.name, err)
		}
		w := make([]byte, tc.to)
		copy(w, content)
		want[name] = w
		checkContent(t, e.p(name), w)
	}
	e.remount()
	for name, w := range want {
		checkContent(t, e.p(name), w)
	}
}

func TestSparse(t *testing.T) {
	e := newTestFS(t)
	f, err := os.Create(e.p("sparse"))
	if err != nil {
		t.Fatal(err)
	}
	const off = 5<<20 + 3
	if _, err := f.WriteAt([]byte("tail"), off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("mid"), 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := make([]byte, off+4)
	copy(want[off:], "tail")
	copy(want[1<<20:], "mid")
	checkContent(t, e.p("sparse"), want)
	e.remount()
	checkContent(t, e.p("sparse"), want)
	var st syscall.Stat_t
	if err := syscall.Stat(e.c("sparse"), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 1<<20 {
		t.Errorf("cipher file uses %d bytes on disk, want a sparse file", used)
	}
}

func TestUnlinkWhileOpen(t *testing.T) {
	e := newTestFS(t)
	p := e.p("doomed")
	if err := os.WriteFile(p, []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id := fileIDOf(t, e.c("doomed"))
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ix.Get(id); !errors.Is(err, keymgr.ErrNotIndexed) {
		t.Errorf("index after unlink: got %v, want %v", err, keymgr.ErrNotIndexed)
	}
	if _, err := f.WriteAt([]byte(" and after, across a chunk"), 4090); err != nil {
		t.Fatalf("write after unlink: %v", err)
	}
	want := make([]byte, 4090+26)
	copy(want, "before")
	copy(want[4090:], " and after, across a chunk")
	got := make([]byte, len(want)+10)
	n, err := f.ReadAt(got, 0)
	if n != len(want) || !bytes.Equal(got[:n], want) {
		t.Errorf("read after unlink: got %d bytes (%v), want %d", n, err, len(want))
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != int64(len(want)) {
		t.Errorf("fstat size: got %d, want %d", fi.Size(), len(want))
	}
}

func fileIDOf(t *testing.T, cipherPath string) crypto.FileID {
	t.Helper()
	f, err := os.Open(cipherPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := cipherfile.ReadPreamble(f)
	if err != nil {
		t.Fatal(err)
	}
	return p.FileID
}

func TestRename(t *testing.T) {
	e := newTestFS(t)
	write := func(name, s string) {
		if err := os.WriteFile(e.p(name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(e.p("d1/d2"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("a", "content a")
	write("b", "content b")
	idB := fileIDOf(t, e.c("b"))
	if err := os.Rename(e.p("a"), e.p("b")); err != nil {
		t.Fatalf("rename replace: %v", err)
	}
	checkContent(t, e.p("b"), []byte("content a"))
	if _, err := e.ix.Get(idB); !errors.Is(err, keymgr.ErrNotIndexed) {
		t.Errorf("index of replaced file: got %v, want %v", err, keymgr.ErrNotIndexed)
	}
	if err := os.Rename(e.p("b"), e.p("d1/d2/c")); err != nil {
		t.Fatalf("rename across dirs: %v", err)
	}
	checkContent(t, e.p("d1/d2/c"), []byte("content a"))
	if err := os.Rename(e.p("d1/d2"), e.p("d3")); err != nil {
		t.Fatalf("rename dir: %v", err)
	}
	checkContent(t, e.p("d3/c"), []byte("content a"))

	write("x", "xx")
	write("y", "yy")
	if err := unix.Renameat2(unix.AT_FDCWD, e.p("x"), unix.AT_FDCWD, e.p("y"), unix.RENAME_NOREPLACE); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("RENAME_NOREPLACE: got %v, want %v", err, syscall.EEXIST)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, e.p("x"), unix.AT_FDCWD, e.p("y"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("RENAME_EXCHANGE: %v", err)
	}
	checkContent(t, e.p("x"), []byte("yy"))
	checkContent(t, e.p("y"), []byte("xx"))
	e.remount()
	checkContent(t, e.p("d3/c"), []byte("content a"))
	checkContent(t, e.p("x"), []byte("yy"))
}

func TestHardLink(t *testing.T) {
	e := newTestFS(t)
	if err := os.WriteFile(e.p("one"), []byte("shared"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(e.p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(e.p("one"), e.p("d/two")); err != nil {
		t.Fatal(err)
	}
	f1, err := os.OpenFile(e.p("one"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := os.OpenFile(e.p("d/two"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f1.WriteAt([]byte(" content, longer than before"), 6); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, _ := f2.ReadAt(buf, 0)
	if got, want := string(buf[:n]), "shared content, longer than before"; got != want {
		t.Errorf("through second link: got %q, want %q", got, want)
	}
	f1.Close()
	f2.Close()
	// Removing one link keeps the key: the other still opens.
	if err := os.Remove(e.p("one")); err != nil {
		t.Fatal(err)
	}
	e.remount()
	checkContent(t, e.p("d/two"), []byte("shared content, longer than before"))
}

// TestNoXattr: a mount with NoXattr refuses every xattr call with
// EOPNOTSUPP and keeps the sealed attributes already on cipher files; a
// mount without it reads them again.
func TestNoXattr(t *testing.T) {
	e := newTestFS(t)
	p := e.p("f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	value := []byte("kept while refused")
	if err := unix.Setxattr(p, "user.note", value, 0); err != nil {
		t.Fatalf("Setxattr: %v", err)
	}
	e.mo.NoXattr = true
	e.remount()
	buf := make([]byte, 256)
	tests := []struct {
		name string
		err  error
	}{
		{"get", func() error { _, err := unix.Getxattr(p, "user.note", buf); return err }()},
		{"set", unix.Setxattr(p, "user.other", value, 0)},
		{"list", func() error { _, err := unix.Listxattr(p, buf); return err }()},
		{"remove", unix.Removexattr(p, "user.note")},
	}
	for _, tc := range tests {
		if !errors.Is(tc.err, syscall.EOPNOTSUPP) {
			t.Errorf("%s with NoXattr: got %v, want EOPNOTSUPP", tc.name, tc.err)
		}
	}
	if err := os.WriteFile(e.p("g"), []byte("content"), 0o600); err != nil {
		t.Errorf("write with NoXattr: %v", err)
	}
	e.mo.NoXattr = false
	e.remount()
	n, err := unix.Getxattr(p, "user.note", buf)
	if err != nil || !bytes.Equal(buf[:n], value) {
		t.Errorf("Getxattr after remounting with xattrs: got %q, %v; want %q", buf[:n], err, value)
	}
}

func TestXattr(t *testing.T) {
	e := newTestFS(t)
	p := e.p("f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	value := []byte("secret-xattr-value")
	if err := unix.Setxattr(p, "user.note", value, 0); err != nil {
		t.Fatalf("Setxattr: %v", err)
	}
	raw := make([]byte, 256)
	n, err := unix.Getxattr(e.c("f"), "user.note", raw)
	if err != nil {
		t.Fatalf("cipher Getxattr: %v", err)
	}
	if bytes.Contains(raw[:n], value) || n != len(value)+28 {
		t.Errorf("cipher xattr: %d bytes, want %d sealed ones without the plaintext", n, len(value)+28)
	}
	e.remount()
	buf := make([]byte, 256)
	n, err = unix.Getxattr(p, "user.note", buf)
	if err != nil || !bytes.Equal(buf[:n], value) {
		t.Errorf("Getxattr: got %q, %v, want %q", buf[:n], err, value)
	}
	n, err = unix.Listxattr(p, buf)
	if err != nil || string(buf[:n]) != "user.note\x00" {
		t.Errorf("Listxattr: got %q, %v", buf[:n], err)
	}
	if err := os.Mkdir(e.p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"set trusted", unix.Setxattr(p, "trusted.x", value, 0), syscall.ENOTSUP},
		{"set user on dir", unix.Setxattr(e.p("d"), "user.x", value, 0), syscall.ENOTSUP},
		{"get missing", func() error { _, err := unix.Getxattr(p, "user.missing", buf); return err }(), syscall.ENODATA},
		{"get trusted", func() error { _, err := unix.Getxattr(p, "trusted.x", buf); return err }(), syscall.ENODATA},
		{"remove", unix.Removexattr(p, "user.note"), nil},
		{"get removed", func() error { _, err := unix.Getxattr(p, "user.note", buf); return err }(), syscall.ENODATA},
	}
	for _, tc := range tests {
		if !errors.Is(tc.err, tc.want) && !(tc.err == nil && tc.want == nil) {
			t.Errorf("%s: got %v, want %v", tc.name, tc.err, tc.want)
		}
	}
}

// TestMmapShared writes through a shared writable mapping. The mapping is
// touched in a child process: a page fault on a FUSE file blocks its OS
// thread in the kernel, and if that thread belongs to the serving process a
// stop-the-world GC waits for it forever (go-fuse's documented deadlock).
func TestMmapShared(t *testing.T) {
	e := newTestFS(t)
	p := e.p("mapped")
	content := markedContent(3*4096+100, 7)
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMmapHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "KMSFS_MMAP_FILE="+p)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestMmapHelper")) {
		t.Fatalf("mmap helper: %v\n%s", err, out)
	}
	copy(content[4090:], "written through mmap")
	checkContent(t, p, content)
	e.remount()
	checkContent(t, p, content)
}

// TestMmapHelper is TestMmapShared's child process.
func TestMmapHelper(t *testing.T) {
	p := os.Getenv("KMSFS_MMAP_FILE")
	if p == "" {
		t.Skip("run by TestMmapShared")
	}
	content := markedContent(3*4096+100, 7)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, len(content), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("Mmap: %v", err)
	}
	if !bytes.Equal(m, content) {
		t.Errorf("mapped content differs from the file")
	}
	copy(m[4090:], "written through mmap")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Errorf("Msync: %v", err)
	}
	if err := syscall.Munmap(m); err != nil {
		t.Errorf("Munmap: %v", err)
	}
}

func TestTamperedChunk(t *testing.T) {
	e := newTestFS(t)
	content := markedContent(5*4096, 3)
	if err := os.WriteFile(e.p("f"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	e.unmount()
	cf, err := os.OpenFile(e.c("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := e.layout.CipherChunkOffset(2) + 100
	b := make([]byte, 1)
	if _, err := cf.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1
	if _, err := cf.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	cf.Close()
	e.mount(false)
	e.allowWarn = true
	f, err := os.Open(e.p("f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for chunk := int64(0); chunk < 5; chunk++ {
		n, err := f.ReadAt(buf, chunk*4096)
		if chunk == 2 {
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("chunk 2: got %v, want %v", err, syscall.EIO)
			}
			continue
		}
		if err != nil || !bytes.Equal(buf[:n], content[chunk*4096:(chunk+1)*4096]) {
			t.Errorf("chunk %d: got %d bytes, %v", chunk, n, err)
		}
	}
	// A read spanning good chunks and the bad one fails as a whole
	// (O_DIRECT, so the kernel sends it as one read and does not answer
	// from its cache).
	d, err := syscall.Open(e.p("f"), syscall.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(d)
	big := make([]byte, 5*4096)
	if n, err := syscall.Pread(d, big, 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("spanning read: got %d bytes, %v, want %v", n, err, syscall.EIO)
	}
	// Buffered, the kernel may return the good bytes before the bad
	// chunk as a short read, never bytes of it.
	n, err := f.ReadAt(big, 0)
	if n > 2*4096 || !bytes.Equal(big[:n], content[:n]) {
		t.Errorf("buffered spanning read: got %d bytes, %v", n, err)
	}
	found := false
	for _, l := range e.logs.lines() {
		if bytes.Contains([]byte(l), []byte("chunk=2")) {
			found = true
		}
		if bytes.Contains([]byte(l), []byte(marker)) || bytes.Contains([]byte(l), []byte(e.cipher)) {
			t.Errorf("log line leaks plaintext or a path: %s", l)
		}
	}
	if !found {
		t.Errorf("no warning names chunk 2: %q", e.logs.lines())
	}
}

func TestEmptyCipherFile(t *testing.T) {
	e := newTestFS(t)
	// A crash between create and header write leaves a 0-byte file.
	if err := os.WriteFile(e.c("crashed"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	checkContent(t, e.p("crashed"), nil)
	if err := os.WriteFile(e.p("crashed"), []byte("now written"), 0o644); err != nil {
		t.Fatalf("write: %v", err)
	}
	e.remount()
	checkContent(t, e.p("crashed"), []byte("now written"))
	// mknod makes such a file too.
	if err := syscall.Mknod(e.p("node"), syscall.S_IFREG|0o644, 0); err != nil {
		t.Fatalf("mknod: %v", err)
	}
	checkContent(t, e.p("node"), nil)
	if err := syscall.Mkfifo(e.p("fifo"), 0o644); err != nil {
		t.Errorf("mkfifo: %v", err)
	}
}

func TestReadOnlyMount(t *testing.T) {
	e := newTestFS(t)
	if err := os.WriteFile(e.p("f"), []byte("ro content"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.unmount()
	e.mount(true)
	checkContent(t, e.p("f"), []byte("ro content"))
	if _, err := os.OpenFile(e.p("f"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open for write: got %v, want %v", err, syscall.EROFS)
	}
	if err := os.WriteFile(e.p("g"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("create: got %v, want %v", err, syscall.EROFS)
	}
}

func TestTmpfileLink(t *testing.T) {
	e := newTestFS(t)
	fd, err := syscall.Open(e.mnt, unix.O_TMPFILE|syscall.O_RDWR, 0o640)
	if err != nil {
		t.Fatalf("O_TMPFILE: %v", err)
	}
	content := markedContent(5000, 9)
	if _, err := syscall.Pwrite(fd, content, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, e.p("named"), unix.AT_SYMLINK_FOLLOW); err != nil {
		t.Fatalf("linkat: %v", err)
	}
	syscall.Close(fd)
	checkContent(t, e.p("named"), content)
	e.remount()
	checkContent(t, e.p("named"), content)
	if raw, err := os.ReadFile(e.c("named")); err != nil || bytes.Contains(raw, []byte(marker)) {
		t.Errorf("cipher file: %v, or holds plaintext", err)
	}
}

// TestSetattrUnlinkedOpen: fchmod, fchown and futimens reach the kernel
// without a file handle; on a file unlinked while open they must still
// act on the open inode, as on a local filesystem.
func TestSetattrUnlinkedOpen(t *testing.T) {
	e := newTestFS(t)
	f, err := os.Create(e.p("gone"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.p("gone")); err != nil {
		t.Fatal(err)
	}
	if err := f.Chmod(0o640); err != nil {
		t.Fatalf("fchmod of an unlinked open file: %v", err)
	}
	if err := f.Chown(os.Getuid(), os.Getgid()); err != nil {
		t.Fatalf("fchown of an unlinked open file: %v", err)
	}
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := unix.Futimes(int(f.Fd()), []unix.Timeval{unix.NsecToTimeval(mtime.UnixNano()), unix.NsecToTimeval(mtime.UnixNano())}); err != nil {
		t.Fatalf("futimes of an unlinked open file: %v", err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o640 {
		t.Errorf("mode after fchmod: got %v, want 0640", got)
	}
	if got := fi.ModTime(); !got.Equal(mtime) {
		t.Errorf("mtime after futimes: got %v, want %v", got, mtime)
	}
	b := make([]byte, 10)
	if n, err := f.ReadAt(b, 0); n != 10 || string(b) != "still here" {
		t.Errorf("read after setattr: %q, %v", b[:n], err)
	}
}
