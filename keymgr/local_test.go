package keymgr

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
)

func testContext(fsID string, n byte) EncryptionContext {
	var id crypto.FileID
	for i := range id {
		id[i] = n + byte(i)
	}
	return FileContext(fsID, id)
}

// fakeClock is a clock tests move by hand; safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// countingReader is a deterministic "random" source: 0, 1, 2, ...
type countingReader struct{ n byte }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.n
		r.n++
	}
	return len(p), nil
}

func TestLocalGenerateDecrypt(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	p := NewLocalProvider(k)
	if got, want := p.Name(), "local"; got != want {
		t.Errorf("Name: got %v, want %v", got, want)
	}
	ctx := context.Background()
	ec := testContext("fs1", 1)
	dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if got, want := len(dk.Plaintext), 32; got != want {
		t.Errorf("DEK length: got %v, want %v", got, want)
	}
	if got, want := len(dk.Ciphertext), 81; got != want {
		t.Errorf("EDK length: got %v, want %v", got, want)
	}
	if got, want := dk.KeyARN, a.ARN; got != want {
		t.Errorf("KeyARN: got %v, want %v", got, want)
	}
	if got, want := dk.KeyVersion, uint32(1); got != want {
		t.Errorf("KeyVersion: got %v, want %v", got, want)
	}
	for _, ref := range []string{"alias/a", a.ARN, a.KeyID} {
		dek, err := p.Decrypt(ctx, ref, dk.Ciphertext, ec)
		if err != nil {
			t.Fatalf("Decrypt(%s): %v", ref, err)
		}
		if !bytes.Equal(dek, dk.Plaintext) {
			t.Errorf("Decrypt(%s) returned another DEK", ref)
		}
	}
	dk2, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(dk2.Plaintext, dk.Plaintext) || bytes.Equal(dk2.Ciphertext, dk.Ciphertext) {
		t.Errorf("two GenerateDataKey calls gave the same DEK or EDK")
	}
	md, err := p.DescribeKey(ctx, "alias/a")
	if err != nil {
		t.Fatalf("DescribeKey: %v", err)
	}
	if !metadataEqual(md, a) {
		t.Errorf("DescribeKey: got %+v, want %+v", md, a)
	}
	if _, err := p.DescribeKey(ctx, "alias/missing"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("DescribeKey(missing): got %v, want %v", err, ErrKeyNotFound)
	}
	if _, err := p.GenerateDataKey(ctx, "alias/missing", ec); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("GenerateDataKey(missing): got %v, want %v", err, ErrKeyNotFound)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.GenerateDataKey(cancelled, "alias/a", ec); !errors.Is(err, context.Canceled) {
		t.Errorf("GenerateDataKey with a cancelled context: got %v, want %v", err, context.Canceled)
	}
}

// TestLocalEDKLayout pins the EDK bytes of docs and local.go against an
// independent AES-GCM open.
func TestLocalEDKLayout(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "")
	if _, err := k.Rotate(a.KeyID); err != nil {
		t.Fatal(err)
	}
	k.rand = &countingReader{n: 100}
	p := NewLocalProvider(k)
	ec := testContext("fs", 7)
	dk, err := p.GenerateDataKey(context.Background(), a.KeyID, ec)
	if err != nil {
		t.Fatal(err)
	}
	edk := dk.Ciphertext
	if got, want := len(edk), 81; got != want {
		t.Fatalf("EDK length: got %v, want %v", got, want)
	}
	id, _ := parseKeyID(a.KeyID)
	wantDEK := make([]byte, 32)
	(&countingReader{n: 100}).Read(wantDEK)
	wantNonce := make([]byte, 12)
	(&countingReader{n: 132}).Read(wantNonce)
	if !bytes.Equal(dk.Plaintext, wantDEK) {
		t.Errorf("DEK: got %x, want %x (from the injected Rand)", dk.Plaintext, wantDEK)
	}
	if got, want := edk[0], byte(1); got != want {
		t.Errorf("EDK version: got %v, want %v", got, want)
	}
	if got, want := edk[1:17], id[:]; !bytes.Equal(got, want) {
		t.Errorf("EDK key id: got %x, want %x", got, want)
	}
	if got, want := binary.BigEndian.Uint32(edk[17:21]), uint32(2); got != want {
		t.Errorf("EDK key version: got %v, want %v", got, want)
	}
	if got, want := edk[21:33], wantNonce; !bytes.Equal(got, want) {
		t.Errorf("EDK nonce: got %x, want %x", got, want)
	}
	aad := append([]byte("kmsfs-local-edk-v1\x00"), id[:]...)
	aad = binary.BigEndian.AppendUint32(aad, 2)
	aad = append(aad, "kmsfs-file="+ec[ContextFile]+"\nkmsfs-filesystem=fs"...)
	block, _ := aes.NewCipher(materialOf(t, k, a.KeyID, 2))
	gcm, _ := cipher.NewGCM(block)
	dek, err := gcm.Open(nil, edk[21:33], edk[33:], aad)
	if err != nil {
		t.Fatalf("independent open of the EDK: %v", err)
	}
	if !bytes.Equal(dek, wantDEK) {
		t.Errorf("independent open: got %x, want %x", dek, wantDEK)
	}
}

