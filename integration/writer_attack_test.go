package integration

// The writer's attack suite (issue 13, docs/threat-model.md "The writer"):
// whoever can write the cipher directory but holds no key (a backup or
// sync provider, a shared disk's admin) rewrites kmsfs.conf and plants
// cipher files. Each attack runs through the real binary against a real
// provider (the local keyring; local-kms for aws, a second local-kms
// standing in for the attacker's KMS, seeded key B for the attacker's
// key), and each checks that the attack gains nothing: the command is
// refused before any KMS call (the audit log does not grow, the
// attacker's server sees no request), a planted file reads EIO with an
// audit line and no call names the foreign key.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

// kmsRecorder is a KMS endpoint on 127.0.0.1 that records every request
// (its X-Amz-Target operation and body) and forwards it to target, or,
// with no target, answers 500: the attacker's server, or a tap in front
// of the real one.
type kmsRecorder struct {
	url  string
	mu   sync.Mutex
	reqs []recordedCall
}

type recordedCall struct {
	op   string
	body string
}

func newKMSRecorder(t *testing.T, target string) *kmsRecorder {
	t.Helper()
	r := &kmsRecorder{}
	var proxy *httputil.ReverseProxy
	if target != "" {
		u, err := url.Parse(target)
		if err != nil {
			t.Fatal(err)
		}
		proxy = httputil.NewSingleHostReverseProxy(u)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		req.Body.Close()
		r.mu.Lock()
		r.reqs = append(r.reqs, recordedCall{op: req.Header.Get("X-Amz-Target"), body: string(body)})
		r.mu.Unlock()
		if proxy == nil {
			http.Error(w, "attacker's KMS", http.StatusInternalServerError)
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func (r *kmsRecorder) calls() []recordedCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recordedCall(nil), r.reqs...)
}

// mentioning counts the requests whose body names s (a key ID or ARN).
func (r *kmsRecorder) mentioning(s string) int {
	n := 0
	for _, c := range r.calls() {
		if strings.Contains(c.body, s) {
			n++
		}
	}
	return n
}

// editConf rewrites the fixture's kmsfs.conf as a writer would, through
// a generic JSON map (so fields can be set to anything).
func (f *fixture) editConf(edit func(m map[string]any)) {
	f.t.Helper()
	path := filepath.Join(f.cipher, "kmsfs.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		f.t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		f.t.Fatal(err)
	}
	edit(m)
	if b, err = json.MarshalIndent(m, "", "  "); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func auditSize(t *testing.T, cipher string) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(cipher, ".kmsfs", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// writerCommands are the commands a rewritten kmsfs.conf must stop, each
// before any KMS call.
func writerCommands(f *fixture) [][]string {
	return [][]string{
		{"mount", f.cipher, f.mnt},
		{"cat", f.cipher, "doc"},
		{"export", f.cipher, ".", filepath.Join(f.dir, "export-out")},
		{"verify", f.cipher},
		{"rewrap", f.cipher},
		{"rewrap", "--dry-run", f.cipher},
	}
}

// expectRefused runs every writer command and checks each fails naming
// field and the fix, with no KMS call (the audit log is unchanged).
func expectRefused(t *testing.T, f *fixture, field string) {
	t.Helper()
	before := auditSize(t, f.cipher)
	for _, args := range writerCommands(f) {
		_, stderr, code := f.run(args...)
		if code == 0 {
			f.unmount()
			t.Errorf("kmsfs %s succeeded on a rewritten kmsfs.conf (%s)", strings.Join(args, " "), field)
			continue
		}
		if !strings.Contains(stderr, field) || !strings.Contains(stderr, "kmsfs trust") {
			t.Errorf("kmsfs %s: the error does not name %s and kmsfs trust: %s", args[0], field, stderr)
		}
	}
	if after := auditSize(t, f.cipher); after != before {
		t.Errorf("the audit log grew from %d to %d bytes: a KMS call was made on a rewritten kmsfs.conf (%s)", before, after, field)
	}
}

// confEdit is one rewrite of kmsfs.conf and the field its refusal names.
type confEdit struct {
	name, field string
	edit        func(m map[string]any)
}

// runConfEdits applies each edit to the original kmsfs.conf (orig) in a
// subtest and checks every writer command refuses it.
func runConfEdits(t *testing.T, f *fixture, orig []byte, cases []confEdit) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(f.cipher, "kmsfs.conf"), orig, 0o644); err != nil {
				t.Fatal(err)
			}
			f := f.withT(t)
			f.editConf(c.edit)
			expectRefused(t, f, c.field)
		})
	}
}

