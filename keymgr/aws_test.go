package keymgr

// Tests of the aws provider against a real KMS API server on 127.0.0.1:
// local-kms (github.com/nsmithuk/local-kms), one process per test, started
// from $KMSFS_LOCAL_KMS or $GOPATH/bin/local-kms. Without it the tests
// skip, unless KMSFS_REQUIRE_LOCAL_KMS=1 (CI), where they fail.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/kmsfs/kmsfs/crypto"
)

const (
	localKMSModule  = "github.com/nsmithuk/local-kms"
	localKMSVersion = "v0.0.0-20260228092603-2a5e92d09ab6"
	lkRegion        = "eu-west-2"
	lkAccount       = "111122223333"

	// Seeded keys (KMS_SEED_PATH), each with an alias.
	lkKeyA   = "0b6f5a3c-1d2e-4f70-8a9b-0c1d2e3f4a5b"
	lkKeyB   = "7c2d9e41-5a6b-4c8d-9e0f-1a2b3c4d5e6f"
	lkAliasA = "alias/kmsfs-test"
	lkAliasB = "alias/kmsfs-other"
)

const lkSeed = `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: ` + lkKeyA + `
          Description: kmsfs test key A
        BackingKeys:
          - 34743777217A25432A46294A404E635266556A586E3272357538782F413F4428
          - 5cdaead27fe7da2de47945d73cd6d79e36494e73802f3cd3869f1d2cb0b5d7a9
      - Metadata:
          KeyId: ` + lkKeyB + `
          Description: kmsfs test key B
        BackingKeys:
          - 614E645267556B58703273357638792F423F4528472B4B6250655368566D5971
Aliases:
  - AliasName: ` + lkAliasA + `
    TargetKeyId: ` + lkKeyA + `
  - AliasName: ` + lkAliasB + `
    TargetKeyId: ` + lkKeyB + `
`

func lkKeyARN(id string) string {
	return "arn:aws:kms:" + lkRegion + ":" + lkAccount + ":key/" + id
}

func lkAliasARN(alias string) string {
	return "arn:aws:kms:" + lkRegion + ":" + lkAccount + ":" + alias
}

// localKMSBinary finds the local-kms binary or skips (fails under
// KMSFS_REQUIRE_LOCAL_KMS=1).
func localKMSBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KMSFS_LOCAL_KMS"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("KMSFS_LOCAL_KMS=%s: %v", p, err)
		}
		return p
	}
	for _, dir := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(dir, "bin", "local-kms")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("local-kms not found in $KMSFS_LOCAL_KMS or $GOPATH/bin: go install %s@%s", localKMSModule, localKMSVersion)
	if os.Getenv("KMSFS_REQUIRE_LOCAL_KMS") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// isolateAWSEnv keeps the SDK to static test credentials: no shared
// config of the user, no instance metadata service (never reached for),
// no region or endpoint from the environment.
func isolateAWSEnv(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_CONFIG_FILE":                        filepath.Join(dir, "no-config"),
		"AWS_SHARED_CREDENTIALS_FILE":            filepath.Join(dir, "no-credentials"),
		"AWS_ACCESS_KEY_ID":                      "AKIAKMSFSTESTEXAMPLE",
		"AWS_SECRET_ACCESS_KEY":                  "kmsfs/test/secret/key/not/a/real/one/000",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_PROFILE":                            "",
		"AWS_DEFAULT_PROFILE":                    "",
		"AWS_REGION":                             "",
		"AWS_DEFAULT_REGION":                     "",
		"AWS_ENDPOINT_URL":                       "",
		"AWS_ENDPOINT_URL_KMS":                   "",
		"AWS_ROLE_ARN":                           "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_MAX_ATTEMPTS":                       "",
		"AWS_RETRY_MODE":                         "",
	} {
		t.Setenv(k, v)
	}
}

// lkServer is one local-kms process.
type lkServer struct {
	url string // http://127.0.0.1:port
	mu  sync.Mutex
	out bytes.Buffer // its log, shown when a test fails
}

var lkStartedRE = regexp.MustCompile(`Local KMS started on [0-9.:\[\]]*:(\d+)`)

// startLocalKMS runs local-kms with the seed keys on a free port (it
// listens on all interfaces; the tests talk to 127.0.0.1 only) and stops
// it at the end of the test. It also isolates the AWS environment.
func startLocalKMS(t testing.TB) *lkServer {
	t.Helper()
	bin := localKMSBinary(t)
	isolateAWSEnv(t)
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(lkSeed), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"PORT=0",
		"KMS_DATA_PATH="+filepath.Join(dir, "data"),
		"KMS_REGION="+lkRegion,
		"KMS_ACCOUNT_ID="+lkAccount,
		"KMS_SEED_PATH="+seed,
	)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	s := &lkServer{}
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.out.WriteString(line + "\n")
			s.mu.Unlock()
			if m := lkStartedRE.FindStringSubmatch(line); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); _ = pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			s.mu.Lock()
			t.Logf("local-kms log:\n%s", s.out.String())
			s.mu.Unlock()
		}
	})
	select {
	case p := <-port:
		s.url = "http://127.0.0.1:" + p
	case err := <-exited:
		exited <- err
		t.Fatalf("local-kms exited before listening: %v\n%s", err, s.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("local-kms did not start within 30s\n%s", s.log())
	}
	return s
}

