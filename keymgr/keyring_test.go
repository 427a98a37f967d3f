package keymgr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
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

func TestKeyringResolve(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/kmsfs/default")
	b := mustCreateKey(t, k, "b", "alias/b")
	raw := strings.ReplaceAll(a.KeyID, "-", "")
	other := strings.Repeat("ab", 16)
	if other == k.ID() {
		other = strings.Repeat("cd", 16)
	}
	tests := []struct {
		name    string
		ref     string
		want    string // key ID; "" for an error
		wantMsg string
	}{
		{"key id", a.KeyID, a.KeyID, ""},
		{"key id upper", strings.ToUpper(a.KeyID), a.KeyID, ""},
		{"key id 32 hex", raw, a.KeyID, ""},
		{"key arn", a.ARN, a.KeyID, ""},
		{"key arn built", "arn:kmsfs:local:" + k.ID() + ":key/" + b.KeyID, b.KeyID, ""},
		{"alias", "alias/kmsfs/default", a.KeyID, ""},
		{"alias b", "alias/b", b.KeyID, ""},
		{"alias arn", "arn:kmsfs:local:" + k.ID() + ":alias/kmsfs/default", a.KeyID, ""},
		{"unknown alias", "alias/nope", "", "no alias alias/nope"},
		{"unknown alias arn", "arn:kmsfs:local:" + k.ID() + ":alias/nope", "", "no alias"},
		{"unknown key id", "00000000-0000-4000-8000-000000000000", "", "no such key"},
		{"other keyring key arn", "arn:kmsfs:local:" + other + ":key/" + a.KeyID, "", "another keyring"},
		{"other keyring alias arn", "arn:kmsfs:local:" + other + ":alias/b", "", "another keyring"},
		{"aws arn", "arn:aws:kms:eu-west-1:111122223333:key/" + a.KeyID, "", "not an ARN of the local provider"},
		{"bad resource", "arn:kmsfs:local:" + k.ID() + ":grant/x", "", "neither"},
		{"empty", "", "", "not a key ID"},
		{"garbage", "not-a-key", "", "not a key ID"},
		{"bad dashes", a.KeyID[:8] + "x" + a.KeyID[9:], "", "not a key ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md, err := k.Resolve(tt.ref)
			if tt.want == "" {
				if !errors.Is(err, ErrKeyNotFound) {
					t.Fatalf("Resolve(%q): got %v, want %v", tt.ref, err, ErrKeyNotFound)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("Resolve(%q) error %q does not say %q", tt.ref, err, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q): %v", tt.ref, err)
			}
			if got := md.KeyID; got != tt.want {
				t.Errorf("Resolve(%q): got %v, want %v", tt.ref, got, tt.want)
			}
			if !md.Symmetric || !md.EncryptDecrypt {
				t.Errorf("Resolve(%q): Symmetric %v EncryptDecrypt %v, want true true", tt.ref, md.Symmetric, md.EncryptDecrypt)
			}
			if got, want := md.ARN, "arn:kmsfs:local:"+k.ID()+":key/"+tt.want; got != want {
				t.Errorf("ARN: got %v, want %v", got, want)
			}
		})
	}
}

