package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
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
	// init's round trip: one GenerateDataKey and one Decrypt (its
	// DescribeKey comes before the audit log exists).
	wantCalls := map[string]any{"GenerateDataKey": float64(1), "Decrypt": float64(1), "ReEncrypt": float64(0), "DescribeKey": float64(0)}
	if got := st["kms_calls"]; fmt.Sprint(got) != fmt.Sprint(wantCalls) {
		t.Errorf("status --json kms_calls: got %v, want %v", got, wantCalls)
	}
	if code, out, _ := kmsfs("status", c); code != 0 || !strings.Contains(out, "kms calls: GenerateDataKey 1, Decrypt 1, ReEncrypt 0, DescribeKey 0") {
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
