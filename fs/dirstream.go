package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// dirStream lists a cipher directory as plain names: kmsfs's own entries
// are left out and every other name is mapped by the tree (decrypted with
// encrypted names). A name that does not map (moved from another
// directory, damaged, a long name without its side file) is left out and
// logged: never shown as garbage, never as another file.
// Offsets are the cipher directory's, so seekdir works as it does there.
//
// It is also the directory's open handle: fstat of its own fd answers
// getattr for a directory renamed over or removed while open.
type dirStream struct {
	r       *root
	fd      int // for fstat, fsync and side files; inner owns its own
	ino     uint64
	id      []byte // the directory's ID (encrypted names)
	inner   gofs.DirStream
	root    bool
	pending *fuse.DirEntry
	errno   syscall.Errno
}

var (
	_ = (gofs.FileReaddirenter)((*dirStream)(nil))
	_ = (gofs.FileSeekdirer)((*dirStream)(nil))
	_ = (gofs.FileReleasedirer)((*dirStream)(nil))
	_ = (gofs.FileFsyncdirer)((*dirStream)(nil))
	_ = (gofs.FileGetattrer)((*dirStream)(nil))
)

// openDir opens the cipher directory behind handle dh for listing.
func openDir(r *root, dh *dirHandle, root bool, ino uint64) (*dirStream, error) {
	id, err := dh.ID(r.tree)
	if err != nil {
		r.log.Warn("directory ID unreadable", "op", "opendir", "inode", ino, "err", err.Error())
		return nil, err
	}
	fd, err := cipherdir.OpenAt(dh.fd, ".", syscall.O_DIRECTORY|syscall.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	fd2, err := syscall.Dup(fd)
	if err != nil {
		syscall.Close(fd)
		return nil, err
	}
	syscall.CloseOnExec(fd2)
	inner, errno := gofs.NewLoopbackDirStreamFd(fd)
	if errno != 0 {
		syscall.Close(fd)
		syscall.Close(fd2)
		return nil, errno
	}
	return &dirStream{r: r, fd: fd2, ino: ino, id: id, inner: inner, root: root}, nil
}

func (d *dirStream) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !d.HasNext() {
		return nil, 0
	}
	e, errno := d.Next()
	if errno != 0 {
		return nil, errno
	}
	return &e, 0
}

func (d *dirStream) Releasedir(ctx context.Context, flags uint32) {
	d.inner.Close()
	syscall.Close(d.fd)
}

func (d *dirStream) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.r.errno("fsyncdir", 0, syscall.Fsync(d.fd))
}

func (d *dirStream) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(d.fd, &st); err != nil {
		return d.r.errno("getattr", 0, err)
	}
	d.r.fillAttr(&st, &out.Attr)
	return 0
}

func (d *dirStream) HasNext() bool {
	for d.pending == nil && d.errno == 0 {
		if !d.inner.HasNext() {
			return false
		}
		e, errno := d.inner.Next()
		if errno != 0 {
			d.errno = errno
			break
		}
		name, own, err := d.r.tree.PlainName(d.fd, d.id, e.Name, d.root)
		if own {
			continue
		}
		if err != nil {
			d.r.log.Warn("entry name does not decrypt; left out of the listing", "op", "readdir", "inode", d.ino, "entry_inode", e.Ino, "err", err.Error())
			continue
		}
		e.Name = name
		d.pending = &e
	}
	return true
}

func (d *dirStream) Next() (fuse.DirEntry, syscall.Errno) {
	if !d.HasNext() {
		return fuse.DirEntry{}, syscall.EIO
	}
	if d.errno != 0 {
		errno := d.errno
		d.errno = 0
		return fuse.DirEntry{}, errno
	}
	e := *d.pending
	d.pending = nil
	return e, 0
}

func (d *dirStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.pending, d.errno = nil, 0
	if s, ok := d.inner.(gofs.FileSeekdirer); ok {
		return s.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}
