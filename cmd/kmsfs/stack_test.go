package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/keymgr"
)

// TestReplaceIndexTwice: two replacements within one second keep both
// old indexes (the second must not fail on, nor overwrite, the first).
func TestReplaceIndexTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index")
	var asides []string
	for i := 0; i < 3; i++ {
		if err := os.MkdirAll(path, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(path, "MANIFEST"), []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		ix, aside, err := replaceIndex(path, nil)
		if err != nil {
			t.Fatalf("replace %d: %v", i, err)
		}
		if err := ix.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
		asides = append(asides, aside)
	}
	seen := map[string]bool{}
	for _, a := range asides {
		if a == "" || seen[a] {
			t.Fatalf("moved-aside names %q: want three distinct names", asides)
		}
		seen[a] = true
		if b, err := os.ReadFile(filepath.Join(a, "MANIFEST")); err != nil || string(b) != "garbage" {
			t.Errorf("%s: old index not kept: %q, %v", a, b, err)
		}
	}
	if _, aside, err := replaceIndex(filepath.Join(t.TempDir(), "none"), nil); err != nil || aside != "" {
		t.Errorf("no index to move: aside %q, %v; want \"\", nil", aside, err)
	}
}

// TestOpenCipherIndexRefusesSymlinks: badger opens its files by path, so
// an index that is, or holds, a symlink (a writer pointing it at a file
// elsewhere) is treated as corrupt (moved aside and rebuilt by the mount
// and fsck --repair), and a symlinked .kmsfs is refused outright; the
// target is never written.
func TestOpenCipherIndexRefusesSymlinks(t *testing.T) {
	for _, tc := range []struct {
		name        string
		plant       func(t *testing.T, dir, outside string)
		wantCorrupt bool
	}{
		{"index is a symlink", func(t *testing.T, dir, outside string) {
			mustMkdir(t, filepath.Join(dir, ".kmsfs"))
			mustSymlink(t, outside, filepath.Join(dir, ".kmsfs", "index"))
		}, true},
		{"index holds a symlink", func(t *testing.T, dir, outside string) {
			mustMkdir(t, filepath.Join(dir, ".kmsfs"))
			mustMkdir(t, filepath.Join(dir, ".kmsfs", "index"))
			mustSymlink(t, filepath.Join(outside, "victim"), filepath.Join(dir, ".kmsfs", "index", "000001.vlog"))
		}, true},
		{".kmsfs is a symlink", func(t *testing.T, dir, outside string) {
			mustSymlink(t, outside, filepath.Join(dir, ".kmsfs"))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, outside := t.TempDir(), t.TempDir()
			if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, dir, outside)
			ix, err := openCipherIndex(dir, keymgr.IndexOptions{})
			if err == nil {
				ix.Close()
				t.Fatal("openCipherIndex: got nil error")
			}
			if got := errors.Is(err, keymgr.ErrIndexCorrupt); got != tc.wantCorrupt {
				t.Errorf("errors.Is(%v, ErrIndexCorrupt): got %v, want %v", err, got, tc.wantCorrupt)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("outside directory changed: %d entries", len(ents))
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "victim")); string(b) != "keep" {
				t.Errorf("victim changed: %q", b)
			}
		})
	}
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}
