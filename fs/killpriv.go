package fs

// killpriv.go: set-ID bits under FUSE_HANDLE_KILLPRIV_V2.
//
// Mount asks the kernel for CAP_HANDLE_KILLPRIV_V2. The kernel then sets
// SB_NOSEC on the mount and leaves the clearing of set-user-ID and
// set-group-ID bits to us, flagging each request that must clear them:
//   - WRITE with FUSE_WRITE_KILL_SUIDGID: the writer lacks CAP_FSETID;
//   - SETATTR with FATTR_KILL_SUIDGID: a truncate (open(O_TRUNC)
//     included: go-fuse does not ask for atomic O_TRUNC, so the kernel
//     sends it as a SETATTR and never sets FUSE_OPEN_KILL_SUIDGID) by a
//     caller without CAP_FSETID, or any chown of a non-directory.
// What a flagged request drops is what Linux drops on a local filesystem
// (fs/attr.c setattr_should_drop_suidgid and setattr_should_drop_sgid,
// fs/open.c chown_common): S_ISUID always; S_ISGID when the file is
// group-executable, or when the caller is neither in the file's group nor
// holds CAP_FSETID (for a write, truncate or O_TRUNC the kernel's flag
// already says it does not; for a chown, whose flag the kernel sets for
// every caller, root counts as holding it). File capabilities need no
// clearing: the plain view has none (only user.* attributes pass,
// xattr.go).
//
// What KILLPRIV_V2 buys: the kernel no longer looks up security.capability
// (a GETXATTR round trip) before every write(2), only before the first
// write after it (re)loads an inode's attributes (which clears the inode's
// S_NOSEC, fs/fuse/inode.c fuse_change_attributes_common; a new file's
// first write is one), and the GETATTR it would send before clearing the
// bits itself on chown and truncate. What it cannot spare: that first
// write's lookup, made by the VFS (fs/inode.c file_remove_privs ->
// security_inode_need_killpriv), and the one before every chown of a
// non-directory (fs/attr.c notify_change, ATTR_KILL_PRIV, no S_NOSEC
// test). Only a filesystem that answers GETXATTR with ENOSYS escapes them,
// and the kernel then sends no GETXATTR at all, user.* included: that is
// --no-xattr (docs/performance.md, "security.capability").

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// killPrivFS passes a WRITE's FUSE_WRITE_KILL_SUIDGID on to the node
// tree, which go-fuse's bridge drops: the flag is noted under the
// request's cancel channel (one per request in flight, and the same
// channel the bridge puts in the request's fuse.Context) for
// handle.Write to find (killPrivOnWrite). SETATTR's FATTR_KILL_SUIDGID
// reaches the node tree as it is.
type killPrivFS struct {
	fuse.RawFileSystem
	kills sync.Map // <-chan struct{} -> struct{}: WRITEs in flight that must clear set-ID bits
}

func (k *killPrivFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID == 0 {
		return k.RawFileSystem.Write(cancel, in, data)
	}
	k.kills.Store(cancel, struct{}{})
	defer k.kills.Delete(cancel)
	return k.RawFileSystem.Write(cancel, in, data)
}

func (k *killPrivFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID == 0 {
		return k.RawFileSystem.Writev(cancel, in, data)
	}
	k.kills.Store(cancel, struct{}{})
	defer k.kills.Delete(cancel)
	return k.RawFileSystem.Writev(cancel, in, data)
}

// writeKills reports whether the WRITE that ctx belongs to carries
// FUSE_WRITE_KILL_SUIDGID.
func (r *root) writeKills(ctx context.Context) bool {
	c, ok := ctx.(*fuse.Context)
	if !ok || r.killPriv == nil {
		return false
	}
	_, ok = r.killPriv.kills.Load(c.Cancel)
	return ok
}

// hasSetID reports whether mode has a set-ID bit that a flagged request
// may have to clear (which ones, keptSetID decides).
func hasSetID(mode uint32) bool {
	return mode&(syscall.S_ISUID|syscall.S_ISGID) != 0
}

// keptSetID returns the permission bits of mode (file group gid) that a
// flagged write, truncate or chown by q leaves: S_ISUID goes; S_ISGID
// goes when the file is group-executable, or when q is neither in group
// gid nor fsetid (holds CAP_FSETID). q nil: a caller unknown, in no group.
func keptSetID(mode, gid uint32, q *requester, fsetid bool) uint32 {
	mode &= 0o7777
	if mode&syscall.S_ISGID != 0 && (mode&syscall.S_IXGRP != 0 || !fsetid && (q == nil || !q.inGroup(gid))) {
		mode &^= syscall.S_ISGID
	}
	return mode &^ syscall.S_ISUID
}

// killSetIDFd clears what keptSetID drops on the cipher file fd and
// returns the mode it leaves.
func killSetIDFd(fd int, q *requester, fsetid bool) (uint32, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR || st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		return st.Mode, nil
	}
	mode := keptSetID(st.Mode, st.Gid, q, fsetid)
	if mode == st.Mode&0o7777 {
		return st.Mode, nil
	}
	return st.Mode&syscall.S_IFMT | mode, syscall.Fchmod(fd, mode)
}

// killPrivOnWrite clears the set-ID bits a flagged WRITE drops, after the
// content is written (handle.Write, with of.mu held).
func (r *root) killPrivOnWrite(ctx context.Context, of *openFile) syscall.Errno {
	if !of.suid.Load() || !r.writeKills(ctx) {
		return 0
	}
	q, _ := requesterOf(ctx)
	mode, err := killSetIDFd(int(of.f.Fd()), q, false)
	if err != nil {
		return r.errno("write", of.key.ino, err)
	}
	of.suid.Store(hasSetID(mode))
	return 0
}

// killPrivOnSetattr clears the set-ID bits a SETATTR flagged
// FATTR_KILL_SUIDGID drops: through the handle's cipher fd when withFd
// has one, else by name (l). A chown's flag comes for every caller, so
// there root keeps what CAP_FSETID keeps.
func (r *root) killPrivOnSetattr(ctx context.Context, in *fuse.SetAttrIn, withFd func(func(fd int) error) (bool, error), l loc) error {
	if in.Valid&fuse.FATTR_KILL_SUIDGID == 0 {
		return nil
	}
	q, _ := requesterOf(ctx)
	fsetid := in.Valid&(fuse.FATTR_UID|fuse.FATTR_GID) != 0 && q != nil && q.uid == 0
	done, err := withFd(func(fd int) error {
		_, err := killSetIDFd(fd, q, fsetid)
		return err
	})
	if done {
		return err
	}
	var st syscall.Stat_t
	if _, err := statAt(l.d.fd, l.entry, &st); err != nil {
		return err
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR || st.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		return nil
	}
	if mode := keptSetID(st.Mode, st.Gid, q, fsetid); mode != st.Mode&0o7777 {
		return cipherdir.ChmodAt(l.d.fd, l.entry, mode)
	}
	return nil
}
