package keymgr

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// headerOf is a header reader that returns h.
func headerOf(h crypto.Header) func() (crypto.Header, error) {
	return func() (crypto.Header, error) { return h, nil }
}

// newNamesKey makes a names key with e's Manager; the key is zeroed at
// cleanup.
func newNamesKey(t *testing.T, m *Manager) (crypto.Header, []byte) {
	t.Helper()
	h, key, err := m.NewNamesKey(context.Background())
	if err != nil {
		t.Fatalf("NewNamesKey: %v", err)
	}
	t.Cleanup(func() { crypto.Zero(key) })
	return h, key
}

func tamperEDK(h crypto.Header) crypto.Header {
	k := h.Keys[0]
	k.EDK = bytes.Clone(k.EDK)
	k.EDK[len(k.EDK)/2] ^= 1
	h.Keys = []crypto.WrappedKey{k}
	return h
}

func TestNamesKeyRoundTrip(t *testing.T) {
	e := newStEnv(t, nil)
	ctx := context.Background()
	h, key := newNamesKey(t, e.m)
	if h.FileID != crypto.NamesKeyID || h.Generation != 1 || len(h.Keys) != 1 {
		t.Fatalf("header: got file %s generation %d with %d keys, want %s, 1, 1", h.FileID, h.Generation, len(h.Keys), crypto.NamesKeyID)
	}
	if got, want := h.Keys[0].KeyARN, e.kms.arn; got != want {
		t.Errorf("key ARN: got %q, want %q", got, want)
	}
	if got, want := h.Keys[0].KeyVersion, uint32(1); got != want {
		t.Errorf("key version: got %d, want %d", got, want)
	}
	if got, want := len(key), crypto.NamesKeySize; got != want {
		t.Fatalf("key: got %d bytes, want %d", got, want)
	}
	if got := e.kms.prov.generate.Load(); got != 1 {
		t.Errorf("GenerateDataKey calls: got %d, want 1 (not from the pool)", got)
	}
	if _, err := e.ix.Get(crypto.NamesKeyID); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("index entry of the names key: got %v, want %v", err, ErrNotIndexed)
	}

	got, err := e.m.OpenNamesKey(ctx, headerOf(h))
	if err != nil {
		t.Fatalf("OpenNamesKey: %v", err)
	}
	defer crypto.Zero(got)
	if !bytes.Equal(got, key) {
		t.Errorf("OpenNamesKey: got another key than NewNamesKey made")
	}
	if e.cache.Stats().Entries != 0 {
		t.Errorf("DEK cache: got %d entries, want 0 (the names key is never cached)", e.cache.Stats().Entries)
	}

	// The names key is a working key of crypto's name cipher.
	nc, err := crypto.NewNameCipher(got, stFilesystemID)
	if err != nil {
		t.Fatalf("NewNameCipher: %v", err)
	}
	nc.Zero()
}

func TestNamesKeyContext(t *testing.T) {
	e := newStEnv(t, nil)
	ctx := context.Background()
	h, _ := newNamesKey(t, e.m)
	fh, _ := e.newFile(t)

	// The names EDK does not unwrap as a file's key...
	for _, id := range []crypto.FileID{fh.FileID, {1}} {
		if dek, err := e.kms.prov.Decrypt(ctx, h.Keys[0].KeyARN, h.Keys[0].EDK, EncryptionContext{ContextFilesystem: stFilesystemID, ContextFile: id.String()}); !errors.Is(err, ErrInvalidCiphertext) {
			crypto.Zero(dek)
			t.Errorf("names EDK under the context of file %s: got %v, want %v", id, err, ErrInvalidCiphertext)
		}
	}
	// ... and a file's EDK does not unwrap as the names key.
	fake := crypto.Header{FileID: crypto.NamesKeyID, Generation: 1, Keys: fh.Keys}
	if key, err := e.m.OpenNamesKey(ctx, headerOf(fake)); !errors.Is(err, ErrInvalidCiphertext) {
		crypto.Zero(key)
		t.Errorf("a file's EDK as the names key: got %v, want %v", err, ErrInvalidCiphertext)
	}
	// Nor does the names key of one filesystem open in another.
	other := newStEnv(t, func(o *ManagerOptions) { o.FilesystemID = "00112233445566778899aabbccddeeff" })
	oh, _ := newNamesKey(t, other.m)
	if key, err := e.m.OpenNamesKey(ctx, headerOf(oh)); err == nil {
		crypto.Zero(key)
		t.Errorf("another filesystem's names key: opened, want an error")
	}
	if got, want := NamesContext("fs"), (EncryptionContext{ContextFilesystem: "fs", ContextPurpose: PurposeNames}); string(got.Canonical()) != string(want.Canonical()) {
		t.Errorf("NamesContext: got %v, want %v", got, want)
	}
	if got, want := FileContext("fs", crypto.NamesKeyID), NamesContext("fs"); string(got.Canonical()) != string(want.Canonical()) {
		t.Errorf("FileContext of NamesKeyID: got %v, want %v", got, want)
	}
}

