package keymgr

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// stLog collects log records; records at warning level or above fail the
// test at cleanup unless the test called expectWarnings.
type stLog struct {
	t        testing.TB
	mu       sync.Mutex
	records  []slog.Record
	allowed  bool
	minLevel slog.Level
}

func newStLog(t testing.TB) (*slog.Logger, *stLog) {
	t.Helper()
	l := &stLog{t: t, minLevel: slog.LevelDebug}
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.allowed {
			return
		}
		for _, r := range l.records {
			if r.Level >= slog.LevelWarn {
				t.Errorf("unexpected %v log: %s %s", r.Level, r.Message, stLogAttrs(r))
			}
		}
	})
	return slog.New(l), l
}

func stLogAttrs(r slog.Record) string {
	var b strings.Builder
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	return b.String()
}

func (l *stLog) expectWarnings() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.allowed = true
}

// messages returns the messages logged at level or above.
func (l *stLog) messages(level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		if r.Level >= level {
			out = append(out, r.Message+stLogAttrs(r))
		}
	}
	return out
}

func (l *stLog) Enabled(_ context.Context, level slog.Level) bool { return level >= l.minLevel }
func (l *stLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}
func (l *stLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *stLog) WithGroup(string) slog.Handler      { return l }

// stIndexDir is CIPHERDIR/.kmsfs/index in a temp dir.
func stIndexDir(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), ".kmsfs", "index")
}

func openStIndex(t *testing.T, dir string, o IndexOptions) *Index {
	t.Helper()
	if o.Logger == nil {
		o.Logger, _ = newStLog(t)
	}
	ix, err := OpenIndex(dir, o)
	if err != nil {
		t.Fatalf("OpenIndex(%s, %+v): %v", dir, o, err)
	}
	t.Cleanup(func() {
		if err := ix.Close(); err != nil {
			t.Errorf("Close index: %v", err)
		}
	})
	return ix
}

func stHeader(n int, gen uint64) crypto.Header {
	edk := make([]byte, 81)
	for i := range edk {
		edk[i] = byte(n*31 + i)
	}
	return crypto.Header{
		FileID:     stID(n),
		Generation: gen,
		Keys: []crypto.WrappedKey{{
			KeyARN:     "arn:kmsfs:local:0123456789abcdef:key/fedcba9876543210",
			KeyVersion: uint32(n%3 + 1),
			EDK:        edk,
		}},
	}
}

