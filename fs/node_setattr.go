package fs

// node_setattr.go: setattr (chmod, chown, utimes, truncate, kill-suid),
// through an open handle's fd when there is one, else by name in the
// parent's directory handle, and truncate of the plain content.

import (
	"context"
	"errors"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	// The attributes we answer are those after the change: the kernel
	// may keep them as long as any (go-fuse sets no timeout on SETATTR
	// replies, so a stat right after chmod, chown or utimes would be
	// another round trip).
	defer out.SetTimeout(attrTimeout)
	h, _ := f.(*handle)
	if h == nil && n.StableAttr().Mode == syscall.S_IFREG {
		// fchmod, fchown and futimens come without a handle; on an
		// unlinked file the name is gone, but the inode may be open.
		var st syscall.Stat_t
		if err := n.r.lstatNode(n, &st); errors.Is(err, syscall.ENOENT) {
			if of := n.r.peekIno(n.ino()); of != nil {
				defer n.r.release(of)
				h = &handle{r: n.r, of: of}
			}
		}
	}
	return n.r.setattr(ctx, n, h, in, out)
}

// setattr changes attributes through the handle's fd when there is one
// (the file may be unlinked), else by name in the parent's handle, never
// following a symlink: a symlink's mode cannot change (EOPNOTSUPP), its
// owner and times are its own.
func (r *root) setattr(ctx context.Context, n *node, h *handle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if r.ro {
		return syscall.EROFS
	}
	var ino uint64
	var l loc
	if n != nil {
		ino = n.ino()
		if h == nil {
			var err error
			if l, err = r.locate(n); err != nil {
				return r.errno("setattr", ino, err)
			}
			defer r.unlocate(l)
		}
	} else {
		ino = h.of.key.ino
	}
	// withFd runs fn on the handle's cipher fd, or returns false.
	withFd := func(fn func(fd int) error) (bool, error) {
		if h == nil {
			return false, nil
		}
		h.of.mu.RLock()
		defer h.of.mu.RUnlock()
		return true, fn(int(h.of.f.Fd()))
	}
	if mode, ok := in.GetMode(); ok {
		done, err := withFd(func(fd int) error { return syscall.Fchmod(fd, mode&0o7777) })
		if !done {
			err = cipherdir.ChmodAt(l.d.fd, l.entry, mode&0o7777)
		}
		if err != nil {
			return r.errno("setattr", ino, err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		done, err := withFd(func(fd int) error { return syscall.Fchown(fd, u, g) })
		if !done {
			err = fchownAt(l.d.fd, l.entry, u, g)
		}
		if err != nil {
			return r.errno("setattr", ino, err)
		}
	}
	// Truncate before setting times, so an explicit mtime is not
	// clobbered by the truncate.
	if size, ok := in.GetSize(); ok {
		if size > 1<<62 {
			return syscall.EFBIG
		}
		of := (*openFile)(nil)
		if h != nil {
			of = h.of
			if !of.writable {
				return syscall.EBADF
			}
		} else {
			var err error
			if of, err = r.acquire(ctx, l, true); err != nil {
				return r.errno("truncate", ino, err)
			}
			defer r.release(of)
		}
		if errno := r.truncate(of, int64(size)); errno != 0 {
			return errno
		}
	}
	// A truncate by an unprivileged user, or a chown, clears set-ID bits:
	// with CAP_HANDLE_KILLPRIV_V2 the kernel asks us to.
	if err := r.killPrivOnSetattr(ctx, in, withFd, l); err != nil {
		return r.errno("setattr", ino, err)
	}
	modeChanged := in.Valid&(fuse.FATTR_MODE|fuse.FATTR_KILL_SUIDGID|fuse.FATTR_UID|fuse.FATTR_GID) != 0
	if in.Valid&(fuse.FATTR_ATIME|fuse.FATTR_MTIME) != 0 {
		ts := []unix.Timespec{utime(in, fuse.FATTR_ATIME, fuse.FATTR_ATIME_NOW, in.Atime, in.Atimensec),
			utime(in, fuse.FATTR_MTIME, fuse.FATTR_MTIME_NOW, in.Mtime, in.Mtimensec)}
		done, err := withFd(func(fd int) error {
			return unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
		})
		if !done {
			err = utimesAt(l.d.fd, l.entry, ts)
		}
		if err != nil {
			return r.errno("setattr", ino, err)
		}
	}
	if h != nil {
		errno := h.Getattr(ctx, out)
		if errno == 0 && modeChanged {
			h.of.suid.Store(hasSetID(out.Attr.Mode))
		}
		return errno
	}
	var st syscall.Stat_t
	if _, err := statAt(l.d.fd, l.entry, &st); err != nil {
		return r.errno("setattr", ino, err)
	}
	r.fillAttr(&st, &out.Attr)
	if modeChanged && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
		if of := r.files.peek(fileKey{uint64(st.Dev), st.Ino}); of != nil {
			of.suid.Store(hasSetID(st.Mode))
			r.release(of)
		}
	}
	return 0
}

// fchownAt changes the owner of entry in dirfd ("." is dirfd itself)
// without following a symlink.
func fchownAt(dirfd int, entry string, uid, gid int) error {
	if entry == "." {
		return unix.Fchownat(dirfd, "", uid, gid, unix.AT_EMPTY_PATH)
	}
	return unix.Fchownat(dirfd, entry, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
}

// utimesAt sets the times of entry in dirfd ("." is dirfd itself)
// without following a symlink.
func utimesAt(dirfd int, entry string, ts []unix.Timespec) error {
	if entry == "." {
		return unix.UtimesNanoAt(dirfd, "", ts, unix.AT_EMPTY_PATH)
	}
	return unix.UtimesNanoAt(dirfd, entry, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// utime is one utimensat(2) time: given, UTIME_NOW or UTIME_OMIT.
func utime(in *fuse.SetAttrIn, set, now uint32, sec uint64, nsec uint32) unix.Timespec {
	switch {
	case in.Valid&set == 0:
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	case in.Valid&now != 0:
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	default:
		return unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
	}
}

// truncate sets the plain size under the content lock.
func (r *root) truncate(of *openFile, size int64) syscall.Errno {
	of.mu.Lock()
	defer of.mu.Unlock()
	if !of.writable {
		return syscall.EBADF
	}
	if of.cf == nil {
		if size == 0 {
			return 0
		}
		return syscall.EIO
	}
	if err := of.cf.Truncate(size); err != nil {
		r.logContentError("truncate", of, err)
		return r.errno("truncate", of.key.ino, err)
	}
	return 0
}
