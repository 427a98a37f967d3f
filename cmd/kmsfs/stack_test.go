package main

import (
	"os"
	"path/filepath"
	"testing"
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