func TestIndexPutGetDelete(t *testing.T) {
	ix := openStIndex(t, stIndexDir(t), IndexOptions{})
	h1, h2 := stHeader(1, 1), stHeader(2, 7)
	h2.Keys = append(h2.Keys, crypto.WrappedKey{KeyARN: "arn:aws:kms:eu-west-1:111122223333:key/abc", EDK: make([]byte, 184)})
	for _, h := range []crypto.Header{h1, h2} {
		if err := ix.Put(h); err != nil {
			t.Fatalf("Put(%s): %v", h.FileID, err)
		}
	}
	tests := []struct {
		name    string
		id      crypto.FileID
		want    crypto.Header
		wantErr error
	}{
		{name: "first", id: h1.FileID, want: h1},
		{name: "two keys", id: h2.FileID, want: h2},
		{name: "absent", id: stID(3), wantErr: ErrNotIndexed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ix.Get(tt.id)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Get error: got %v, want %v", err, tt.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Get: got %+v, want %+v", got, tt.want)
			}
		})
	}

	// Replace.
	h1b := stHeader(1, 2)
	h1b.Keys[0].KeyVersion = 9
	if err := ix.Put(h1b); err != nil {
		t.Fatal(err)
	}
	if got, err := ix.Get(h1.FileID); err != nil || !reflect.DeepEqual(got, h1b) {
		t.Fatalf("Get after replace: got %+v, %v, want %+v", got, err, h1b)
	}

	// Delete, twice.
	for range 2 {
		if err := ix.Delete(h1.FileID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	if _, err := ix.Get(h1.FileID); !errors.Is(err, ErrNotIndexed) {
		t.Fatalf("Get after Delete: got %v, want %v", err, ErrNotIndexed)
	}
	if n, err := ix.Count(); err != nil || n != 1 {
		t.Fatalf("Count() = %d, %v, want 1", n, err)
	}

	// An invalid header is refused, not stored.
	bad := stHeader(5, 0)
	if err := ix.Put(bad); !errors.Is(err, crypto.ErrBadHeader) {
		t.Fatalf("Put(generation 0): got %v, want %v", err, crypto.ErrBadHeader)
	}
	if got := ix.Path(); !strings.HasSuffix(got, filepath.Join(".kmsfs", "index")) {
		t.Fatalf("Path() = %q", got)
	}
}

func TestIndexForEachAndReopen(t *testing.T) {
	dir := stIndexDir(t)
	const n = 30000 // several memtables' worth (~5 MB of values)
	want := make(map[crypto.FileID]crypto.Header, n)
	logger, _ := newStLog(t) // fails the test on any badger warning
	ix, err := OpenIndex(dir, IndexOptions{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		h := stHeader(i, uint64(i+1))
		h.FileID[12] = byte(i >> 16)
		if err := ix.Put(h); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		want[h.FileID] = h
	}
	for i := 0; i < n; i += 3 {
		id := stID(i)
		id[12] = byte(i >> 16)
		if err := ix.Delete(id); err != nil {
			t.Fatal(err)
		}
		delete(want, id)
	}
	if err := ix.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ix.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := ix.Get(stID(1)); err == nil {
		t.Fatal("Get after Close: got no error")
	}

	for _, ro := range []bool{false, true} {
		t.Run(fmt.Sprintf("readonly=%v", ro), func(t *testing.T) {
			ix := openStIndex(t, dir, IndexOptions{ReadOnly: ro})
			got := make(map[crypto.FileID]crypto.Header, len(want))
			var prev crypto.FileID
			err := ix.ForEach(func(h crypto.Header) error {
				if len(got) > 0 && string(h.FileID[:]) <= string(prev[:]) {
					t.Errorf("ForEach order: %s after %s", h.FileID, prev)
				}
				prev = h.FileID
				got[h.FileID] = h
				return nil
			})
			if err != nil {
				t.Fatalf("ForEach: %v", err)
			}
			if len(got) != len(want) {
				t.Fatalf("ForEach saw %d headers, want %d", len(got), len(want))
			}
			for id, h := range want {
				if !reflect.DeepEqual(got[id], h) {
					t.Fatalf("header %s: got %+v, want %+v", id, got[id], h)
				}
			}
			if c, err := ix.Count(); err != nil || c != len(want) {
				t.Fatalf("Count() = %d, %v, want %d", c, err, len(want))
			}
			stop := errors.New("stop")
			calls := 0
			if err := ix.ForEach(func(crypto.Header) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
				t.Fatalf("ForEach stopping: got %v after %d calls, want %v after 1", err, calls, stop)
			}
		})
	}
}

func TestIndexCorruptValue(t *testing.T) {
	tests := []struct {
		name string
		val  func() []byte
	}{
		{name: "garbage", val: func() []byte { return []byte("not a header") }},
		{name: "empty", val: func() []byte { return []byte{} }},
		{name: "truncated", val: func() []byte { b, _ := stHeader(1, 1).Marshal(); return b[:len(b)-1] }},
		{name: "trailing byte", val: func() []byte { b, _ := stHeader(1, 1).Marshal(); return append(b, 0) }},
		{name: "another file's header", val: func() []byte { b, _ := stHeader(2, 1).Marshal(); return b }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := openStIndex(t, stIndexDir(t), IndexOptions{})
			id := stID(1)
			if err := ix.putRaw(id, tt.val()); err != nil {
				t.Fatal(err)
			}
			_, err := ix.Get(id)
			if !errors.Is(err, ErrIndexCorrupt) {
				t.Fatalf("Get: got %v, want %v", err, ErrIndexCorrupt)
			}
			if !strings.Contains(err.Error(), id.String()) {
				t.Errorf("Get error %q does not name file %s", err, id)
			}
			err = ix.ForEach(func(crypto.Header) error { return nil })
			if !errors.Is(err, ErrIndexCorrupt) {
				t.Fatalf("ForEach: got %v, want %v", err, ErrIndexCorrupt)
			}
		})
	}
}

func TestIndexLocked(t *testing.T) {
	dir := stIndexDir(t)
	tests := []struct {
		name   string
		first  bool // first open read-only
		second bool // second open read-only
		wantOK bool
	}{
		{name: "rw then rw", first: false, second: false},
		{name: "rw then ro", first: false, second: true},
		{name: "ro then rw", first: true, second: false},
		{name: "ro then ro", first: true, second: true, wantOK: true},
	}
	// Create the database once so read-only opens find it.
	ix, err := OpenIndex(dir, IndexOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.Put(stHeader(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, err := OpenIndex(dir, IndexOptions{ReadOnly: tt.first})
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			second, err := OpenIndex(dir, IndexOptions{ReadOnly: tt.second})
			if tt.wantOK {
				if err != nil {
					t.Fatalf("second open: %v", err)
				}
				second.Close()
				return
			}
			if err == nil {
				second.Close()
				t.Fatalf("second open: got no error, want %v", ErrIndexLocked)
			}
			if !errors.Is(err, ErrIndexLocked) {
				t.Fatalf("second open: got %v, want %v", err, ErrIndexLocked)
			}
			if !strings.Contains(err.Error(), "is the cipher directory mounted? unmount it or run the command through the mount") {
				t.Errorf("error %q lacks the advice", err)
			}
			// The first handle is unharmed.
			if _, err := first.Get(stID(1)); err != nil {
				t.Errorf("first handle Get: %v", err)
			}
		})
	}
}

func TestIndexReadOnly(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		_, err := OpenIndex(stIndexDir(t), IndexOptions{ReadOnly: true})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("read-only open of a missing index: got %v, want %v", err, fs.ErrNotExist)
		}
	})
	t.Run("no writes", func(t *testing.T) {
		dir := stIndexDir(t)
		rw := openStIndex(t, dir, IndexOptions{})
		if err := rw.Put(stHeader(1, 1)); err != nil {
			t.Fatal(err)
		}
		if err := rw.Close(); err != nil {
			t.Fatal(err)
		}
		ro := openStIndex(t, dir, IndexOptions{ReadOnly: true})
		if !ro.ReadOnly() {
			t.Fatal("ReadOnly() = false")
		}
		if got, err := ro.Get(stID(1)); err != nil || !reflect.DeepEqual(got, stHeader(1, 1)) {
			t.Fatalf("Get: got %+v, %v", got, err)
		}
		if err := ro.Put(stHeader(2, 1)); err == nil {
			t.Fatal("Put on a read-only index: got no error")
		}
		if err := ro.Delete(stID(1)); err == nil {
			t.Fatal("Delete on a read-only index: got no error")
		}
	})
}

