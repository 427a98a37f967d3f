package integration

// crash_test.go: crash consistency. A foreground mount process (kmsfs
// mount -f) is killed with SIGKILL at random points while writers write
// and fsync whole files through it; after each kill the dead mount is
// detached and the cipher directory mounted again, and every file must
// read either exactly as last fsynced (when no write of it was under way)
// or, chunk by chunk, as one of the versions the writer ever wrote of
// that chunk, or fail with EIO: never wrong bytes. No fsynced file may be
// lost, and fsck --repair leaves only findings about those torn tails.
// It runs on both kinds of filesystem. The short-lived files are renamed
// between a short and a long name before their removal: with encrypted
// names a long name has a side file written before the entry and removed
// after it, so kills land in those windows too.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashChunk     = 4096
	crashFiles     = 12
	crashWriters   = 3
	crashMaxChunks = 6
)

// crashChunkData is chunk j of version v of file i: 16-byte blocks of
// (file, chunk, version, block index), so any chunk names its version.
func crashChunkData(file, chunk int, version uint32, n int) []byte {
	b := make([]byte, crashChunk)
	for k := 0; k < crashChunk/16; k++ {
		binary.BigEndian.PutUint32(b[16*k:], uint32(file)|0xc0de0000)
		binary.BigEndian.PutUint32(b[16*k+4:], uint32(chunk))
		binary.BigEndian.PutUint32(b[16*k+8:], version)
		binary.BigEndian.PutUint32(b[16*k+12:], uint32(k)^0x5a5a5a5a)
	}
	return b[:n]
}

// crashContent is version v of file i, size bytes.
func crashContent(file int, version uint32, size int) []byte {
	out := make([]byte, 0, size)
	for j := 0; len(out) < size; j++ {
		out = append(out, crashChunkData(file, j, version, min(crashChunk, size-len(out)))...)
	}
	return out
}

// crashFile is what the writers did to one file.
type crashFile struct {
	mu       sync.Mutex
	versions []uint32 // every version ever started
	synced   uint32   // the last version written and fsynced in full (0: none)
	size     int      // its size
	dirty    bool     // a write started after synced and may be half done
}

