package fs

import (
	"context"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// Extended attributes: only user.* on regular files, stored on the cipher
// file under the same name with the value sealed by the file's content
// cipher (format.md, Extended attributes). Other namespaces are not
// supported; directories and symlinks carry no user xattrs in version 1.

const userPrefix = "user."

func (n *node) isReg() bool { return n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFREG }

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if !strings.HasPrefix(attr, userPrefix) {
		return 0, syscall.ENODATA
	}
	if !n.isReg() {
		return 0, syscall.ENOTSUP
	}
	of, err := n.r.acquireNode(ctx, n, false)
	if err != nil {
		return 0, n.r.errno("getxattr", n.ino(), err)
	}
	defer n.r.release(of)
	of.mu.RLock()
	defer of.mu.RUnlock()
	if of.cc == nil {
		return 0, syscall.ENODATA
	}
	sealed, err := cipherdir.GetXattrFd(int(of.f.Fd()), attr)
	if err != nil {
		return 0, n.r.errno("getxattr", n.ino(), err)
	}
	value, err := of.cc.OpenXattr(attr, sealed)
	if err != nil {
		n.r.log.Warn("xattr failed authentication", "op", "getxattr", "inode", of.key.ino, "file_id", of.fileID())
		return 0, n.r.errno("getxattr", n.ino(), err)
	}
	if len(dest) == 0 {
		return uint32(len(value)), 0
	}
	if len(dest) < len(value) {
		return uint32(len(value)), syscall.ERANGE
	}
	return uint32(copy(dest, value)), 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if !strings.HasPrefix(attr, userPrefix) || !n.isReg() {
		return syscall.ENOTSUP
	}
	if n.r.ro {
		return syscall.EROFS
	}
	of, err := n.r.acquireNode(ctx, n, true)
	if err != nil {
		return n.r.errno("setxattr", n.ino(), err)
	}
	defer n.r.release(of)
	of.mu.RLock()
	defer of.mu.RUnlock()
	sealed, err := of.cc.SealXattr(attr, data)
	if err != nil {
		return n.r.errno("setxattr", n.ino(), err)
	}
	return n.r.errno("setxattr", n.ino(), unix.Fsetxattr(int(of.f.Fd()), attr, sealed, int(flags)))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if !strings.HasPrefix(attr, userPrefix) {
		return syscall.ENODATA
	}
	if !n.isReg() {
		return syscall.ENOTSUP
	}
	if n.r.ro {
		return syscall.EROFS
	}
	return n.r.errno("removexattr", n.ino(), n.r.withRegular(n, func(p string) error {
		return unix.Removexattr(p, attr)
	}))
}

// withRegular runs fn with a /proc path of n's cipher file, reached
// through an O_PATH handle that is checked to be a regular file (so the
// path names that inode and nothing a symlink points to). No key is
// needed: listing and removing attributes touch no content.
func (r *root) withRegular(n *node, fn func(p string) error) error {
	l, err := r.locate(n)
	if err != nil {
		return err
	}
	defer r.unlocate(l)
	fd, err := cipherdir.OpenAt(l.d.fd, l.entry, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return syscall.ENOTSUP
	}
	return fn(cipherdir.ProcPath(fd))
}

// acquireNode is acquire for the regular file n.
func (r *root) acquireNode(ctx context.Context, n *node, write bool) (*openFile, error) {
	l, err := r.locate(n)
	if err != nil {
		return nil, err
	}
	defer r.unlocate(l)
	return r.acquire(ctx, l, write)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if !n.isReg() {
		return 0, 0
	}
	var names []string
	err := n.r.withRegular(n, func(p string) error {
		var err error
		names, err = cipherdir.ListXattrPath(p)
		return err
	})
	if err != nil {
		return 0, n.r.errno("listxattr", n.ino(), err)
	}
	var list []byte
	for _, name := range names {
		if strings.HasPrefix(name, userPrefix) {
			list = append(list, name...)
			list = append(list, 0)
		}
	}
	if len(dest) == 0 {
		return uint32(len(list)), 0
	}
	if len(dest) < len(list) {
		return uint32(len(list)), syscall.ERANGE
	}
	return uint32(copy(dest, list)), 0
}