func TestIndexCorruptDirectory(t *testing.T) {
	cipherDir := t.TempDir()
	dir := filepath.Join(cipherDir, ".kmsfs", "index")
	ix, err := OpenIndex(dir, IndexOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.Put(stHeader(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "MANIFEST"), []byte("this is not a badger manifest at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		logger, tl := newStLog(t)
		tl.expectWarnings()
		_, err := OpenIndex(dir, IndexOptions{ReadOnly: ro, Logger: logger})
		if !errors.Is(err, ErrIndexCorrupt) {
			t.Fatalf("open (read-only %v) of a corrupt index: got %v, want %v", ro, err, ErrIndexCorrupt)
		}
		want := "run `kmsfs fsck --repair " + cipherDir + "` to rebuild it from the file headers"
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestCipherDirOf(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/srv/vault/.kmsfs/index", "/srv/vault"},
		{"/srv/vault/.kmsfs/index/", "/srv/vault"},
		{"/tmp/idx", "CIPHERDIR"},
	}
	for _, tt := range tests {
		if got := cipherDirOf(tt.in); got != tt.want {
			t.Errorf("cipherDirOf(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestBadgerLoggerLevels(t *testing.T) {
	logger, tl := newStLog(t)
	tl.expectWarnings()
	l := badgerLogger{log: logger}
	l.Infof("replaying %d\n", 1)
	l.Debugf("debug %d", 2)
	l.Warningf("warn %d\n", 3)
	l.Errorf("error %d", 4)
	got := tl.messages(slog.LevelDebug)
	want := []string{"badger: warn 3", "badger: error 4"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("logged: got %q, want %q", got, want)
	}
}

// TestIndexAfterCrash runs a child process (this test binary, re-executed)
// that writes entries and exits without closing the index, like a mount
// that was killed. The entries must survive (the durability promise for a
// process crash); a read-only open must explain itself; a read-write open
// recovers.
func TestIndexAfterCrash(t *testing.T) {
	if dir := os.Getenv("KMSFS_TEST_CRASH_INDEX"); dir != "" {
		ix, err := OpenIndex(dir, IndexOptions{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for i := range 100 {
			if err := ix.Put(stHeader(i, 1)); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
		}
		os.Exit(0) // no Close: a crash
	}
	cipherDir := t.TempDir()
	dir := filepath.Join(cipherDir, ".kmsfs", "index")
	cmd := exec.Command(os.Args[0], "-test.run=^TestIndexAfterCrash$")
	cmd.Env = append(os.Environ(), "KMSFS_TEST_CRASH_INDEX="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}

	_, err := OpenIndex(dir, IndexOptions{ReadOnly: true})
	if !errors.Is(err, ErrIndexCorrupt) {
		t.Fatalf("read-only open after a crash: got %v, want %v", err, ErrIndexCorrupt)
	}
	if want := "not closed cleanly"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}

	ix := openStIndex(t, dir, IndexOptions{})
	if n, err := ix.Count(); err != nil || n != 100 {
		t.Fatalf("Count() after a crash = %d, %v, want 100", n, err)
	}
	if got, err := ix.Get(stID(42)); err != nil || !reflect.DeepEqual(got, stHeader(42, 1)) {
		t.Fatalf("Get after a crash: got %+v, %v", got, err)
	}
}
