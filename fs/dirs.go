package fs

// dirs.go: the directory handles every request reaches the cipher
// directory through. A directory of the plain view is an O_PATH handle on
// its cipher directory, opened from its parent's handle by one name with
// O_NOFOLLOW|O_DIRECTORY (cipherdir.OpenDirAt), so:
//   - no request builds a path, and no path is ever longer than one name
//     (a plain tree deeper than PATH_MAX works);
//   - a symlink planted in the cipher directory where a directory was is
//     never followed (ENOTDIR), so nothing outside the cipher directory is
//     ever reached;
//   - a directory renamed keeps its handle (the kernel tracks it).
//
// Handles are cached per node, most recently used first, up to dirsMax;
// an evicted handle is closed once its last user is done with it and is
// reopened from its parent's on the next use. The kernel's FORGET of a
// node closes its handle (node.OnForget).

import (
	"container/list"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// dirsMax bounds the open directory handles (the soft RLIMIT_NOFILE Go
// raises to the hard limit is usually far above it).
const dirsMax = 4096

// dirHandle is one open cipher directory. fd and permanent never change;
// refs, elem and cached are guarded by dirCache.mu; id by idMu.
type dirHandle struct {
	fd        int
	permanent bool // the root's: never closed by the cache
	n         *node

	refs   int
	cached bool
	elem   *list.Element

	idMu sync.Mutex
	id   []byte // the directory ID, read on first use (encrypted names)
}

// ID returns the directory's ID (nil with plaintext names), reading its
// kmsfs.dirid on first use. A read that fails is not remembered.
func (d *dirHandle) ID(t *cipherdir.Tree) ([]byte, error) {
	if !t.Encrypted() {
		return nil, nil
	}
	d.idMu.Lock()
	defer d.idMu.Unlock()
	if d.id != nil {
		return d.id, nil
	}
	id, err := t.ReadDirID(d.fd)
	if err != nil {
		return nil, err
	}
	d.id = id
	return id, nil
}

// setID records the ID of a directory just made.
func (d *dirHandle) setID(id []byte) {
	d.idMu.Lock()
	d.id = id
	d.idMu.Unlock()
}

type dirCache struct {
	mu  sync.Mutex
	m   map[*node]*dirHandle
	lru list.List // of *dirHandle, most recent first
}

// dirOf returns the handle of directory node n with a reference the
// caller drops with putDir.
func (r *root) dirOf(n *node) (*dirHandle, error) {
	if n.IsRoot() {
		return r.rootDir, nil
	}
	c := &r.dirs
	c.mu.Lock()
	if d := c.m[n]; d != nil {
		d.refs++
		c.lru.MoveToFront(d.elem)
		c.mu.Unlock()
		return d, nil
	}
	c.mu.Unlock()

	name, parent := n.Parent()
	if parent == nil {
		return nil, syscall.ENOENT // removed: no name to reach it by
	}
	pn, ok := parent.Operations().(*node)
	if !ok {
		return nil, syscall.EIO
	}
	pd, err := r.dirOf(pn)
	if err != nil {
		return nil, err
	}
	entry, _, err := r.childName(pd, name)
	var fd int
	if err == nil {
		fd, err = cipherdir.OpenDirAt(pd.fd, entry)
	}
	r.putDir(pd)
	if err != nil {
		return nil, err
	}
	return c.insert(&dirHandle{fd: fd, n: n, refs: 1, cached: true}), nil
}

// insert caches d, a handle just opened, and returns it; when another
// request cached n's handle in the meantime, d is closed and that one is
// returned instead, with d's references.
func (c *dirCache) insert(d *dirHandle) *dirHandle {
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[*node]*dirHandle)
	}
	if old := c.m[d.n]; old != nil {
		old.refs += d.refs
		c.lru.MoveToFront(old.elem)
		c.mu.Unlock()
		unix.Close(d.fd)
		return old
	}
	c.m[d.n] = d
	d.elem = c.lru.PushFront(d)
	var closing []int
	for c.lru.Len() > dirsMax {
		closing = c.evictLocked(c.lru.Back().Value.(*dirHandle), closing)
	}
	c.mu.Unlock()
	closeAll(closing)
	return d
}

