package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirStream lists a cipher directory as plain names: kmsfs's own entries
// in the root are left out and every other name goes through plainName.
// Offsets are the cipher directory's, so seekdir works as it does there.
//
// It is also the directory's open handle: fstat of its own fd answers
// getattr for a directory renamed over or removed while open.
type dirStream struct {
	r       *root
	fd      int // for fstat and fsync; inner owns its own
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

// openDir opens the cipher directory at path for listing.
func openDir(path string, root bool, r *root) (*dirStream, error) {
	fd, err := syscall.Open(path, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
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
	return &dirStream{r: r, fd: fd2, inner: inner, root: root}, nil
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
		if d.root && hiddenNames[e.Name] {
			continue
		}
		name, ok := plainName(e.Name)
		if !ok {
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
