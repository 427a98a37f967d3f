package fs

import (
	"bytes"
	"log"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"
)

// requestLog collects go-fuse's debug trace and counts requests by opcode.
type requestLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *requestLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

var rxRE = regexp.MustCompile(`rx \d+: ([A-Z_]+) `)

// counts returns the requests received since the last call, by opcode.
func (l *requestLog) counts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := map[string]int{}
	for _, m := range rxRE.FindAllSubmatch(l.buf.Bytes(), -1) {
		c[string(m[1])]++
	}
	l.buf.Reset()
	return c
}

// TestRequestsPerOperation pins the FUSE round trips of the hot metadata
// paths (docs/performance.md, "What limits each workload"): a create and a
// delete cost no GETATTR of the parent (no default_permissions without
// --allow-other), a close no FLUSH (FOPEN_NOFLUSH), and a stat after
// chmod or utimes no GETATTR (SETATTR replies carry the attribute
// timeout).
func TestRequestsPerOperation(t *testing.T) {
	e := newTestFS(t)
	rl := &requestLog{}
	e.mo.Debug, e.mo.DebugLog = true, log.New(rl, "", 0)
	e.remount()
	if err := os.Mkdir(e.p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	// RELEASE is sent after close(2) returns: wait for it.
	settle := func(want map[string]int) map[string]int {
		deadline := time.Now().Add(5 * time.Second)
		got := map[string]int{}
		for {
			for op, n := range rl.counts() {
				got[op] += n
			}
			if got["RELEASE"] >= want["RELEASE"] || time.Now().After(deadline) {
				return got
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rl.counts()
	tests := []struct {
		name string
		op   func() error
		want map[string]int // exact counts; opcodes absent must not occur
	}{
		{"create, write, close", func() error {
			f, err := os.OpenFile(e.p("d/f"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			if _, err := f.Write([]byte("four kilobytes would do as well")); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}, map[string]int{"LOOKUP": 1, "CREATE": 1, "GETXATTR": 1, "WRITE": 1, "RELEASE": 1}},
		{"chmod, stat", func() error {
			if err := os.Chmod(e.p("d/f"), 0o600); err != nil {
				return err
			}
			_, err := os.Stat(e.p("d/f"))
			return err
		}, map[string]int{"SETATTR": 1}},
		{"utimes, stat", func() error {
			ts := time.Unix(1_000_000_000, 0)
			if err := os.Chtimes(e.p("d/f"), ts, ts); err != nil {
				return err
			}
			_, err := os.Stat(e.p("d/f"))
			return err
		}, map[string]int{"SETATTR": 1}},
		{"unlink", func() error { return os.Remove(e.p("d/f")) }, map[string]int{"UNLINK": 1}},
	}
	for _, tc := range tests {
		if err := tc.op(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := settle(tc.want)
		delete(got, "FORGET") // sent when the kernel drops an inode: whenever it likes
		for op, n := range got {
			if tc.want[op] != n {
				t.Errorf("%s: %d %s request(s), want %d (all: %v)", tc.name, n, op, tc.want[op], got)
			}
		}
		for op, n := range tc.want {
			if got[op] != n {
				t.Errorf("%s: %d %s request(s), want %d (all: %v)", tc.name, got[op], op, n, got)
			}
		}
	}
}

// TestRequestsSecurityCapability pins where the kernel asks for
// security.capability (a GETXATTR round trip) with the mount's
// CAP_HANDLE_KILLPRIV_V2 (killpriv.go): before the first write after it
// (re)loads a file's attributes (a create, a GETATTR, a SETATTR reply),
// before every truncate after such a reload, and before every chown of a
// file, never before a later write, a chmod or a directory's chown; with
// NoXattr (the kernel saw ENOSYS once) never. If a kernel stops asking,
// this test fails and --no-xattr loses its reason (docs/performance.md).
func TestRequestsSecurityCapability(t *testing.T) {
	write := func(p string) func() error {
		return func() error {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			if _, err := f.Write([]byte("more")); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}
	}
	getxattrRE := regexp.MustCompile(`rx \d+: GETXATTR n\d+ \{[^}]*\} "([^"]*)"`)
	for _, noXattr := range []bool{false, true} {
		e := newTestFS(t)
		rl := &requestLog{}
		e.mo.Debug, e.mo.DebugLog, e.mo.NoXattr = true, log.New(rl, "", 0), noXattr
		e.remount()
		// With NoXattr the kernel learns ENOSYS from its first GETXATTR.
		if err := write(e.p("warm-up"))(); err != nil {
			t.Fatal(err)
		}
		rl.counts()
		tests := []struct {
			name string
			op   func() error
			want int // GETXATTR requests of the default mount
		}{
			{"create, write", write(e.p("f")), 1},
			{"write again", write(e.p("f")), 0},
			{"stat, write", func() error {
				if _, err := os.Stat(e.p("f")); err != nil {
					return err
				}
				return write(e.p("f"))()
			}, 1},
			{"chown", func() error { return os.Chown(e.p("f"), 1000, 1000) }, 1},
			{"chown again", func() error { return os.Chown(e.p("f"), 1001, 1001) }, 1},
			{"chmod", func() error { return os.Chmod(e.p("f"), 0o600) }, 0},
			{"truncate", func() error { return os.Truncate(e.p("f"), 1) }, 1},
			{"mkdir, chown", func() error {
				if err := os.Mkdir(e.p("d"), 0o755); err != nil {
					return err
				}
				return os.Chown(e.p("d"), 1000, 1000)
			}, 0},
		}
		for _, tc := range tests {
			if err := tc.op(); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			// A GETXATTR is sent inside the system call that needs it:
			// once the call has returned, its requests are in the log.
			rl.mu.Lock()
			trace := rl.buf.String()
			rl.mu.Unlock()
			got := rl.counts()["GETXATTR"]
			want := tc.want
			if noXattr {
				want = 0
			}
			if got != want {
				t.Errorf("NoXattr %v, %s: %d GETXATTR request(s), want %d", noXattr, tc.name, got, want)
			}
			for _, m := range getxattrRE.FindAllStringSubmatch(trace, -1) {
				if m[1] != "security.capability" {
					t.Errorf("NoXattr %v, %s: GETXATTR of %q, want only security.capability", noXattr, tc.name, m[1])
				}
			}
		}
	}
}