func (s *lkServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// newTestAWS is the aws provider against endpoint, with short backoff.
func newTestAWS(t testing.TB, endpoint string, tweak func(*AWSOptions)) (*awsProvider, *stLog) {
	t.Helper()
	logger, tl := newStLog(t)
	o := AWSOptions{
		Region:      lkRegion,
		Endpoint:    endpoint,
		CallTimeout: 10 * time.Second,
		MaxBackoff:  5 * time.Millisecond,
		Logger:      logger,
	}
	if tweak != nil {
		tweak(&o)
	}
	p, err := newAWSProvider(context.Background(), o)
	if err != nil {
		t.Fatalf("NewAWSProvider: %v", err)
	}
	return p, tl
}

// lkCreateKey makes a fresh symmetric key through the SDK and returns its ID.
func lkCreateKey(t *testing.T, p *awsProvider) string {
	t.Helper()
	out, err := p.client.CreateKey(context.Background(), &kms.CreateKeyInput{Description: aws.String("kmsfs test " + t.Name())})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}

// wantErr checks that err wraps want and mentions each of words.
func wantErr(t *testing.T, what string, err, want error, words ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want an error wrapping %q", what, err, want)
	}
	t.Logf("%s: %v", what, err)
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not mention %q", what, err, w)
		}
	}
}

func TestAWSRoundTripKeyRefs(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	if got := p.Name(); got != "aws" {
		t.Errorf("Name: got %q, want %q", got, "aws")
	}
	tests := []struct{ name, ref string }{
		{"key ID", lkKeyA},
		{"key ARN", lkKeyARN(lkKeyA)},
		{"alias name", lkAliasA},
		{"alias ARN", lkAliasARN(lkAliasA)},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ec := testContext(stFilesystemID, byte(i))
			dk, err := p.GenerateDataKey(ctx, tc.ref, ec)
			if err != nil {
				t.Fatalf("GenerateDataKey(%s): %v", tc.ref, err)
			}
			if len(dk.Plaintext) != crypto.DEKSize || len(dk.Ciphertext) == 0 {
				t.Fatalf("data key: got %d-byte DEK and %d-byte EDK, want %d and more than 0", len(dk.Plaintext), len(dk.Ciphertext), crypto.DEKSize)
			}
			if dk.KeyARN != lkKeyARN(lkKeyA) || dk.KeyVersion != 0 {
				t.Errorf("key: got %q version %d, want %q version 0", dk.KeyARN, dk.KeyVersion, lkKeyARN(lkKeyA))
			}
			if bytes.Contains(dk.Ciphertext, dk.Plaintext) {
				t.Errorf("the EDK holds the DEK in clear")
			}
			for _, ref := range []string{tc.ref, dk.KeyARN} {
				got, err := p.Decrypt(ctx, ref, dk.Ciphertext, ec)
				if err != nil {
					t.Fatalf("Decrypt(%s): %v", ref, err)
				}
				if !bytes.Equal(got, dk.Plaintext) {
					t.Errorf("Decrypt(%s): got a different DEK", ref)
				}
			}
		})
	}
}

func TestAWSEncryptionContextEnforced(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 1)
	dk, err := p.GenerateDataKey(ctx, lkAliasA, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	flipped := bytes.Clone(dk.Ciphertext)
	flipped[len(flipped)-1] ^= 1
	tests := []struct {
		name string
		blob []byte
		ec   EncryptionContext
	}{
		{"other file ID", dk.Ciphertext, testContext(stFilesystemID, 2)},
		{"other filesystem", dk.Ciphertext, testContext("00000000000000000000000000000000", 1)},
		{"no context", dk.Ciphertext, nil},
		{"context with an extra pair", dk.Ciphertext, EncryptionContext{ContextFilesystem: ec[ContextFilesystem], ContextFile: ec[ContextFile], "x": "y"}},
		{"flipped EDK byte", flipped, ec},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Decrypt(ctx, dk.KeyARN, tc.blob, tc.ec)
			if got != nil {
				t.Errorf("Decrypt returned %d bytes with an error", len(got))
			}
			wantErr(t, "Decrypt", err, ErrInvalidCiphertext,
				"wrapped key does not match its key or encryption context: the file was tampered with or comes from another filesystem")
		})
	}
}