func TestKeyringAliases(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/x")
	b := mustCreateKey(t, k, "b", "")
	if _, err := k.CreateKey("c", "alias/x"); err == nil {
		t.Errorf("CreateKey with a taken alias: got nil error, want one")
	}
	if got, want := len(k.Keys()), 2; got != want {
		t.Errorf("keys after refused CreateKey: got %v, want %v", got, want)
	}
	for _, bad := range []string{"x", "alias/", "alias/a b", "alias/ü", "Alias/x", "alias/" + strings.Repeat("a", 300)} {
		if err := k.SetAlias(bad, a.KeyID); err == nil {
			t.Errorf("SetAlias(%q): got nil error, want one", bad)
		}
	}
	if err := k.SetAlias("alias/x", b.ARN); err != nil {
		t.Fatalf("re-point alias: %v", err)
	}
	md, err := k.Resolve("alias/x")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.KeyID, b.KeyID; got != want {
		t.Errorf("alias/x after re-point: got %v, want %v", got, want)
	}
	if err := k.SetAlias("alias/y", "alias/x"); err != nil {
		t.Fatalf("alias to alias: %v", err)
	}
	md, _ = k.Resolve(b.KeyID)
	if got, want := md.Aliases, []string{"alias/x", "alias/y"}; !slices.Equal(got, want) {
		t.Errorf("aliases of b: got %v, want %v", got, want)
	}
	md, _ = k.Resolve(a.KeyID)
	if len(md.Aliases) != 0 {
		t.Errorf("aliases of a: got %v, want none", md.Aliases)
	}
	if err := k.SetAlias("alias/z", "alias/missing"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("SetAlias to a missing key: got %v, want %v", err, ErrKeyNotFound)
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

func TestKeyringManyVersions(t *testing.T) {
	// More versions than the first slab holds: the slab grows.
	k, path := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "")
	first := materialOf(t, k, a.KeyID, 1)
	const n = 300
	for range n - 1 {
		if _, err := k.Rotate(a.KeyID); err != nil {
			t.Fatal(err)
		}
	}
	if got := materialOf(t, k, a.KeyID, 1); !bytes.Equal(got, first) {
		t.Errorf("version 1 material changed when the slab grew")
	}
	mustSave(t, k)
	k2 := openTestKeyring(t, path, KeyringOptions{})
	md, err := k2.Resolve(a.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.CurrentVersion, uint32(n); got != want {
		t.Errorf("CurrentVersion: got %v, want %v", got, want)
	}
	for _, v := range []uint32{1, 128, n} {
		if !bytes.Equal(materialOf(t, k2, a.KeyID, v), materialOf(t, k, a.KeyID, v)) {
			t.Errorf("version %d material differs after reopen", v)
		}
	}
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

func TestKeyringDefaultArgonParameters(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB argon2id")
	}
	path := filepath.Join(t.TempDir(), "keyring.json")
	k, err := CreateKeyring(path, []byte("p"), KeyringOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	data, _ := os.ReadFile(path)
	kf, err := parseKeyringFile(data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := [3]uint32{kf.Time, kf.MemoryKiB, uint32(kf.Threads)}, [3]uint32{3, 64 * 1024, 4}; got != want {
		t.Errorf("argon2id time, memory, threads: got %v, want %v", got, want)
	}
	if got, want := len(kf.Salt), 16; got != want {
		t.Errorf("salt length: got %v, want %v", got, want)
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

// FuzzOpenKeyringJSON fuzzes both parsers of keyring bytes: the outer file
// and the (decrypted) inner JSON. What parses must survive a round trip.
func FuzzOpenKeyringJSON(f *testing.F) {
	k, path := newTestKeyring(f)
	mustCreateKey(f, k, "a", "alias/a")
	mustCreateKey(f, k, "b", "")
	if _, err := k.Rotate("alias/a"); err != nil {
		f.Fatal(err)
	}
	mustSave(f, k)
	outer, _ := os.ReadFile(path)
	f.Add(outer)
	k.mu.RLock()
	tmp, inner, err := k.marshalInner()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(slices.Clone(inner))
	_ = tmp.Close()
	k.mu.RUnlock()
	f.Add([]byte(`{"id":"00000000000000000000000000000000","keys":[],"aliases":{}}`))
	f.Add([]byte(`{"format":"kmsfs-keyring/1","kdf":"argon2id","salt":"AAAAAAAAAAAAAAAAAAAAAA==","time":1,"memory_kib":8,"threads":1,"nonce":"AAAAAAAAAAAAAAAA","sealed":"AAAAAAAAAAAAAAAAAAAAAAAAAA=="}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		if kf, err := parseKeyringFile(data); err == nil {
			re, err := json.Marshal(kf)
			if err != nil {
				t.Fatalf("marshal parsed file: %v", err)
			}
			kf2, err := parseKeyringFile(re)
			if err != nil {
				t.Fatalf("reparse: %v", err)
			}
			if !bytes.Equal(kf.aad(), kf2.aad()) || !bytes.Equal(kf.Nonce, kf2.Nonce) || !bytes.Equal(kf.Sealed, kf2.Sealed) {
				t.Fatalf("round trip changed the file")
			}
			if kf.MemoryKiB > maxArgonMemoryKiB || kf.Time > maxArgonTime || kf.Threads == 0 {
				t.Fatalf("accepted unbounded KDF parameters %d %d %d", kf.Time, kf.MemoryKiB, kf.Threads)
			}
		} else if !errors.Is(err, ErrKeyringCorrupt) {
			t.Fatalf("outer parse error %v does not wrap ErrKeyringCorrupt", err)
		}

		in, err := parseInner(data)
		if in != nil {
			defer in.wipe()
		}
		if err != nil {
			if !errors.Is(err, ErrKeyringCorrupt) {
				t.Fatalf("inner parse error %v does not wrap ErrKeyringCorrupt", err)
			}
			return
		}
		kr := newKeyringShell("", KeyringOptions{})
		var kek [32]byte
		if err := kr.install(in, kek[:]); err != nil {
			t.Fatalf("install: %v", err)
		}
		defer kr.Close()
		tmp, re, err := kr.marshalInner()
		if err != nil {
			t.Fatal(err)
		}
		defer tmp.Close()
		in2, err := parseInner(re)
		if in2 != nil {
			defer in2.wipe()
		}
		if err != nil {
			t.Fatalf("reparse of marshalled inner JSON: %v", err)
		}
		kr2 := newKeyringShell("", KeyringOptions{})
		if err := kr2.install(in2, kek[:]); err != nil {
			t.Fatalf("install: %v", err)
		}
		defer kr2.Close()
		if got, want := kr2.Keys(), kr.Keys(); !slices.EqualFunc(got, want, metadataEqual) {
			t.Fatalf("round trip: got %+v, want %+v", got, want)
		}
		for i := 1; i < kr.used; i++ {
			if !bytes.Equal(kr.slab.Slot(i), kr2.slab.Slot(i)) {
				t.Fatalf("round trip changed material in slot %d", i)
			}
		}
	})
}

func TestKeyringSaveReusesKEKWithFreshNonce(t *testing.T) {
	k, path := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	mustSave(t, k)
	first, _ := os.ReadFile(path)
	mustSave(t, k)
	second, _ := os.ReadFile(path)
	kf1, err := parseKeyringFile(first)
	if err != nil {
		t.Fatal(err)
	}
	kf2, err := parseKeyringFile(second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kf1.aad(), kf2.aad()) {
		t.Errorf("Save changed the salt or KDF parameters")
	}
	if bytes.Equal(kf1.Nonce, kf2.Nonce) {
		t.Errorf("two saves used the same nonce %x", kf1.Nonce)
	}
	openTestKeyring(t, path, KeyringOptions{})
}

func TestKeyringPendingDeletion(t *testing.T) {
	k, path := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	p := NewLocalProvider(k)
	ec := testContext("fs", 1)
	dk, err := p.GenerateDataKey(context.Background(), "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	// No API schedules deletion yet; a keyring written by a later version
	// may carry it, so set it as the file would.
	k.mu.Lock()
	when := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	k.keys[0].pendingDeletion = &when
	k.dirty = true
	k.mu.Unlock()
	mustSave(t, k)
	k2 := openTestKeyring(t, path, KeyringOptions{})
	md, err := k2.Resolve(a.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.State, KeyPendingDeletion; got != want {
		t.Errorf("State after reopen: got %v, want %v", got, want)
	}
	p2 := NewLocalProvider(k2)
	if _, err := p2.GenerateDataKey(context.Background(), "alias/a", ec); !errors.Is(err, ErrKeyInvalidState) {
		t.Errorf("GenerateDataKey: got %v, want %v", err, ErrKeyInvalidState)
	}
	if _, err := p2.Decrypt(context.Background(), "alias/a", dk.Ciphertext, ec); !errors.Is(err, ErrKeyInvalidState) {
		t.Errorf("Decrypt: got %v, want %v", err, ErrKeyInvalidState)
	}
	if _, err := k2.Rotate("alias/a"); !errors.Is(err, ErrKeyInvalidState) {
		t.Errorf("Rotate: got %v, want %v", err, ErrKeyInvalidState)
	}
}
