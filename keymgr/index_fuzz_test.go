package keymgr

import (
	"bytes"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// FuzzDecodeIndexValue: the decode path of Index.Get and Index.ForEach (an
// index key, then its value) never panics on what an attacker with write
// access to .kmsfs/index could plant; a value it accepts is the header of
// the file its key names, and encodes back to the same bytes.
func FuzzDecodeIndexValue(f *testing.F) {
	id := crypto.FileID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	h := crypto.Header{FileID: id, Generation: 3, Keys: []crypto.WrappedKey{
		{KeyARN: "arn:kmsfs:local:00:key/k", KeyVersion: 2, EDK: bytes.Repeat([]byte{7}, 81)},
	}}
	val, err := h.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(indexKey(id), val)
	f.Add(indexKey(id), val[:len(val)-1])
	f.Add([]byte("h/short"), val)
	f.Add(indexKey(crypto.FileID{}), []byte{})
	f.Add(append(indexKey(id), 0), append(val, 0))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		kid, err := idOfKey(key)
		if err != nil {
			return
		}
		h, err := decodeIndexValue(kid, val)
		if err != nil {
			return
		}
		if h.FileID != kid {
			t.Fatalf("decoded the header of %s under the key of %s", h.FileID, kid)
		}
		out, err := h.Marshal()
		if err != nil {
			t.Fatalf("accepted header does not marshal: %v", err)
		}
		if !bytes.Equal(out, val) {
			t.Fatalf("accepted value is not canonical:\n%x\n%x", val, out)
		}
	})
}
