package crypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"sync"
	"testing"
)

func TestNewContentCipherErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		dek  []byte
		l    Layout
		want error
	}{
		{"short DEK", make([]byte, 16), DefaultLayout(), ErrBadSize},
		{"long DEK", make([]byte, 33), DefaultLayout(), ErrBadSize},
		{"nil DEK", nil, DefaultLayout(), ErrBadSize},
		{"bad layout", make([]byte, 32), Layout{}, ErrBadLayout},
	} {
		if _, err := NewContentCipher(tt.dek, FileID{}, tt.l, nil); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestChunkIndependentAAD opens a sealed chunk with plain AES-256-GCM and
// an AAD built by hand from format.md.
func TestChunkIndependentAAD(t *testing.T) {
	dek, id := testDEK(1), testFileID(1)
	c := newTestCipher(t, dek, id, DefaultLayout())
	for _, last := range []bool{false, true} {
		plain := plainPattern(4096)
		if last {
			plain = plain[:100]
		}
		sealed, err := c.SealChunk(nil, 0x0102030405060708, last, plain)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != 12+len(plain)+16 {
			t.Fatalf("sealed: got %d bytes, want %d", len(sealed), 12+len(plain)+16)
		}
		aad := append(id[:], 1, 2, 3, 4, 5, 6, 7, 8, 0)
		if last {
			aad[24] = 1
		}
		block, _ := aes.NewCipher(dek)
		gcm, _ := cipher.NewGCM(block)
		got, err := gcm.Open(nil, sealed[:12], sealed[12:], aad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("last %t: raw GCM open: got %v, want the plain bytes", last, err)
		}
	}
}

func TestChunkRoundTrip(t *testing.T) {
	for _, l := range []Layout{DefaultLayout(), {16, 9}, {MaxChunkShift, MaxSlotShift}} {
		c := newTestCipher(t, testDEK(2), testFileID(2), l)
		C := int(l.ChunkSize())
		for _, n := range []int{1, 2, 100, C - 1, C} {
			for _, last := range []bool{false, true} {
				if !last && n != C {
					continue
				}
				plain := plainPattern(n)
				prefix := []byte("prefix")
				sealed, err := c.SealChunk(bytes.Clone(prefix), 7, last, plain)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.HasPrefix(sealed, prefix) || len(sealed) != len(prefix)+n+ChunkOverhead {
					t.Fatalf("SealChunk did not append %d bytes to dst", n+ChunkOverhead)
				}
				got, err := c.OpenChunk([]byte("x"), 7, last, sealed[len(prefix):])
				if err != nil || !bytes.Equal(got, append([]byte("x"), plain...)) {
					t.Errorf("layout %+v n %d last %t: OpenChunk: %v", l, n, last, err)
				}
			}
		}
	}
}

func TestSealChunkErrors(t *testing.T) {
	c := newTestCipher(t, testDEK(3), testFileID(3), DefaultLayout())
	for _, tt := range []struct {
		name  string
		index int64
		n     int
		last  bool
	}{
		{"empty last", 0, 0, true},
		{"empty", 0, 0, false},
		{"C+1 last", 0, 4097, true},
		{"C+1", 0, 4097, false},
		{"short non-last", 0, 4095, false},
		{"negative index", -1, 10, true},
	} {
		dst := []byte("keep")
		got, err := c.SealChunk(dst, tt.index, tt.last, make([]byte, tt.n))
		if !errors.Is(err, ErrBadSize) {
			t.Errorf("%s: got %v, want ErrBadSize", tt.name, err)
		}
		if string(got) != "keep" {
			t.Errorf("%s: dst changed to %q", tt.name, got)
		}
	}
	failing, _ := NewContentCipher(testDEK(3), testFileID(3), DefaultLayout(), bytes.NewReader(make([]byte, 5)))
	if _, err := failing.SealChunk(nil, 0, true, []byte{1}); err == nil {
		t.Error("SealChunk with an exhausted rand: got nil, want error")
	}
}

func TestChunkNoncesFresh(t *testing.T) {
	c, err := NewContentCipher(testDEK(4), testFileID(4), DefaultLayout(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.SealChunk(nil, 0, true, []byte("same"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.SealChunk(nil, 0, true, []byte("same"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a[:NonceSize], b[:NonceSize]) || bytes.Equal(a, b) {
		t.Errorf("two seals of the same chunk share a nonce: %x", a[:NonceSize])
	}
}

func TestChunkHoles(t *testing.T) {
	l := DefaultLayout()
	c := newTestCipher(t, testDEK(5), testFileID(5), l)
	hole := make([]byte, l.CipherChunkSize())
	got, err := c.OpenChunk([]byte("x"), 3, false, hole)
	if err != nil || len(got) != 1+4096 || got[0] != 'x' {
		t.Fatalf("hole: got %d bytes, %v, want 4097 bytes, nil", len(got), err)
	}
	if !allZero(got[1:]) {
		t.Errorf("hole did not read as zeros")
	}
	nearHole := bytes.Clone(hole)
	nearHole[len(nearHole)-1] = 1
	zeroNonce := bytes.Clone(hole)
	zeroNonce[20] = 1
	for _, tt := range []struct {
		name   string
		last   bool
		sealed []byte
	}{
		{"last chunk is never a hole", true, hole},
		{"short zero chunk", false, hole[:len(hole)-1]},
		{"short zero last chunk", true, hole[:100]},
		{"one byte set in tag", false, nearHole},
		{"zero nonce, data set", false, zeroNonce},
	} {
		if _, err := c.OpenChunk(nil, 3, tt.last, tt.sealed); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: got %v, want ErrAuth", tt.name, err)
		}
	}
	for _, tt := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"full zero", hole, true},
		{"short zero", hole[:100], false},
		{"long zero", make([]byte, len(hole)+1), false},
		{"non-zero", nearHole, false},
	} {
		if got := IsHole(tt.in, l); got != tt.want {
			t.Errorf("IsHole(%s): got %t, want %t", tt.name, got, tt.want)
		}
	}
}

func TestXattr(t *testing.T) {
	c := newTestCipher(t, testDEK(6), testFileID(6), DefaultLayout())
	other := newTestCipher(t, testDEK(6), testFileID(7), DefaultLayout())
	for _, value := range [][]byte{{}, []byte("v"), plainPattern(3000)} {
		sealed, err := c.SealXattr("user.tag", value)
		if err != nil {
			t.Fatal(err)
		}
		if len(sealed) != len(value)+ChunkOverhead {
			t.Errorf("sealed: got %d bytes, want %d", len(sealed), len(value)+ChunkOverhead)
		}
		got, err := c.OpenXattr("user.tag", sealed)
		if err != nil || !bytes.Equal(got, value) || got == nil {
			t.Errorf("OpenXattr: got %q, %v, want %q", got, err, value)
		}
		// Independent check of the AAD: "xattr" | file ID | name.
		id := c.FileID()
		aad := append(append([]byte("xattr"), id[:]...), "user.tag"...)
		block, _ := aes.NewCipher(testDEK(6))
		gcm, _ := cipher.NewGCM(block)
		if _, err := gcm.Open(nil, sealed[:12], sealed[12:], aad); err != nil {
			t.Errorf("raw GCM open of xattr: %v", err)
		}
		flipped := bytes.Clone(sealed)
		flipped[len(flipped)-1] ^= 1
		for _, tt := range []struct {
			name   string
			c      *ContentCipher
			attr   string
			sealed []byte
		}{
			{"other name", c, "user.tah", sealed},
			{"other file", other, "user.tag", sealed},
			{"flipped", c, "user.tag", flipped},
			{"short", c, "user.tag", sealed[:27]},
		} {
			if _, err := tt.c.OpenXattr(tt.attr, tt.sealed); !errors.Is(err, ErrAuth) {
				t.Errorf("%s: got %v, want ErrAuth", tt.name, err)
			}
		}
	}
}

func TestChunkNoAllocs(t *testing.T) {
	c, err := NewContentCipher(testDEK(7), testFileID(7), DefaultLayout(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	plain := plainPattern(4096)
	sealed := make([]byte, 0, 4096+ChunkOverhead)
	out := make([]byte, 0, 4096)
	var openErr error
	for _, tt := range []struct {
		name string
		f    func()
	}{
		{"seal", func() { sealed, _ = c.SealChunk(sealed[:0], 1, false, plain) }},
		{"open", func() { out, openErr = c.OpenChunk(out[:0], 1, false, sealed) }},
	} {
		if got := testing.AllocsPerRun(100, tt.f); got != 0 {
			t.Errorf("%s: got %v allocations per call, want 0", tt.name, got)
		}
	}
	if openErr != nil {
		t.Fatal(openErr)
	}
}

func TestChunkConcurrent(t *testing.T) {
	l := DefaultLayout()
	// seqReader is not safe for concurrent use: the cipher must serialize it.
	c := newTestCipher(t, testDEK(8), testFileID(8), l)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			var sealed, out []byte
			for i := range 200 {
				plain := plainPattern(4096)
				if i%2 == 0 {
					plain = plain[:1000+g]
				}
				index := int64(g*1000 + i)
				var err error
				if sealed, err = c.SealChunk(sealed[:0], index, i%2 == 0, plain); err != nil {
					errs <- err
					return
				}
				if out, err = c.OpenChunk(out[:0], index, i%2 == 0, sealed); err != nil || !bytes.Equal(out, plain) {
					errs <- errors.Join(errors.New("round trip"), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestZero(t *testing.T) {
	b := testDEK(9)
	Zero(b)
	if !allZero(b) || len(b) != DEKSize {
		t.Errorf("Zero: got %x, want 32 zero bytes", b)
	}
}
