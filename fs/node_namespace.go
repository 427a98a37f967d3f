package fs

// node_namespace.go: the operations that change or read the namespace of
// the plain view: lookup, create (and O_TMPFILE), mkdir, mknod, symlink,
// readlink, link, unlink, rmdir and rename, each on the cipher entry found
// through the parent's directory handle (dirs.go).

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// newChild stats entry in the directory handle d and makes its inode.
func (n *node) newChild(ctx context.Context, d *dirHandle, entry string, out *fuse.EntryOut) (*gofs.Inode, *syscall.Stat_t, syscall.Errno) {
	var st syscall.Stat_t
	gen, err := statAt(d.fd, entry, &st)
	if err != nil {
		return nil, nil, n.r.errno("lookup", n.ino(), err)
	}
	n.r.fillAttr(&st, &out.Attr)
	ch := n.NewInode(ctx, &node{r: n.r}, n.r.stableAttr(&st, gen))
	return ch, &st, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.r.hidden(n, name) {
		return nil, syscall.ENOENT
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return nil, n.r.errno("lookup", n.ino(), err)
	}
	defer n.r.unlocate(l)
	ch, _, errno := n.newChild(ctx, l.d, l.entry, out)
	n.remember(ch, name, l)
	return ch, errno
}

// remember gives ch, the node of name in n found or made at l, the memo
// of its cipher entry (encrypted names only: a plain name is its entry).
func (n *node) remember(ch *gofs.Inode, name string, l loc) {
	if ch == nil || !n.r.tree.Encrypted() {
		return
	}
	if cn, ok := ch.Operations().(*node); ok {
		cn.entry.Store(&entryMemo{parent: n, name: name, entry: l.entry, encoded: l.encoded})
	}
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if n.r.hidden(n, name) {
		return nil, nil, 0, syscall.EPERM
	}
	if n.r.ro {
		return nil, nil, 0, syscall.EROFS
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return nil, nil, 0, n.r.errno("create", n.ino(), err)
	}
	defer n.r.unlocate(l)
	if err := n.r.tree.PrepareEntry(l.d.fd, l.entry, l.encoded); err != nil {
		return nil, nil, 0, n.r.errno("create", n.ino(), err)
	}
	fd, err := cipherdir.OpenAt(l.d.fd, l.entry, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOATIME, mode&0o7777)
	if err == syscall.EEXIST && flags&syscall.O_EXCL == 0 {
		return n.createExisting(ctx, l, name, flags, out)
	}
	if err != nil {
		if err != syscall.EEXIST {
			n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
		}
		return nil, nil, 0, n.r.errno("create", n.ino(), err)
	}
	undo := func() {
		unix.Unlinkat(l.d.fd, l.entry, 0)
		n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
	}
	of, attr, errno := n.initNewFile(ctx, "create", fd, l.d.fd, mode, false, out, undo)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	h := &handle{r: n.r, of: of, write: isWrite(flags), append: flags&syscall.O_APPEND != 0}
	ch := n.NewInode(ctx, &node{r: n.r}, attr)
	n.remember(ch, name, l)
	return ch, h, n.r.openFlags(h), 0
}

