package keymgr

// Tests of the trust pin (pinned.go) and of what it buys the Manager and
// the DEK cache: a header naming a key the user does not trust is an
// authentication failure of that file, no call reaches that key, and a
// planted file cannot put a key under another file's ID. All run on the
// real local provider; the writer's key lives in a keyring of its own.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// pinCounter forwards to a real provider and counts every call. answerARN,
// when set, replaces the key of GenerateDataKey and ReEncrypt answers (a
// KMS answering for another key); lastPlain keeps the plaintext slice of
// the last GenerateDataKey answer, to check it was zeroed.
type pinCounter struct {
	Provider
	answerARN                              string
	generate, decrypt, reencrypt, describe atomic.Int64

	mu        sync.Mutex
	lastPlain []byte
}

func (c *pinCounter) calls() int64 {
	return c.generate.Load() + c.decrypt.Load() + c.reencrypt.Load() + c.describe.Load()
}

func (c *pinCounter) GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error) {
	c.generate.Add(1)
	dk, err := c.Provider.GenerateDataKey(ctx, keyRef, ec)
	if err == nil && c.answerARN != "" {
		dk.KeyARN = c.answerARN
	}
	c.mu.Lock()
	c.lastPlain = dk.Plaintext
	c.mu.Unlock()
	return dk, err
}

func (c *pinCounter) Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error) {
	c.decrypt.Add(1)
	return c.Provider.Decrypt(ctx, keyRef, blob, ec)
}

func (c *pinCounter) ReEncrypt(ctx context.Context, src string, blob []byte, ec EncryptionContext, dst string) (DataKey, error) {
	c.reencrypt.Add(1)
	dk, err := c.Provider.ReEncrypt(ctx, src, blob, ec, dst)
	if err == nil && c.answerARN != "" {
		dk.KeyARN = c.answerARN
	}
	return dk, err
}

func (c *pinCounter) DescribeKey(ctx context.Context, keyRef string) (KeyMetadata, error) {
	c.describe.Add(1)
	return c.Provider.DescribeKey(ctx, keyRef)
}

// pinKeys are the user's keys A and B (one keyring) and the writer's key
// E (a keyring of its own, as on the writer's machine).
type pinKeys struct {
	kr       *Keyring
	a, b     KeyMetadata
	local    Provider // over kr
	writer   Provider // over the writer's keyring
	writerMD KeyMetadata
}

func newPinKeys(t *testing.T) pinKeys {
	t.Helper()
	kr, _ := newTestKeyring(t)
	k := pinKeys{kr: kr, a: mustCreateKey(t, kr, "pin a", "alias/pin-a"), b: mustCreateKey(t, kr, "pin b", "alias/pin-b")}
	mustSave(t, kr)
	k.local = NewLocalProvider(kr)
	wkr, _ := newTestKeyring(t)
	k.writerMD = mustCreateKey(t, wkr, "the writer's key", "alias/pin-a") // same alias, other key
	mustSave(t, wkr)
	k.writer = NewLocalProvider(wkr)
	return k
}

// writerEDK is an EDK the writer makes under their own key for file n of
// the filesystem: the encryption context is public.
func (k pinKeys) writerEDK(t *testing.T, ec EncryptionContext) DataKey {
	t.Helper()
	dk, err := k.writer.GenerateDataKey(context.Background(), k.writerMD.ARN, ec)
	if err != nil {
		t.Fatalf("writer's GenerateDataKey: %v", err)
	}
	return dk
}

// wantUntrusted checks err is the pin's refusal naming ref and the fix.
func wantUntrusted(t *testing.T, what string, err error, ref string) {
	t.Helper()
	if !errors.Is(err, ErrUntrustedKey) {
		t.Fatalf("%s: got %v, want %v", what, err, ErrUntrustedKey)
	}
	// fs/errno.go maps ErrInvalidCiphertext to EIO.
	if !errors.Is(err, ErrInvalidCiphertext) {
		t.Errorf("%s: got %v, want it to wrap %v (EIO)", what, err, ErrInvalidCiphertext)
	}
	for _, w := range []string{ref, "kmsfs trust CIPHERDIR"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not mention %q", what, err, w)
		}
	}
}