// evictLocked takes d out of the cache; its fd is appended to closing
// when nobody uses it. Caller holds c.mu.
func (c *dirCache) evictLocked(d *dirHandle, closing []int) []int {
	if !d.cached {
		return closing
	}
	d.cached = false
	c.lru.Remove(d.elem)
	delete(c.m, d.n)
	if d.refs == 0 {
		closing = append(closing, d.fd)
	}
	return closing
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// adoptDir caches fd, a handle of the directory of node n just made with
// ID id, instead of closing it and reopening it on first use.
func (r *root) adoptDir(n *node, fd int, id []byte) {
	r.dirs.insert(&dirHandle{fd: fd, n: n, cached: true, id: id})
}

// peekChildDir returns the cached handle of directory name in n, with a
// reference, or nil when the mount holds none (it opens nothing).
func (r *root) peekChildDir(n *node, name string) *dirHandle {
	ch := n.GetChild(name)
	if ch == nil {
		return nil
	}
	cn, ok := ch.Operations().(*node)
	if !ok {
		return nil
	}
	c := &r.dirs
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.m[cn]
	if d == nil {
		return nil
	}
	d.refs++
	return d
}

// putDir drops a reference from dirOf.
func (r *root) putDir(d *dirHandle) {
	if d.permanent {
		return
	}
	c := &r.dirs
	c.mu.Lock()
	d.refs--
	closeIt := d.refs == 0 && !d.cached
	c.mu.Unlock()
	if closeIt {
		unix.Close(d.fd)
	}
}

// dropDir closes n's handle, if it has one, once its users are done: n
// was forgotten by the kernel or its cipher directory removed.
func (r *root) dropDir(n *node) {
	c := &r.dirs
	c.mu.Lock()
	var closing []int
	if d := c.m[n]; d != nil {
		closing = c.evictLocked(d, nil)
	}
	c.mu.Unlock()
	closeAll(closing)
}

// closeDirs closes every cached handle (unmount).
func (r *root) closeDirs() {
	c := &r.dirs
	c.mu.Lock()
	var closing []int
	for _, d := range c.m {
		closing = c.evictLocked(d, closing)
	}
	c.mu.Unlock()
	closeAll(closing)
}

// childName is the entry and full encoding of plain name in directory d.
func (r *root) childName(d *dirHandle, name string) (entry, encoded string, err error) {
	id, err := d.ID(r.tree)
	if err != nil {
		return "", "", err
	}
	return r.tree.CipherName(id, name)
}

// loc is where a node's cipher entry is: its parent directory's handle
// and its entry name there ("." for the root, whose parent is itself).
type loc struct {
	d       *dirHandle
	entry   string
	encoded string
}

// entryMemo is a node's cipher entry for one (parent, name).
type entryMemo struct {
	parent         *node
	name           string
	entry, encoded string
}

// locate finds n's entry; the caller drops it with r.unlocate.
func (r *root) locate(n *node) (loc, error) {
	if n.IsRoot() {
		return loc{d: r.rootDir, entry: ".", encoded: "."}, nil
	}
	name, parent := n.Parent()
	if parent == nil {
		return loc{}, syscall.ENOENT
	}
	pn, ok := parent.Operations().(*node)
	if !ok {
		return loc{}, syscall.EIO
	}
	return r.locateIn(pn, name, n)
}

// locateChild finds the entry of name in directory node dir (using the
// child's memo when the kernel has the child).
func (r *root) locateChild(dir *node, name string) (loc, error) {
	var child *node
	if r.tree.Encrypted() {
		if ch := dir.GetChild(name); ch != nil {
			child, _ = ch.Operations().(*node)
		}
	}
	return r.locateIn(dir, name, child)
}

// locateIn finds the entry of name in dir; child, when not nil, is the
// node of that name, whose memo may spare the encryption and is updated.
func (r *root) locateIn(dir *node, name string, child *node) (loc, error) {
	d, err := r.dirOf(dir)
	if err != nil {
		return loc{}, err
	}
	if child != nil {
		if m := child.entry.Load(); m != nil && m.parent == dir && m.name == name {
			return loc{d: d, entry: m.entry, encoded: m.encoded}, nil
		}
	}
	entry, encoded, err := r.childName(d, name)
	if err != nil {
		r.putDir(d)
		return loc{}, err
	}
	if child != nil && r.tree.Encrypted() {
		child.entry.Store(&entryMemo{parent: dir, name: name, entry: entry, encoded: encoded})
	}
	return loc{d: d, entry: entry, encoded: encoded}, nil
}

func (r *root) unlocate(l loc) {
	if l.d != nil {
		r.putDir(l.d)
	}
}

// statAt stats entry in dirfd without following it ("." is dirfd itself).
func statAt(dirfd int, entry string, st *syscall.Stat_t) (gen uint64, err error) {
	if entry == "." {
		return statxAt(dirfd, "", unix.AT_EMPTY_PATH, st)
	}
	return statxAt(dirfd, entry, unix.AT_SYMLINK_NOFOLLOW, st)
}

// OnForget closes the node's directory handle: the kernel has dropped it.
func (n *node) OnForget() {
	if n.r != nil {
		n.r.dropDir(n)
	}
}

var _ = (gofs.NodeOnForgetter)((*node)(nil))
