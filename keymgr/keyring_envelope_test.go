package keymgr

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

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