func TestLocalRotate(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	p := NewLocalProvider(k)
	ctx := context.Background()
	ec := testContext("fs", 1)
	old, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	md, err := k.Rotate("alias/a")
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if got, want := md.CurrentVersion, uint32(2); got != want {
		t.Errorf("CurrentVersion: got %v, want %v", got, want)
	}
	cur, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cur.KeyVersion, uint32(2); got != want {
		t.Errorf("KeyVersion after rotate: got %v, want %v", got, want)
	}
	if got, want := binary.BigEndian.Uint32(cur.Ciphertext[17:21]), uint32(2); got != want {
		t.Errorf("EDK version after rotate: got %v, want %v", got, want)
	}
	for name, dk := range map[string]DataKey{"version 1": old, "version 2": cur} {
		dek, err := p.Decrypt(ctx, a.ARN, dk.Ciphertext, ec)
		if err != nil {
			t.Fatalf("Decrypt %s: %v", name, err)
		}
		if !bytes.Equal(dek, dk.Plaintext) {
			t.Errorf("Decrypt %s: wrong DEK", name)
		}
	}
}

func TestLocalDisable(t *testing.T) {
	k, _ := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	mustCreateKey(t, k, "b", "alias/b")
	p := NewLocalProvider(k)
	ctx := context.Background()
	ec := testContext("fs", 1)
	dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.SetEnabled("alias/a", false); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GenerateDataKey(ctx, "alias/a", ec); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("GenerateDataKey on a disabled key: got %v, want %v", err, ErrKeyDisabled)
	}
	if _, err := p.Decrypt(ctx, "alias/a", dk.Ciphertext, ec); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("Decrypt on a disabled key: got %v, want %v", err, ErrKeyDisabled)
	}
	if _, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, ec, "alias/b"); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("ReEncrypt from a disabled key: got %v, want %v", err, ErrKeyDisabled)
	}
	md, err := p.DescribeKey(ctx, "alias/a")
	if err != nil {
		t.Fatalf("DescribeKey of a disabled key: %v", err)
	}
	if got, want := md.State, KeyDisabled; got != want {
		t.Errorf("State: got %v, want %v", got, want)
	}

	if _, err := k.SetEnabled("alias/a", true); err != nil {
		t.Fatal(err)
	}
	dek, err := p.Decrypt(ctx, "alias/a", dk.Ciphertext, ec)
	if err != nil {
		t.Fatalf("Decrypt after enable: %v", err)
	}
	if !bytes.Equal(dek, dk.Plaintext) {
		t.Errorf("Decrypt after enable: wrong DEK")
	}
	if _, err := p.GenerateDataKey(ctx, "alias/a", ec); err != nil {
		t.Errorf("GenerateDataKey after enable: %v", err)
	}

	// A disabled destination refuses ReEncrypt too.
	if _, err := k.SetEnabled("alias/b", false); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, ec, "alias/b"); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("ReEncrypt to a disabled key: got %v, want %v", err, ErrKeyDisabled)
	}
}