// writeDoc mounts, writes doc, unmounts.
func writeDoc(t *testing.T, f *fixture, content string) {
	t.Helper()
	f.mount()
	if err := os.WriteFile(filepath.Join(f.mnt, "doc"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	f.unmount()
}

func TestWriterRewritesConfigLocal(t *testing.T) {
	eachNameKind(t, func(t *testing.T, k nameKind) {
		f := newFixture(t)
		f.initKind(k)
		writeDoc(t, f, "the user's words")
		orig, err := os.ReadFile(filepath.Join(f.cipher, "kmsfs.conf"))
		if err != nil {
			t.Fatal(err)
		}
		attacker := newKMSRecorder(t, "")
		attackerKeyring := filepath.Join(f.dir, "attacker-keyring.json")
		if err := os.WriteFile(attackerKeyring, []byte(`{"format":"kmsfs-keyring/1","kdf":"argon2id","time":64,"memory":4194304}`), 0o644); err != nil {
			t.Fatal(err)
		}
		cases := []confEdit{
			{"key_arn", "key_arn", func(m map[string]any) {
				m["key_arn"] = "arn:aws:kms:eu-west-2:666666666666:key/" + lkKeyB
			}},
			{"keyring", "keyring", func(m map[string]any) { m["keyring"] = attackerKeyring }},
			{"provider", "provider", func(m map[string]any) {
				m["provider"] = "aws"
				delete(m, "keyring")
				m["aws_endpoint"] = attacker.url
				m["aws_region"] = lkRegion
			}},
			{"names off", "features.name_encryption", func(m map[string]any) {
				feats, _ := m["features"].(map[string]any)
				on, _ := feats["name_encryption"].(bool)
				feats["name_encryption"] = !on
			}},
		}
		runConfEdits(t, f, orig, cases)
		if n := len(attacker.calls()); n != 0 {
			t.Errorf("the attacker's KMS got %d requests", n)
		}
		// Restored, everything works again, and the content is the user's.
		if err := os.WriteFile(filepath.Join(f.cipher, "kmsfs.conf"), orig, 0o644); err != nil {
			t.Fatal(err)
		}
		if got := f.kmsfs("cat", f.cipher, "doc"); got != "the user's words" {
			t.Errorf("cat after restoring kmsfs.conf: %q", got)
		}
	})
}

func TestWriterRewritesConfigAWS(t *testing.T) {
	f, lk := newAWSFixture(t)
	writeDoc(t, f, "aws words")
	orig, err := os.ReadFile(filepath.Join(f.cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	evil := startLocalKMS(t) // the attacker's KMS, answering for the same key ARNs
	attacker := newKMSRecorder(t, evil.url)
	cases := []confEdit{
		// The attacker's server, impersonating the filesystem's key ARN.
		{"endpoint", "aws_endpoint", func(m map[string]any) { m["aws_endpoint"] = attacker.url }},
		// A key of the attacker's own that anyone may use, on the real KMS.
		{"key_arn", "key_arn", func(m map[string]any) { m["key_arn"] = lkKeyARN(lkKeyB); m["key"] = lkKeyB }},
		{"region", "aws_region", func(m map[string]any) { m["aws_region"] = "us-east-1" }},
		{"profile", "aws_profile", func(m map[string]any) { m["aws_profile"] = "attacker" }},
		{"provider", "provider", func(m map[string]any) {
			m["provider"] = "local"
			m["keyring"] = filepath.Join(f.dir, "attacker-keyring.json")
			delete(m, "aws_endpoint")
			delete(m, "aws_region")
			delete(m, "aws_profile")
		}},
	}
	runConfEdits(t, f, orig, cases)
	if n := len(attacker.calls()); n != 0 {
		t.Errorf("the attacker's KMS got %d requests: %v", n, attacker.calls())
	}
	if err := os.WriteFile(filepath.Join(f.cipher, "kmsfs.conf"), orig, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("accepted after review", func(t *testing.T) {
		// The user moved the filesystem to key B themselves, elsewhere:
		// kmsfs trust shows the change and, accepted, the commands run.
		f := f.withT(t)
		f.kmsfs("rewrap", "--to", lkAliasB, f.cipher)
		if got := f.kmsfs("cat", f.cipher, "doc"); got != "aws words" {
			t.Fatalf("cat after rewrap --to: %q", got)
		}
		// Elsewhere = another user's home with no record yet.
		g := f.sibling(f.cipher, f.mnt)
		g.home = filepath.Join(f.dir, "home2")
		if err := os.Mkdir(g.home, 0o700); err != nil {
			t.Fatal(err)
		}
		g.env = append(append([]string(nil), f.env...), "HOME="+g.home)
		if _, stderr, code := g.run("cat", g.cipher, "doc"); code == 0 || !strings.Contains(stderr, "not trusted") {
			t.Fatalf("cat on a machine that never trusted it: code %d: %s", code, stderr)
		}
		if _, stderr, code := g.run("trust", "--key", lkKeyARN(lkKeyA), g.cipher); code == 0 || !strings.Contains(stderr, "not among") {
			t.Fatalf("trust --key naming the old key: code %d: %s", code, stderr)
		}
		out := g.kmsfs("trust", "--key", lkKeyARN(lkKeyB), g.cipher)
		if !strings.Contains(out, lkKeyARN(lkKeyB)) || !strings.Contains(out, lkAccount) || !strings.Contains(out, lk.url) {
			t.Errorf("trust does not show the key ARN, account and endpoint: %s", out)
		}
		if got := g.kmsfs("cat", g.cipher, "doc"); got != "aws words" {
			t.Errorf("cat after trust: %q", got)
		}
	})

	t.Run("plain http endpoint", func(t *testing.T) {
		f := f.withT(t)
		env := f.env
		f.env = append(append([]string(nil), env...), "AWS_ENDPOINT_URL_KMS=http://192.0.2.1:4599")
		defer func() { f.env = env }()
		_, stderr, code := f.run("cat", f.cipher, "doc")
		if code == 0 || !strings.Contains(stderr, "https") {
			t.Errorf("a plain-http endpoint off loopback was used: code %d: %s", code, stderr)
		}
	})
}

// plantFile writes a cipher file at path (replacing what is there) with
// file ID id, its DEK generated by lk under key keyARN for the victim's
// filesystem ID (the public encryption context), and content: what an
// attacker with their own KMS key builds from the format doc alone.
func plantFile(t *testing.T, cipher, path string, id crypto.FileID, genKMS func(ec map[string]string) (dek, edk []byte), keyARN, content string) {
	t.Helper()
	conf, err := cipherdir.Load(cipher)
	if err != nil {
		t.Fatal(err)
	}
	dek, edk := genKMS(keymgr.FileContext(conf.FilesystemID, id))
	cc, err := crypto.NewContentCipher(dek, id, conf.Layout(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h := crypto.Header{FileID: id, Generation: 1, Keys: []crypto.WrappedKey{{KeyARN: keyARN, KeyVersion: 1, EDK: edk}}}
	if err := cipherfile.Create(fh, conf.Layout(), h); err != nil {
		t.Fatal(err)
	}
	cf, err := cipherfile.New(fh, cc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cf.WriteAt([]byte(content), 0); err != nil {
		t.Fatal(err)
	}
}

// lkGenerate is GenerateDataKey on lk under key, made directly (the
// attacker's own call, not through the victim's endpoint).
func lkGenerate(t *testing.T, lk *localKMS, key string) func(ec map[string]string) ([]byte, []byte) {
	return func(ec map[string]string) ([]byte, []byte) {
		out := lk.must("GenerateDataKey", map[string]any{"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": ec})
		plain, err1 := base64.StdEncoding.DecodeString(out["Plaintext"].(string))
		blob, err2 := base64.StdEncoding.DecodeString(out["CiphertextBlob"].(string))
		if err1 != nil || err2 != nil {
			t.Fatalf("GenerateDataKey answer: %v %v", err1, err2)
		}
		return plain, blob
	}
}

func TestWriterPlantsForeignKeyHeader(t *testing.T) {
	requireKmsfs(t)
	lk := startLocalKMS(t)
	tap := newKMSRecorder(t, lk.url) // the victim's endpoint: every call it makes
	f := newFixture(t)
	f.awsEnv()
	f.init(tap.initArgs()...)
	f.mount()
	for _, name := range []string{"a", "b", "doc"} {
		if err := os.WriteFile(filepath.Join(f.mnt, name), []byte("the user's "+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f.unmount()
	idA, err := fileIDOf(f.cipherPath("a"))
	if err != nil {
		t.Fatal(err)
	}
	attackerARN := lkKeyARN(lkKeyB)
	gen := lkGenerate(t, lk, attackerARN)

	// doc: replaced by a file of the attacker's, under their key.
	newID, err := crypto.NewFileID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	plantFile(t, f.cipher, f.cipherPath("doc"), newID, gen, attackerARN, "attacker's content")
	// b: a copy claiming a's file ID under the attacker's key, with the
	// index gone so both are read from their mirrors, b first.
	fid, err := crypto.ParseFileID(idA)
	if err != nil {
		t.Fatal(err)
	}
	plantFile(t, f.cipher, f.cipherPath("b"), fid, gen, attackerARN, "attacker's a")
	if err := os.RemoveAll(filepath.Join(f.cipher, ".kmsfs", "index")); err != nil {
		t.Fatal(err)
	}

	f.allowLog = regexp.MustCompile(`untrusted|not trusted|do not trust|EIO|input/output|unwrap`)
	f.mount()
	for _, name := range []string{"doc", "b"} {
		if b, err := os.ReadFile(filepath.Join(f.mnt, name)); err == nil {
			t.Errorf("%s, planted under the attacker's key, read %q", name, b)
		} else if !strings.Contains(err.Error(), "input/output error") {
			t.Errorf("%s: %v, want EIO", name, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(f.mnt, "a")); err != nil || string(b) != "the user's a" {
		t.Errorf("a after its planted twin was opened: %q, %v", b, err)
	}
	f.unmount()
	if _, _, code := f.run("cat", f.cipher, "doc"); code == 0 {
		t.Error("kmsfs cat accepted the planted file")
	}
	if n := tap.mentioning(lkKeyB); n != 0 {
		t.Errorf("%d KMS requests named the attacker's key", n)
	}
	refused := 0
	for _, line := range strings.Split(readFile(t, filepath.Join(f.cipher, ".kmsfs", "audit.log")), "\n") {
		if strings.Contains(line, attackerARN) && strings.Contains(line, `"outcome":"UntrustedKey"`) {
			refused++
		}
	}
	if refused == 0 {
		t.Error("no audit line records the refused key")
	}
	out, _, _ := f.run("fsck", f.cipher)
	if !strings.Contains(out, attackerARN) {
		t.Errorf("fsck does not report the file under the untrusted key:\n%s", out)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// initArgs are the init flags for an aws cipher directory on key A
// reached through the recorder.
func (r *kmsRecorder) initArgs() []string {
	return []string{"--kms", "aws", "--key", lkAliasA, "--aws-region", lkRegion, "--aws-endpoint", r.url}
}
