package keymgr

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKeyringDirPermissions: the keyring's directory is checked on open
// (and create): writable by group or others, or another user's, is
// refused with the chmod to run; kmsfs's default directory must be 0700;
// a directory the user chose may be readable by others.
func TestKeyringDirPermissions(t *testing.T) {
	tests := []struct {
		name       string
		mode       os.FileMode
		defaultDir bool // the directory is $XDG_CONFIG_HOME/kmsfs
		wantErr    bool
	}{
		{"0700", 0o700, false, false},
		{"0755 chosen", 0o755, false, false},
		{"0750 chosen", 0o750, false, false},
		{"0777", 0o777, false, true},
		{"0770", 0o770, false, true},
		{"0702", 0o702, false, true},
		{"1777 sticky", 0o777 | os.ModeSticky, false, true},
		{"0700 default", 0o700, true, false},
		{"0755 default", 0o755, true, true},
		{"0750 default", 0o750, true, true},
		{"0770 default", 0o770, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			xdg := t.TempDir()
			t.Setenv("XDG_CONFIG_HOME", xdg)
			dir := filepath.Join(t.TempDir(), "chosen")
			if tt.defaultDir {
				dir = filepath.Join(xdg, "kmsfs")
			}
			path := filepath.Join(dir, "keyring.json")
			k, err := CreateKeyring(path, []byte(testPassphrase), cheapKeyringOptions())
			if err != nil {
				t.Fatal(err)
			}
			k.Close()
			if err := os.Chmod(dir, tt.mode); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
			k, err = OpenKeyring(path, []byte(testPassphrase), KeyringOptions{})
			if k != nil {
				k.Close()
			}
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("OpenKeyring in a %v directory: %v", tt.mode, err)
				}
				return
			}
			if !errors.Is(err, ErrKeyringInsecure) {
				t.Fatalf("OpenKeyring in a %v directory: got %v, want ErrKeyringInsecure", tt.mode, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "chmod 700 "+dir) || !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the keyring and `chmod 700 %s`", msg, dir)
			}
			// A new keyring is not created there either.
			other := filepath.Join(dir, "other.json")
			if k, err := CreateKeyring(other, []byte(testPassphrase), cheapKeyringOptions()); !errors.Is(err, ErrKeyringInsecure) {
				if k != nil {
					k.Close()
				}
				t.Errorf("CreateKeyring in a %v directory: got %v, want ErrKeyringInsecure", tt.mode, err)
			}
			if _, err := os.Lstat(other); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("CreateKeyring in a %v directory left %s: %v", tt.mode, other, err)
			}
		})
	}
}

// TestKeyringDirOwner: a directory of another user is refused (run as
// root, which can make one); root's own are fine, as for everyone.
func TestKeyringDirOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a directory to another user")
	}
	_, path := newTestKeyring(t)
	dir := filepath.Dir(path)
	if err := os.Chown(dir, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	k, err := OpenKeyring(path, []byte(testPassphrase), KeyringOptions{})
	if k != nil {
		k.Close()
	}
	if !errors.Is(err, ErrKeyringInsecure) || !strings.Contains(err.Error(), "belongs to user 12345") {
		t.Errorf("OpenKeyring in another user's directory: got %v, want ErrKeyringInsecure naming the owner", err)
	}
	if err := os.Chown(dir, 0, 0); err != nil {
		t.Fatal(err)
	}
	openTestKeyring(t, path, KeyringOptions{})
}

// TestKeyringSymlinkNotFollowed: a keyring file that is a symlink is
// refused, whatever it points to.
func TestKeyringSymlinkNotFollowed(t *testing.T) {
	_, path := newTestKeyring(t)
	link := filepath.Join(filepath.Dir(path), "link.json")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	k, err := OpenKeyring(link, []byte(testPassphrase), KeyringOptions{})
	if k != nil {
		k.Close()
	}
	if !errors.Is(err, ErrKeyringInsecure) || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("OpenKeyring of a symlink: got %v, want ErrKeyringInsecure naming the symlink", err)
	}
}

// TestKeyringArgonCaps: a keyring file whose KDF parameters exceed what a
// user would choose (a planted file claiming 4 GiB) is refused as corrupt
// before the KDF runs, so fast; parameters at the caps still parse, and
// CreateKeyring refuses to write any beyond them.
func TestKeyringArgonCaps(t *testing.T) {
	_, path := newTestKeyring(t)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(fields map[string]any) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		for f, v := range fields {
			m[f] = v
		}
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name   string
		fields map[string]any
		want   error // nil: parses
	}{
		{"4 GiB, 64 passes", map[string]any{"memory_kib": 4 << 20, "time": 64, "threads": 4}, ErrKeyringCorrupt},
		{"4 GiB", map[string]any{"memory_kib": 4 << 20}, ErrKeyringCorrupt},
		{"1 GiB + 1 KiB", map[string]any{"memory_kib": 1<<20 + 1}, ErrKeyringCorrupt},
		{"17 passes", map[string]any{"time": 17}, ErrKeyringCorrupt},
		{"17 threads", map[string]any{"threads": 17, "memory_kib": 1 << 16}, ErrKeyringCorrupt},
		{"255 threads", map[string]any{"threads": 255, "memory_kib": 1 << 16}, ErrKeyringCorrupt},
		{"at the caps", map[string]any{"memory_kib": 1 << 20, "time": 16, "threads": 16}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := edit(tt.fields)
			if _, err := parseKeyringFile(data); !errors.Is(err, tt.want) && (tt.want != nil || err != nil) {
				t.Fatalf("parse: got %v, want %v", err, tt.want)
			}
			if tt.want == nil {
				return // running a 1 GiB KDF is not this test's business
			}
			p := filepath.Join(t.TempDir(), "keyring.json")
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			k, err := OpenKeyring(p, []byte(testPassphrase), KeyringOptions{})
			if k != nil {
				k.Close()
			}
			if took := time.Since(start); took > 500*time.Millisecond {
				t.Errorf("OpenKeyring took %v: the KDF ran", took)
			}
			if !errors.Is(err, ErrKeyringCorrupt) || !strings.Contains(err.Error(), "restore it from a backup") || !strings.Contains(err.Error(), p) {
				t.Errorf("OpenKeyring: got %v, want ErrKeyringCorrupt naming the file and the fix", err)
			}
		})
	}
	for _, o := range []KeyringOptions{
		{ArgonTime: maxArgonTime + 1, ArgonMemoryKiB: 64, ArgonThreads: 1},
		{ArgonTime: 1, ArgonMemoryKiB: maxArgonMemoryKiB + 1, ArgonThreads: 1},
		{ArgonTime: 1, ArgonMemoryKiB: 1024, ArgonThreads: maxArgonThreads + 1},
	} {
		p := filepath.Join(t.TempDir(), "keyring.json")
		if k, err := CreateKeyring(p, []byte(testPassphrase), o); err == nil {
			k.Close()
			t.Errorf("CreateKeyring(%+v): got nil error, want one", o)
		}
	}
	if DefaultArgonTime > maxArgonTime || DefaultArgonMemoryKiB > maxArgonMemoryKiB || DefaultArgonThreads > maxArgonThreads {
		t.Errorf("the default Argon2id parameters exceed the caps")
	}
}
