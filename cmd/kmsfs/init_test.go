package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// TestInitStatusFsckOffline drives the offline commands in-process against
// a real keyring: init, status, fsck, keys, and init's refusals, which
// must leave nothing behind.
func TestInitStatusFsckOffline(t *testing.T) {
	base := t.TempDir()
	keyring := filepath.Join(base, "kr", "keyring.json")
	t.Setenv(envKeyring, keyring)
	t.Setenv(envPassphrase, "correct horse")
	kmsfs := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	c := filepath.Join(base, "c")
	if code, _, stderr := kmsfs("init", "--chunk-size", "65536", c); code != 0 {
		t.Fatalf("init: exit %d, stderr %q", code, stderr)
	}
	conf, err := cipherdir.Load(c)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := conf.ChunkShift, uint8(16); got != want {
		t.Errorf("chunk_shift: got %d, want %d", got, want)
	}
	if got, want := conf.Key, defaultKeyAlias; got != want {
		t.Errorf("key: got %q, want %q", got, want)
	}
	if got, want := conf.Keyring, keyring; got != want {
		t.Errorf("keyring: got %q, want %q", got, want)
	}
	for _, p := range []string{cipherdir.IndexDir(c), cipherdir.AuditPath(c)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("init did not create %s: %v", p, err)
		}
	}

	code, out, stderr := kmsfs("status", "--json", c)
	if code != 0 {
		t.Fatalf("status: exit %d, stderr %q", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v in %q", err, out)
	}
	wantKeys := []string{"cipherdir", "filesystem_id", "provider", "key", "key_arn", "mounted", "source", "files", "keys", "kms_calls"}
	if len(st) != len(wantKeys) {
		t.Errorf("status --json fields: got %d, want %d (%v)", len(st), len(wantKeys), st)
	}
	for _, k := range wantKeys {
		if _, ok := st[k]; !ok {
			t.Errorf("status --json: field %q missing", k)
		}
	}
	if st["source"] != "index" || st["mounted"] != false || st["files"] != float64(0) || st["key_arn"] != conf.KeyARN {
		t.Errorf("status --json: got %v", st)
	}
	// init's round trip: one GenerateDataKey and one Decrypt, and the
	// names key's GenerateDataKey (its DescribeKey comes before the audit
	// log exists).
	wantCalls := map[string]any{"GenerateDataKey": float64(2), "Decrypt": float64(1), "ReEncrypt": float64(0), "DescribeKey": float64(0)}
	if got := st["kms_calls"]; fmt.Sprint(got) != fmt.Sprint(wantCalls) {
		t.Errorf("status --json kms_calls: got %v, want %v", got, wantCalls)
	}
	if code, out, _ := kmsfs("status", c); code != 0 || !strings.Contains(out, "kms calls: GenerateDataKey 2, Decrypt 1, ReEncrypt 0, DescribeKey 0") {
		t.Errorf("status: exit %d, no kms calls line in %q", code, out)
	}
	if code, out, stderr := kmsfs("fsck", c); code != 0 || !strings.Contains(out, "0 findings") {
		t.Errorf("fsck: exit %d, out %q, stderr %q", code, out, stderr)
	}

	// A second init into the same keyring reuses alias/kmsfs/default.
	c2 := filepath.Join(base, "c2")
	if code, _, stderr := kmsfs("init", c2); code != 0 {
		t.Fatalf("second init: exit %d, stderr %q", code, stderr)
	}
	conf2, _ := cipherdir.Load(c2)
	if conf2.KeyARN != conf.KeyARN || conf2.FilesystemID == conf.FilesystemID {
		t.Errorf("second init: key %s, fsid %s; want key %s and a new fsid", conf2.KeyARN, conf2.FilesystemID, conf.KeyARN)
	}

	if code, _, stderr := kmsfs("keys", "create", "--alias", "off", "--description", "to disable"); code != 0 {
		t.Fatalf("keys create: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := kmsfs("keys", "disable", "alias/off"); code != 0 {
		t.Fatalf("keys disable: exit %d, stderr %q", code, stderr)
	}
	before, _ := os.ReadFile(keyring)

	refusals := []struct {
		name    string
		args    []string
		env     string
		wantMsg string
	}{
		{"disabled key", []string{"init", "--key", "alias/off", filepath.Join(base, "x")}, "", "kmsfs keys enable alias/off"},
		{"unknown key", []string{"init", "--key", "alias/none", filepath.Join(base, "x")}, "", "not found"},
		{"wrong passphrase", []string{"init", filepath.Join(base, "x")}, "wrong", "wrong passphrase for keyring"},
		{"already", []string{"init", c}, "", "is already a kmsfs cipher directory"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv(envPassphrase, tt.env)
			}
			code, _, stderr := kmsfs(tt.args...)
			if code != exitFail || !strings.Contains(stderr, tt.wantMsg) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("got exit %d, stderr %q, want %d and one line with %q", code, stderr, exitFail, tt.wantMsg)
			}
			if _, err := os.Stat(filepath.Join(base, "x")); !os.IsNotExist(err) {
				t.Errorf("refused init left %s behind", filepath.Join(base, "x"))
			}
		})
	}
	after, _ := os.ReadFile(keyring)
	if !bytes.Equal(before, after) {
		t.Errorf("refused commands changed the keyring")
	}

	code, out, _ = kmsfs("keys", "list", "--json")
	if code != 0 || strings.Count(out, `"key_id"`) != 2 || !strings.Contains(out, `"Disabled"`) {
		t.Errorf("keys list --json: exit %d, out %q", code, out)
	}
}

