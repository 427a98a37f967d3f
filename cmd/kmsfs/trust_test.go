package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

func TestCheckEndpoint(t *testing.T) {
	for _, c := range []struct {
		endpoint string
		ok       bool
	}{
		{"", true},
		{"https://kms.eu-west-2.amazonaws.com", true},
		{"https://10.0.0.5:4443", true},
		{"http://127.0.0.1:4599", true},
		{"http://127.8.9.10:1", true},
		{"http://[::1]:4599", true},
		{"http://localhost:4599", true},
		{"http://10.0.0.5:4599", false},
		{"http://kms.example.com", false},
		{"http://127.0.0.1.attacker.example:80", false},
		{"ftp://127.0.0.1", false},
		{"127.0.0.1:4599", false},
		{"://", false},
	} {
		err := checkEndpoint(c.endpoint)
		if (err == nil) != c.ok {
			t.Errorf("checkEndpoint(%q) = %v, want ok=%v", c.endpoint, err, c.ok)
		}
	}
}

func testConf() cipherdir.Config {
	c := cipherdir.New("0123456789abcdef0123456789abcdef", cipherdir.ProviderAWS, "alias/a",
		"arn:aws:kms:eu-west-2:111122223333:key/a", "", 12)
	c.AWSRegion, c.AWSEndpoint = "eu-west-2", "https://kms.example"
	c.SetEncryptedNames(true)
	return c
}

func TestDiffTrust(t *testing.T) {
	base := testConf()
	rec := recordOf(base, "/c")
	for _, c := range []struct {
		name   string
		edit   func(*cipherdir.Config)
		fields []string
	}{
		{"same", func(*cipherdir.Config) {}, nil},
		{"key_arn", func(c *cipherdir.Config) { c.KeyARN = "arn:aws:kms:eu-west-2:666:key/b" }, []string{"key_arn"}},
		{"endpoint", func(c *cipherdir.Config) { c.AWSEndpoint = "http://127.0.0.1:1" }, []string{"aws_endpoint"}},
		{"region", func(c *cipherdir.Config) { c.AWSRegion = "us-east-1" }, []string{"aws_region"}},
		{"profile", func(c *cipherdir.Config) { c.AWSProfile = "p" }, []string{"aws_profile"}},
		{"names", func(c *cipherdir.Config) { c.SetEncryptedNames(false) }, []string{"features.name_encryption"}},
		{"provider and keyring", func(c *cipherdir.Config) {
			c.Provider, c.Keyring, c.AWSRegion, c.AWSEndpoint = cipherdir.ProviderLocal, "/k", "", ""
		}, []string{"provider", "keyring", "aws_region", "aws_endpoint"}},
		// A rewrap epoch, the geometry and the key as typed are state or
		// cosmetics, not trust.
		{"state", func(c *cipherdir.Config) { c.RewrapEpoch, c.RewrapPending, c.Key = 9, true, "alias/x" }, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := base
			conf.Features = map[string]bool{cipherdir.FeatureNameEncryption: true}
			c.edit(&conf)
			var got []string
			for _, d := range diffTrust(conf, rec, false) {
				got = append(got, d.field)
			}
			if strings.Join(got, ",") != strings.Join(c.fields, ",") {
				t.Errorf("diff fields %v, want %v", got, c.fields)
			}
		})
	}
}

func TestTrustRecord(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	conf := testConf()
	g := &globals{}
	if _, err := checkTrust(g, "/c", conf); err == nil || !strings.Contains(err.Error(), "kmsfs trust /c") {
		t.Fatalf("no record: %v", err)
	}
	if err := saveTrust(recordOf(conf, "/c")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(trustPath(conf.FilesystemID)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode: %v %v", fi, err)
	}
	if fi, err := os.Stat(trustDir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("trust directory mode: %v %v", fi, err)
	}
	if _, err := checkTrust(g, "/c", conf); err != nil {
		t.Fatal(err)
	}
	evil := conf
	evil.AWSEndpoint = "http://127.0.0.1:9"
	if _, err := checkTrust(g, "/c", evil); err == nil || !strings.Contains(err.Error(), "aws_endpoint") {
		t.Fatalf("changed endpoint: %v", err)
	}
	if err := trustKey(conf.FilesystemID, "arn:aws:kms:eu-west-2:111122223333:key/b", false); err != nil {
		t.Fatal(err)
	}
	r, err := loadTrust(conf.FilesystemID)
	if err != nil || len(r.Keys) != 2 || r.KeyARN != conf.KeyARN || r.MigratingTo == "" {
		t.Fatalf("after trusting a migration target: %+v %v", r, err)
	}
	// A migration killed after it wrote kmsfs.conf, before the record:
	// the target is accepted and the record finished; any other key is not.
	other := conf
	other.KeyARN = "arn:aws:kms:eu-west-2:666:key/c"
	if _, err := checkTrust(g, "/c", other); err == nil {
		t.Fatal("a key that is neither the key nor the migration target was accepted")
	}
	migrated := conf
	migrated.KeyARN = "arn:aws:kms:eu-west-2:111122223333:key/b"
	if _, err := checkTrust(g, "/c", migrated); err != nil {
		t.Fatalf("kmsfs.conf naming the migration target: %v", err)
	}
	if r, err := loadTrust(conf.FilesystemID); err != nil || r.KeyARN != migrated.KeyARN || r.MigratingTo != "" {
		t.Fatalf("the record was not finished: %+v %v", r, err)
	}
	if _, err := checkTrust(g, "/c", conf); err == nil {
		t.Fatal("after the migration, kmsfs.conf naming the old key was accepted")
	}

	// A record others may write, a symlinked one, or one naming another
	// filesystem is refused.
	path := trustPath(conf.FilesystemID)
	if err := os.Chmod(path, 0o622); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTrust(conf.FilesystemID); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("group-writable record: %v", err)
	}
	os.Chmod(path, 0o600)
	real := filepath.Join(t.TempDir(), "r.json")
	b, _ := os.ReadFile(path)
	os.WriteFile(real, b, 0o600)
	os.Remove(path)
	if err := os.Symlink(real, path); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTrust(conf.FilesystemID); err == nil {
		t.Error("a symlinked record was read")
	}
	os.Remove(path)
	foreign := strings.Replace(string(b), conf.FilesystemID, "ffffffffffffffffffffffffffffffff", 1)
	os.WriteFile(path, []byte(foreign), 0o600)
	if _, err := loadTrust(conf.FilesystemID); err == nil {
		t.Error("a record of another filesystem was accepted")
	}
}
