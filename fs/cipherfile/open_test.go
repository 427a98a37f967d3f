package cipherfile

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// tearSlot overwrites a few bytes inside header slot i, as a torn write
// leaves it.
func tearSlot(t *testing.T, tf *testFile, i int) {
	t.Helper()
	if _, err := tf.fd.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, tf.l.SlotOffset(i)+7); err != nil {
		t.Fatal(err)
	}
}

// putSlot writes h into header slot i as it is, without fsync.
func putSlot(t *testing.T, tf *testFile, i int, h crypto.Header) {
	t.Helper()
	b, err := crypto.EncodeSlot(h, tf.l.SlotSize())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tf.fd.WriteAt(b, tf.l.SlotOffset(i)); err != nil {
		t.Fatal(err)
	}
}

func TestReadHead(t *testing.T) {
	l := crypto.DefaultLayout()
	cases := []struct {
		name    string
		layout  crypto.Layout // the file's; zero: l
		damage  func(t *testing.T, tf *testFile)
		wantErr error // nil: a header is picked
		// wantPreamble: Preamble is set (every case past the preamble).
		wantPreamble bool
		wantCurrent  int
		wantGen      uint64
		wantSlot     [2]error // each slot's own result; nil: valid
	}{
		{
			name:         "new file",
			wantPreamble: true, wantCurrent: 0, wantGen: 1,
			wantSlot: [2]error{nil, crypto.ErrEmptySlot},
		},
		{
			name: "both slots valid",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 1, testHeader(tf.c.FileID(), 2))
			},
			wantPreamble: true, wantCurrent: 1, wantGen: 2,
		},
		{
			name: "newer slot torn",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 1, testHeader(tf.c.FileID(), 2))
				tearSlot(t, tf, 1)
			},
			wantPreamble: true, wantCurrent: 0, wantGen: 1,
			wantSlot: [2]error{nil, crypto.ErrBadChecksum},
		},
		{
			name: "older slot torn",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 1, testHeader(tf.c.FileID(), 2))
				tearSlot(t, tf, 0)
			},
			wantPreamble: true, wantCurrent: 1, wantGen: 2,
			wantSlot: [2]error{crypto.ErrBadChecksum, nil},
		},
		{
			name: "both torn",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 1, testHeader(tf.c.FileID(), 2))
				tearSlot(t, tf, 0)
				tearSlot(t, tf, 1)
			},
			wantErr:      crypto.ErrNoValidHeader,
			wantPreamble: true,
			wantSlot:     [2]error{crypto.ErrBadChecksum, crypto.ErrBadChecksum},
		},
		{
			name: "cut inside slot 1",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 1, testHeader(tf.c.FileID(), 2))
				if err := tf.fd.Truncate(tf.l.SlotOffset(1) + 10); err != nil {
					t.Fatal(err)
				}
			},
			wantPreamble: true, wantCurrent: 0, wantGen: 1,
			wantSlot: [2]error{nil, crypto.ErrBadChecksum},
		},
		{
			name: "wrong file ID in a slot",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 1, testHeader(crypto.FileID{1, 2, 3}, 2))
			},
			wantPreamble: true, wantCurrent: 0, wantGen: 1,
			wantSlot: [2]error{nil, crypto.ErrBadHeader},
		},
		{
			name: "wrong file ID in both slots",
			damage: func(t *testing.T, tf *testFile) {
				putSlot(t, tf, 0, testHeader(crypto.FileID{1, 2, 3}, 1))
				putSlot(t, tf, 1, testHeader(crypto.FileID{1, 2, 3}, 2))
			},
			wantErr:      crypto.ErrNoValidHeader,
			wantPreamble: true,
			wantSlot:     [2]error{crypto.ErrBadHeader, crypto.ErrBadHeader},
		},
		{
			name:         "wrong layout",
			layout:       crypto.Layout{ChunkShift: l.ChunkShift + 1, SlotShift: l.SlotShift},
			wantErr:      crypto.ErrLayoutMismatch,
			wantPreamble: true,
		},
		{
			name: "short file",
			damage: func(t *testing.T, tf *testFile) {
				if err := tf.fd.Truncate(crypto.PreambleSize - 1); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: crypto.ErrNotCipherFile,
		},
		{
			name: "empty file",
			damage: func(t *testing.T, tf *testFile) {
				if err := tf.fd.Truncate(0); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: crypto.ErrNotCipherFile,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fl := tc.layout
			if fl == (crypto.Layout{}) {
				fl = l
			}
			tf := newTestFile(t, fl)
			if tc.damage != nil {
				tc.damage(t, tf)
			}
			hd, err := ReadHead(tf.fd, l)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error: got %v, want %v", err, tc.wantErr)
			}
			wantPre := crypto.Preamble{}
			if tc.wantPreamble {
				wantPre = crypto.NewPreamble(fl, tf.c.FileID())
			}
			if hd.Preamble != wantPre {
				t.Errorf("preamble: got %+v, want %+v", hd.Preamble, wantPre)
			}
			for i, want := range tc.wantSlot {
				got := hd.Slots[i].Err
				if !errors.Is(got, want) {
					t.Errorf("slot %d: got %v, want %v", i, got, want)
				}
				if got == nil && hd.Slots[i].Header.FileID != tf.c.FileID() && tc.wantErr == nil {
					t.Errorf("slot %d: valid with file ID %s, want %s", i, hd.Slots[i].Header.FileID, tf.c.FileID())
				}
			}
			if tc.wantErr != nil {
				return
			}
			if hd.Current != tc.wantCurrent || hd.Header.Generation != tc.wantGen {
				t.Errorf("pick: got slot %d generation %d, want slot %d generation %d", hd.Current, hd.Header.Generation, tc.wantCurrent, tc.wantGen)
			}
			if !hd.Header.Equal(hd.Slots[hd.Current].Header) {
				t.Errorf("picked header %+v is not slot %d's %+v", hd.Header, hd.Current, hd.Slots[hd.Current].Header)
			}
			// ReadHeader is the same pick.
			h, cur, err := ReadHeader(tf.fd, l)
			if err != nil || cur != hd.Current || !h.Equal(hd.Header) {
				t.Errorf("ReadHeader: got slot %d generation %d, %v; want slot %d generation %d, nil", cur, h.Generation, err, hd.Current, hd.Header.Generation)
			}
		})
	}
}