// initNewFile makes the open state of fd, a regular cipher file just
// created in the directory dirfd (by name, or unnamed with O_TMPFILE): it
// gives the file to its creator, writes its header, and fills out with
// its attributes. Every call works on the fd: a create is the hot path of
// small-file workloads (tar, git, builds). On failure fd is closed, and
// undo (a no-op for an unnamed file) removes the new name when the file
// never got its header: its stat or its header write failed.
func (n *node) initNewFile(ctx context.Context, op string, fd, dirfd int, mode uint32, tmp bool, out *fuse.EntryOut, undo func()) (*openFile, gofs.StableAttr, syscall.Errno) {
	var st syscall.Stat_t
	gen, err := fstatGen(fd, &st)
	if err != nil {
		syscall.Close(fd)
		undo()
		return nil, gofs.StableAttr{}, n.r.errno(op, n.ino(), err)
	}
	o, err := ownerOfNew(ctx, dirfd, &st, mode)
	if err == nil {
		err = o.apply(&st, func(uid, gid int) error { return syscall.Fchown(fd, uid, gid) },
			func(mode uint32) error { return syscall.Fchmod(fd, mode) })
	}
	if err != nil {
		n.r.log.Warn("cannot give new file to its creator", "op", op, "inode", st.Ino, "err", err.Error())
	}
	f := os.NewFile(uintptr(fd), "cipher inode "+strconv.FormatUint(st.Ino, 10))
	of, ok := n.r.newOpenFile(f, &st, gen)
	if !ok {
		// The inode number is in the table: only a broken cipher
		// directory (changed under the mount) gets here.
		f.Close()
		return nil, gofs.StableAttr{}, syscall.EIO
	}
	of.tmp = tmp
	of.mu.Lock()
	err = n.r.initOpenFile(ctx, of, true, 0)
	of.mu.Unlock()
	n.r.finish(of, err)
	if err != nil {
		undo()
		return nil, gofs.StableAttr{}, n.r.errno(op, st.Ino, err)
	}
	// The new file's attributes once its head is written: its plain
	// size is 0, and nothing else can have it open yet.
	if _, err := fstatGen(fd, &st); err != nil {
		n.r.release(of)
		return nil, gofs.StableAttr{}, n.r.errno(op, st.Ino, err)
	}
	out.Attr.FromStat(&st)
	out.Attr.Size = uint64(n.r.plainSizeOf(st.Size))
	return of, n.r.stableAttr(&st, gen), 0
}

// createExisting answers a CREATE whose name is already taken in the
// cipher directory: an entry made behind the mount while the kernel kept
// a negative entry for the name (without O_EXCL; with it, EEXIST). The
// kernel takes any successful CREATE reply for a file it made, so it runs
// neither its permission check (even with default_permissions) nor the
// O_TRUNC truncation on it; the FUSE reply has no flag to say otherwise
// (FOPEN_* as of go-fuse v2.12). The check is made here, as the kernel
// would for an open(2) of the name (perm.go): a directory is EISDIR, and
// the access the flags ask for, checked against the file's owner and
// mode with the caller's fsuid and groups, before anything is opened,
// and again on the file opened, before it is truncated.
func (n *node) createExisting(ctx context.Context, l loc, name string, flags uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	q, ok := requesterOf(ctx)
	check := func(st *syscall.Stat_t) syscall.Errno {
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return syscall.EISDIR
		}
		if ok && !q.mayAccess(st, openAccess(flags)) {
			return syscall.EACCES
		}
		return 0
	}
	var st syscall.Stat_t
	if _, err := statAt(l.d.fd, l.entry, &st); err != nil {
		return nil, nil, 0, n.r.errno("create", n.ino(), err)
	}
	if errno := check(&st); errno != 0 {
		return nil, nil, 0, errno
	}
	h, errno := n.r.openChecked(ctx, l, n.ino(), flags, check)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	ch, _, errno := n.newChild(ctx, l.d, l.entry, out)
	if errno != 0 {
		n.r.release(h.of)
		return nil, nil, 0, errno
	}
	n.remember(ch, name, l)
	return ch, h, n.r.openFlags(h), 0
}

// Tmpfile makes an unnamed file (open(2) with O_TMPFILE): a cipher file
// made the same way as by Create, with its header, that gets a name only
// if linked.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if n.r.ro {
		return nil, nil, 0, syscall.EROFS
	}
	if !canLinkByFd() {
		return nil, nil, 0, syscall.EOPNOTSUPP
	}
	d, err := n.r.dirOf(n)
	if err != nil {
		return nil, nil, 0, n.r.errno("tmpfile", n.ino(), err)
	}
	defer n.r.putDir(d)
	fd, err := cipherdir.OpenAt(d.fd, ".", unix.O_TMPFILE|syscall.O_RDWR|syscall.O_NOATIME, mode&0o7777)
	if err != nil {
		return nil, nil, 0, n.r.errno("tmpfile", n.ino(), err)
	}
	of, attr, errno := n.initNewFile(ctx, "tmpfile", fd, d.fd, mode, true, out, func() {})
	if errno != 0 {
		return nil, nil, 0, errno
	}
	key := of.key
	ch := n.NewInode(ctx, &node{r: n.r, tmp: &key}, attr)
	h := &handle{r: n.r, of: of, write: isWrite(flags), append: flags&syscall.O_APPEND != 0}
	return ch, h, n.r.openFlags(h), 0
}

