package crypto

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzDecryptName: any string, read as an encoded name, must not panic,
// must fail with ErrBadName or ErrNameAuth, and whatever decodes must
// encrypt back to the same string. Forging past AES-SIV is hopeless, so the
// same string is also used as a plain name, which must round-trip whenever
// it is valid.
func FuzzDecryptName(f *testing.F) {
	c := newTestNameCipher(f)
	dirs := [][]byte{testDirID(1), testDirID(2)}
	for _, plain := range []string{"a", "sixteen bytes...", strings.Repeat("x", 160), strings.Repeat("\xff", 255)} {
		enc, err := c.EncryptName(dirs[0], plain)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(false, enc)
		f.Add(true, enc)
		f.Add(false, plain)
	}
	f.Add(false, "")
	f.Add(false, "..")
	f.Add(false, "kmsfs.dirid")
	f.Add(false, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nA")
	f.Fuzz(func(t *testing.T, other bool, s string) {
		dir := dirs[0]
		if other {
			dir = dirs[1]
		}
		plain, err := c.DecryptName(dir, s)
		if err != nil {
			if !errors.Is(err, ErrBadName) && !errors.Is(err, ErrNameAuth) {
				t.Fatalf("DecryptName(%q): error without a sentinel: %v", s, err)
			}
			if plain != "" {
				t.Fatalf("DecryptName(%q) failed but returned %q", s, plain)
			}
		} else if enc, err := c.EncryptName(dir, plain); err != nil || enc != s {
			t.Fatalf("EncryptName(DecryptName(%q)) = %q, %v", s, enc, err)
		}

		enc, err := c.EncryptName(dir, s)
		if err != nil {
			if !errors.Is(err, ErrBadName) || validName(s) == nil {
				t.Fatalf("EncryptName(%q): %v", s, err)
			}
			return
		}
		if len(enc) != encodedNameLen(len(s)) || strings.ContainsAny(enc, "./=\n") {
			t.Fatalf("EncryptName(%q) = %q", s, enc)
		}
		if back, err := c.DecryptName(dir, enc); err != nil || back != s {
			t.Fatalf("DecryptName(EncryptName(%q)) = %q, %v", s, back, err)
		}
	})
}

// FuzzDecryptTarget: the same for symlink targets, whose encodings carry a
// nonce and so only decode back, never re-encode equal.
func FuzzDecryptTarget(f *testing.F) {
	c := newTestNameCipher(f)
	for _, target := range []string{"a", "../lib/libfoo.so.1", strings.Repeat("t", 100)} {
		enc, err := c.EncryptTarget([]byte(target), &seqReader{})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
		f.Add(target)
	}
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		target, err := c.DecryptTarget(s)
		if err != nil {
			if !errors.Is(err, ErrBadName) && !errors.Is(err, ErrNameAuth) {
				t.Fatalf("DecryptTarget(%q): error without a sentinel: %v", s, err)
			}
		} else if validTarget(target) != nil {
			t.Fatalf("DecryptTarget(%q) = invalid %q", s, target)
		}

		enc, err := c.EncryptTarget([]byte(s), &seqReader{})
		if err != nil {
			if !errors.Is(err, ErrBadName) || validTarget([]byte(s)) == nil {
				t.Fatalf("EncryptTarget(%q): %v", s, err)
			}
			return
		}
		if back, err := c.DecryptTarget(enc); err != nil || !bytes.Equal(back, []byte(s)) {
			t.Fatalf("DecryptTarget(EncryptTarget(%q)) = %q, %v", s, back, err)
		}
	})
}