// keySourceOf is a key source that hands out c after reading the header
// when readHeader is set, and counts its calls.
type keySourceOf struct {
	c          *crypto.ContentCipher
	err        error
	readHeader bool
	calls      int
	headers    []crypto.Header
}

func (k *keySourceOf) source(id crypto.FileID, header func() (crypto.Header, error)) (*crypto.ContentCipher, error) {
	k.calls++
	if k.readHeader {
		h, err := header()
		if err != nil {
			return nil, err
		}
		k.headers = append(k.headers, h)
	}
	return k.c, k.err
}

func TestOpenContent(t *testing.T) {
	l := crypto.DefaultLayout()
	errKMS := errors.New("kms down")
	content := bytes.Repeat([]byte("kmsfs "), 2000)
	cases := []struct {
		name   string
		layout crypto.Layout // the file's; zero: l
		damage func(t *testing.T, tf *testFile)
		keys   func(tf *testFile) *keySourceOf
		// wantErr: nil opens; wantKey: the error is the key source's;
		// wantOpenError: an *OpenError (the preamble was read).
		wantErr       error
		wantOpenError bool
		wantKey       bool
		wantCalls     int
	}{
		{
			name:      "key source that does not read the header",
			keys:      func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c} },
			wantCalls: 1,
		},
		{
			name:      "key from the header",
			keys:      func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c, readHeader: true} },
			wantCalls: 1,
		},
		{
			name:   "one slot torn",
			damage: func(t *testing.T, tf *testFile) { putSlot(t, tf, 1, testHeader(tf.c.FileID(), 2)); tearSlot(t, tf, 1) },
			keys:   func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c, readHeader: true} },
			// The header source falls back to slot 0.
			wantCalls: 1,
		},
		{
			name:    "both slots torn",
			damage:  func(t *testing.T, tf *testFile) { tearSlot(t, tf, 0); tearSlot(t, tf, 1) },
			keys:    func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c, readHeader: true} },
			wantErr: crypto.ErrNoValidHeader, wantOpenError: true, wantKey: true, wantCalls: 1,
		},
		{
			name:    "key source fails",
			keys:    func(tf *testFile) *keySourceOf { return &keySourceOf{err: errKMS} },
			wantErr: errKMS, wantOpenError: true, wantKey: true, wantCalls: 1,
		},
		{
			name:    "wrong file ID",
			keys:    func(tf *testFile) *keySourceOf { return &keySourceOf{c: newCipher(t, l)} },
			wantErr: ErrFileIDMismatch, wantOpenError: true, wantCalls: 1,
		},
		{
			name:    "wrong layout: no key asked",
			layout:  crypto.Layout{ChunkShift: l.ChunkShift + 2, SlotShift: l.SlotShift},
			keys:    func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c} },
			wantErr: crypto.ErrLayoutMismatch, wantOpenError: true,
		},
		{
			name: "names key's file ID: no key asked",
			damage: func(t *testing.T, tf *testFile) {
				if _, err := tf.fd.WriteAt(crypto.NewPreamble(l, crypto.NamesKeyID).Marshal(), 0); err != nil {
					t.Fatal(err)
				}
			},
			keys:    func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c} },
			wantErr: crypto.ErrBadHeader, wantOpenError: true,
		},
		{
			name: "short file",
			damage: func(t *testing.T, tf *testFile) {
				if err := tf.fd.Truncate(crypto.PreambleSize - 1); err != nil {
					t.Fatal(err)
				}
			},
			keys:    func(tf *testFile) *keySourceOf { return &keySourceOf{c: tf.c} },
			wantErr: crypto.ErrNotCipherFile,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fl := tc.layout
			if fl == (crypto.Layout{}) {
				fl = l
			}
			tf := newTestFile(t, fl)
			tf.mustWrite(t, content, 0)
			if tc.damage != nil {
				tc.damage(t, tf)
			}
			keys := tc.keys(tf)
			cf, err := OpenContent(tf.fd, l, keys.source)
			if keys.calls != tc.wantCalls {
				t.Errorf("key source calls: got %d, want %d", keys.calls, tc.wantCalls)
			}
			if tc.wantErr != nil {
				if cf != nil || !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, %v; want nil, %v", cf, err, tc.wantErr)
				}
				var oe *OpenError
				if got := errors.As(err, &oe); got != tc.wantOpenError {
					t.Fatalf("*OpenError: got %v, want %v (%v)", got, tc.wantOpenError, err)
				}
				if oe != nil && (oe.Key != tc.wantKey || oe.Preamble != crypto.NewPreamble(fl, oe.Preamble.FileID)) {
					t.Fatalf("OpenError: got Key %v preamble %+v, want Key %v and the file's preamble", oe.Key, oe.Preamble, tc.wantKey)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenContent: %v", err)
			}
			if cf.FileID() != tf.c.FileID() || cf.Cipher() != tf.c {
				t.Errorf("got file %s, want %s with its own cipher", cf.FileID(), tf.c.FileID())
			}
			for _, h := range keys.headers {
				if h.Generation != 1 || h.FileID != tf.c.FileID() {
					t.Errorf("header given to the key source: got file %s generation %d, want %s 1", h.FileID, h.Generation, tf.c.FileID())
				}
			}
			if keys.readHeader && len(keys.headers) != 1 {
				t.Errorf("headers read: got %d, want 1", len(keys.headers))
			}
			got := make([]byte, len(content)+1)
			n, err := cf.ReadAt(got, 0)
			if !errors.Is(err, io.EOF) || !bytes.Equal(got[:n], content) {
				t.Errorf("content: got %d bytes, %v; want %d bytes, EOF", n, err, len(content))
			}
		})
	}
}