// TestPinnedRefusesUntrustedKeys: every call naming a key that is not
// exactly a trusted ARN is refused before the inner provider sees it.
func TestPinnedRefusesUntrustedKeys(t *testing.T) {
	k := newPinKeys(t)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 1)
	good, err := k.local.GenerateDataKey(ctx, k.a.ARN, ec)
	if err != nil {
		t.Fatal(err)
	}
	bad := k.writerEDK(t, ec)
	tests := []struct {
		name string
		ref  string // the key the error must name
		call func(p Provider) error
	}{
		{"Decrypt under the writer's key", k.writerMD.ARN, func(p Provider) error {
			_, err := p.Decrypt(ctx, k.writerMD.ARN, bad.Ciphertext, ec)
			return err
		}},
		{"Decrypt by the alias of a trusted key", "alias/pin-a", func(p Provider) error {
			_, err := p.Decrypt(ctx, "alias/pin-a", good.Ciphertext, ec)
			return err
		}},
		{"Decrypt by the key ID of a trusted key", k.a.KeyID, func(p Provider) error {
			_, err := p.Decrypt(ctx, k.a.KeyID, good.Ciphertext, ec)
			return err
		}},
		{"Decrypt naming no key", `""`, func(p Provider) error {
			_, err := p.Decrypt(ctx, "", good.Ciphertext, ec)
			return err
		}},
		{"GenerateDataKey under the writer's key", k.writerMD.ARN, func(p Provider) error {
			_, err := p.GenerateDataKey(ctx, k.writerMD.ARN, ec)
			return err
		}},
		{"ReEncrypt from the writer's key", k.writerMD.ARN, func(p Provider) error {
			_, err := p.ReEncrypt(ctx, k.writerMD.ARN, bad.Ciphertext, ec, k.a.ARN)
			return err
		}},
		{"ReEncrypt to a key not trusted yet", k.b.ARN, func(p Provider) error {
			_, err := p.ReEncrypt(ctx, k.a.ARN, good.Ciphertext, ec, k.b.ARN)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inner := &pinCounter{Provider: k.local}
			p := NewPinnedProvider(inner, []string{k.a.ARN, ""})
			wantUntrusted(t, tc.name, tc.call(p), tc.ref)
			if got := inner.calls(); got != 0 {
				t.Errorf("calls reaching the inner provider: got %d, want 0", got)
			}
		})
	}

	// The same provider lets trusted keys through, and a trusted
	// migration target once Trust names it.
	inner := &pinCounter{Provider: k.local}
	p := NewPinnedProvider(inner, []string{k.a.ARN})
	if got, want := p.Trusted(), []string{k.a.ARN}; !slices.Equal(got, want) {
		t.Errorf("Trusted: got %v, want %v", got, want)
	}
	dek, err := p.Decrypt(ctx, k.a.ARN, good.Ciphertext, ec)
	if err != nil || string(dek) != string(good.Plaintext) {
		t.Fatalf("Decrypt under the trusted key: got %v, want the DEK", err)
	}
	if md, err := p.DescribeKey(ctx, "alias/pin-b"); err != nil || md.ARN != k.b.ARN {
		t.Fatalf("DescribeKey (alias resolution passes through): got %q, %v, want %s", md.ARN, err, k.b.ARN)
	}
	p.Trust(k.b.ARN)
	p.Trust("")
	if got, want := p.Trusted(), slices.Sorted(slices.Values([]string{k.a.ARN, k.b.ARN})); !slices.Equal(got, want) {
		t.Errorf("Trusted after Trust: got %v, want %v", got, want)
	}
	re, err := p.ReEncrypt(ctx, k.a.ARN, good.Ciphertext, ec, k.b.ARN)
	if err != nil || re.KeyARN != k.b.ARN {
		t.Fatalf("ReEncrypt to the trusted target: got %q, %v, want %s", re.KeyARN, err, k.b.ARN)
	}
	if got := inner.calls(); got != 3 {
		t.Errorf("inner calls: got %d, want 3 (Decrypt, DescribeKey, ReEncrypt)", got)
	}
}

