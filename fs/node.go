package fs

// node.go: the node type of the plain view, the go-fuse interfaces it
// implements, and what reads a node without changing the tree (getattr,
// open, opendir, statfs). Namespace operations are in node_namespace.go,
// setattr and truncate in node_setattr.go, forgetting the key of a removed
// file in node_forget.go, extended attributes in xattr.go.

import (
	"context"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a file, directory, symlink or special file of the plain view.
// It holds nothing but the root: its cipher entry comes from its place in
// the tree (its parent's directory handle and its name, dirs.go), its open
// state from the root's open-file table.
type node struct {
	gofs.Inode
	r *root
	// tmp names the cipher inode of a file made by O_TMPFILE, which has
	// no path to find it by until it is linked.
	tmp *fileKey
	// entry remembers the cipher entry of the node's name in its parent
	// (dirs.go, locate): an encrypted name then costs one AES-SIV per
	// lookup, not one per request. It is only used while the node's
	// parent and name are those it was made for.
	entry atomic.Pointer[entryMemo]
}

var (
	_ = (gofs.InodeEmbedder)((*node)(nil))
	_ = (gofs.NodeLookuper)((*node)(nil))
	_ = (gofs.NodeGetattrer)((*node)(nil))
	_ = (gofs.NodeSetattrer)((*node)(nil))
	_ = (gofs.NodeOpener)((*node)(nil))
	_ = (gofs.NodeCreater)((*node)(nil))
	_ = (gofs.NodeTmpfiler)((*node)(nil))
	_ = (gofs.NodeMkdirer)((*node)(nil))
	_ = (gofs.NodeRmdirer)((*node)(nil))
	_ = (gofs.NodeUnlinker)((*node)(nil))
	_ = (gofs.NodeRenamer)((*node)(nil))
	_ = (gofs.NodeSymlinker)((*node)(nil))
	_ = (gofs.NodeReadlinker)((*node)(nil))
	_ = (gofs.NodeLinker)((*node)(nil))
	_ = (gofs.NodeMknoder)((*node)(nil))
	_ = (gofs.NodeOpendirHandler)((*node)(nil))
	_ = (gofs.NodeStatfser)((*node)(nil))
	_ = (gofs.NodeGetxattrer)((*node)(nil))
	_ = (gofs.NodeSetxattrer)((*node)(nil))
	_ = (gofs.NodeListxattrer)((*node)(nil))
	_ = (gofs.NodeRemovexattrer)((*node)(nil))
)

func (n *node) ino() uint64 { return n.StableAttr().Ino }

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	switch h := f.(type) {
	case *handle:
		return h.Getattr(ctx, out)
	case *dirStream:
		return h.Getattr(ctx, out)
	}
	var st syscall.Stat_t
	if err := n.r.lstatNode(n, &st); err != nil {
		return n.r.errno("getattr", n.ino(), err)
	}
	n.r.fillAttr(&st, &out.Attr)
	return 0
}

// lstatNode stats n's cipher entry without following it: a directory
// through its own handle when it has one, else by name in its parent.
func (r *root) lstatNode(n *node, st *syscall.Stat_t) error {
	if n.StableAttr().Mode == syscall.S_IFDIR {
		d, err := r.dirOf(n)
		if err != nil {
			return err
		}
		_, err = fstatGen(d.fd, st)
		r.putDir(d)
		return err
	}
	l, err := r.locate(n)
	if err != nil {
		return err
	}
	defer r.unlocate(l)
	_, err = statAt(l.d.fd, l.entry, st)
	return err
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	l, err := n.r.locate(n)
	if err != nil {
		return nil, 0, n.r.errno("open", n.ino(), err)
	}
	defer n.r.unlocate(l)
	h, errno := n.r.open(ctx, l, n.ino(), flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return h, n.r.openFlags(h), 0
}

// openFlags are the FOPEN_* flags of an open or create reply for h.
//
// FOPEN_NOFLUSH: close(2) sends no FLUSH (a round trip on every close),
// since Flush has nothing to do while writes reach the cipher file before
// Write returns.
func (r *root) openFlags(h *handle) uint32 {
	flags := uint32(fuse.FOPEN_NOFLUSH)
	if h.keepCache {
		flags |= fuse.FOPEN_KEEP_CACHE
	}
	return flags
}

func isWrite(flags uint32) bool {
	return flags&syscall.O_ACCMODE == syscall.O_WRONLY || flags&syscall.O_ACCMODE == syscall.O_RDWR
}

// open makes a handle on the cipher file at l.
func (r *root) open(ctx context.Context, l loc, ino uint64, flags uint32) (*handle, syscall.Errno) {
	return r.openChecked(ctx, l, ino, flags, nil)
}

// openChecked is open that, when check is not nil, asks check about the
// attributes of the file it opened before the handle is made or the file
// truncated.
func (r *root) openChecked(ctx context.Context, l loc, ino uint64, flags uint32, check func(*syscall.Stat_t) syscall.Errno) (*handle, syscall.Errno) {
	trunc := flags&syscall.O_TRUNC != 0
	write := isWrite(flags) || trunc
	if write && r.ro {
		return nil, syscall.EROFS
	}
	of, keep, err := r.acquireKeep(ctx, l, write)
	if err != nil {
		return nil, r.errno("open", ino, err)
	}
	if check != nil {
		var st syscall.Stat_t
		of.mu.RLock()
		err := syscall.Fstat(int(of.f.Fd()), &st)
		of.mu.RUnlock()
		errno := syscall.Errno(0)
		if err != nil {
			errno = r.errno("open", ino, err)
		} else {
			errno = check(&st)
		}
		if errno != 0 {
			r.release(of)
			return nil, errno
		}
	}
	h := &handle{r: r, of: of, write: isWrite(flags), append: flags&syscall.O_APPEND != 0, keepCache: keep && !trunc}
	if trunc {
		if errno := r.truncate(of, 0); errno != 0 {
			r.release(of)
			return nil, errno
		}
	}
	return h, 0
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	d, err := n.r.dirOf(n)
	if err != nil {
		return nil, 0, n.r.errno("opendir", n.ino(), err)
	}
	defer n.r.putDir(d)
	ds, err := openDir(n.r, d, n.IsRoot(), n.ino())
	if err != nil {
		return nil, 0, n.r.errno("opendir", n.ino(), err)
	}
	return ds, 0, 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Fstatfs(n.r.rootDir.fd, &s); err != nil {
		return n.r.errno("statfs", n.ino(), err)
	}
	out.FromStatfsT(&s)
	return 0
}
