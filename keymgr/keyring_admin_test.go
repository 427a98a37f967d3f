package keymgr

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

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