// TestPinnedChecksAnswerKey: an answer naming another key than the one
// asked for is refused and its plaintext zeroed.
func TestPinnedChecksAnswerKey(t *testing.T) {
	k := newPinKeys(t)
	ctx := context.Background()
	ec := testContext(stFilesystemID, 2)
	good, err := k.local.GenerateDataKey(ctx, k.a.ARN, ec)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func(p Provider) (DataKey, error)
	}{
		{"GenerateDataKey", func(p Provider) (DataKey, error) { return p.GenerateDataKey(ctx, k.a.ARN, ec) }},
		{"ReEncrypt", func(p Provider) (DataKey, error) { return p.ReEncrypt(ctx, k.a.ARN, good.Ciphertext, ec, k.a.ARN) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// B is trusted too: the answer must be the key asked
			// for, not merely a trusted one.
			inner := &pinCounter{Provider: k.local, answerARN: k.b.ARN}
			p := NewPinnedProvider(inner, []string{k.a.ARN, k.b.ARN})
			dk, err := tc.call(p)
			if !errors.Is(err, ErrKeyMismatch) || !errors.Is(err, ErrInvalidCiphertext) {
				t.Fatalf("got %v, want %v", err, ErrKeyMismatch)
			}
			for _, w := range []string{k.a.ARN, k.b.ARN} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
			if dk.Plaintext != nil || dk.Ciphertext != nil || dk.KeyARN != "" {
				t.Errorf("answer: got %+v, want none", dk)
			}
			inner.mu.Lock()
			defer inner.mu.Unlock()
			for i, b := range inner.lastPlain {
				if b != 0 {
					t.Fatalf("the refused answer's DEK is not zeroed (byte %d)", i)
				}
			}
		})
	}
}