func TestLocalDecryptRefusals(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	mustCreateKey(t, k, "b", "alias/b")
	p := NewLocalProvider(k)
	ctx := context.Background()
	ec := testContext("fs1", 1)
	dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}
	edk := dk.Ciphertext
	withVersion := func(v uint32) []byte {
		b := slices.Clone(edk)
		binary.BigEndian.PutUint32(b[17:21], v)
		return b
	}
	tests := []struct {
		name string
		ref  string
		edk  []byte
		ec   EncryptionContext
		want error
	}{
		{"ok", "alias/a", edk, ec, nil},
		{"other file", "alias/a", edk, testContext("fs1", 2), ErrInvalidCiphertext},
		{"other filesystem", "alias/a", edk, testContext("fs2", 1), ErrInvalidCiphertext},
		{"extra context", "alias/a", edk, EncryptionContext{ContextFilesystem: "fs1", ContextFile: ec[ContextFile], "x": "y"}, ErrInvalidCiphertext},
		{"no context", "alias/a", edk, nil, ErrInvalidCiphertext},
		{"pinned: other key", "alias/b", edk, ec, ErrInvalidCiphertext},
		{"unknown key", "alias/nope", edk, ec, ErrKeyNotFound},
		{"short", "alias/a", edk[:80], ec, ErrInvalidCiphertext},
		{"long", "alias/a", append(slices.Clone(edk), 0), ec, ErrInvalidCiphertext},
		{"empty", "alias/a", nil, ec, ErrInvalidCiphertext},
		{"version 0", "alias/a", withVersion(0), ec, ErrInvalidCiphertext},
		{"future version", "alias/a", withVersion(2), ec, ErrInvalidCiphertext},
		{"other version", "alias/a", withVersion(1 << 31), ec, ErrInvalidCiphertext},
	}
	for i := range edk {
		b := slices.Clone(edk)
		b[i] ^= 0x10
		tests = append(tests, struct {
			name string
			ref  string
			edk  []byte
			ec   EncryptionContext
			want error
		}{name: fmt.Sprintf("flip byte %d", i), ref: a.ARN, edk: b, ec: ec, want: ErrInvalidCiphertext})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dek, err := p.Decrypt(ctx, tt.ref, tt.edk, tt.ec)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decrypt: got %v, want %v", err, tt.want)
			}
			if tt.want == nil && !bytes.Equal(dek, dk.Plaintext) {
				t.Errorf("Decrypt: wrong DEK")
			}
			if tt.want != nil && dek != nil {
				t.Errorf("Decrypt returned a DEK with error %v", err)
			}
		})
	}
}

func TestLocalReEncrypt(t *testing.T) {
	k, _ := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	b := mustCreateKey(t, k, "b", "alias/b")
	p := NewLocalProvider(k)
	ctx := context.Background()
	ec := testContext("fs", 3)
	dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("to another key", func(t *testing.T) {
		re, err := p.ReEncrypt(ctx, a.ARN, dk.Ciphertext, ec, "alias/b")
		if err != nil {
			t.Fatalf("ReEncrypt: %v", err)
		}
		if re.Plaintext != nil {
			t.Errorf("ReEncrypt returned a plaintext DEK")
		}
		if got, want := re.KeyARN, b.ARN; got != want {
			t.Errorf("KeyARN: got %v, want %v", got, want)
		}
		dek, err := p.Decrypt(ctx, b.ARN, re.Ciphertext, ec)
		if err != nil {
			t.Fatalf("Decrypt under the new key: %v", err)
		}
		if !bytes.Equal(dek, dk.Plaintext) {
			t.Errorf("ReEncrypt changed the DEK")
		}
		if _, err := p.Decrypt(ctx, a.ARN, re.Ciphertext, ec); !errors.Is(err, ErrInvalidCiphertext) {
			t.Errorf("Decrypt of the rewrapped EDK under the old key: got %v, want %v", err, ErrInvalidCiphertext)
		}
	})
	t.Run("to the same key's new version", func(t *testing.T) {
		if _, err := k.Rotate("alias/a"); err != nil {
			t.Fatal(err)
		}
		re, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, ec, "alias/a")
		if err != nil {
			t.Fatalf("ReEncrypt: %v", err)
		}
		if got, want := re.KeyVersion, uint32(2); got != want {
			t.Errorf("KeyVersion: got %v, want %v", got, want)
		}
		if got, want := re.KeyARN, a.ARN; got != want {
			t.Errorf("KeyARN: got %v, want %v", got, want)
		}
		dek, err := p.Decrypt(ctx, a.KeyID, re.Ciphertext, ec)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dek, dk.Plaintext) {
			t.Errorf("ReEncrypt changed the DEK")
		}
	})
	t.Run("bound to the context", func(t *testing.T) {
		if _, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, testContext("fs", 4), "alias/b"); !errors.Is(err, ErrInvalidCiphertext) {
			t.Errorf("ReEncrypt under another context: got %v, want %v", err, ErrInvalidCiphertext)
		}
		if _, err := p.ReEncrypt(ctx, "alias/b", dk.Ciphertext, ec, "alias/a"); !errors.Is(err, ErrInvalidCiphertext) {
			t.Errorf("ReEncrypt from the wrong source key: got %v, want %v", err, ErrInvalidCiphertext)
		}
		if _, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, ec, "alias/none"); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("ReEncrypt to a missing key: got %v, want %v", err, ErrKeyNotFound)
		}
	})
}

