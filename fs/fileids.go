package fs

import (
	"sync"
	"syscall"

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

// fileIDsMax bounds the map (about 64 bytes an entry): past it the map
// starts over, and misses fall back to reading the file.
const fileIDsMax = 1 << 16

func (t *fileIDs) put(key fileKey, gen uint64, id crypto.FileID) {
	if gen <= 1 { // no birth time on this filesystem: cannot tell reuse
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil || len(t.m) >= fileIDsMax {
		t.m = make(map[fileKey]fileIDEntry)
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

// cacheStamps remembers, for cipher inodes this mount has closed, the
// cipher file's change time and size at the last release, when every
// write of the mount had reached it. An open that finds the file with the
// same stamp knows that nothing has changed it since, so the kernel may
// keep the plain pages it has cached (FOPEN_KEEP_CACHE); any change to the
// cipher file, by the mount or behind its back, moves its ctime, and the
// next open then drops the kernel's pages.
type cacheStamps struct {
	mu sync.Mutex
	m  map[fileKey]cacheStamp
}

type cacheStamp struct {
	ctime int64 // ns
	size  int64
}

func stampOf(st *syscall.Stat_t) cacheStamp {
	return cacheStamp{ctime: st.Ctim.Nano(), size: st.Size}
}

func (t *cacheStamps) put(key fileKey, s cacheStamp) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil || len(t.m) >= fileIDsMax {
		t.m = make(map[fileKey]cacheStamp)
	}
	t.m[key] = s
}

// take reports whether key was released with stamp s, and forgets it.
func (t *cacheStamps) take(key fileKey, s cacheStamp) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, ok := t.m[key]
	delete(t.m, key)
	return ok && old == s
}
