package fs

// perm.go: the permission decisions the mount makes itself, where the
// kernel leaves them to the filesystem, made as Linux makes them for a
// local filesystem (fs/namei.c generic_permission, fs/inode.c
// inode_init_owner and mode_strip_sgid):
//   - an open(O_CREAT) that finds its name taken in the cipher directory
//     (the entry appeared behind the mount while the kernel kept a
//     negative entry for it): the kernel has sent CREATE and takes the
//     reply for a file just made, so it runs no check of its own on it
//     (not even with default_permissions) and no truncate;
//   - the owner, group and set-ID bits of a new entry when the mount runs
//     as root and so makes every cipher entry as root.
// The caller is who the kernel names in the request: its fsuid and fsgid,
// and its supplementary groups read from /proc when a decision needs them.
// Root (uid 0) has the capabilities a root process has on a local
// filesystem (CAP_DAC_OVERRIDE, CAP_FSETID).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// requester is the caller of one FUSE request.
type requester struct {
	uid, gid uint32 // fsuid and fsgid
	pid      uint32 // the calling thread; 0 when outside our pid namespace
	groups   []uint32
	loaded   bool // groups read (or found unreadable)
}

// requesterOf returns the caller of the request ctx belongs to.
func requesterOf(ctx context.Context) (*requester, bool) {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return nil, false
	}
	return &requester{uid: c.Uid, gid: c.Gid, pid: c.Pid}, true
}

// inGroup reports whether gid is the caller's fsgid or one of its
// supplementary groups (in_group_p). Groups that cannot be read (the
// caller is gone, or in another pid namespace) count as none: the answer
// errs towards refusing.
func (q *requester) inGroup(gid uint32) bool {
	if gid == q.gid {
		return true
	}
	if !q.loaded {
		q.loaded = true
		q.groups, _ = procGroups(q.pid)
	}
	for _, g := range q.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// procGroups reads the supplementary groups of thread pid from the
// "Groups:" line of /proc/<pid>/status. The caller is blocked in its
// system call while the request is served, so the thread is the one that
// sent it. (FUSE passes supplementary groups itself only as the one group
// of CREATE_SUPP_GROUP, which go-fuse does not expose.)
func procGroups(pid uint32) ([]uint32, error) {
	if pid == 0 {
		return nil, fmt.Errorf("caller outside the mount's pid namespace")
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil, fmt.Errorf("groups of pid %d: %w", pid, err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		var groups []uint32
		for f := range bytes.FieldsSeq(rest) {
			g, err := strconv.ParseUint(string(f), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("groups of pid %d: %q: %w", pid, f, err)
			}
			groups = append(groups, uint32(g))
		}
		return groups, nil
	}
	return nil, fmt.Errorf("groups of pid %d: no Groups line", pid)
}

// Access bits of mayAccess, as in a mode's permission triplets.
const (
	mayRead  = 4
	mayWrite = 2
)

// mayAccess reports whether the caller may have the access want (mayRead,
// mayWrite or both) to a non-directory of attributes st: the owner's
// bits for its owner, else the group's for a member of its group, else
// the others'; root reads and writes anything (CAP_DAC_OVERRIDE). As in
// the kernel, the groups are looked at only when the group's bits and
// the others' differ on what is asked.
func (q *requester) mayAccess(st *syscall.Stat_t, want uint32) bool {
	if q.uid == 0 {
		return true
	}
	mode := st.Mode
	var bits uint32
	switch {
	case st.Uid == q.uid:
		bits = mode >> 6
	case (mode>>3^mode)&want != 0 && q.inGroup(st.Gid):
		bits = mode >> 3
	default:
		bits = mode
	}
	return bits&want == want
}

// openAccess is the access an open(2) with flags asks for (may_open):
// read, write or both by the access mode, and write for O_TRUNC.
func openAccess(flags uint32) uint32 {
	var want uint32
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		want = mayRead
	case syscall.O_WRONLY:
		want = mayWrite
	default:
		want = mayRead | mayWrite
	}
	if flags&syscall.O_TRUNC != 0 {
		want |= mayWrite
	}
	return want
}

// newOwner is what a new entry becomes: owner and group (-1: as made),
// and the mode bits it must end with.
type newOwner struct {
	uid, gid int
	mode     uint32 // permission, set-ID and sticky bits
}

// ownerOfNew decides the owner, group and mode of an entry of attributes
// st, just made by this process in the directory dirfd for the caller of
// ctx with the requested mode (the caller's umask applied by the kernel).
// The mode keeps the set-ID and sticky bits the cipher directory's
// filesystem gave the entry; the permission bits are the requested ones
// (our own umask undone).
//
// A mount running as root gives the entry to the caller, with the group
// the kernel would choose (inode_init_owner): the directory's group when
// the directory is set-group-ID (the cipher directory's filesystem has
// given it already, and S_ISGID to a new subdirectory), else the caller's
// fsgid. A new non-directory that would be set-group-ID and
// group-executable loses S_ISGID when the caller is neither in its group
// nor root (mode_strip_sgid; recent kernels strip it before the request,
// older ones leave it to the filesystem). An unprivileged mount makes
// entries as its own user, which is the caller's: its filesystem decides.
func ownerOfNew(ctx context.Context, dirfd int, st *syscall.Stat_t, mode uint32) (newOwner, error) {
	o := newOwner{uid: -1, gid: -1, mode: st.Mode&0o7000 | mode&0o777}
	if !runsAsRoot {
		return o, nil
	}
	q, ok := requesterOf(ctx)
	if !ok {
		return o, nil
	}
	var dir syscall.Stat_t
	if err := syscall.Fstat(dirfd, &dir); err != nil {
		return o, fmt.Errorf("stat of the new entry's directory: %w", err)
	}
	gid := q.gid
	if dir.Mode&syscall.S_ISGID != 0 {
		gid = dir.Gid
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR && o.mode&(syscall.S_ISGID|syscall.S_IXGRP) == syscall.S_ISGID|syscall.S_IXGRP &&
		q.uid != 0 && !q.inGroup(gid) {
		o.mode &^= syscall.S_ISGID
	}
	if st.Uid != q.uid {
		o.uid = int(q.uid)
	}
	if st.Gid != gid {
		o.gid = int(gid)
	}
	return o, nil
}

// apply gives the new entry of attributes st its owner through chown and
// then its mode through chmod (nil for a symlink, whose mode is fixed),
// and updates st. The mode comes second: a chown of a non-directory
// clears set-ID bits, which are then put back.
func (o newOwner) apply(st *syscall.Stat_t, chown func(uid, gid int) error, chmod func(mode uint32) error) error {
	cleared := false
	if o.uid >= 0 || o.gid >= 0 {
		if err := chown(o.uid, o.gid); err != nil {
			return fmt.Errorf("chown of a new entry: %w", err)
		}
		if o.uid >= 0 {
			st.Uid = uint32(o.uid)
		}
		if o.gid >= 0 {
			st.Gid = uint32(o.gid)
		}
		cleared = st.Mode&syscall.S_IFMT != syscall.S_IFDIR && st.Mode&(syscall.S_ISUID|syscall.S_ISGID) != 0
	}
	if chmod == nil || !cleared && st.Mode&0o7777 == o.mode {
		return nil
	}
	if err := chmod(o.mode); err != nil {
		return fmt.Errorf("chmod of a new entry: %w", err)
	}
	st.Mode = st.Mode&^0o7777 | o.mode
	return nil
}