// TestLocalProviderReload: rotation, disable and new keys made through
// another handle (the CLI) reach a running provider.
func TestLocalProviderReload(t *testing.T) {
	clock := newFakeClock()
	o := cheapKeyringOptions()
	o.Now = clock.Now
	k, path := newTestKeyring(t)
	a := mustCreateKey(t, k, "a", "alias/a")
	mustSave(t, k)
	mounted := openTestKeyring(t, path, o)
	p := NewLocalProvider(mounted)
	ctx := context.Background()
	ec := testContext("fs", 1)

	gen := func() DataKey {
		t.Helper()
		dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
		if err != nil {
			t.Fatalf("GenerateDataKey: %v", err)
		}
		return dk
	}
	if got, want := gen().KeyVersion, uint32(1); got != want {
		t.Fatalf("KeyVersion: got %v, want %v", got, want)
	}

	cli := openTestKeyring(t, path, KeyringOptions{})
	if _, err := cli.Rotate("alias/a"); err != nil {
		t.Fatal(err)
	}
	mustSave(t, cli)
	clock.Advance(500 * time.Millisecond)
	if got, want := gen().KeyVersion, uint32(1); got != want {
		t.Errorf("KeyVersion within a second of the last look: got %v, want %v (stat at most once a second)", got, want)
	}
	clock.Advance(600 * time.Millisecond)
	if got, want := gen().KeyVersion, uint32(2); got != want {
		t.Errorf("KeyVersion a second later: got %v, want %v", got, want)
	}

	// An EDK of a version the provider has not seen yet reloads at once.
	if _, err := cli.Rotate("alias/a"); err != nil {
		t.Fatal(err)
	}
	mustSave(t, cli)
	cliProvider := NewLocalProvider(cli)
	v3, err := cliProvider.GenerateDataKey(ctx, a.ARN, ec)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v3.KeyVersion, uint32(3); got != want {
		t.Fatalf("KeyVersion: got %v, want %v", got, want)
	}
	dek, err := p.Decrypt(ctx, a.ARN, v3.Ciphertext, ec)
	if err != nil {
		t.Fatalf("Decrypt of a version made after the last reload: %v", err)
	}
	if !bytes.Equal(dek, v3.Plaintext) {
		t.Errorf("Decrypt: wrong DEK")
	}

	// A key made by the CLI is found at once.
	b := mustCreateKey(t, cli, "b", "alias/b")
	mustSave(t, cli)
	if _, err := p.GenerateDataKey(ctx, "alias/b", ec); err != nil {
		t.Errorf("GenerateDataKey under a key made by the CLI: %v", err)
	}

	// Disable from the CLI reaches Decrypt within a second.
	if _, err := cli.SetEnabled(b.KeyID, false); err != nil {
		t.Fatal(err)
	}
	mustSave(t, cli)
	clock.Advance(1100 * time.Millisecond)
	if _, err := p.Decrypt(ctx, a.ARN, v3.Ciphertext, ec); err != nil {
		t.Errorf("Decrypt under a still-enabled key: %v", err)
	}
	if _, err := p.GenerateDataKey(ctx, "alias/b", ec); !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("GenerateDataKey under a key disabled by the CLI: got %v, want %v", err, ErrKeyDisabled)
	}
}

