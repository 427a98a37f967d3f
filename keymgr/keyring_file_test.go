package keymgr

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestKeyringCreateRefusesExisting(t *testing.T) {
	_, path := newTestKeyring(t)
	before, _ := os.ReadFile(path)
	_, err := CreateKeyring(path, []byte("other"), cheapKeyringOptions())
	if !errors.Is(err, ErrKeyringExists) {
		t.Fatalf("CreateKeyring over an existing file: got %v, want %v", err, ErrKeyringExists)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Errorf("CreateKeyring changed the existing keyring")
	}
}

func TestKeyringOpenErrors(t *testing.T) {
	k, path := newTestKeyring(t)
	mustCreateKey(t, k, "k", "alias/a")
	mustSave(t, k)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// edit rewrites one field of the outer JSON.
	edit := func(field string, value any) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		m[field] = value
		b, _ := json.Marshal(m)
		return b
	}
	var outer keyringFile
	_ = json.Unmarshal(good, &outer)
	flipped := slices.Clone(outer.Sealed)
	flipped[len(flipped)/2] ^= 1

	tests := []struct {
		name       string
		data       []byte // nil: no file
		mode       os.FileMode
		passphrase string
		want       error
		wantMsg    string
	}{
		{name: "ok", data: good, mode: 0o600, passphrase: testPassphrase},
		{name: "missing", mode: 0o600, passphrase: testPassphrase, want: ErrKeyringNotFound, wantMsg: "kmsfs init"},
		{name: "wrong passphrase", data: good, mode: 0o600, passphrase: "wrong", want: ErrWrongPassphrase},
		{name: "empty passphrase", data: good, mode: 0o600, passphrase: "", want: ErrWrongPassphrase},
		{name: "group readable", data: good, mode: 0o640, passphrase: testPassphrase, want: ErrKeyringInsecure, wantMsg: "chmod 600 "},
		{name: "world readable", data: good, mode: 0o604, passphrase: testPassphrase, want: ErrKeyringInsecure, wantMsg: "chmod 600 "},
		{name: "not json", data: []byte("hello"), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "empty file", data: []byte{}, mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "trailing data", data: append(slices.Clone(good), []byte("{}")...), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "unknown format", data: edit("format", "kmsfs-keyring/9"), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "unknown kdf", data: edit("kdf", "scrypt"), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "huge memory", data: edit("memory_kib", 1<<30), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "zero time", data: edit("time", 0), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "short nonce", data: edit("nonce", "AAAA"), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "unknown field", data: edit("extra", 1), mode: 0o600, passphrase: testPassphrase, want: ErrKeyringCorrupt},
		{name: "sealed flipped", data: edit("sealed", flipped), mode: 0o600, passphrase: testPassphrase, want: ErrWrongPassphrase},
		// The header is in the AAD: changing a parameter fails the open
		// even if it left the KEK alone.
		{name: "memory changed", data: edit("memory_kib", 128), mode: 0o600, passphrase: testPassphrase, want: ErrWrongPassphrase},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "keyring.json")
			if tt.data != nil {
				if err := os.WriteFile(p, tt.data, tt.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, tt.mode); err != nil {
					t.Fatal(err)
				}
			}
			k, err := OpenKeyring(p, []byte(tt.passphrase), KeyringOptions{})
			if k != nil {
				defer k.Close()
			}
			if tt.want == nil {
				if err != nil {
					t.Fatalf("OpenKeyring: %v", err)
				}
				if got, want := len(k.Keys()), 1; got != want {
					t.Errorf("keys: got %v, want %v", got, want)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("OpenKeyring: got %v, want %v", err, tt.want)
			}
			if k != nil {
				t.Errorf("OpenKeyring returned a keyring with error %v", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if !strings.Contains(msg, p) {
				t.Errorf("error %q does not name the file %s", msg, p)
			}
			if tt.wantMsg != "" && !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("error %q does not say %q", msg, tt.wantMsg)
			}
		})
	}
}

func TestKeyringSaveRefusesConcurrentChange(t *testing.T) {
	k, path := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	mustSave(t, k)
	other := openTestKeyring(t, path, KeyringOptions{})
	if _, err := other.Rotate("alias/a"); err != nil {
		t.Fatal(err)
	}
	mustSave(t, other)

	if _, err := k.CreateKey("b", ""); err != nil {
		t.Fatal(err)
	}
	if err := k.Save(); err == nil {
		t.Fatalf("Save over another handle's change: got nil error, want one")
	}
	// The other handle's rotation is still on disk.
	again := openTestKeyring(t, path, KeyringOptions{})
	md, err := again.Resolve("alias/a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.CurrentVersion, uint32(2); got != want {
		t.Errorf("version on disk: got %v, want %v", got, want)
	}
}

func TestKeyringReload(t *testing.T) {
	k, path := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	mustSave(t, k)

	other := openTestKeyring(t, path, KeyringOptions{})
	if _, err := other.Rotate("alias/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.SetEnabled("alias/a", false); err != nil {
		t.Fatal(err)
	}
	c := mustCreateKey(t, other, "c", "alias/c")
	mustSave(t, other)

	if err := k.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	md, err := k.Resolve(a.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.CurrentVersion, uint32(2); got != want {
		t.Errorf("CurrentVersion after reload: got %v, want %v", got, want)
	}
	if got, want := md.State, KeyDisabled; got != want {
		t.Errorf("State after reload: got %v, want %v", got, want)
	}
	if _, err := k.Resolve("alias/c"); err != nil {
		t.Errorf("key created by the other handle: %v", err)
	}
	if got, want := materialOf(t, k, c.KeyID, 1), materialOf(t, other, c.KeyID, 1); !bytes.Equal(got, want) {
		t.Errorf("material of the reloaded key differs")
	}
	// Unchanged file: Reload is a no-op; a keyring with unsaved changes
	// refuses to drop them.
	if err := k.Reload(); err != nil {
		t.Errorf("Reload of an unchanged file: %v", err)
	}
	mustCreateKey(t, other, "d", "")
	mustSave(t, other)
	mustCreateKey(t, k, "unsaved", "")
	if err := k.Reload(); err == nil {
		t.Errorf("Reload with unsaved changes: got nil error, want one")
	}
}

func TestDefaultKeyringPath(t *testing.T) {
	home := t.TempDir()
	tests := []struct {
		name, env, xdg, want string
	}{
		{"env", "/etc/kmsfs/k.json", "/x", "/etc/kmsfs/k.json"},
		{"xdg", "", "/xdg", "/xdg/kmsfs/keyring.json"},
		{"relative xdg ignored", "", "rel", filepath.Join(home, ".config/kmsfs/keyring.json")},
		{"home", "", "", filepath.Join(home, ".config/kmsfs/keyring.json")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HOME", home)
			t.Setenv("KMSFS_KEYRING", tt.env)
			t.Setenv("XDG_CONFIG_HOME", tt.xdg)
			if got := DefaultKeyringPath(); got != tt.want {
				t.Errorf("DefaultKeyringPath: got %v, want %v", got, tt.want)
			}
		})
	}
}