func TestNamesKeyCopies(t *testing.T) {
	readErr := errors.New("read failed: disk on fire")
	tests := []struct {
		name      string
		copies    func(good crypto.Header) []func() (crypto.Header, error)
		wantOK    bool
		wantWarn  bool     // a copy failed and another opened: logged
		wantErrIs []error  // when !wantOK
		wantMsg   []string // when !wantOK
	}{
		{
			name: "both good",
			copies: func(h crypto.Header) []func() (crypto.Header, error) {
				return []func() (crypto.Header, error){headerOf(h), headerOf(h)}
			},
			wantOK: true,
		},
		{
			name: "first unreadable",
			copies: func(h crypto.Header) []func() (crypto.Header, error) {
				return []func() (crypto.Header, error){func() (crypto.Header, error) { return crypto.Header{}, readErr }, headerOf(h)}
			},
			wantOK: true, wantWarn: true,
		},
		{
			name: "first EDK damaged",
			copies: func(h crypto.Header) []func() (crypto.Header, error) {
				return []func() (crypto.Header, error){headerOf(tamperEDK(h)), headerOf(h)}
			},
			wantOK: true, wantWarn: true,
		},
		{
			name: "first is another file's head",
			copies: func(h crypto.Header) []func() (crypto.Header, error) {
				o := h
				o.FileID = crypto.FileID{9}
				return []func() (crypto.Header, error){headerOf(o), headerOf(h)}
			},
			wantOK: true, wantWarn: true,
		},
		{
			name: "second damaged",
			copies: func(h crypto.Header) []func() (crypto.Header, error) {
				return []func() (crypto.Header, error){headerOf(h), headerOf(tamperEDK(h))}
			},
			wantOK: true,
		},
		{
			name: "both damaged",
			copies: func(h crypto.Header) []func() (crypto.Header, error) {
				return []func() (crypto.Header, error){func() (crypto.Header, error) { return crypto.Header{}, readErr }, headerOf(tamperEDK(h))}
			},
			wantErrIs: []error{readErr, ErrInvalidCiphertext},
			wantMsg:   []string{"copy 1 of 2: read failed: disk on fire", "copy 2 of 2: unwrap names key with"},
		},
		{
			name:      "no copies",
			copies:    func(crypto.Header) []func() (crypto.Header, error) { return nil },
			wantMsg:   []string{"no copy"},
			wantErrIs: nil,
		},
		{
			name:      "nil reader",
			copies:    func(crypto.Header) []func() (crypto.Header, error) { return []func() (crypto.Header, error){nil} },
			wantMsg:   []string{"copy 1 of 1: no header reader"},
			wantErrIs: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newStEnv(t, nil)
			h, want := newNamesKey(t, e.m)
			copies := tt.copies(h)
			e.log.expectWarnings() // checked here
			got, err := e.m.OpenNamesKey(context.Background(), copies...)
			wantWarns := 0
			if tt.wantWarn {
				wantWarns = 1
			}
			if warns := e.log.messages(slog.LevelWarn); len(warns) != wantWarns {
				t.Errorf("warnings: got %q, want %d", warns, wantWarns)
			}
			if tt.wantOK {
				if err != nil {
					t.Fatalf("got %v, want the key", err)
				}
				defer crypto.Zero(got)
				if !bytes.Equal(got, want) {
					t.Fatalf("got another key")
				}
				return
			}
			if err == nil {
				crypto.Zero(got)
				t.Fatalf("got a key, want an error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q has a newline, want one line", err)
			}
			for _, w := range tt.wantErrIs {
				if !errors.Is(err, w) {
					t.Errorf("got %v, want it to wrap %v", err, w)
				}
			}
			for _, w := range tt.wantMsg {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestNamesKeyIDRefusedAsFile(t *testing.T) {
	e := newStEnv(t, nil)
	h, _ := newNamesKey(t, e.m)
	decrypts := e.kms.prov.decrypt.Load()
	c, err := e.m.OpenFile(context.Background(), crypto.NamesKeyID, headerOf(h))
	if !errors.Is(err, crypto.ErrBadHeader) || c != nil {
		t.Fatalf("OpenFile(NamesKeyID): got %v, %v; want nil, %v", c, err, crypto.ErrBadHeader)
	}
	if got := e.kms.prov.decrypt.Load(); got != decrypts {
		t.Errorf("OpenFile(NamesKeyID) made %d Decrypt calls, want 0", got-decrypts)
	}
}

func TestNamesKeyAudit(t *testing.T) {
	e := newRWEnv(t, nil)
	ctx := context.Background()
	h, _, err := e.m.NewNamesKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.m.OpenNamesKey(ctx, headerOf(h))
	if err != nil {
		t.Fatal(err)
	}
	crypto.Zero(key)
	f, err := os.Open(e.audit)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := ReadAudit(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, r := range recs {
		if r.Purpose == "" {
			continue // the pool's file keys
		}
		ops = append(ops, r.Op)
		if r.Purpose != PurposeNames || r.FileID != "" || r.Outcome != "ok" || r.KeyARN != e.keyA.ARN {
			t.Errorf("audit %s: got purpose %q file %q outcome %s key %s, want %q, \"\", ok, %s", r.Op, r.Purpose, r.FileID, r.Outcome, r.KeyARN, PurposeNames, e.keyA.ARN)
		}
	}
	if got, want := strings.Join(ops, ","), AuditGenerateDataKey+","+AuditDecrypt; got != want {
		t.Errorf("names-key audit records: got %s, want %s", got, want)
	}
}

// TestRewrapNamesKey: a names-key head at a path rewraps with the names
// context like any cipher-file head, and stays out of the index.
func TestRewrapNamesKey(t *testing.T) {
	e := newRWEnv(t, nil)
	ctx := context.Background()
	e.create(t, 5)
	h, key, err := e.m.NewNamesKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer crypto.Zero(key)
	var heads []string
	for _, name := range []string{"kmsfs.names", "names-copy"} {
		p := filepath.Join(e.dir, name)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			t.Fatal(err)
		}
		if err := cipherfile.Create(f, e.layout, h); err != nil {
			t.Fatal(err)
		}
		f.Close()
		heads = append(heads, p)
	}
	readHead := func(p string) func() (crypto.Header, error) {
		return func() (crypto.Header, error) {
			f, err := os.Open(p)
			if err != nil {
				return crypto.Header{}, err
			}
			defer f.Close()
			h, _, err := cipherfile.ReadHeader(f, e.layout)
			return h, err
		}
	}

	tg := e.target(t, "alias/rw-b", 0)
	st, err := Rewrap(ctx, e.opts(tg, 4), append(append([]string(nil), e.files...), heads...))
	if err != nil || st.Files != 7 || st.Rewrapped != 7 || st.Failed != 0 {
		t.Fatalf("Rewrap: got %+v, %v; want 7 files rewrapped", st, err)
	}
	// The old key can go: every file and both names heads moved.
	if _, err := e.kr.SetEnabled(e.keyA.ARN, false); err != nil {
		t.Fatal(err)
	}
	mustSave(t, e.kr)
	e.checkAll(t, func(h crypto.Header) bool { return h.Keys[0].KeyARN == e.keyB.ARN })
	for _, p := range heads {
		nh, err := readHead(p)()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if nh.FileID != crypto.NamesKeyID || nh.Generation != 2 || nh.Keys[0].KeyARN != e.keyB.ARN {
			t.Errorf("%s: got file %s generation %d key %s, want the names key, 2, %s", p, nh.FileID, nh.Generation, nh.Keys[0].KeyARN, e.keyB.ARN)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o444 {
			t.Errorf("%s: mode after rewrap %v (%v), want 0444", p, fi.Mode().Perm(), err)
		}
		got, err := e.m.OpenNamesKey(ctx, readHead(p))
		if err != nil {
			t.Fatalf("OpenNamesKey(%s) after rewrap: %v", p, err)
		}
		if !bytes.Equal(got, key) {
			t.Errorf("%s: the rewrapped head holds another key", p)
		}
		crypto.Zero(got)
	}
	if _, err := e.ix.Get(crypto.NamesKeyID); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("index entry of the names key after rewrap: got %v, want %v", err, ErrNotIndexed)
	}
	f, _ := os.Open(e.audit)
	recs, _ := ReadAudit(f)
	f.Close()
	names := 0
	for _, r := range recs {
		if r.Op == AuditReEncrypt && r.Purpose == PurposeNames {
			names++
			if r.FileID != "" || r.Outcome != "ok" {
				t.Errorf("names ReEncrypt audit: got file %q outcome %s", r.FileID, r.Outcome)
			}
		}
	}
	if names != 2 {
		t.Errorf("names ReEncrypt audit records: got %d, want 2", names)
	}

	// A second run finds both heads current and touches no index.
	st, err = Rewrap(ctx, e.opts(tg, 4), heads)
	if err != nil || st.Current != 2 || st.Rewrapped != 0 || st.IndexFixed != 0 {
		t.Fatalf("second run: got %+v, %v; want 2 current", st, err)
	}
	if _, err := e.ix.Get(crypto.NamesKeyID); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("index entry of the names key after a second rewrap: got %v, want %v", err, ErrNotIndexed)
	}
}
