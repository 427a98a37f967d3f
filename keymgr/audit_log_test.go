package keymgr

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// seqRecord is record number i of a test log (about 190 bytes a line).
func seqRecord(i int) AuditRecord {
	return AuditRecord{Time: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC), Op: AuditDecrypt,
		KeyARN: "arn:kmsfs:local:x:key/y", FileID: fmt.Sprintf("%032d", i), Outcome: "ok", LatencyMS: float64(i)}
}

// readSeq reads one log file of seqRecords and returns their numbers.
func readSeq(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := ReadAudit(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("ReadAudit %s: %v", path, err)
	}
	var out []int
	for _, r := range recs {
		out = append(out, int(r.LatencyMS))
	}
	return out
}

// TestAuditRotation: at the size cap the log moves to audit.log.1, older
// ones shift up, Keep of them are kept and the oldest is dropped; no file
// passes the cap and no line is lost or split among those kept.
func TestAuditRotation(t *testing.T) {
	for _, keep := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("keep %d", keep), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), ".kmsfs")
			path := filepath.Join(dir, "audit.log")
			a, err := OpenAuditLog(path, AuditOptions{MaxSize: MinAuditMaxSize, Keep: keep})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			const n = 200 // about 38 KiB: 9 rotations at 4 KiB
			for i := range n {
				if err := a.Write(seqRecord(i)); err != nil {
					t.Fatalf("Write %d: %v", i, err)
				}
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			var all []int
			for i := keep; i >= 0; i-- {
				p := path
				if i > 0 {
					p = fmt.Sprintf("%s.%d", path, i)
				}
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatalf("%s: %v", filepath.Base(p), err)
				}
				if fi.Size() > MinAuditMaxSize || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: got size %d mode %v, want at most %d bytes, regular, 0600", filepath.Base(p), fi.Size(), fi.Mode(), MinAuditMaxSize)
				}
				if i > 0 && fi.Size() < MinAuditMaxSize-400 {
					t.Errorf("%s: rotated at %d bytes, want close to the cap %d", filepath.Base(p), fi.Size(), MinAuditMaxSize)
				}
				all = append(all, readSeq(t, p)...)
			}
			if _, err := os.Lstat(fmt.Sprintf("%s.%d", path, keep+1)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("audit.log.%d: got %v, want it dropped", keep+1, err)
			}
			if len(all) == 0 || all[len(all)-1] != n-1 || all[0] == 0 {
				t.Fatalf("records kept: got %v, want a run ending at %d without the first", all, n-1)
			}
			for i := 1; i < len(all); i++ {
				if all[i] != all[i-1]+1 {
					t.Fatalf("records kept: %d follows %d", all[i], all[i-1])
				}
			}
			counts, err := CountAuditOps(path)
			if err != nil || counts[AuditDecrypt] != len(all) {
				t.Errorf("CountAuditOps over the rotated logs: got %v, %v, want %d Decrypt", counts, err, len(all))
			}
		})
	}
}

