package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain gives the package's tests their own configuration home, so the
// trust records init writes (trust.go) land in a temporary directory, not
// in the user's ~/.config.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmsfs-cmd-test-config-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("XDG_CONFIG_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