func TestAWSKeyPinned(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 1)
	dk, err := p.GenerateDataKey(ctx, lkKeyA, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	for _, ref := range []string{lkKeyB, lkAliasB, lkKeyARN(lkKeyB)} {
		_, err := p.Decrypt(ctx, ref, dk.Ciphertext, ec)
		wantErr(t, "Decrypt with "+ref, err, ErrInvalidCiphertext)
	}
	// An IncorrectKeyException (what AWS KMS sends for a pinned key that
	// did not wrap the blob) maps the same way; local-kms never sends it.
	proxy := newAWSProxy(t, lk.url)
	pp, _ := newTestAWS(t, proxy.URL(), nil)
	proxy.inject(faultNone, faultIncorrectKey)
	_, err = pp.Decrypt(ctx, lkKeyB, dk.Ciphertext, ec)
	wantErr(t, "Decrypt answered IncorrectKeyException", err, ErrInvalidCiphertext)
	if got := proxy.requests(); got != 1 {
		t.Errorf("attempts for IncorrectKeyException: got %d, want 1 (not retried)", got)
	}
}

// TestAWSAnswerFromAnotherKey: an endpoint that answers for another key
// than the one the call named (a misrouted or impersonating KMS) is
// refused with ErrKeyMismatch naming both keys, and no plaintext comes
// back. An alias is resolved by the KMS alone: its answer's ARN is
// returned for the trust pin to check.
func TestAWSAnswerFromAnotherKey(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	p, _ := newTestAWS(t, proxy.URL(), nil)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 6)
	dk, err := p.GenerateDataKey(ctx, lkKeyARN(lkKeyA), ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	keyA, keyB := lkKeyARN(lkKeyA), lkKeyARN(lkKeyB)
	proxy.setSwapKey(keyB)
	tests := []struct {
		name    string
		call    func() ([]byte, string, error) // plaintext, answer's key, error
		wantErr bool
	}{
		{"GenerateDataKey by key ARN", func() ([]byte, string, error) {
			dk, err := p.GenerateDataKey(ctx, keyA, ec)
			return dk.Plaintext, dk.KeyARN, err
		}, true},
		{"GenerateDataKey by key ID", func() ([]byte, string, error) {
			dk, err := p.GenerateDataKey(ctx, lkKeyA, ec)
			return dk.Plaintext, dk.KeyARN, err
		}, true},
		{"Decrypt by key ARN", func() ([]byte, string, error) {
			plain, err := p.Decrypt(ctx, keyA, dk.Ciphertext, ec)
			return plain, "", err
		}, true},
		{"Decrypt by key ID", func() ([]byte, string, error) {
			plain, err := p.Decrypt(ctx, lkKeyA, dk.Ciphertext, ec)
			return plain, "", err
		}, true},
		{"ReEncrypt", func() ([]byte, string, error) {
			re, err := p.ReEncrypt(ctx, keyA, dk.Ciphertext, ec, keyA)
			return re.Plaintext, re.KeyARN, err
		}, true},
		{"GenerateDataKey by alias: the answer's ARN is returned for the pin", func() ([]byte, string, error) {
			dk, err := p.GenerateDataKey(ctx, lkAliasA, ec)
			return dk.Plaintext, dk.KeyARN, err
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proxy.inject(faultSwapKey)
			plain, arn, err := tc.call()
			if proxy.requests() != 1 {
				t.Fatalf("requests: got %d, want 1", proxy.requests())
			}
			if !tc.wantErr {
				if err != nil || arn != keyB {
					t.Fatalf("got key %q, %v; want %s and no error", arn, err, keyB)
				}
				pinned := NewPinnedProvider(p, []string{keyA})
				_, err := pinned.GenerateDataKey(ctx, lkAliasA, ec)
				wantErr(t, "pinned GenerateDataKey by alias", err, ErrUntrustedKey)
				return
			}
			wantErr(t, tc.name, err, ErrKeyMismatch, keyB, "KMS at "+proxy.URL())
			if plain != nil || arn != "" {
				t.Errorf("answer: got %d plaintext bytes and key %q, want none", len(plain), arn)
			}
		})
	}
}