// Mkdir makes the cipher directory, and with encrypted names its ID. The
// directory is made with at least u+rwx so the ID can be written into it,
// then given its mode; a failure on the way removes it again.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.r.hidden(n, name) {
		return nil, syscall.EPERM
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	defer n.r.unlocate(l)
	if err := n.r.tree.PrepareEntry(l.d.fd, l.entry, l.encoded); err != nil {
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	if err := unix.Mkdirat(l.d.fd, l.entry, mode&0o7777|0o700); err != nil {
		if err != syscall.EEXIST {
			n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
		}
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	undo := func() {
		unix.Unlinkat(l.d.fd, l.entry, unix.AT_REMOVEDIR)
		n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
	}
	fd, err := cipherdir.OpenDirAt(l.d.fd, l.entry)
	if err != nil {
		undo()
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	id, err := n.r.tree.NewDirID(fd)
	if err != nil {
		unix.Close(fd)
		undo()
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	undoDir := func() {
		if id != nil {
			unix.Unlinkat(fd, cipherdir.DirIDName, 0)
		}
		unix.Close(fd)
		undo()
	}
	var st syscall.Stat_t
	gen, err := fstatGen(fd, &st)
	if err != nil {
		undoDir()
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	o, err := ownerOfNew(ctx, l.d.fd, &st, mode)
	if err == nil {
		err = o.apply(&st, func(uid, gid int) error { return unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH) },
			func(mode uint32) error { return cipherdir.ChmodFd(fd, mode) })
	}
	if err != nil {
		undoDir()
		return nil, n.r.errno("mkdir", n.ino(), err)
	}
	n.r.fillAttr(&st, &out.Attr)
	child := &node{r: n.r}
	ch := n.NewInode(ctx, child, n.r.stableAttr(&st, gen))
	n.remember(ch, name, l)
	// The handle just opened is the new directory's: keep it.
	n.r.adoptDir(ch.Operations().(*node), fd, id)
	return ch, 0
}

// finishNew gives a new entry made by name in l its owner and mode and
// makes its inode; undo removes it on failure.
func (n *node) finishNew(ctx context.Context, l loc, mode uint32, out *fuse.EntryOut, undo func()) (*gofs.Inode, syscall.Errno) {
	var st syscall.Stat_t
	if _, err := statAt(l.d.fd, l.entry, &st); err != nil {
		undo()
		return nil, n.r.errno("lookup", n.ino(), err)
	}
	o, err := ownerOfNew(ctx, l.d.fd, &st, mode)
	if err == nil {
		chmod := func(mode uint32) error { return cipherdir.ChmodAt(l.d.fd, l.entry, mode) }
		if st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
			chmod = nil
		}
		err = o.apply(&st, func(uid, gid int) error { return fchownAt(l.d.fd, l.entry, uid, gid) }, chmod)
	}
	if err != nil {
		undo()
		return nil, n.r.errno("create", n.ino(), err)
	}
	ch, _, errno := n.newChild(ctx, l.d, l.entry, out)
	return ch, errno
}

// Rmdir removes a cipher directory. With encrypted names it holds its ID
// file: the directory must hold nothing else (ENOTEMPTY, changing
// nothing), then the ID goes and the directory after it. Should the
// rmdir still fail (an entry made behind the mount's back in between),
// the ID is written back.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	if n.r.hidden(n, name) {
		return syscall.ENOENT
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return n.r.errno("rmdir", n.ino(), err)
	}
	defer n.r.unlocate(l)
	if !n.r.tree.Encrypted() {
		if err := unix.Unlinkat(l.d.fd, l.entry, unix.AT_REMOVEDIR); err != nil {
			return n.r.errno("rmdir", n.ino(), err)
		}
		n.r.dropChildDir(n, name)
		return 0
	}
	// The victim's handle and ID: the cached ones when the mount has
	// them (rm -r has just listed it), else opened and read here.
	var fd int
	var id []byte
	var idErr error
	if cd := n.r.peekChildDir(n, name); cd != nil {
		defer n.r.putDir(cd)
		fd = cd.fd
		id, idErr = cd.ID(n.r.tree)
	} else {
		if fd, err = cipherdir.OpenDirAt(l.d.fd, l.entry); err != nil {
			return n.r.errno("rmdir", n.ino(), err)
		}
		defer unix.Close(fd)
		id, idErr = n.r.tree.ReadDirID(fd)
	}
	ents, err := cipherdir.ReadDirNames(fd)
	if err != nil {
		return n.r.errno("rmdir", n.ino(), err)
	}
	for _, e := range ents {
		if e.Name != cipherdir.DirIDName {
			return syscall.ENOTEMPTY
		}
	}
	if len(ents) > 0 {
		if err := unix.Unlinkat(fd, cipherdir.DirIDName, 0); err != nil && err != syscall.ENOENT {
			return n.r.errno("rmdir", n.ino(), err)
		}
	}
	if err := unix.Unlinkat(l.d.fd, l.entry, unix.AT_REMOVEDIR); err != nil {
		if idErr == nil {
			if werr := cipherdir.WriteDirID(fd, id); werr != nil {
				n.r.log.Warn("cannot restore a directory ID after a failed rmdir", "op", "rmdir", "inode", n.ino(), "err", werr.Error())
			}
		}
		return n.r.errno("rmdir", n.ino(), err)
	}
	n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
	n.r.dropChildDir(n, name)
	return 0
}

