package fs

import (
	"sync"

	"github.com/kmsfs/kmsfs/crypto"
)

// fileIDs remembers the file ID of cipher inodes this mount has created or
// opened, so that unlink and rename-over, which must forget the key of the
// file they remove, need not open and read the file first (three syscalls
// of the four an unlink cost). An entry is trusted only for the same inode
// and generation (birth time): a reused inode number has another birth
// time. A file ID never changes for the life of a cipher file (rewrap
// rewrites only its header slots). A cipher file rewritten in place behind
// the mount's back could leave a stale entry; the cost is then an index
// entry forgotten for nothing (the file heals it from its header mirror at
// the next open) and an orphan one left for fsck, never lost content.
type fileIDs struct {
	mu sync.Mutex
	m  map[fileKey]fileIDEntry
}

type fileIDEntry struct {
	gen uint64
	id  crypto.FileID
}

// fileIDsMax bounds the map (62 to 96 bytes an entry, so at most about
// 24 MiB): past it an eighth of the entries, picked by map order, make
// room, and misses fall back to reading the file. It was 1<<16 with the
// map starting over when full: a mount that created 80,000 files then
// missed on 65,000 of their unlinks, and rm -rf of the directory cost 16
// times what 10,000 files did (docs/performance.md, session 5).
const fileIDsMax = 1 << 18

func (t *fileIDs) put(key fileKey, gen uint64, id crypto.FileID) {
	if gen <= 1 { // no birth time on this filesystem: cannot tell reuse
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[fileKey]fileIDEntry)
	}
	if len(t.m) >= fileIDsMax {
		n := 0
		for k := range t.m {
			delete(t.m, k)
			if n++; n >= fileIDsMax/8 {
				break
			}
		}
	}
	t.m[key] = fileIDEntry{gen: gen, id: id}
}

func (t *fileIDs) get(key fileKey, gen uint64) (crypto.FileID, bool) {
	if gen <= 1 {
		return crypto.FileID{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[key]
	if !ok || e.gen != gen {
		return crypto.FileID{}, false
	}
	return e.id, true
}

func (t *fileIDs) drop(key fileKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, key)
}