// TestAuditRotationSharedLog: two handles on one log (two processes)
// rotate it once between them, and neither keeps writing to a rotated
// file past the cap.
func TestAuditRotationSharedLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	o := AuditOptions{MaxSize: MinAuditMaxSize, Keep: 8}
	a, err := OpenAuditLog(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := OpenAuditLog(path, o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const n = 100
	for i := range n {
		l := a
		if i%2 == 1 {
			l = b
		}
		if err := l.Write(seqRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	var all []int
	for i := 8; i >= 0; i-- {
		p := path
		if i > 0 {
			p = fmt.Sprintf("%s.%d", path, i)
		}
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > MinAuditMaxSize {
			t.Errorf("%s: %d bytes, past the cap %d", filepath.Base(p), fi.Size(), MinAuditMaxSize)
		}
		all = append(all, readSeq(t, p)...)
	}
	if len(all) != n {
		t.Fatalf("records: got %d, want %d", len(all), n)
	}
	for i, v := range all {
		if v != i {
			t.Fatalf("record %d: got number %d, want %d", i, v, i)
		}
	}
}

// TestAuditRotationNoFollow: a symlink planted as a rotated log is moved
// or replaced by the rotation, never written through; a directory in the
// way fails the write (the log fails closed) with its name.
func TestAuditRotationNoFollow(t *testing.T) {
	for _, keep := range []int{1, 2} {
		t.Run(fmt.Sprintf("symlink, keep %d", keep), func(t *testing.T) {
			dir := t.TempDir()
			outside := filepath.Join(t.TempDir(), ".bashrc")
			if err := os.WriteFile(outside, []byte("keep\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "audit.log")
			for i := 1; i <= keep; i++ {
				if err := os.Symlink(outside, fmt.Sprintf("%s.%d", path, i)); err != nil {
					t.Fatal(err)
				}
			}
			a, err := OpenAuditLog(path, AuditOptions{MaxSize: MinAuditMaxSize, Keep: keep})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			for i := range 100 { // 4 rotations
				if err := a.Write(seqRecord(i)); err != nil {
					t.Fatalf("Write %d: %v", i, err)
				}
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(outside); err != nil || string(b) != "keep\n" {
				t.Errorf("symlink target: got %q, %v, want it unchanged", b, err)
			}
			for i := 1; i <= keep; i++ {
				fi, err := os.Lstat(fmt.Sprintf("%s.%d", path, i))
				if err != nil || !fi.Mode().IsRegular() {
					t.Errorf("audit.log.%d: got %v, %v, want a rotated regular file in place of the link", i, fi, err)
				}
			}
			if got := readSeq(t, path+".1"); len(got) == 0 {
				t.Errorf("audit.log.1 holds no records")
			}
		})
	}
	t.Run("directory in the way", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "audit.log")
		if err := os.MkdirAll(filepath.Join(dir, "audit.log.1", "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
		a, err := OpenAuditLog(path, AuditOptions{MaxSize: MinAuditMaxSize, Keep: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		var werr error
		for i := 0; i < 100 && werr == nil; i++ {
			werr = a.Write(seqRecord(i))
		}
		if werr == nil || !strings.Contains(werr.Error(), "remove "+filepath.Join(dir, "audit.log.1")) {
			t.Errorf("Write past the cap with a directory at audit.log.1: got %v, want an error naming it", werr)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() > MinAuditMaxSize {
			t.Errorf("audit.log: got %v, %v, want it within the cap", fi, err)
		}
	})
}

// syncRecorder is an injected fsync that records which inodes it synced.
type syncRecorder struct {
	mu    sync.Mutex
	inos  []uint64
	block chan struct{} // when set, each sync waits for it to be closed
	// entered, when set, receives (without blocking) as a sync begins
	entered chan struct{}
	err     error // returned by each sync
}

func (s *syncRecorder) sync(f *os.File) error {
	if s.entered != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
	}
	if s.block != nil {
		<-s.block
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inos = append(s.inos, fi.Sys().(*syscall.Stat_t).Ino)
	return s.err
}

func (s *syncRecorder) count(ino uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, i := range s.inos {
		if i == ino {
			n++
		}
	}
	return n
}

func inoOf(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestAuditSyncs: with the default period, a written line is fsync'd
// within a second while the handle stays open; an idle log is not
// fsync'd again.
func TestAuditSyncs(t *testing.T) {
	rec := &syncRecorder{}
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAuditLog(path, AuditOptions{sync: rec.sync})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ino := inoOf(t, path)
	if err := a.Write(seqRecord(1)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	for rec.count(ino) == 0 && time.Since(written) < 3*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	if got := time.Since(written); rec.count(ino) == 0 || got > 1500*time.Millisecond {
		t.Fatalf("fsync of a written line: %d after %v, want one within %v", rec.count(ino), got, auditSyncEvery)
	}
	time.Sleep(1200 * time.Millisecond) // a tick with nothing written
	if got := rec.count(ino); got != 1 {
		t.Errorf("fsyncs of an idle log: got %d, want 1", got)
	}
}

// TestAuditSyncsRotatedAndOnClose: lines left in a rotated-away log and
// in the current one are fsync'd (by Close at the latest), each file
// once, with the flusher never having ticked.
func TestAuditSyncsRotatedAndOnClose(t *testing.T) {
	rec := &syncRecorder{}
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAuditLog(path, AuditOptions{MaxSize: MinAuditMaxSize, Keep: 2, syncEvery: time.Hour, sync: rec.sync})
	if err != nil {
		t.Fatal(err)
	}
	first := inoOf(t, path)
	for i := range 30 { // one rotation
		if err := a.Write(seqRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := inoOf(t, path+".1"); got != first {
		t.Fatalf("audit.log.1 is inode %d, want the first log's %d", got, first)
	}
	second := inoOf(t, path)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.count(first), 1; got != want {
		t.Errorf("fsyncs of the rotated log: got %d, want %d", got, want)
	}
	if got, want := rec.count(second), 1; got != want {
		t.Errorf("fsyncs of the current log at Close: got %d, want %d", got, want)
	}
}

// TestAuditWriteDoesNotWaitForSync: a Write goes through while the
// flusher's fsync hangs on a slow disk; the fsync's failure is reported
// by the next Write.
func TestAuditWriteDoesNotWaitForSync(t *testing.T) {
	rec := &syncRecorder{block: make(chan struct{}), entered: make(chan struct{}, 1), err: errors.New("EIO from the test")}
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAuditLog(path, AuditOptions{syncEvery: 5 * time.Millisecond, sync: rec.sync})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Write(seqRecord(0)); err != nil {
		t.Fatal(err)
	}
	select { // the flusher is now blocked in fsync
	case <-rec.entered:
	case <-time.After(10 * time.Second):
		close(rec.block)
		t.Fatal("the flusher never synced the written line")
	}
	done := make(chan error, 1)
	go func() {
		var err error
		for i := 1; i <= 100 && err == nil; i++ {
			err = a.Write(seqRecord(i))
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Write during a hanging fsync: %v", err)
		}
	case <-time.After(5 * time.Second):
		close(rec.block)
		t.Fatal("Write waited for a hanging fsync")
	}
	close(rec.block)
	var werr error
	for i := 0; i < 200 && werr == nil; i++ {
		time.Sleep(5 * time.Millisecond)
		werr = a.Write(seqRecord(200 + i))
	}
	if werr == nil || !strings.Contains(werr.Error(), "EIO from the test") {
		t.Errorf("Write after a failed fsync: got %v, want the fsync error", werr)
	}
	_ = a.Close()
}

// TestAuditOptions: the zero value is the defaults; out-of-range values
// are refused with the flag to fix.
func TestAuditOptions(t *testing.T) {
	o, err := AuditOptions{}.withDefaults()
	if err != nil || o.MaxSize != DefaultAuditMaxSize || o.Keep != DefaultAuditKeep || o.syncEvery != time.Second {
		t.Errorf("zero options: got %+v, %v, want the defaults", o, err)
	}
	for _, bad := range []AuditOptions{{MaxSize: 100}, {MaxSize: -1}, {Keep: -1}, {Keep: MaxAuditKeep + 1}} {
		if _, err := OpenAuditLog(filepath.Join(t.TempDir(), "audit.log"), bad); err == nil || !strings.Contains(err.Error(), "--audit-") {
			t.Errorf("OpenAuditLog(%+v): got %v, want an error naming the flag", bad, err)
		}
	}
}

// TestCountAuditOpsRotated: counts span the rotated logs; a damaged line
// in one is reported with its file and line and the rest still counted;
// a rotated log that is a symlink is reported, not read.
func TestCountAuditOpsRotated(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	line := `{"time":"2026-11-27T12:00:00Z","op":"Decrypt","key_arn":"k","file_id":"f","outcome":"ok","latency_ms":1}` + "\n"
	outside := filepath.Join(t.TempDir(), "elsewhere")
	for name, content := range map[string]string{
		"audit.log":   line,
		"audit.log.1": line + "{torn\n" + line,
		"audit.log.3": line + line + line,
		outside:       line + line + line + line + line,
	} {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, name)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, path+".2"); err != nil {
		t.Fatal(err)
	}
	counts, err := CountAuditOps(path)
	if got, want := counts[AuditDecrypt], 6; got != want {
		t.Errorf("Decrypt count: got %d, want %d (the symlinked log not read)", got, want)
	}
	var dmg *AuditDamageError
	if !errors.As(err, &dmg) || dmg.Lines != 2 {
		t.Fatalf("CountAuditOps: got %v, want 2 damage reports", err)
	}
	if got := dmg.Damage[0]; got.File != "audit.log.2" || got.Line != 0 || !strings.Contains(got.Why, "symlink") {
		t.Errorf("damage 0: got %+v, want audit.log.2 unreadable as a symlink", got)
	}
	if got := dmg.Damage[1]; got.File != "audit.log.1" || got.Line != 2 {
		t.Errorf("damage 1: got %+v, want audit.log.1 line 2", got)
	}
	if !strings.Contains(err.Error(), "audit.log.1 line 2: ") {
		t.Errorf("error %q does not name audit.log.1 line 2", err)
	}
}

// TestAuditSize: the --audit-max-size value reads bytes and K/M/G
// suffixes and prints back what it reads.
func TestAuditSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64 // -1: an error
	}{
		{"4096", 4096}, {"16M", 16 << 20}, {"16m", 16 << 20}, {"16MiB", 16 << 20}, {"16MB", 16 << 20},
		{"512K", 512 << 10}, {"1G", 1 << 30}, {"0", 0},
		{"", -1}, {"M", -1}, {"1.5M", -1}, {"-1", -1}, {"16T", -1}, {"16 M", -1}, {"9999999999999G", -1},
	}
	for _, tt := range tests {
		var s AuditSize
		err := s.Set(tt.in)
		if tt.want < 0 {
			if err == nil {
				t.Errorf("Set(%q): got %d, want an error", tt.in, s)
			}
			continue
		}
		if err != nil || int64(s) != tt.want {
			t.Errorf("Set(%q): got %d, %v, want %d", tt.in, s, err, tt.want)
			continue
		}
		var again AuditSize
		if err := again.Set(s.String()); err != nil || again != s {
			t.Errorf("Set(%q).String() = %q reads back as %d, %v", tt.in, s.String(), again, err)
		}
	}
	if got, want := AuditSize(DefaultAuditMaxSize).String(), "16M"; got != want {
		t.Errorf("default: got %v, want %v", got, want)
	}
}