// emptyVictimDir readies the target l of a rename: when it is a directory
// of an encrypted-names filesystem holding nothing but its ID file, the
// ID file is removed so the kernel sees it empty. finish(false) puts it
// back (the rename failed); finish(true) only lets go. Anything else is
// left to renameat2.
func (r *root) emptyVictimDir(l loc, exchange bool) (finish func(renamed bool), err error) {
	restore := func(bool) {}
	if exchange || !r.tree.Encrypted() {
		return restore, nil
	}
	var st syscall.Stat_t
	if _, err := statAt(l.d.fd, l.entry, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return restore, nil
	}
	fd, err := cipherdir.OpenDirAt(l.d.fd, l.entry)
	if err != nil {
		return restore, nil
	}
	ents, err := cipherdir.ReadDirNames(fd)
	if err != nil || len(ents) != 1 || ents[0].Name != cipherdir.DirIDName {
		unix.Close(fd)
		if err == nil && len(ents) > 1 {
			return restore, syscall.ENOTEMPTY
		}
		return restore, nil
	}
	id, idErr := r.tree.ReadDirID(fd)
	if err := unix.Unlinkat(fd, cipherdir.DirIDName, 0); err != nil {
		unix.Close(fd)
		return restore, err
	}
	return func(renamed bool) {
		if !renamed && idErr == nil {
			if err := cipherdir.WriteDirID(fd, id); err != nil {
				r.log.Warn("cannot restore a directory ID after a failed rename", "op", "rename", "err", err.Error())
			}
		}
		unix.Close(fd)
	}, nil
}

