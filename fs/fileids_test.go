package fs

import (
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
)

// Past fileIDsMax the memo makes room by dropping some entries, not all:
// a mount with more files than the bound still finds most of them.
func TestFileIDsBound(t *testing.T) {
	var ids fileIDs
	n := fileIDsMax + fileIDsMax/2
	for i := 1; i <= n; i++ {
		ids.put(fileKey{1, uint64(i)}, 2, crypto.FileID{byte(i)})
	}
	if got := len(ids.m); got > fileIDsMax {
		t.Fatalf("len = %d, want at most %d", got, fileIDsMax)
	}
	hits := 0
	for i := 1; i <= n; i++ {
		if _, ok := ids.get(fileKey{1, uint64(i)}, 2); ok {
			hits++
		}
	}
	if want := fileIDsMax * 3 / 4; hits < want {
		t.Fatalf("hits = %d of %d, want at least %d", hits, n, want)
	}
	if _, ok := ids.get(fileKey{1, uint64(n)}, 2); !ok {
		t.Fatalf("the newest entry is missing")
	}
}