// TestPinnedRefusalIsAudited: stacked as the CLI stacks it,
// Auditing(Pinned(real)), a refused call leaves an audit line naming the
// key and the error.
func TestPinnedRefusalIsAudited(t *testing.T) {
	k := newPinKeys(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAuditLog(path, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	inner := &pinCounter{Provider: k.local}
	p := NewAuditingProvider(NewPinnedProvider(inner, []string{k.a.ARN}), a, nil)
	ec := testContext(stFilesystemID, 3)
	bad := k.writerEDK(t, ec)
	if _, err := p.Decrypt(context.Background(), k.writerMD.ARN, bad.Ciphertext, ec); !errors.Is(err, ErrUntrustedKey) {
		t.Fatalf("Decrypt: got %v, want %v", err, ErrUntrustedKey)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := ReadAudit(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("audit records: got %d, want 1", len(recs))
	}
	r := recs[0]
	if r.Op != AuditDecrypt || r.KeyARN != k.writerMD.ARN || r.FileID != ec[ContextFile] || r.Outcome == "ok" || !strings.Contains(r.Error, ErrUntrustedKey.Error()) {
		t.Errorf("audit record: got %+v, want a failed Decrypt of file %s with %s naming %q", r, ec[ContextFile], k.writerMD.ARN, ErrUntrustedKey)
	}
	if got := inner.calls(); got != 0 {
		t.Errorf("inner calls: got %d, want 0", got)
	}
}

// TestManagerPlantedHeaders: planted headers through a pinned Manager.
// None reaches the writer's key, none puts a key in the cache, and the
// real file opens afterwards with its own key.
func TestManagerPlantedHeaders(t *testing.T) {
	type setup struct {
		e      *stEnv
		k      pinKeys
		victim crypto.Header // a real file
		sealed []byte        // its chunk 0
		other  crypto.Header // another real file
	}
	planted := func(s setup, id crypto.FileID, keys ...crypto.WrappedKey) crypto.Header {
		return crypto.Header{FileID: id, Generation: 9, Keys: keys}
	}
	writerKey := func(t *testing.T, s setup, id crypto.FileID) crypto.WrappedKey {
		dk := s.k.writerEDK(t, FileContext(stFilesystemID, id))
		crypto.Zero(dk.Plaintext)
		return crypto.WrappedKey{KeyARN: dk.KeyARN, KeyVersion: dk.KeyVersion, EDK: dk.Ciphertext}
	}
	tests := []struct {
		name string
		// plant returns the file ID opened and the header mirror the
		// planted file holds; it may change the index.
		plant        func(t *testing.T, s setup) (crypto.FileID, crypto.Header)
		wantErr      error
		notErr       error // an error the result must not wrap
		wantDecrypts int64 // calls reaching the real provider
	}{
		{
			name: "a new file under the writer's key",
			plant: func(t *testing.T, s setup) (crypto.FileID, crypto.Header) {
				id := crypto.FileID{0xee, 1}
				return id, planted(s, id, writerKey(t, s, id))
			},
			wantErr: ErrUntrustedKey,
		},
		{
			name: "a known file ID under the writer's key, index entry deleted",
			plant: func(t *testing.T, s setup) (crypto.FileID, crypto.Header) {
				if err := s.e.ix.Delete(s.victim.FileID); err != nil {
					t.Fatal(err)
				}
				return s.victim.FileID, planted(s, s.victim.FileID, writerKey(t, s, s.victim.FileID))
			},
			wantErr: ErrUntrustedKey,
		},
		{
			name: "a known file ID carrying another file's wrapped key, index entry deleted",
			plant: func(t *testing.T, s setup) (crypto.FileID, crypto.Header) {
				if err := s.e.ix.Delete(s.victim.FileID); err != nil {
					t.Fatal(err)
				}
				return s.victim.FileID, planted(s, s.victim.FileID, s.other.Keys...)
			},
			wantErr:      ErrInvalidCiphertext,
			notErr:       ErrUntrustedKey,
			wantDecrypts: 1, // a trusted key: the KMS refuses the context
		},
		{
			name: "a known file ID with the mirror of another file, index entry deleted",
			plant: func(t *testing.T, s setup) (crypto.FileID, crypto.Header) {
				if err := s.e.ix.Delete(s.victim.FileID); err != nil {
					t.Fatal(err)
				}
				return s.victim.FileID, s.other
			},
			wantErr: crypto.ErrBadHeader,
		},
		{
			name: "an index entry under the writer's key, the file's own mirror intact",
			plant: func(t *testing.T, s setup) (crypto.FileID, crypto.Header) {
				if err := s.e.ix.Put(planted(s, s.victim.FileID, writerKey(t, s, s.victim.FileID))); err != nil {
					t.Fatal(err)
				}
				return s.victim.FileID, s.victim
			},
			wantDecrypts: 1, // the mirror's, after the pin refused the entry
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newPinKeys(t)
			var s setup
			s.k = k
			s.e = newStEnv(t, func(o *ManagerOptions) {
				o.Provider = NewPinnedProvider(o.Provider, []string{o.KeyARN})
			})
			s.victim, s.sealed = s.e.newFile(t)
			s.other, _ = s.e.newFile(t)
			s.e.cache.Purge() // a fresh mount: nothing cached
			id, mh := tc.plant(t, s)
			before := s.e.kms.prov.decrypt.Load()

			m := &mirror{h: mh}
			c, err := s.e.m.OpenFile(context.Background(), id, m.read)
			got := s.e.kms.prov.decrypt.Load() - before
			if got != tc.wantDecrypts {
				t.Errorf("Decrypt calls reaching the provider: got %d, want %d", got, tc.wantDecrypts)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || (tc.notErr != nil && errors.Is(err, tc.notErr)) {
					t.Fatalf("OpenFile: got %v, want %v", err, tc.wantErr)
				}
				if _, cached := s.e.cache.slotOf(id); cached {
					t.Fatalf("a key is cached under %s after a refused open", id)
				}
			} else if err != nil {
				t.Fatalf("OpenFile: %v", err)
			} else {
				opens(t, c, s.victim, s.sealed)
				if ih, err := s.e.ix.Get(id); err != nil || !ih.Equal(s.victim) {
					t.Errorf("index entry after the open: got %v, want it healed from the mirror", err)
				}
			}
			if id != s.victim.FileID {
				return
			}
			// The real file still opens with its own key.
			s.e.cache.Purge()
			c, err = s.e.m.OpenFile(context.Background(), id, (&mirror{h: s.victim}).read)
			if err != nil {
				t.Fatalf("OpenFile of the real file: %v", err)
			}
			opens(t, c, s.victim, s.sealed)
		})
	}
}

// TestCacheServesOneFilesystem: a DEK cache bound to one filesystem's
// Manager refuses a Manager of another, so equal file IDs of two
// filesystems never share a key.
func TestCacheServesOneFilesystem(t *testing.T) {
	kms := newStKMS(t)
	cache := newStCache(t, CacheOptions{MaxEntries: 10})
	tests := []struct {
		name, fsID string
		wantErr    bool
	}{
		{"the first filesystem binds it", stFilesystemID, false},
		{"another filesystem is refused", "0123456789abcdef0123456789abcdef", true},
		{"the same filesystem again (a second Manager)", stFilesystemID, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewManager(ManagerOptions{FilesystemID: tc.fsID, KeyARN: kms.arn, Provider: kms.prov,
				Cache: cache, PoolSize: 1, Layout: crypto.DefaultLayout()})
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "cache of its own") {
					t.Fatalf("NewManager: got %v, want a refusal naming the fix", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewManager: %v", err)
			}
			// Close purges the shared cache; that is the caller's
			// business here.
			t.Cleanup(func() { m.Close() })
		})
	}
}