// dropChildDir closes the handle of directory node name in n, removed.
func (r *root) dropChildDir(n *node, name string) {
	if ch := n.GetChild(name); ch != nil {
		if cn, ok := ch.Operations().(*node); ok {
			r.dropDir(cn)
		}
	}
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if n.r.hidden(n, name) {
		return syscall.ENOENT
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return n.r.errno("unlink", n.ino(), err)
	}
	defer n.r.unlocate(l)
	id, key, doomed := n.r.doomedFileID(l)
	if err := unix.Unlinkat(l.d.fd, l.entry, 0); err != nil {
		return n.r.errno("unlink", n.ino(), err)
	}
	n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
	if doomed {
		n.r.forget(ctx, "unlink", id, key)
	}
	return 0
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok || np.r != n.r {
		return syscall.EXDEV
	}
	if n.r.hidden(n, name) {
		return syscall.ENOENT
	}
	if n.r.hidden(np, newName) {
		return syscall.EPERM
	}
	l1, err := n.r.locateChild(n, name)
	if err != nil {
		return n.r.errno("rename", n.ino(), err)
	}
	defer n.r.unlocate(l1)
	l2, err := n.r.locateChild(np, newName)
	if err != nil {
		return n.r.errno("rename", n.ino(), err)
	}
	defer n.r.unlocate(l2)
	var id crypto.FileID
	var key fileKey
	doomed := false
	exchange := flags&unix.RENAME_EXCHANGE != 0
	if !exchange {
		id, key, doomed = n.r.doomedFileID(l2)
		if doomed {
			// A rename onto another link of the same inode removes nothing.
			var st syscall.Stat_t
			if _, err := statAt(l1.d.fd, l1.entry, &st); err == nil && uint64(st.Dev) == key.dev && st.Ino == key.ino {
				doomed = false
			}
		}
	}
	// With RENAME_EXCHANGE both entries keep their names (and side
	// files); otherwise the new name's side file is made first and the
	// old one's removed after.
	if !exchange {
		if err := n.r.tree.PrepareEntry(l2.d.fd, l2.entry, l2.encoded); err != nil {
			return n.r.errno("rename", n.ino(), err)
		}
	}
	// A directory renamed over an empty one: with encrypted names the
	// victim still holds its ID file, which must go first (and come
	// back if the rename fails).
	finish, err := n.r.emptyVictimDir(l2, exchange)
	if err != nil {
		return n.r.errno("rename", n.ino(), err)
	}
	if err := unix.Renameat2(l1.d.fd, l1.entry, l2.d.fd, l2.entry, uint(flags)); err != nil {
		finish(false)
		if !exchange {
			// A side file made for a target that still does not exist
			// would be an orphan.
			var st syscall.Stat_t
			if _, serr := statAt(l2.d.fd, l2.entry, &st); serr == syscall.ENOENT {
				n.r.tree.RemoveEntrySide(l2.d.fd, l2.entry, l2.encoded)
			}
		}
		return n.r.errno("rename", n.ino(), err)
	}
	finish(true)
	if ch := np.GetChild(newName); ch != nil && !exchange {
		if cn, ok := ch.Operations().(*node); ok && cn.StableAttr().Mode == syscall.S_IFDIR {
			n.r.dropDir(cn) // the directory renamed over, now gone
		}
	}
	if !exchange && (l1.d != l2.d || l1.entry != l2.entry) {
		n.r.tree.RemoveEntrySide(l1.d.fd, l1.entry, l1.encoded)
	}
	if doomed {
		n.r.forget(ctx, "rename", id, key)
	}
	return 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.r.hidden(n, name) {
		return nil, syscall.EPERM
	}
	stored, err := n.r.tree.EncryptTarget([]byte(target))
	if err != nil {
		return nil, n.r.errno("symlink", n.ino(), err)
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return nil, n.r.errno("symlink", n.ino(), err)
	}
	defer n.r.unlocate(l)
	if err := n.r.tree.PrepareEntry(l.d.fd, l.entry, l.encoded); err != nil {
		return nil, n.r.errno("symlink", n.ino(), err)
	}
	if err := unix.Symlinkat(string(stored), l.d.fd, l.entry); err != nil {
		if err != syscall.EEXIST {
			n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
		}
		return nil, n.r.errno("symlink", n.ino(), err)
	}
	return n.finishNew(ctx, l, 0o777, out, func() {
		unix.Unlinkat(l.d.fd, l.entry, 0)
		n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
	})
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	l, err := n.r.locate(n)
	if err != nil {
		return nil, n.r.errno("readlink", n.ino(), err)
	}
	defer n.r.unlocate(l)
	stored, err := cipherdir.Readlinkat(l.d.fd, l.entry)
	if err != nil {
		return nil, n.r.errno("readlink", n.ino(), err)
	}
	target, err := n.r.tree.DecryptTarget(stored)
	if err != nil {
		n.r.log.Warn("symlink target failed authentication", "op", "readlink", "inode", n.ino(), "err", err.Error())
		return nil, n.r.errno("readlink", n.ino(), err)
	}
	return target, 0
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok || t.r != n.r {
		return nil, syscall.EXDEV
	}
	if n.r.hidden(n, name) {
		return nil, syscall.EPERM
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return nil, n.r.errno("link", n.ino(), err)
	}
	defer n.r.unlocate(l)
	if err := n.r.tree.PrepareEntry(l.d.fd, l.entry, l.encoded); err != nil {
		return nil, n.r.errno("link", n.ino(), err)
	}
	fail := func(err error) (*gofs.Inode, syscall.Errno) {
		if err != syscall.EEXIST {
			n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
		}
		return nil, n.r.errno("link", n.ino(), err)
	}
	if _, parent := t.Parent(); parent == nil {
		// An O_TMPFILE file being linked into place: its only name
		// is its fd.
		of := (*openFile)(nil)
		if t.tmp != nil {
			of = n.r.files.peek(*t.tmp)
		}
		if of == nil {
			return fail(syscall.ENOENT)
		}
		of.mu.Lock()
		err := linkFd(int(of.f.Fd()), l.d.fd, l.entry)
		if err == nil {
			of.tmp = false
		}
		of.mu.Unlock()
		n.r.release(of)
		if err != nil {
			return fail(err)
		}
	} else {
		tl, err := n.r.locate(t)
		if err != nil {
			return fail(err)
		}
		err = unix.Linkat(tl.d.fd, tl.entry, l.d.fd, l.entry, 0)
		n.r.unlocate(tl)
		if err != nil {
			return fail(err)
		}
	}
	ch, _, errno := n.newChild(ctx, l.d, l.entry, out)
	return ch, errno
}