func TestLocalClosedKeyring(t *testing.T) {
	k, _ := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	p := NewLocalProvider(k)
	_ = k.Close()
	if _, err := p.GenerateDataKey(context.Background(), "alias/a", testContext("fs", 1)); !errors.Is(err, ErrKMSUnavailable) {
		t.Errorf("GenerateDataKey on a closed keyring: got %v, want %v", err, ErrKMSUnavailable)
	}
}

// TestLocalConcurrent runs GenerateDataKey, Decrypt, ReEncrypt and
// DescribeKey from many goroutines while another handle rotates the key and
// the provider reloads; run it under -race.
func TestLocalConcurrent(t *testing.T) {
	clock := newFakeClock()
	o := cheapKeyringOptions()
	o.Now = func() time.Time { clock.Advance(50 * time.Millisecond); return clock.Now() }
	k, path := newTestKeyring(t)
	mustCreateKey(t, k, "a", "alias/a")
	mustCreateKey(t, k, "b", "alias/b")
	mustSave(t, k)
	mounted := openTestKeyring(t, path, o)
	p := NewLocalProvider(mounted)
	ctx := context.Background()

	var rotator sync.WaitGroup
	cli := openTestKeyring(t, path, KeyringOptions{})
	rotator.Go(func() {
		for range 5 {
			time.Sleep(2 * time.Millisecond)
			if _, err := cli.Rotate("alias/a"); err != nil {
				t.Errorf("Rotate: %v", err)
				return
			}
			if err := cli.Save(); err != nil {
				t.Errorf("Save: %v", err)
				return
			}
		}
	})

	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 40 {
				ec := testContext("fs", byte(g*40+i))
				dk, err := p.GenerateDataKey(ctx, "alias/a", ec)
				if err != nil {
					t.Errorf("GenerateDataKey: %v", err)
					return
				}
				dek, err := p.Decrypt(ctx, dk.KeyARN, dk.Ciphertext, ec)
				if err != nil {
					t.Errorf("Decrypt: %v", err)
					return
				}
				if !bytes.Equal(dek, dk.Plaintext) {
					t.Errorf("Decrypt: wrong DEK")
					return
				}
				if i%8 == 0 {
					re, err := p.ReEncrypt(ctx, "alias/a", dk.Ciphertext, ec, "alias/b")
					if err != nil {
						t.Errorf("ReEncrypt: %v", err)
						return
					}
					if _, err := p.Decrypt(ctx, "alias/b", re.Ciphertext, ec); err != nil {
						t.Errorf("Decrypt rewrapped: %v", err)
						return
					}
					if _, err := p.DescribeKey(ctx, "alias/a"); err != nil {
						t.Errorf("DescribeKey: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	rotator.Wait()
	clock.Advance(2 * time.Second)
	md, err := p.DescribeKey(ctx, "alias/a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.CurrentVersion, uint32(6); got != want {
		t.Errorf("CurrentVersion seen by the provider after the rotations: got %v, want %v", got, want)
	}
}

func FuzzParseLocalEDK(f *testing.F) {
	good := make([]byte, 81)
	good[0] = 1
	good[20] = 1
	f.Add(good)
	f.Add([]byte{})
	f.Add(make([]byte, 81))
	f.Add(append([]byte{1}, make([]byte, 90)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseLocalEDK(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidCiphertext) {
				t.Fatalf("error %v does not wrap ErrInvalidCiphertext", err)
			}
			return
		}
		if got := e.marshal(); !bytes.Equal(got, b) {
			t.Fatalf("round trip: got %x, want %x", got, b)
		}
		if e.version == 0 {
			t.Fatalf("accepted version 0")
		}
	})
}
