package crypto

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the current code")

// Known-answer vectors: with the DEK 00 01 .. 1f, the file ID below and a
// rand that yields 00 01 02 ..., the bytes in testdata/vectors.json are what
// version 1 writes. They must never change: a mismatch is a format break.

type chunkVector struct {
	Index  int64  `json:"index"`
	Last   bool   `json:"last"`
	Plain  string `json:"plain"`
	Sealed string `json:"sealed"`
}

type vectors struct {
	Comment    string        `json:"comment"`
	DEK        string        `json:"dek"`
	FileID     string        `json:"file_id"`
	ChunkShift uint8         `json:"chunk_shift"`
	SlotShift  uint8         `json:"slot_shift"`
	Preamble   string        `json:"preamble"`
	HeaderBody string        `json:"header_body"`
	Slot       string        `json:"slot"`
	Chunks     []chunkVector `json:"chunks"`
	XattrName  string        `json:"xattr_name"`
	XattrValue string        `json:"xattr_value"`
	XattrSeal  string        `json:"xattr_sealed"`
}

const vectorsPath = "testdata/vectors.json"

func vectorInputs() (dek []byte, id FileID, l Layout, h Header) {
	dek = testDEK(0)
	id = FileID{0x4f, 0x0c, 0x1e, 0x8a, 0x9b, 0x2d, 0x4c, 0x6e, 0x8f, 0x1a, 0x3b, 0x5c, 0x7d, 0x9e, 0x0f, 0x12}
	l = DefaultLayout()
	h = Header{FileID: id, Generation: 1, Keys: []WrappedKey{{
		KeyARN:     "arn:kmsfs:local:0123456789abcdef0123456789abcdef:key/fedcba98765432100123456789abcdef",
		KeyVersion: 1,
		EDK:        bytes.Repeat([]byte{0xed}, 81),
	}}}
	return dek, id, l, h
}

func computeVectors(t *testing.T) vectors {
	dek, id, l, h := vectorInputs()
	c, err := NewContentCipher(dek, id, l, &seqReader{})
	if err != nil {
		t.Fatal(err)
	}
	body, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	slot, err := EncodeSlot(h, l.SlotSize())
	if err != nil {
		t.Fatal(err)
	}
	v := vectors{
		Comment:    "kmsfs format v1 known answers; rand yields 00 01 02 ... from the first nonce on; hex throughout",
		DEK:        hex.EncodeToString(dek),
		FileID:     id.String(),
		ChunkShift: l.ChunkShift,
		SlotShift:  l.SlotShift,
		Preamble:   hex.EncodeToString(NewPreamble(l, id).Marshal()),
		HeaderBody: hex.EncodeToString(body),
		Slot:       hex.EncodeToString(slot),
	}
	for _, ch := range []struct {
		index int64
		last  bool
		plain []byte
	}{
		{0, false, plainPattern(int(l.ChunkSize()))},
		{1, true, []byte("the last chunk, 33 bytes long....")},
		{0, true, []byte{0x42}},
	} {
		sealed, err := c.SealChunk(nil, ch.index, ch.last, ch.plain)
		if err != nil {
			t.Fatal(err)
		}
		v.Chunks = append(v.Chunks, chunkVector{ch.index, ch.last, hex.EncodeToString(ch.plain), hex.EncodeToString(sealed)})
	}
	v.XattrName, v.XattrValue = "user.comment", "hello"
	xs, err := c.SealXattr(v.XattrName, []byte(v.XattrValue))
	if err != nil {
		t.Fatal(err)
	}
	v.XattrSeal = hex.EncodeToString(xs)
	return v
}

func TestKnownAnswers(t *testing.T) {
	got := computeVectors(t)
	if *update {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.FromSlash(vectorsPath), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", vectorsPath)
	}
	raw, err := os.ReadFile(filepath.FromSlash(vectorsPath))
	if err != nil {
		t.Fatalf("%v (run go test -run TestKnownAnswers -update once)", err)
	}
	var want vectors
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ name, got, want string }{
		{"dek", got.DEK, want.DEK},
		{"file_id", got.FileID, want.FileID},
		{"preamble", got.Preamble, want.Preamble},
		{"header_body", got.HeaderBody, want.HeaderBody},
		{"slot", got.Slot, want.Slot},
		{"xattr_sealed", got.XattrSeal, want.XattrSeal},
	} {
		if f.got != f.want {
			t.Errorf("%s:\n got %s\nwant %s", f.name, f.got, f.want)
		}
	}
	if len(got.Chunks) != len(want.Chunks) {
		t.Fatalf("chunks: got %d, want %d", len(got.Chunks), len(want.Chunks))
	}
	for i := range want.Chunks {
		if got.Chunks[i] != want.Chunks[i] {
			t.Errorf("chunk vector %d:\n got %+v\nwant %+v", i, got.Chunks[i], want.Chunks[i])
		}
	}
	checkVectorsDecode(t, want)
}

// checkVectorsDecode reads the checked-in bytes back, independently of how
// they were produced.
func checkVectorsDecode(t *testing.T, v vectors) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	dek, id, l, h := vectorInputs()
	p, err := ParsePreamble(unhex(v.Preamble))
	if err != nil || p != NewPreamble(l, id) {
		t.Errorf("preamble: got %+v, %v", p, err)
	}
	gotH, err := DecodeSlot(unhex(v.Slot), id)
	if err != nil || gotH.Generation != h.Generation || gotH.Keys[0].KeyARN != h.Keys[0].KeyARN {
		t.Errorf("slot: got %+v, %v", gotH, err)
	}
	c, err := NewContentCipher(dek, id, l, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, ch := range v.Chunks {
		got, err := c.OpenChunk(nil, ch.Index, ch.Last, unhex(ch.Sealed))
		if err != nil || !bytes.Equal(got, unhex(ch.Plain)) {
			t.Errorf("chunk vector %d: OpenChunk: %v", i, err)
		}
	}
	xv, err := c.OpenXattr(v.XattrName, unhex(v.XattrSeal))
	if err != nil || string(xv) != v.XattrValue {
		t.Errorf("xattr: got %q, %v, want %q", xv, err, v.XattrValue)
	}
}
