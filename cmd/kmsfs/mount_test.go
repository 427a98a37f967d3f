package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFuseConfAllowsOther(t *testing.T) {
	tests := []struct {
		name, conf string
		want       bool
	}{
		{"debian default", "# mount_max = 1000\n#user_allow_other\n", false},
		{"enabled", "# comment\nuser_allow_other\n", true},
		{"enabled with spaces", "  user_allow_other  \n", true},
		{"empty", "", false},
		{"other option", "mount_max = 10\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "fuse.conf")
			if err := os.WriteFile(p, []byte(tt.conf), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := fuseConfAllowsOther(p); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	if fuseConfAllowsOther(filepath.Join(t.TempDir(), "missing")) {
		t.Error("missing fuse.conf: got true, want false")
	}
}
