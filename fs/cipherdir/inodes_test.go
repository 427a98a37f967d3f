package cipherdir

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestInodeSet: a second link of a file is not new, a distinct file is,
// whichever kind of stat names it, and concurrent adds of one file let
// exactly one through.
func TestInodeSet(t *testing.T) {
	dir := t.TempDir()
	a, b, link := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "link-of-a")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(a, link); err != nil {
		t.Fatal(err)
	}
	lstat := func(p string) os.FileInfo {
		t.Helper()
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	// StatInfo carries a *unix.Stat_t, os.Lstat a *syscall.Stat_t.
	var st unix.Stat_t
	if err := unix.Lstat(link, &st); err != nil {
		t.Fatal(err)
	}
	var s InodeSet
	steps := []struct {
		name string
		fi   os.FileInfo
		want bool
	}{
		{"a", lstat(a), true},
		{"a again", lstat(a), false},
		{"b", lstat(b), true},
		{"link of a (os.Lstat)", lstat(link), false},
		{"link of a (StatInfo)", StatInfo("link-of-a", &st), false},
		{"no stat", fakeInfo{}, true},
		{"no stat again", fakeInfo{}, true},
	}
	for _, s2 := range steps {
		if got := s.Add(s2.fi); got != s2.want {
			t.Errorf("Add(%s): got %v, want %v", s2.name, got, s2.want)
		}
	}
	if got := s.Len(); got != 2 {
		t.Errorf("Len: got %d, want 2", got)
	}

	var par InodeSet
	var wg sync.WaitGroup
	var mu sync.Mutex
	firsts := 0
	fi := lstat(a)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if par.Add(fi) {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firsts != 1 {
		t.Errorf("concurrent adds of one file: %d were first, want 1", firsts)
	}
}

// fakeInfo is an os.FileInfo with no stat behind it.
type fakeInfo struct{}

func (fakeInfo) Name() string       { return "fake" }
func (fakeInfo) Size() int64        { return 0 }
func (fakeInfo) Mode() os.FileMode  { return 0 }
func (fakeInfo) ModTime() time.Time { return time.Time{} }
func (fakeInfo) IsDir() bool        { return false }
func (fakeInfo) Sys() any           { return nil }
