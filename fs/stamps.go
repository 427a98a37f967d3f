package fs

import (
	"sync"
	"syscall"
)

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
	if t.m == nil || len(t.m) >= fileIDsMax { // the bound of fileIDs (fileids.go)
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