// foreground runs kmsfs mount -f at f.mnt and waits for the mount.
func (f *fixture) foreground(t *testing.T, logPath string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	argv := append(append([]string{"mount", "-f"}, args...), f.cipher, f.mnt)
	cmd := exec.Command(kmsfsBin, argv...)
	cmd.Env = f.env
	cmd.Dir = f.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for !isMounted(f.mnt) {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("kmsfs mount -f exited before mounting: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("kmsfs mount -f did not mount within 30 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Wait is already running: hand the result over through a fresh
	// channel the caller reaches via cmd.ProcessState after kill+waitExit.
	fgExits.Store(cmd.Process.Pid, exited)
	t.Cleanup(func() {
		if isMounted(f.mnt) {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
			}
			lazyUnmount(f.mnt)
		}
	})
	return cmd
}

var fgExits sync.Map // pid -> chan error of a foreground mount's Wait

// waitExit waits for a foreground mount process to exit and returns what
// Wait said (false: still running after d).
func waitExit(cmd *exec.Cmd, d time.Duration) (error, bool) {
	v, ok := fgExits.Load(cmd.Process.Pid)
	if !ok {
		return errors.New("not a foreground mount"), false
	}
	select {
	case err := <-v.(chan error):
		fgExits.Delete(cmd.Process.Pid)
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

func TestCrashConsistency(t *testing.T) {
	eachNameKind(t, func(t *testing.T, k nameKind) {
		// Encrypted names are the default and get most of the kills.
		cycles := map[bool]int{true: 40, false: 15}[k.encrypted]
		if testing.Short() {
			cycles = map[bool]int{true: 10, false: 5}[k.encrypted]
		}
		testCrashConsistency(t, k, cycles)
	})
}

func testCrashConsistency(t *testing.T, k nameKind, cycles int) {
	f := newFixture(t)
	f.initKind(k, "--chunk-size", fmt.Sprint(crashChunk))
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	files := make([]*crashFile, crashFiles)
	for i := range files {
		files[i] = &crashFile{}
	}
	var versionCounter uint32
	var vmu sync.Mutex
	nextVersion := func() uint32 {
		vmu.Lock()
		defer vmu.Unlock()
		versionCounter++
		return versionCounter
	}
	scratch := &crashScratch{versions: map[string]uint32{}}
	logPath := filepath.Join(f.dir, "mount-f.log")
	path := func(i int) string { return filepath.Join(f.mnt, fmt.Sprintf("file-%02d", i)) }
	start := time.Now()
	var synced, torn, eioChunks int

	for cycle := 0; cycle < cycles; cycle++ {
		cmd := f.foreground(t, logPath)
		// 1. Everything reads as promised.
		for i, cf := range files {
			s, tr, eio := verifyCrashFile(t, path(i), i, cf)
			synced += s
			torn += tr
			eioChunks += eio
		}
		scratch.verifyAndRemove(t, f.mnt)
		if t.Failed() {
			t.Fatalf("cycle %d (seed %d): files read wrong after the previous kill", cycle, seed)
		}
		// 2. Writers rewrite whole files and fsync them, until the kill.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for wi := 0; wi < crashWriters; wi++ {
			wg.Add(1)
			wseed := rng.Int63()
			go func() {
				defer wg.Done()
				wr := rand.New(rand.NewSource(wseed))
				for {
					select {
					case <-stop:
						return
					default:
					}
					if wr.Intn(6) == 0 {
						// A short-lived file: create, fsync, unlink. A kill
						// in between leaves index and file half done.
						if err := scratch.cycle(f.mnt, wi, nextVersion(), wr); err != nil {
							return
						}
						continue
					}
					i := wi + crashWriters*wr.Intn(crashFiles/crashWriters)
					if err := crashWrite(path(i), i, files[i], nextVersion(), wr); err != nil {
						return // the mount is gone
					}
				}
			}()
		}
		time.Sleep(time.Duration(10+rng.Intn(200)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if _, ok := waitExit(cmd, 10*time.Second); !ok {
			t.Fatalf("mount process %d survived SIGKILL", cmd.Process.Pid)
		}
		close(stop)
		wg.Wait()
		// 3. The dead mount is detached; the next mount must start on it.
		lazyUnmount(f.mnt)
		if isMounted(f.mnt) {
			t.Fatalf("cycle %d: %s still mounted after a lazy unmount", cycle, f.mnt)
		}
		if cycle%10 == 9 || cycle == cycles-1 {
			checkFsckAfterCrash(t, f, files, scratch)
		}
	}

	// A clean cycle: rewrite everything, unmount cleanly; then fsck is clean.
	cmd := f.foreground(t, logPath)
	scratch.verifyAndRemove(t, f.mnt)
	for i, cf := range files {
		if _, _, eio := verifyCrashFile(t, path(i), i, cf); eio > 0 {
			// A chunk torn by the last kill cannot be re-sealed as a
			// new last chunk (its plaintext is gone), so a shrinking
			// truncate into it fails EIO, as it must. Start afresh, as
			// a user restoring the file would.
			if err := os.Truncate(path(i), 0); err != nil {
				t.Fatalf("truncate file %d with torn chunks to 0: %v", i, err)
			}
		}
		if err := crashWrite(path(i), i, cf, nextVersion(), rng); err != nil {
			t.Fatalf("final rewrite of file %d: %v", i, err)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err, ok := waitExit(cmd, 30*time.Second); !ok || err != nil {
		t.Errorf("mount -f after SIGTERM: exited %v, error %v; want exit 0", ok, err)
	}
	if out, stderr, code := f.run("fsck", f.cipher); code != 0 {
		t.Errorf("fsck after the clean cycle: exit %d\n%s%s", code, out, stderr)
	}
	logb, _ := os.ReadFile(logPath)
	if m := regexp.MustCompile(`(?m)^panic:|fatal error:|WARNING: DATA RACE`).Find(logb); m != nil {
		t.Errorf("mount -f log has %q:\n%s", m, logb)
	}
	// Every EIO chunk was named in the log (file ID and chunk index).
	authLines := regexp.MustCompile(`(?m)chunk failed authentication.*file_id=[0-9a-f]{32} chunk=\d+`).FindAll(logb, -1)
	if len(authLines) < eioChunks {
		t.Errorf("mount -f log: %d lines name a chunk that failed authentication, want at least %d (one per EIO chunk read)", len(authLines), eioChunks)
	}
	warns := map[string]int{}
	for _, l := range strings.Split(string(logb), "\n") {
		if m := regexp.MustCompile(`level=(WARN|ERROR) msg="?([^"=]*)`).FindStringSubmatch(l); m != nil {
			warns[m[1]+" "+strings.TrimSpace(m[2])]++
		}
	}
	t.Logf("mount -f warnings over all cycles: %v", warns)
	t.Logf("%d kill cycles in %s: %d fsynced files read back exactly, %d files caught mid-write read as a chunk mix, %d chunks EIO",
		cycles, time.Since(start).Round(time.Millisecond), synced, torn, eioChunks)
}

// crashWrite writes version v of file i: shrink first (so the tail chunk
// is only ever a prefix of the old or the new version), then whole chunks
// in random runs, then fsync. Only a write that got through fsync and
// close counts as synced.
func crashWrite(p string, i int, cf *crashFile, v uint32, rng *rand.Rand) error {
	size := rng.Intn(crashMaxChunks*crashChunk + 1)
	content := crashContent(i, v, size)
	cf.mu.Lock()
	cf.versions = append(cf.versions, v)
	cf.dirty = true
	cf.mu.Unlock()
	fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > int64(size) {
		if err := fh.Truncate(int64(size)); err != nil {
			return err
		}
	}
	for off := 0; off < size; {
		n := min((1+rng.Intn(3))*crashChunk, size-off)
		if _, err := fh.WriteAt(content[off:off+n], int64(off)); err != nil {
			return err
		}
		off += n
	}
	if err := fh.Sync(); err != nil {
		return err
	}
	if err := fh.Close(); err != nil {
		return err
	}
	cf.mu.Lock()
	cf.synced, cf.size, cf.dirty = v, size, false
	cf.mu.Unlock()
	return nil
}

// verifyCrashFile checks one file after a crash; it returns counts of
// exact fsynced reads, mixed (torn) files and EIO chunks.
func verifyCrashFile(t *testing.T, p string, i int, cf *crashFile) (exact, torn, eio int) {
	t.Helper()
	cf.mu.Lock()
	defer cf.mu.Unlock()
	fi, err := os.Stat(p)
	if err != nil {
		if cf.synced != 0 {
			t.Errorf("file %d was fsynced (version %d) but is lost: %v", i, cf.synced, err)
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("file %d (never fsynced): stat: %v", i, err)
		}
		return
	}
	if !cf.dirty {
		got, err := os.ReadFile(p)
		want := crashContent(i, cf.synced, cf.size)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("file %d, fsynced as version %d (%d bytes), reads %d bytes, err %v (first difference at %d)",
				i, cf.synced, cf.size, len(got), err, firstDiff(got, want))
		}
		return 1, 0, 0
	}
	// Caught mid-write: chunk by chunk, one of the versions, or EIO.
	fh, err := os.Open(p)
	if err != nil {
		t.Errorf("file %d: open after a crash: %v (want it to open)", i, err)
		return
	}
	defer fh.Close()
	buf := make([]byte, crashChunk)
	for j := 0; int64(j)*crashChunk < fi.Size(); j++ {
		n, err := fh.ReadAt(buf, int64(j)*crashChunk)
		if err != nil && !errors.Is(err, syscall.EIO) && !errors.Is(err, io.EOF) {
			t.Errorf("file %d chunk %d: %v, want bytes or EIO", i, j, err)
			continue
		}
		if errors.Is(err, syscall.EIO) {
			eio++
			continue
		}
		got := buf[:n]
		ok := false
		for _, v := range cf.versions {
			if bytes.Equal(got, crashChunkData(i, j, v, n)) {
				ok = true
				break
			}
		}
		if !ok {
			t.Errorf("file %d chunk %d: %d bytes that no version of that chunk ever held (WRONG BYTES); first block %x",
				i, j, n, got[:min(n, 16)])
		}
	}
	return 0, 1, eio
}

// checkFsckAfterCrash runs fsck --repair on the unmounted cipher dir: the
// index and header mirrors end consistent, and what remains is only a torn
// tail of a file a writer had in hand at the kill (a dirty file, or a
// short-lived file not yet removed: SIGKILL cuts a pwrite short at a page
// boundary); fsck never touches content.
func checkFsckAfterCrash(t *testing.T, f *fixture, files []*crashFile, scratch *crashScratch) {
	t.Helper()
	out, stderr, code := f.run("fsck", "--repair", f.cipher)
	if code != 0 && code != 1 {
		t.Fatalf("fsck --repair after a crash: exit %d\n%s%s", code, out, stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case strings.HasPrefix(l, "checked "), strings.HasPrefix(l, "note: "), strings.HasSuffix(l, "[repaired]"):
		case strings.Contains(l, "is not a whole number of chunks"):
			// fsck names the file by its plain path first (with
			// encrypted names "(cipher ...)" follows).
			name, _, _ := strings.Cut(l, " ")
			var i int
			if _, err := fmt.Sscanf(name, "file-%02d", &i); err == nil && i < len(files) && files[i].dirty {
				continue
			}
			if scratch.inFlight(name) {
				continue
			}
			t.Errorf("fsck after a crash: a torn tail in a file not caught mid-write: %q", l)
		default:
			t.Errorf("fsck --repair after a crash left: %q", l)
		}
	}
	if strings.Contains(out, "[repaired]") {
		t.Logf("fsck --repair after a crash:\n%s", out)
	}
}

// crashScratch tracks the short-lived files: name -> the version written
// into it (registered before the create).
type crashScratch struct {
	mu       sync.Mutex
	versions map[string]uint32
}

const crashScratchID = 1000 // file number in the chunk pattern of scratch files

// crashLongSuffix makes a scratch name about 200 bytes long: a long name
// with encrypted names (160 bytes or more, docs/format.md "Long names").
var crashLongSuffix = "-" + strings.Repeat("L", 200-len("scratch-0-0000-"))

// cycle writes a short-lived file under a short or a long name, renames it
// to the other kind of name, and removes it. Both names are registered
// before the create and each forgotten once it is gone.
func (s *crashScratch) cycle(mnt string, wi int, v uint32, rng *rand.Rand) error {
	short := fmt.Sprintf("scratch-%d-%d", wi, v)
	long := short + crashLongSuffix
	from, to := short, long
	if rng.Intn(2) == 0 {
		from, to = long, short
	}
	s.mu.Lock()
	s.versions[from], s.versions[to] = v, v
	s.mu.Unlock()
	p, q := filepath.Join(mnt, from), filepath.Join(mnt, to)
	if err := writeSynced(p, crashContent(crashScratchID, v, rng.Intn(3*crashChunk))); err != nil {
		return err
	}
	if err := os.Rename(p, q); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.versions, from)
	s.mu.Unlock()
	if err := os.Remove(q); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.versions, to)
	s.mu.Unlock()
	return nil
}

// inFlight reports whether short-lived file name was created and not yet
// removed (it may be anywhere in its write when the mount is killed).
func (s *crashScratch) inFlight(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.versions[name]
	return ok
}

// verifyAndRemove checks every scratch file a kill left behind (it opens;
// each chunk is its version's or EIO; an empty file is a create cut short)
// and removes it through the mount.
func (s *crashScratch) verifyAndRemove(t *testing.T, mnt string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, v := range s.versions {
		p := filepath.Join(mnt, name)
		fh, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			delete(s.versions, name)
			continue
		}
		if err != nil {
			t.Errorf("%s, left by a kill: open: %v, want it to open", name, err)
			continue
		}
		buf := make([]byte, crashChunk)
		for j := 0; ; j++ {
			n, err := fh.ReadAt(buf, int64(j)*crashChunk)
			if n > 0 && !bytes.Equal(buf[:n], crashChunkData(crashScratchID, j, v, n)) {
				t.Errorf("%s chunk %d: WRONG BYTES (%d bytes not of version %d)", name, j, n, v)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) {
					t.Errorf("%s chunk %d: %v", name, j, err)
				}
				break
			}
		}
		fh.Close()
		if err := os.Remove(p); err != nil {
			t.Errorf("remove %s: %v", name, err)
		}
		delete(s.versions, name)
	}
}