func TestAWSRequestsCarryKeyAndContext(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	grants := []string{"grant-token-1", "grant-token-2"}
	p, _ := newTestAWS(t, proxy.URL(), func(o *AWSOptions) { o.GrantTokens = grants })
	ctx := context.Background()
	ec := testContext(stFilesystemID, 7)
	dk, err := p.GenerateDataKey(ctx, lkAliasA, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if _, err := p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec); err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if _, err := p.ReEncrypt(ctx, dk.KeyARN, dk.Ciphertext, ec, lkAliasB); err != nil {
		t.Fatalf("ReEncrypt: %v", err)
	}
	if _, err := p.DescribeKey(ctx, lkAliasA); err != nil {
		t.Fatalf("DescribeKey: %v", err)
	}
	wantEC := map[string]string(ec)
	tests := []struct {
		op   string
		want map[string]any
	}{
		{"GenerateDataKey", map[string]any{"KeyId": lkAliasA, "KeySpec": "AES_256", "EncryptionContext": wantEC}},
		{"Decrypt", map[string]any{"KeyId": dk.KeyARN, "EncryptionContext": wantEC}},
		{"ReEncrypt", map[string]any{"SourceKeyId": dk.KeyARN, "DestinationKeyId": lkAliasB,
			"SourceEncryptionContext": wantEC, "DestinationEncryptionContext": wantEC}},
		{"DescribeKey", map[string]any{"KeyId": lkAliasA}},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			var body map[string]any
			if err := json.Unmarshal([]byte(proxy.lastBody(tc.op)), &body); err != nil {
				t.Fatalf("request body of %s: %v", tc.op, err)
			}
			for k, want := range tc.want {
				got, _ := json.Marshal(body[k])
				w, _ := json.Marshal(want)
				if !bytes.Equal(got, w) {
					t.Errorf("%s: got %s, want %s", k, got, w)
				}
			}
			got, _ := json.Marshal(body["GrantTokens"])
			w, _ := json.Marshal(grants)
			if !bytes.Equal(got, w) {
				t.Errorf("GrantTokens: got %s, want %s", got, w)
			}
		})
	}
}

func TestAWSReEncrypt(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 3)
	dk, err := p.GenerateDataKey(ctx, lkKeyA, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	tests := []struct{ name, dst, wantARN string }{
		{"to another key", lkAliasB, lkKeyARN(lkKeyB)},
		{"to the same key", lkKeyA, lkKeyARN(lkKeyA)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			re, err := p.ReEncrypt(ctx, dk.KeyARN, dk.Ciphertext, ec, tc.dst)
			if err != nil {
				t.Fatalf("ReEncrypt: %v", err)
			}
			if re.KeyARN != tc.wantARN || re.KeyVersion != 0 || re.Plaintext != nil {
				t.Errorf("ReEncrypt: got key %q version %d with %d plaintext bytes, want %q version 0 with none", re.KeyARN, re.KeyVersion, len(re.Plaintext), tc.wantARN)
			}
			if bytes.Equal(re.Ciphertext, dk.Ciphertext) {
				t.Errorf("ReEncrypt returned the same EDK")
			}
			got, err := p.Decrypt(ctx, re.KeyARN, re.Ciphertext, ec)
			if err != nil {
				t.Fatalf("Decrypt under %s: %v", re.KeyARN, err)
			}
			if !bytes.Equal(got, dk.Plaintext) {
				t.Errorf("Decrypt after ReEncrypt: got a different DEK")
			}
			if _, err := p.Decrypt(ctx, re.KeyARN, re.Ciphertext, testContext(stFilesystemID, 4)); !errors.Is(err, ErrInvalidCiphertext) {
				t.Errorf("Decrypt of the rewrapped EDK for another file: got %v, want %v", err, ErrInvalidCiphertext)
			}
		})
	}
	_, err = p.ReEncrypt(ctx, dk.KeyARN, dk.Ciphertext, testContext(stFilesystemID, 9), lkKeyB)
	wantErr(t, "ReEncrypt with the wrong context", err, ErrInvalidCiphertext)
}

func TestAWSDescribeKey(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	tests := []struct {
		name, ref   string
		wantAliases []string
	}{
		{"key ID", lkKeyA, nil},
		{"key ARN", lkKeyARN(lkKeyA), nil},
		{"alias name", lkAliasA, []string{lkAliasA}},
		{"alias ARN", lkAliasARN(lkAliasA), []string{lkAliasA}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md, err := p.DescribeKey(context.Background(), tc.ref)
			if err != nil {
				t.Fatalf("DescribeKey: %v", err)
			}
			want := KeyMetadata{KeyID: lkKeyA, ARN: lkKeyARN(lkKeyA), State: KeyEnabled, Description: "kmsfs test key A",
				Aliases: tc.wantAliases, CurrentVersion: 0, Symmetric: true, EncryptDecrypt: true}
			if fmt.Sprint(md) != fmt.Sprint(want) {
				t.Errorf("DescribeKey(%s): got %+v, want %+v", tc.ref, md, want)
			}
		})
	}
}

