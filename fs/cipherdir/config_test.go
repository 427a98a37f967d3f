package cipherdir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validConf = `{
  "format": 1,
  "filesystem_id": "4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12",
  "provider": "local",
  "key": "alias/kmsfs/default",
  "key_arn": "arn:kmsfs:local:0123:key/abcd",
  "keyring": "/home/u/.config/kmsfs/keyring.json",
  "chunk_shift": 12,
  "slot_shift": 9,
  "features": {"name_encryption": false}
}`

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		conf    string
		wantErr error  // nil: valid
		wantMsg string // substring of the error message
	}{
		{name: "valid", conf: validConf},
		{name: "valid no features", conf: strings.Replace(validConf, `"features": {"name_encryption": false}`, `"features": {}`, 1)},
		{name: "valid aws no keyring", conf: strings.NewReplacer(`"local"`, `"aws"`, `"keyring": "/home/u/.config/kmsfs/keyring.json",`, ``).Replace(validConf)},
		{name: "valid 1 MiB chunks", conf: strings.Replace(validConf, `"chunk_shift": 12`, `"chunk_shift": 20`, 1)},
		{name: "unknown field", conf: strings.Replace(validConf, `"format": 1,`, `"format": 1, "colour": "blue",`, 1), wantErr: ErrBadConfig, wantMsg: `unknown field "colour"`},
		{name: "unknown feature", conf: strings.Replace(validConf, `{"name_encryption": false}`, `{"name_encryption": false, "dedup": true}`, 1), wantErr: ErrUnknownFeature, wantMsg: `"dedup"`},
		{name: "unknown feature off", conf: strings.Replace(validConf, `{"name_encryption": false}`, `{"dedup": false}`, 1), wantErr: ErrUnknownFeature, wantMsg: `"dedup"`},
		{name: "name encryption on", conf: strings.Replace(validConf, `"name_encryption": false`, `"name_encryption": true`, 1)},
		{name: "chunk shift too small", conf: strings.Replace(validConf, `"chunk_shift": 12`, `"chunk_shift": 11`, 1), wantErr: ErrBadConfig, wantMsg: "chunk_shift 11"},
		{name: "chunk shift too large", conf: strings.Replace(validConf, `"chunk_shift": 12`, `"chunk_shift": 21`, 1), wantErr: ErrBadConfig, wantMsg: "chunk_shift 21"},
		{name: "slot shift too large", conf: strings.Replace(validConf, `"slot_shift": 9`, `"slot_shift": 14`, 1), wantErr: ErrBadConfig, wantMsg: "slot_shift 14"},
		{name: "negative shift", conf: strings.Replace(validConf, `"chunk_shift": 12`, `"chunk_shift": -1`, 1), wantErr: ErrBadConfig},
		{name: "fs id short", conf: strings.Replace(validConf, `4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12`, `4f0c1e8a`, 1), wantErr: ErrBadConfig, wantMsg: "filesystem_id"},
		{name: "fs id not hex", conf: strings.Replace(validConf, `4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12`, `zz0c1e8a9b2d4c6e8f1a3b5c7d9e0f12`, 1), wantErr: ErrBadConfig, wantMsg: "filesystem_id"},
		{name: "fs id upper case", conf: strings.Replace(validConf, `4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12`, `4F0C1E8A9B2D4C6E8F1A3B5C7D9E0F12`, 1), wantErr: ErrBadConfig, wantMsg: "filesystem_id"},
		{name: "format 2", conf: strings.Replace(validConf, `"format": 1`, `"format": 2`, 1), wantErr: ErrUnsupportedFormat},
		{name: "format missing", conf: strings.Replace(validConf, `"format": 1,`, ``, 1), wantErr: ErrUnsupportedFormat},
		{name: "bad provider", conf: strings.Replace(validConf, `"local"`, `"vault"`, 1), wantErr: ErrBadConfig, wantMsg: "provider"},
		{name: "local without keyring", conf: strings.Replace(validConf, `"keyring": "/home/u/.config/kmsfs/keyring.json",`, ``, 1), wantErr: ErrBadConfig, wantMsg: "keyring"},
		{name: "relative keyring", conf: strings.Replace(validConf, `/home/u/.config`, `home/u/.config`, 1), wantErr: ErrBadConfig, wantMsg: "keyring"},
		{name: "empty key", conf: strings.Replace(validConf, `"alias/kmsfs/default"`, `""`, 1), wantErr: ErrBadConfig, wantMsg: "key is empty"},
		{name: "key arn not an arn", conf: strings.Replace(validConf, `arn:kmsfs:local:0123:key/abcd`, `abcd`, 1), wantErr: ErrBadConfig, wantMsg: "key_arn"},
		{name: "trailing data", conf: validConf + `{}`, wantErr: ErrBadConfig, wantMsg: "trailing"},
		{name: "not json", conf: `format = 1`, wantErr: ErrBadConfig},
		{name: "empty", conf: ``, wantErr: ErrBadConfig},
		{name: "wrong type", conf: strings.Replace(validConf, `"format": 1`, `"format": "1"`, 1), wantErr: ErrBadConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.conf))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("got error %v, want nil", err)
				}
				if err := c.Validate(); err != nil {
					t.Fatalf("Validate of parsed config: got %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("got message %q, want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	id, err := NewFilesystemID(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := New(id, ProviderLocal, "alias/kmsfs/default", "arn:kmsfs:local:k:key/1", "/k/keyring.json", 16)
	if err := Save(dir, want); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if !IsCipherDir(dir) {
		t.Fatalf("IsCipherDir: got false, want true")
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got.FilesystemID != want.FilesystemID || got.KeyARN != want.KeyARN || got.Layout() != want.Layout() ||
		got.Keyring != want.Keyring || len(got.Features) != 1 {
		t.Errorf("got %+v, want %+v", got, want)
	}
	fi, err := os.Stat(ConfPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o644); got != want {
		t.Errorf("mode: got %v, want %v", got, want)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("entries after Save: got %d, want 1 (no temp file left)", len(entries))
	}
}

func TestEncryptedNames(t *testing.T) {
	id, err := NewFilesystemID(nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		set  bool // call SetEncryptedNames(on); else keep New's default
		on   bool
		want bool
	}{
		{name: "default off", want: false},
		{name: "switched on", set: true, on: true, want: true},
		{name: "switched off", set: true, on: false, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := New(id, ProviderLocal, "alias/kmsfs/default", "arn:kmsfs:local:k:key/1", "/k/keyring.json", 12)
			orig := c
			if tt.set {
				c.SetEncryptedNames(tt.on)
			}
			if got := c.EncryptedNames(); got != tt.want {
				t.Fatalf("EncryptedNames: got %v, want %v", got, tt.want)
			}
			if orig.EncryptedNames() {
				t.Errorf("SetEncryptedNames changed a copy made before it")
			}
			if err := Save(dir, c); err != nil {
				t.Fatalf("Save: %v", err)
			}
			got, err := Load(dir)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got.EncryptedNames() != tt.want || len(got.Features) != 1 {
				t.Errorf("loaded: EncryptedNames %v, features %v; want %v and one feature", got.EncryptedNames(), got.Features, tt.want)
			}
			b, _ := os.ReadFile(ConfPath(dir))
			if want := fmt.Sprintf(`"name_encryption": %v`, tt.want); !strings.Contains(string(b), want) {
				t.Errorf("kmsfs.conf %s: no %s", b, want)
			}
		})
	}
	var zero Config
	zero.SetEncryptedNames(true)
	if !zero.EncryptedNames() {
		t.Errorf("SetEncryptedNames on a config without features: got off, want on")
	}
}

func TestSaveRefusesInvalid(t *testing.T) {
	dir := t.TempDir()
	c := New("nothex", ProviderLocal, "k", "arn:x", "/k", 12)
	if err := Save(dir, c); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("got %v, want %v", err, ErrBadConfig)
	}
	if IsCipherDir(dir) {
		t.Errorf("IsCipherDir after refused Save: got true, want false")
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(t.TempDir())
	if !errors.Is(err, ErrNotCipherDir) {
		t.Fatalf("got %v, want %v", err, ErrNotCipherDir)
	}
}

func TestNewFilesystemID(t *testing.T) {
	a, err := NewFilesystemID(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewFilesystemID(nil)
	if len(a) != 32 || a == b {
		t.Errorf("got %q and %q, want two different 32-char ids", a, b)
	}
	if _, err := NewFilesystemID(strings.NewReader("short")); err == nil {
		t.Errorf("short reader: got nil error, want one")
	}
}

func TestPaths(t *testing.T) {
	dir := "/c"
	tests := []struct{ got, want string }{
		{ConfPath(dir), "/c/kmsfs.conf"},
		{MetaDir(dir), "/c/.kmsfs"},
		{IndexDir(dir), "/c/.kmsfs/index"},
		{AuditPath(dir), "/c/.kmsfs/audit.log"},
		{MountLogPath(dir), "/c/.kmsfs/mount.log"},
		{NamesPath(dir), "/c/kmsfs.names"},
		{MetaNamesPath(dir), "/c/.kmsfs/names"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %v, want %v", tt.got, tt.want)
		}
	}
	for _, rel := range []string{"kmsfs.conf", ".kmsfs", "kmsfs.names", "kmsfs.dirid"} {
		if !IsMeta(rel) {
			t.Errorf("IsMeta(%q): got false, want true", rel)
		}
	}
	for _, rel := range []string{"a/kmsfs.conf", "a/.kmsfs", "kmsfs.conf2", "x", "a/kmsfs.names", ".kmsfs/names", "kmsfs.names2"} {
		if IsMeta(rel) {
			t.Errorf("IsMeta(%q): got true, want false", rel)
		}
	}
}

func TestChooseRuntimeDir(t *testing.T) {
	yes := func(string) bool { return true }
	no := func(string) bool { return false }
	tests := []struct {
		name   string
		xdg    string
		exists func(string) bool
		want   string
	}{
		{"xdg set", "/run/user/1000", no, "/run/user/1000/kmsfs"},
		{"xdg relative ignored", "rel", yes, "/run/user/1000/kmsfs"},
		{"run user exists", "", yes, "/run/user/1000/kmsfs"},
		{"fallback temp", "", no, "/tmp/kmsfs-1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ChooseRuntimeDir(tt.xdg, 1000, "/tmp", tt.exists); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMountRecord(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	t.Setenv("XDG_RUNTIME_DIR", filepath.Dir(rt))
	dir, err := RuntimeDir()
	if err != nil {
		t.Fatalf("RuntimeDir: %v", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o700); got != want {
		t.Errorf("runtime dir mode: got %v, want %v", got, want)
	}
	r := MountRecord{PID: 4242, CipherDir: "/c", Mountpoint: "/m"}
	if err := WriteMountRecord(dir, r); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMountRecord(dir, "/m")
	if err != nil || got != r {
		t.Fatalf("got %+v, %v, want %+v", got, err, r)
	}
	if err := RemoveMountRecord(dir, "/m", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMountRecord(dir, "/m"); err != nil {
		t.Errorf("record of another pid removed: got %v, want it kept", err)
	}
	if err := RemoveMountRecord(dir, "/m", 4242); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMountRecord(dir, "/m"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after remove: got %v, want %v", err, os.ErrNotExist)
	}
	if RecordPath(dir, "/m") == RecordPath(dir, "/m2") {
		t.Errorf("record paths of two mount points collide")
	}
}

func TestRuntimeDirRefusesOpenDir(t *testing.T) {
	base := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", base)
	if err := os.Mkdir(filepath.Join(base, "kmsfs"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(base, "kmsfs"), 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := RuntimeDir(); err == nil {
		t.Errorf("got nil error for a 0777 runtime dir, want one")
	}
}

// TestLoadRefusesSymlink: a kmsfs.conf that is a symlink (to a config the
// writer controls elsewhere, or to a fifo) is never followed.
func TestLoadRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	c := New("4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12", ProviderLocal, "alias/x", "arn:kmsfs:local:k:key/1", "/k", 12)
	if err := Save(other, c); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(ConfPath(other), ConfPath(dir)); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Errorf("Load through a symlinked kmsfs.conf: got nil error")
	}
	if IsCipherDir(dir) {
		t.Errorf("IsCipherDir: a symlinked kmsfs.conf counts")
	}
}
