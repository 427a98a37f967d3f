package keymgr

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

const testPassphrase = "correct horse battery staple"

// cheapKeyringOptions keeps argon2id fast in tests.
func cheapKeyringOptions() KeyringOptions {
	return KeyringOptions{ArgonTime: 1, ArgonMemoryKiB: 64, ArgonThreads: 1}
}

// newTestKeyring creates a keyring file in a temp dir, closed at cleanup.
func newTestKeyring(t testing.TB) (*Keyring, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config", "kmsfs", "keyring.json")
	k, err := CreateKeyring(path, []byte(testPassphrase), cheapKeyringOptions())
	if err != nil {
		t.Fatalf("CreateKeyring: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k, path
}

func openTestKeyring(t testing.TB, path string, o KeyringOptions) *Keyring {
	t.Helper()
	k, err := OpenKeyring(path, []byte(testPassphrase), o)
	if err != nil {
		t.Fatalf("OpenKeyring: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func mustCreateKey(t testing.TB, k *Keyring, desc, alias string) KeyMetadata {
	t.Helper()
	md, err := k.CreateKey(desc, alias)
	if err != nil {
		t.Fatalf("CreateKey(%q, %q): %v", desc, alias, err)
	}
	return md
}

func mustSave(t testing.TB, k *Keyring) {
	t.Helper()
	if err := k.Save(); err != nil {
		t.Fatalf("Save: %v", err)
	}
}

// materialOf returns a copy of the material of a key version (test only).
func materialOf(t testing.TB, k *Keyring, ref string, version uint32) []byte {
	t.Helper()
	k.mu.RLock()
	defer k.mu.RUnlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		t.Fatalf("resolve %s: %v", ref, err)
	}
	return slices.Clone(k.slab.Slot(c.versions[version-1].slot))
}

func TestKeyringCreateSaveOpen(t *testing.T) {
	k, path := newTestKeyring(t)
	a := mustCreateKey(t, k, "first key", "alias/kmsfs/default")
	b := mustCreateKey(t, k, `second "key" with \ and ünïcode`, "")
	if _, err := k.Rotate(a.KeyID); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if _, err := k.SetEnabled(b.ARN, false); err != nil {
		t.Fatalf("SetEnabled: %v", err)
	}
	mustSave(t, k)

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("keyring mode: got %v, want %v", got, want)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := di.Mode().Perm(), os.FileMode(0o700); got != want {
		t.Errorf("keyring dir mode: got %v, want %v", got, want)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("keyring dir holds %d entries, want 1 (no temp files left)", len(ents))
	}

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var outer map[string]any
	if err := json.Unmarshal(data, &outer); err != nil {
		t.Fatalf("outer JSON: %v", err)
	}
	for _, f := range []string{"format", "kdf", "salt", "time", "memory_kib", "threads", "nonce", "sealed"} {
		if _, ok := outer[f]; !ok {
			t.Errorf("outer JSON lacks %q", f)
		}
	}
	if got, want := outer["format"], "kmsfs-keyring/1"; got != want {
		t.Errorf("format: got %v, want %v", got, want)
	}
	if bytes.Contains(data, []byte("first key")) || bytes.Contains(data, []byte(a.KeyID)) {
		t.Errorf("keyring file shows sealed content in clear")
	}

	k2 := openTestKeyring(t, path, KeyringOptions{})
	if got, want := k2.ID(), k.ID(); got != want {
		t.Errorf("ID: got %v, want %v", got, want)
	}
	if got, want := k2.Keys(), k.Keys(); !slices.EqualFunc(got, want, metadataEqual) {
		t.Errorf("Keys after reopen: got %+v, want %+v", got, want)
	}
	for _, v := range []uint32{1, 2} {
		if got, want := materialOf(t, k2, a.KeyID, v), materialOf(t, k, a.KeyID, v); !bytes.Equal(got, want) {
			t.Errorf("material of version %d differs after reopen", v)
		}
	}
	if bytes.Equal(materialOf(t, k, a.KeyID, 1), materialOf(t, k, a.KeyID, 2)) {
		t.Errorf("rotation reused key material")
	}
	md, err := k2.Resolve("alias/kmsfs/default")
	if err != nil {
		t.Fatalf("Resolve alias after reopen: %v", err)
	}
	if got, want := md.CurrentVersion, uint32(2); got != want {
		t.Errorf("CurrentVersion: got %v, want %v", got, want)
	}
	md, _ = k2.Resolve(b.KeyID)
	if got, want := md.State, KeyDisabled; got != want {
		t.Errorf("state of disabled key after reopen: got %v, want %v", got, want)
	}
	if got, want := md.Description, b.Description; got != want {
		t.Errorf("description: got %q, want %q", got, want)
	}
}

func metadataEqual(a, b KeyMetadata) bool {
	return a.KeyID == b.KeyID && a.ARN == b.ARN && a.State == b.State && a.Description == b.Description &&
		slices.Equal(a.Aliases, b.Aliases) && a.CurrentVersion == b.CurrentVersion &&
		a.Symmetric == b.Symmetric && a.EncryptDecrypt == b.EncryptDecrypt
}

func TestKeyringClose(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "")
	if err := k.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := k.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if k.slab != nil {
		t.Errorf("slab still held after Close")
	}
	if _, err := k.Resolve(a.KeyID); err == nil {
		t.Errorf("Resolve after Close: got nil error, want one")
	}
	if err := k.Save(); err == nil {
		t.Errorf("Save after Close: got nil error, want one")
	}
	if _, err := k.CreateKey("b", ""); err == nil {
		t.Errorf("CreateKey after Close: got nil error, want one")
	}
}

func TestKeyringConcurrentMutation(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 20 {
				switch i % 3 {
				case 0:
					_, _ = k.Rotate("alias/a")
				case 1:
					_ = k.Keys()
				default:
					_, _ = k.Resolve(a.ARN)
				}
			}
		})
	}
	wg.Wait()
	md, _ := k.Resolve(a.KeyID)
	if got, want := md.CurrentVersion, uint32(1+3*20); got != want {
		t.Errorf("CurrentVersion: got %v, want %v", got, want)
	}
}