func TestAWSDisabledKey(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	id := lkCreateKey(t, p)
	ec := testContext(stFilesystemID, 1)
	dk, err := p.GenerateDataKey(ctx, id, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if _, err := p.client.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	md, err := p.DescribeKey(ctx, id)
	if err != nil {
		t.Fatalf("DescribeKey: %v", err)
	}
	if md.State != KeyDisabled {
		t.Errorf("state: got %q, want %q", md.State, KeyDisabled)
	}
	_, err = p.GenerateDataKey(ctx, id, ec)
	wantErr(t, "GenerateDataKey", err, ErrKeyDisabled, "enable it with `aws kms enable-key --key-id "+id+"`")
	_, err = p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec)
	wantErr(t, "Decrypt", err, ErrKeyDisabled, "aws kms enable-key")
	_, err = p.ReEncrypt(ctx, lkKeyA, []byte("not used"), ec, id)
	if err == nil {
		t.Errorf("ReEncrypt to a disabled key: got no error")
	}

	if _, err := p.client.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatalf("EnableKey: %v", err)
	}
	if _, err := p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec); err != nil {
		t.Errorf("Decrypt after EnableKey: %v", err)
	}
}

func TestAWSPendingDeletion(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	id := lkCreateKey(t, p)
	if _, err := p.client.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)}); err != nil {
		t.Fatalf("ScheduleKeyDeletion: %v", err)
	}
	md, err := p.DescribeKey(ctx, id)
	if err != nil {
		t.Fatalf("DescribeKey: %v", err)
	}
	if md.State != KeyPendingDeletion {
		t.Errorf("state: got %q, want %q", md.State, KeyPendingDeletion)
	}
	_, err = p.GenerateDataKey(ctx, id, testContext(stFilesystemID, 1))
	wantErr(t, "GenerateDataKey", err, ErrKeyInvalidState, "aws kms cancel-key-deletion --key-id "+id)
}

func TestAWSNotFound(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 1)
	dk, err := p.GenerateDataKey(ctx, lkKeyA, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	missing := "3f1e2d3c-4b5a-4697-8877-665544332211"
	for _, ref := range []string{missing, lkKeyARN(missing), "alias/kmsfs-missing", lkAliasARN("alias/kmsfs-missing")} {
		t.Run(ref, func(t *testing.T) {
			_, err := p.GenerateDataKey(ctx, ref, ec)
			wantErr(t, "GenerateDataKey", err, ErrKeyNotFound, ref, "region")
			_, err = p.Decrypt(ctx, ref, dk.Ciphertext, ec)
			wantErr(t, "Decrypt", err, ErrKeyNotFound)
			_, err = p.DescribeKey(ctx, ref)
			wantErr(t, "DescribeKey", err, ErrKeyNotFound)
			_, err = p.ReEncrypt(ctx, dk.KeyARN, dk.Ciphertext, ec, ref)
			wantErr(t, "ReEncrypt", err, ErrKeyNotFound)
		})
	}
}

func TestAWSAccessDenied(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	p, _ := newTestAWS(t, proxy.URL(), nil)
	ctx := context.Background()
	proxy.inject(faultNone, faultDenied)
	_, err := p.Decrypt(ctx, lkKeyARN(lkKeyA), []byte("edk"), testContext(stFilesystemID, 1))
	wantErr(t, "Decrypt", err, ErrAccessDenied,
		"the key policy or IAM policy does not allow kms:Decrypt on "+lkKeyARN(lkKeyA)+": grant it (see docs/aws.md)")
	if got := proxy.requests(); got != 1 {
		t.Errorf("attempts: got %d, want 1 (access denied is not retried)", got)
	}
	proxy.inject(faultNone, faultDenied)
	_, err = p.ReEncrypt(ctx, lkKeyA, []byte("edk"), testContext(stFilesystemID, 1), lkKeyB)
	wantErr(t, "ReEncrypt", err, ErrAccessDenied, "kms:ReEncryptFrom on "+lkKeyA, "kms:ReEncryptTo on "+lkKeyB)
}

func TestAWSNoCredentials(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	p, _ := newTestAWS(t, proxy.URL(), func(o *AWSOptions) { o.CallTimeout = 5 * time.Second })
	start := time.Now()
	_, err := p.GenerateDataKey(context.Background(), lkKeyA, testContext(stFilesystemID, 1))
	wantErr(t, "GenerateDataKey", err, ErrAccessDenied, "no usable AWS credentials", "AWS_PROFILE")
	if got := proxy.requests(); got != 0 {
		t.Errorf("requests without credentials: got %d, want 0", got)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("failing without credentials took %v", d)
	}
}