// linkFd gives the open, unnamed file fd the name entry in dirfd, by the
// fd itself (AT_EMPTY_PATH): never through a path.
func linkFd(fd, dirfd int, entry string) error {
	return unix.Linkat(fd, "", dirfd, entry, unix.AT_EMPTY_PATH)
}

// canLinkByFd reports whether linkFd can work for this process: Linux
// allows linkat(AT_EMPTY_PATH) with CAP_DAC_READ_SEARCH (a root mount),
// and since 6.10 also for a file the caller opened itself with its own
// credentials (every O_TMPFILE file the mount makes). Elsewhere Tmpfile
// answers EOPNOTSUPP, as a filesystem without O_TMPFILE does, and
// applications fall back to a named temporary file.
var canLinkByFd = sync.OnceValue(func() bool {
	if runsAsRoot {
		return true
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 6, 10)
})

// kernelAtLeast reports whether a kernel release string ("6.18.0-1-amd64")
// is major.minor or later.
func kernelAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if n.r.hidden(n, name) {
		return nil, syscall.EPERM
	}
	switch mode & syscall.S_IFMT {
	case syscall.S_IFIFO, syscall.S_IFSOCK:
	case syscall.S_IFREG:
		// An empty cipher file: it reads as empty and gets its
		// header on the first writable open.
	case syscall.S_IFCHR, syscall.S_IFBLK:
		if !runsAsRoot {
			return nil, syscall.EPERM
		}
	default:
		return nil, syscall.EINVAL
	}
	l, err := n.r.locateChild(n, name)
	if err != nil {
		return nil, n.r.errno("mknod", n.ino(), err)
	}
	defer n.r.unlocate(l)
	if err := n.r.tree.PrepareEntry(l.d.fd, l.entry, l.encoded); err != nil {
		return nil, n.r.errno("mknod", n.ino(), err)
	}
	if err := unix.Mknodat(l.d.fd, l.entry, mode, int(rdev)); err != nil {
		if err != syscall.EEXIST {
			n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
		}
		return nil, n.r.errno("mknod", n.ino(), err)
	}
	return n.finishNew(ctx, l, mode, out, func() {
		unix.Unlinkat(l.d.fd, l.entry, 0)
		n.r.tree.RemoveEntrySide(l.d.fd, l.entry, l.encoded)
	})
}
