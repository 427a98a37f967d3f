package fs

import (
	"context"
	"errors"
	"io"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// handle is one open(2) of a plain file. The content state is the
// open-file entry shared by every handle of the inode; the handle keeps
// only what open(2) said: may it write, does it append.
//
// It deliberately implements no FilePassthroughFder (the kernel would read
// the cipher file directly) and no lock methods (the kernel then keeps
// POSIX and flock locks itself).
type handle struct {
	r      *root
	of     *openFile
	write  bool
	append bool
	// keepCache: open answered FOPEN_KEEP_CACHE (the cipher file is as
	// this mount left it).
	keepCache bool
}

var (
	_ = (gofs.FileReader)((*handle)(nil))
	_ = (gofs.FileWriter)((*handle)(nil))
	_ = (gofs.FileFlusher)((*handle)(nil))
	_ = (gofs.FileFsyncer)((*handle)(nil))
	_ = (gofs.FileReleaser)((*handle)(nil))
	_ = (gofs.FileGetattrer)((*handle)(nil))
	_ = (gofs.FileSetattrer)((*handle)(nil))
	_ = (gofs.FileLseeker)((*handle)(nil))
	_ = (gofs.FileAllocater)((*handle)(nil))
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	of := h.of
	of.mu.RLock()
	defer of.mu.RUnlock()
	if of.cf == nil {
		return fuse.ReadResultData(nil), 0
	}
	n, err := of.cf.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		// Never hand out the good bytes before a bad chunk as if the
		// read were whole: the caller gets EIO for the range.
		h.r.logContentError("read", of, err)
		return nil, h.r.errno("read", of.key.ino, err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.r.ro {
		return 0, syscall.EROFS
	}
	of := h.of
	of.mu.Lock()
	defer of.mu.Unlock()
	if !of.writable || of.cf == nil {
		return 0, syscall.EBADF
	}
	if h.append {
		size, err := of.cf.PlainSize()
		if err != nil && !errors.Is(err, crypto.ErrBadSize) {
			return 0, h.r.errno("write", of.key.ino, err)
		}
		off = size
	}
	n, err := of.cf.WriteAt(data, off)
	if err != nil {
		h.r.logContentError("write", of, err)
		return uint32(n), h.r.errno("write", of.key.ino, err)
	}
	if errno := h.r.killPrivOnWrite(ctx, of); errno != 0 {
		return uint32(n), errno
	}
	return uint32(n), 0
}

// Flush has nothing to do: writes reach the cipher file before Write
// returns, and their errors are returned there; opens answer
// FOPEN_NOFLUSH, so the kernel does not even ask (root.openFlags).
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	of := h.of
	of.mu.RLock()
	defer of.mu.RUnlock()
	return h.r.errno("fsync", of.key.ino, of.f.Sync())
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.r.release(h.of)
	return 0
}

func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	of := h.of
	of.mu.RLock()
	defer of.mu.RUnlock()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(of.f.Fd()), &st); err != nil {
		return h.r.errno("getattr", of.key.ino, err)
	}
	out.FromStat(&st)
	out.Size = uint64(h.r.plainSizeOf(st.Size))
	return 0
}

func (h *handle) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return h.r.setattr(ctx, nil, h, in, out)
}

// Lseek answers SEEK_DATA and SEEK_HOLE simply: data everywhere below the
// plain size, the hole at EOF. (Holes inside a file read as zeros either
// way; reporting them as data is always allowed.)
func (h *handle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	of := h.of
	of.mu.RLock()
	size := int64(0)
	if of.cf != nil {
		var err error
		size, err = of.cf.PlainSize()
		if err != nil && !errors.Is(err, crypto.ErrBadSize) {
			of.mu.RUnlock()
			return 0, h.r.errno("lseek", of.key.ino, err)
		}
	}
	of.mu.RUnlock()
	switch whence {
	case unix.SEEK_DATA:
		if int64(off) >= size {
			return 0, syscall.ENXIO
		}
		return off, 0
	case unix.SEEK_HOLE:
		if int64(off) > size {
			return 0, syscall.ENXIO
		}
		return uint64(size), 0
	}
	return 0, syscall.EINVAL
}

// Allocate supports mode 0 (grow the file to off+size when it is
// shorter) and FALLOC_FL_KEEP_SIZE (preallocate the cipher chunks of the
// range); other modes would need chunk rewrites and are EOPNOTSUPP.
func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if h.r.ro {
		return syscall.EROFS
	}
	of := h.of
	if off > 1<<62 || size > 1<<62 {
		return syscall.EFBIG
	}
	end := int64(off + size)
	switch mode {
	case 0:
		of.mu.Lock()
		defer of.mu.Unlock()
		if !of.writable || of.cf == nil {
			return syscall.EBADF
		}
		cur, err := of.cf.PlainSize()
		if err != nil && !errors.Is(err, crypto.ErrBadSize) {
			return h.r.errno("allocate", of.key.ino, err)
		}
		if end <= cur {
			return 0
		}
		if err := of.cf.Truncate(end); err != nil {
			h.r.logContentError("allocate", of, err)
			return h.r.errno("allocate", of.key.ino, err)
		}
		return 0
	case unix.FALLOC_FL_KEEP_SIZE:
		if size == 0 {
			return syscall.EINVAL
		}
		l := h.r.layout
		cipherOff := l.CipherChunkOffset(l.ChunkIndex(int64(off)))
		cipherEnd := l.CipherChunkOffset(l.ChunkIndex(end-1) + 1)
		of.mu.RLock()
		defer of.mu.RUnlock()
		err := unix.Fallocate(int(of.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, cipherOff, cipherEnd-cipherOff)
		return h.r.errno("allocate", of.key.ino, err)
	}
	return syscall.EOPNOTSUPP
}

// logContentError logs a chunk that failed authentication: inode, file ID
// and chunk index, never content or names.
func (r *root) logContentError(op string, of *openFile, err error) {
	var ce *cipherfile.ChunkError
	if errors.As(err, &ce) {
		r.log.Warn("chunk failed authentication", "op", op, "inode", of.key.ino, "file_id", of.fileID(), "chunk", ce.Index, "err", err.Error())
	}
}