// TestAWSRetriesRideOutFaults: transient faults on the first attempts are
// retried away; the proxy counts the attempts.
func TestAWSRetriesRideOutFaults(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	proxy.setSlowDelay(3 * time.Second)
	p, tl := newTestAWS(t, proxy.URL(), func(o *AWSOptions) { o.AttemptTimeout = 500 * time.Millisecond })
	ctx := context.Background()
	tests := []struct {
		name   string
		faults []awsFault
	}{
		{"no fault", nil},
		{"throttled twice", []awsFault{faultThrottle, faultThrottle}},
		{"500 three times", []awsFault{fault500, fault500, fault500}},
		{"503 plain text", []awsFault{fault503}},
		{"dropped connections", []awsFault{faultDrop, faultDrop}},
		{"slow answers", []awsFault{faultSlow, faultSlow}},
		{"all of them", []awsFault{faultThrottle, fault500, faultDrop, faultSlow}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ec := testContext(stFilesystemID, byte(i))
			proxy.inject(faultNone, tc.faults...)
			dk, err := p.GenerateDataKey(ctx, lkAliasA, ec)
			if err != nil {
				t.Fatalf("GenerateDataKey through %v: %v", tc.faults, err)
			}
			if got, want := proxy.requests(), len(tc.faults)+1; got != want {
				t.Errorf("GenerateDataKey attempts: got %d, want %d", got, want)
			}
			proxy.inject(faultNone, tc.faults...)
			got, err := p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec)
			if err != nil {
				t.Fatalf("Decrypt through %v: %v", tc.faults, err)
			}
			if !bytes.Equal(got, dk.Plaintext) {
				t.Errorf("Decrypt: got a different DEK")
			}
			if got, want := proxy.requestsFor("Decrypt"), len(tc.faults)+1; got != want {
				t.Errorf("Decrypt attempts: got %d, want %d", got, want)
			}
		})
	}
	if msgs := tl.messages(slog.LevelDebug); len(msgs) == 0 {
		t.Errorf("no debug log of the retries")
	}
}

func TestAWSPersistentThrottling(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	p, _ := newTestAWS(t, proxy.URL(), func(o *AWSOptions) { o.MaxAttempts = 4 })
	proxy.inject(faultThrottle)
	_, err := p.GenerateDataKey(context.Background(), lkKeyA, testContext(stFilesystemID, 1))
	wantErr(t, "GenerateDataKey", err, ErrThrottled, "after 4 attempts", "quota")
	if errors.Is(err, ErrKMSUnavailable) {
		t.Errorf("throttling reported as unavailable too: %v", err)
	}
	if got := proxy.requests(); got != 4 {
		t.Errorf("attempts: got %d, want 4", got)
	}
}

// TestAWSHardOutage: a KMS that never answers well fails with
// ErrKMSUnavailable within the call timeout, never with a context error
// (which would read as the caller giving up).
func TestAWSHardOutage(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	proxy.setSlowDelay(time.Minute)

	// A port with nothing behind it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String()
	_ = ln.Close()

	const callTimeout = 1500 * time.Millisecond
	tests := []struct {
		name         string
		endpoint     string
		fault        awsFault
		attempt      time.Duration
		wantAttempts int // 0: not checked
		words        []string
	}{
		{"always 500", proxy.URL(), fault500, 0, 5, []string{"after 5 attempts", proxy.URL()}},
		{"always 503", proxy.URL(), fault503, 0, 5, []string{"after 5 attempts"}},
		{"connection always dropped", proxy.URL(), faultDrop, 0, 5, []string{"cannot reach KMS at " + proxy.URL()}},
		{"closed port", closedURL, faultNone, 0, 0, []string{"cannot reach KMS at " + closedURL, "check the network, region and endpoint"}},
		{"hung, attempts time out", proxy.URL(), faultSlow, 100 * time.Millisecond, 5, []string{"cannot reach KMS"}},
		{"hung, the call times out", proxy.URL(), faultSlow, time.Minute, 1, []string{"no answer within " + callTimeout.String()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newTestAWS(t, tc.endpoint, func(o *AWSOptions) {
				o.CallTimeout = callTimeout
				o.AttemptTimeout = tc.attempt
			})
			proxy.inject(tc.fault)
			start := time.Now()
			_, err := p.Decrypt(context.Background(), lkKeyA, []byte("edk"), testContext(stFilesystemID, 1))
			elapsed := time.Since(start)
			wantErr(t, "Decrypt", err, ErrKMSUnavailable, tc.words...)
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("error wraps a context error: %v", err)
			}
			if elapsed > callTimeout+time.Second {
				t.Errorf("failed after %v, want within the call timeout %v", elapsed, callTimeout)
			}
			if tc.wantAttempts > 0 {
				if got := proxy.requests(); got != tc.wantAttempts {
					t.Errorf("attempts: got %d, want %d", got, tc.wantAttempts)
				}
			}
		})
	}
}

func TestAWSCallerCancels(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	proxy.setSlowDelay(time.Minute)
	p, _ := newTestAWS(t, proxy.URL(), nil)
	proxy.inject(faultSlow)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := p.Decrypt(ctx, lkKeyA, []byte("edk"), testContext(stFilesystemID, 1))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrKMSUnavailable) {
		t.Errorf("Decrypt with the caller's deadline passed: got %v, want the caller's context error only", err)
	}
}