// TestInitNames: init with encrypted names (the default) makes the names
// key in two copies and the root's directory ID, and names the feature in
// kmsfs.conf; --plaintext-names makes none of them. The names key opens
// from either copy, names both files when neither opens, and follows a
// rewrap --to.
func TestInitNames(t *testing.T) {
	tests := []struct {
		name          string
		args          []string
		wantEncrypted bool
		wantGenerate  int // GenerateDataKey calls of init
		wantOut       string
	}{
		{name: "encrypted by default", wantEncrypted: true, wantGenerate: 2, wantOut: "names:      encrypted"},
		{name: "plaintext names", args: []string{"--plaintext-names"}, wantEncrypted: false, wantGenerate: 1, wantOut: "names:      plaintext"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			t.Setenv(envKeyring, filepath.Join(base, "kr", "keyring.json"))
			t.Setenv(envPassphrase, "correct horse")
			kmsfs := func(args ...string) (int, string, string) {
				var out, errb bytes.Buffer
				code := run(args, &out, &errb)
				return code, out.String(), errb.String()
			}
			c := filepath.Join(base, "c")
			code, out, stderr := kmsfs(append(append([]string{"init"}, tt.args...), c)...)
			if code != 0 {
				t.Fatalf("init: exit %d, stderr %q", code, stderr)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("init output %q: no %q", out, tt.wantOut)
			}
			conf, err := cipherdir.Load(c)
			if err != nil {
				t.Fatal(err)
			}
			if got := conf.EncryptedNames(); got != tt.wantEncrypted {
				t.Errorf("kmsfs.conf name_encryption: got %v, want %v", got, tt.wantEncrypted)
			}
			wantFiles := map[string]int64{ // path -> size
				cipherdir.NamesPath(c):                conf.Layout().ContentOffset(),
				cipherdir.MetaNamesPath(c):            conf.Layout().ContentOffset(),
				filepath.Join(c, cipherdir.DirIDName): crypto.DirIDSize,
			}
			for p, size := range wantFiles {
				fi, err := os.Lstat(p)
				if !tt.wantEncrypted {
					if !os.IsNotExist(err) {
						t.Errorf("%s: got %v, want it absent with plaintext names", p, err)
					}
					continue
				}
				if err != nil {
					t.Errorf("init did not create %s: %v", p, err)
					continue
				}
				if fi.Mode() != 0o444 || fi.Size() != size {
					t.Errorf("%s: got mode %v size %d, want %v and %d", p, fi.Mode(), fi.Size(), os.FileMode(0o444), size)
				}
			}
			counts, err := keymgr.CountAuditOps(cipherdir.AuditPath(c))
			if err != nil {
				t.Fatal(err)
			}
			if counts[keymgr.AuditGenerateDataKey] != tt.wantGenerate || counts[keymgr.AuditDecrypt] != 1 {
				t.Errorf("audit: got %v, want %d GenerateDataKey and 1 Decrypt", counts, tt.wantGenerate)
			}
			if code, out, stderr := kmsfs("fsck", c); code != 0 || !strings.Contains(out, "0 findings") {
				t.Errorf("fsck: exit %d, out %q, stderr %q", code, out, stderr)
			}

			openNames := func() (*crypto.NameCipher, error) {
				ks, err := openOfflineStack(context.Background(), &globals{}, c, io.Discard)
				if err != nil {
					t.Fatalf("open key stack: %v", err)
				}
				defer ks.Close()
				return ks.nameCipher(context.Background())
			}
			nc, err := openNames()
			if err != nil {
				t.Fatalf("nameCipher: %v", err)
			}
			if (nc != nil) != tt.wantEncrypted {
				t.Fatalf("nameCipher: got %v, want one only with encrypted names", nc)
			}
			if nc == nil {
				return
			}
			nc.Zero()

			// Either copy alone opens the names key.
			names, meta := cipherdir.NamesPath(c), cipherdir.MetaNamesPath(c)
			for _, lost := range []string{names, meta} {
				if err := os.Rename(lost, lost+".away"); err != nil {
					t.Fatal(err)
				}
				nc, err := openNames()
				if err != nil {
					t.Errorf("nameCipher without %s: %v", lost, err)
				} else {
					nc.Zero()
				}
				if err := os.Rename(lost+".away", lost); err != nil {
					t.Fatal(err)
				}
			}

			// rewrap --to moves both copies; the old key can then go.
			if code, _, stderr := kmsfs("keys", "create", "--alias", "next", "--description", "rewrap target"); code != 0 {
				t.Fatalf("keys create: exit %d, stderr %q", code, stderr)
			}
			code, out, stderr = kmsfs("rewrap", "--to", "alias/next", c)
			if code != 0 || !strings.Contains(out, "files: 2; rewrapped: 2") {
				t.Fatalf("rewrap --to: exit %d, out %q, stderr %q; want the 2 names-key copies rewrapped", code, out, stderr)
			}
			after, err := cipherdir.Load(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, read := range cipherdir.NamesKeyReaders(c, conf.Layout()) {
				h, err := read()
				if err != nil || h.Generation != 2 || h.Keys[0].KeyARN != after.KeyARN || after.KeyARN == conf.KeyARN {
					t.Errorf("names key after rewrap --to: got generation %d key %s (%v), want 2 and %s", h.Generation, h.Keys[0].KeyARN, err, after.KeyARN)
				}
			}
			if code, _, stderr := kmsfs("keys", "disable", conf.Key); code != 0 {
				t.Fatalf("keys disable: exit %d, stderr %q", code, stderr)
			}
			if nc, err := openNames(); err != nil {
				t.Errorf("nameCipher after rewrap --to and the old key disabled: %v", err)
			} else {
				nc.Zero()
			}
			if code, _, stderr := kmsfs("keys", "enable", conf.Key); code != 0 {
				t.Fatalf("keys enable: exit %d, stderr %q", code, stderr)
			}

			// Neither copy opens: the error names both and the fix.
			if err := os.Remove(names); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(meta, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(meta, []byte("not a names key"), 0o444); err != nil {
				t.Fatal(err)
			}
			_, err = openNames()
			if err == nil {
				t.Fatalf("nameCipher with both copies gone: got nil error")
			}
			for _, w := range []string{names, meta, "restore kmsfs.names from a backup"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestNamesKeyError: the fix the names-key error gives follows the cause.
func TestNamesKeyError(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		wantMsg string
	}{
		{"files damaged", fmt.Errorf("copy 1 of 2: %w; copy 2 of 2: %w", os.ErrNotExist, crypto.ErrNoValidHeader), "restore kmsfs.names from a backup"},
		{"EDK does not unwrap", fmt.Errorf("copy 1 of 2: %w", keymgr.ErrInvalidCiphertext), "restore kmsfs.names from a backup"},
		{"key disabled", fmt.Errorf("copy 1 of 2: %w; copy 2 of 2: %w", os.ErrNotExist, keymgr.ErrKeyDisabled), "make the key usable"},
		{"access denied", fmt.Errorf("copy 1 of 2: %w", keymgr.ErrAccessDenied), "make the key usable"},
		{"interrupted", fmt.Errorf("copy 1 of 2: %w", context.Canceled), "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := namesKeyError("/c", tt.err)
			msg := err.Error()
			if !strings.Contains(msg, tt.wantMsg) || strings.Contains(msg, "\n") {
				t.Errorf("got %q, want one line with %q", msg, tt.wantMsg)
			}
			if tt.wantMsg != "context canceled" && (!strings.Contains(msg, "/c/kmsfs.names") || !strings.Contains(msg, "/c/.kmsfs/names")) {
				t.Errorf("got %q, want it to name both copies", msg)
			}
		})
	}
}
