package cipherdir

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobodyUID owns the directories another user could swap.
const nobodyUID = 65534

// TestRuntimeDirTrust: a runtime directory base that another user owns,
// that others may write, that is a symlink, or that sits below a
// directory another user owns is never used; the next spot is. A kmsfs
// directory someone else made in a trusted base is an error, not used.
func TestRuntimeDirTrust(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown directories to another user")
	}
	euid := os.Geteuid()
	// mode as chmod(2) takes it: 0o1000 is the sticky bit.
	mk := func(t *testing.T, p string, mode uint32, uid int) string {
		t.Helper()
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		// setup returns the XDG_RUNTIME_DIR to try; the fallback
		// run/user and tmp bases below base are trusted.
		setup   func(t *testing.T, base string) string
		want    string // relative to base; "" = an error
		wantErr string
	}{
		{"own 0700 xdg is used", func(t *testing.T, b string) string {
			return mk(t, filepath.Join(b, "xdg"), 0o700, euid)
		}, "xdg/kmsfs", ""},
		{"xdg of another user is skipped", func(t *testing.T, b string) string {
			return mk(t, filepath.Join(b, "xdg"), 0o700, nobodyUID)
		}, "runuser/0/kmsfs", ""},
		{"0777 xdg is skipped", func(t *testing.T, b string) string {
			return mk(t, filepath.Join(b, "xdg"), 0o777, euid)
		}, "runuser/0/kmsfs", ""},
		{"sticky 1777 xdg is skipped", func(t *testing.T, b string) string {
			return mk(t, filepath.Join(b, "xdg"), 0o1777, euid)
		}, "runuser/0/kmsfs", ""},
		{"group-writable xdg is skipped", func(t *testing.T, b string) string {
			return mk(t, filepath.Join(b, "xdg"), 0o770, euid)
		}, "runuser/0/kmsfs", ""},
		{"symlinked xdg is skipped", func(t *testing.T, b string) string {
			real := mk(t, filepath.Join(b, "real"), 0o700, euid)
			if err := os.Symlink(real, filepath.Join(b, "xdg")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(b, "xdg")
		}, "runuser/0/kmsfs", ""},
		{"xdg below another user's directory is skipped", func(t *testing.T, b string) string {
			// nobody could rename "home" away and put their own
			// tree in its place.
			mk(t, filepath.Join(b, "home"), 0o755, nobodyUID)
			return mk(t, filepath.Join(b, "home", "xdg"), 0o700, euid)
		}, "runuser/0/kmsfs", ""},
		{"no run/user: the private temp directory", func(t *testing.T, b string) string {
			os.Chown(filepath.Join(b, "runuser", "0"), nobodyUID, nobodyUID)
			return mk(t, filepath.Join(b, "xdg"), 0o777, euid)
		}, "tmp/kmsfs-0", ""},
		{"a kmsfs directory of another user in the own xdg is refused", func(t *testing.T, b string) string {
			x := mk(t, filepath.Join(b, "xdg"), 0o700, euid)
			mk(t, filepath.Join(x, "kmsfs"), 0o700, nobodyUID)
			return x
		}, "", "owned by uid 65534"},
		{"a 0755 kmsfs directory is refused", func(t *testing.T, b string) string {
			x := mk(t, filepath.Join(b, "xdg"), 0o700, euid)
			mk(t, filepath.Join(x, "kmsfs"), 0o755, euid)
			return x
		}, "", "mode 0755"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			mk(t, filepath.Join(base, "runuser", "0"), 0o700, euid)
			mk(t, filepath.Join(base, "tmp"), 0o1777, euid)
			xdg := tt.setup(t, base)
			spots := runtimeSpots(xdg, 0, filepath.Join(base, "runuser"), filepath.Join(base, "tmp"))
			got, err := runtimeDirIn(spots, euid)
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want %s", err, tt.want)
			}
			if want := filepath.Join(base, tt.want); got != want {
				t.Errorf("got %v, want %v", got, want)
			}
			fi, err := os.Lstat(got)
			if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
				t.Errorf("runtime dir %s: %v, %v; want a directory of mode 0700", got, fi, err)
			}
		})
	}
}

// TestRuntimeDirNoTrustedSpot: with every spot untrusted there is no
// runtime directory, and the error names each reason.
func TestRuntimeDirNoTrustedSpot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown directories to another user")
	}
	base := t.TempDir()
	for _, d := range []string{"xdg", "tmp"} {
		p := filepath.Join(base, d)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, nobodyUID, nobodyUID); err != nil {
			t.Fatal(err)
		}
	}
	spots := runtimeSpots(filepath.Join(base, "xdg"), 0, filepath.Join(base, "runuser"), filepath.Join(base, "tmp"))
	got, err := runtimeDirIn(spots, os.Geteuid())
	if err == nil {
		t.Fatalf("got %s, want an error", got)
	}
	for _, want := range []string{"xdg is owned by uid 65534", "runuser: no such file", "tmp is owned by uid 65534"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