func TestAWSConcurrent(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 8 {
				ec := testContext(fmt.Sprintf("%032x", g), byte(i))
				dk, err := p.GenerateDataKey(ctx, lkAliasA, ec)
				if err != nil {
					errs <- err
					return
				}
				got, err := p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, dk.Plaintext) {
					errs <- errors.New("Decrypt returned a different DEK")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestAWSKeepsConnections: the connections of a burst of concurrent calls
// (the DEK pool's refills) stay open for the next burst. With the SDK's
// default of 10 idle connections per host, the second burst would dial
// again all but 10 of them (and over TLS, handshake again).
func TestAWSKeepsConnections(t *testing.T) {
	lk := startLocalKMS(t)
	proxy := newAWSProxy(t, lk.url)
	proxy.setSlowDelay(50 * time.Millisecond) // the calls of a burst overlap
	proxy.inject(faultSlow)
	p, _ := newTestAWS(t, proxy.URL(), nil)
	const burst = 48
	for round := range 2 {
		var wg sync.WaitGroup
		for i := range burst {
			wg.Go(func() {
				ec := testContext(fmt.Sprintf("%032x", round), byte(i))
				if _, err := p.GenerateDataKey(context.Background(), lkAliasA, ec); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	if got := proxy.requests(); got != 2*burst {
		t.Fatalf("requests: got %d, want %d", got, 2*burst)
	}
	if got := proxy.conns.Load(); got > burst {
		t.Fatalf("connections for two bursts of %d calls: got %d, want at most %d (the second burst reuses the first's)", burst, got, burst)
	}
}

func TestAWSOptions(t *testing.T) {
	lk := startLocalKMS(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		env     map[string]string
		o       AWSOptions
		wantErr string // "" : a working provider
	}{
		{"region from the environment", map[string]string{"AWS_REGION": lkRegion}, AWSOptions{Endpoint: lk.url}, ""},
		{"no region", nil, AWSOptions{Endpoint: lk.url}, "no AWS region"},
		{"endpoint not a URL", nil, AWSOptions{Region: lkRegion, Endpoint: "127.0.0.1:8080"}, "not an http(s) URL"},
		{"negative timeout", nil, AWSOptions{Region: lkRegion, CallTimeout: -1}, "negative"},
		{"negative attempts", nil, AWSOptions{Region: lkRegion, MaxAttempts: -1}, "negative"},
		{"too many grant tokens", nil, AWSOptions{Region: lkRegion, GrantTokens: make([]string, 11)}, "at most 10"},
		{"empty grant token", nil, AWSOptions{Region: lkRegion, GrantTokens: []string{""}}, "empty"},
		{"unknown profile", nil, AWSOptions{Region: lkRegion, Profile: "kmsfs-no-such-profile"}, "kmsfs-no-such-profile"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			p, err := NewAWSProvider(ctx, tc.o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewAWSProvider: got %v, want an error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewAWSProvider: %v", err)
			}
			if _, err := p.DescribeKey(ctx, lkAliasA); err != nil {
				t.Errorf("DescribeKey: %v", err)
			}
		})
	}
}

// TestAWSSharedProfile: region and credentials from a profile of the shared
// config files, chosen by Profile.
func TestAWSSharedProfile(t *testing.T) {
	lk := startLocalKMS(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	creds := filepath.Join(dir, "credentials")
	if err := os.WriteFile(cfg, []byte("[profile kmsfs-test]\nregion = "+lkRegion+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(creds, []byte("[kmsfs-test]\naws_access_key_id = AKIAKMSFSPROFILE0000\naws_secret_access_key = profile/secret/not/real/000000000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CONFIG_FILE", cfg)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	p, err := NewAWSProvider(context.Background(), AWSOptions{Profile: "kmsfs-test", Endpoint: lk.url})
	if err != nil {
		t.Fatalf("NewAWSProvider: %v", err)
	}
	ec := testContext(stFilesystemID, 1)
	dk, err := p.GenerateDataKey(context.Background(), lkAliasA, ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if _, err := p.Decrypt(context.Background(), dk.KeyARN, dk.Ciphertext, ec); err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
}

// TestAWSManagerAudit: the Manager over the aws provider makes one
// GenerateDataKey per new file (the pool may run ahead by its size), no
// Decrypt while keys are cached, and exactly one Decrypt per file after the
// cache is purged.
func TestAWSManagerAudit(t *testing.T) {
	lk := startLocalKMS(t)
	p, _ := newTestAWS(t, lk.url, nil)
	audit, auditPath := openTestAudit(t)
	logger, _ := newStLog(t)
	ix := openStIndex(t, stIndexDir(t), IndexOptions{Logger: logger})
	cache := newStCache(t, CacheOptions{MaxEntries: 1000})
	const files, poolSize = 100, 8
	m, err := NewManager(ManagerOptions{
		FilesystemID: stFilesystemID,
		KeyARN:       lkAliasA,
		Provider:     NewAuditingProvider(p, audit, nil),
		Index:        ix,
		Cache:        cache,
		PoolSize:     poolSize,
		Layout:       crypto.DefaultLayout(),
		Logger:       logger,
	})
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m.Start(ctx)
	defer m.Close()

	count := func() map[string]int {
		n := map[string]int{}
		for _, r := range readAuditFile(t, auditPath) {
			if r.Outcome != "ok" {
				t.Errorf("audit record %+v: outcome %q, want ok", r, r.Outcome)
			}
			n[r.Op]++
		}
		return n
	}

	type file struct {
		h      crypto.Header
		sealed []byte
	}
	var created []file
	for range files {
		h, c, err := m.NewFile(ctx)
		if err != nil {
			t.Fatalf("NewFile: %v", err)
		}
		if got := h.Keys[0].KeyARN; got != lkKeyARN(lkKeyA) {
			t.Fatalf("header key: got %q, want %q", got, lkKeyARN(lkKeyA))
		}
		sealed, err := c.SealChunk(nil, 0, true, []byte("hello "+h.FileID.String()))
		if err != nil {
			t.Fatalf("SealChunk: %v", err)
		}
		created = append(created, file{h, sealed})
	}
	n := count()
	if n[AuditGenerateDataKey] < files || n[AuditGenerateDataKey] > files+poolSize {
		t.Errorf("GenerateDataKey calls for %d files: got %d, want %d to %d", files, n[AuditGenerateDataKey], files, files+poolSize)
	}
	if n[AuditDecrypt] != 0 {
		t.Errorf("Decrypt calls while creating: got %d, want 0", n[AuditDecrypt])
	}

	open := func() {
		t.Helper()
		for _, f := range created {
			c, err := m.OpenFile(ctx, f.h.FileID, noMirror(t))
			if err != nil {
				t.Fatalf("OpenFile %s: %v", f.h.FileID, err)
			}
			got, err := c.OpenChunk(nil, 0, true, f.sealed)
			if err != nil || string(got) != "hello "+f.h.FileID.String() {
				t.Fatalf("OpenChunk of %s: got %q, %v", f.h.FileID, got, err)
			}
		}
	}
	cache.Purge()
	open()
	after := count()
	if got := after[AuditDecrypt]; got != files {
		t.Errorf("Decrypt calls after a cache purge: got %d, want %d", got, files)
	}
	open()
	again := count()
	if again[AuditDecrypt] != after[AuditDecrypt] || again[AuditGenerateDataKey] > files+poolSize {
		t.Errorf("calls for cached opens: Decrypt %d -> %d, GenerateDataKey %d, want no new Decrypt", after[AuditDecrypt], again[AuditDecrypt], again[AuditGenerateDataKey])
	}
	for _, r := range readAuditFile(t, auditPath) {
		if r.Op == AuditDecrypt && r.KeyARN != lkKeyARN(lkKeyA) {
			t.Errorf("Decrypt audit key: got %q, want %q", r.KeyARN, lkKeyARN(lkKeyA))
		}
		if r.FileID == "" {
			t.Errorf("audit record without a file ID: %+v", r)
		}
	}
}

func TestAWSKeyRefParsing(t *testing.T) {
	tests := []struct {
		ref        string
		wantRegion string
		wantAlias  string
	}{
		{"arn:aws:kms:eu-west-2:111122223333:key/" + lkKeyA, "eu-west-2", ""},
		{"arn:aws-cn:kms:cn-north-1:111122223333:alias/kmsfs/data", "cn-north-1", "alias/kmsfs/data"},
		{"alias/kmsfs/data", "", "alias/kmsfs/data"},
		{lkKeyA, "", ""},
		{"arn:aws:s3:::bucket", "", ""},
		{"arn:aws:kms::111122223333:key/x", "", ""},
		{"", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.ref, func(t *testing.T) {
			region, ok := AWSRegionFromARN(tc.ref)
			if region != tc.wantRegion || ok != (tc.wantRegion != "") {
				t.Errorf("AWSRegionFromARN: got %q, %v, want %q, %v", region, ok, tc.wantRegion, tc.wantRegion != "")
			}
			alias, ok := aliasName(tc.ref)
			if alias != tc.wantAlias || ok != (tc.wantAlias != "") {
				t.Errorf("aliasName: got %q, %v, want %q, %v", alias, ok, tc.wantAlias, tc.wantAlias != "")
			}
		})
	}
}
