// Package fs is the go-fuse v2 node tree over a cipher directory: it gives
// the plain view of the cipher files with POSIX semantics, translates sizes
// and offsets through fs/cipherfile, and owns the per-file open state and
// content locks. It gets a file's content cipher through the FileKeys
// interface and must not talk to a KMS itself. It never hands the kernel a
// backing fd (no passthrough): every byte read or written goes through the
// content cipher.
//
// It reaches the cipher directory through fs/cipherdir and cipher files
// through fs/cipherfile, and must not import keymgr (nor, through it, badger
// or the AWS SDK): the key errors it maps to errnos come from the leaf
// keymgr/kmserr.
package fs

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

// FileKeys gives the content cipher of new and existing files. It is
// implemented by *keymgr.Manager.
type FileKeys interface {
	NewFile(ctx context.Context) (crypto.Header, *crypto.ContentCipher, error)
	OpenFile(ctx context.Context, id crypto.FileID, readHeader func() (crypto.Header, error)) (*crypto.ContentCipher, error)
	Forget(ctx context.Context, id crypto.FileID) error
}

// Options configure the filesystem.
type Options struct {
	CipherDir string        // the cipher directory (kmsfs.conf, .kmsfs/, cipher files)
	Layout    crypto.Layout // from kmsfs.conf
	Keys      FileKeys
	// Names is the filesystem's name cipher; nil for plaintext names
	// (kmsfs init --plaintext-names). It stays the caller's.
	Names    *crypto.NameCipher
	ReadOnly bool
	Logger   *slog.Logger // nil: discard
}

// MountOptions configure the FUSE mount.
type MountOptions struct {
	AllowOther bool
	Debug      bool
	// DebugLog receives the Debug trace of every FUSE request ("rx N:
	// OP ..." lines); nil: go-fuse's default logger (stderr).
	DebugLog *log.Logger
	FsName   string // "" => "kmsfs:<cipher dir>"
	// NoXattr refuses extended attributes (EOPNOTSUPP, the kernel then
	// stops asking). With them on, the kernel asks for
	// security.capability before the first write to every new or
	// changed inode and before every chown: one more round trip for each
	// file a create or a tar extract makes (docs/performance.md).
	// Attributes already stored on cipher files are kept, unused.
	NoXattr bool
}

// Kernel cache lifetimes (docs/performance.md). The plain view changes
// only through this mount, whose own operations update or invalidate the
// kernel's entries at once; the lifetimes bound only how late a change
// made to the cipher directory behind the mount's back is seen.
const (
	entryTimeout    = 10 * time.Second
	attrTimeout     = 10 * time.Second
	negativeTimeout = 10 * time.Second
)

// Mount mounts the plain view of o.CipherDir at mountpoint and returns once
// the kernel has the mount. The caller unmounts with server.Unmount and may
// server.Wait for the serve loop to end.
func Mount(mountpoint string, o Options, mo MountOptions) (*fuse.Server, error) {
	r, err := newRoot(o)
	if err != nil {
		return nil, err
	}
	fsName := mo.FsName
	if fsName == "" {
		fsName = "kmsfs:" + r.dir
	}
	entry, attr, negative := entryTimeout, attrTimeout, negativeTimeout
	fo := &gofs.Options{
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		RootStableAttr:  &gofs.StableAttr{Ino: r.rootIno},
		// Report modes as they are: without it go-fuse shows a file
		// of mode 0000 as 0644 (and a directory as 0755), which the
		// kernel would then enforce for other users under
		// --allow-other.
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			AllowOther:  mo.AllowOther,
			MaxWrite:    1 << 20,
			FsName:      fsName,
			Name:        "kmsfs",
			DirectMount: true, // as root; go-fuse falls back to fusermount3
			Debug:       mo.Debug,
			Logger:      mo.DebugLog,
			// Every READ answers plaintext from memory, never an fd:
			// with splice on, go-fuse would first write the reply
			// header into a pipe, find the data is not an fd, and
			// drain the pipe again (four wasted syscalls per READ).
			DisableSplice: true,
			DisableXAttrs: mo.NoXattr,
		},
	}
	// The kernel would otherwise ask for security.capability before every
	// write (a second round trip per write(2)) to clear set-ID bits and
	// capabilities itself; killpriv.go is our side of the bargain.
	fo.MountOptions.ExtraCapabilities |= fuse.CAP_HANDLE_KILLPRIV_V2
	// Who may do what:
	//   - Without --allow-other the kernel lets only the mounting user's
	//     processes into the mount (others, root included, get EACCES),
	//     and this process, running as that same user, reaches the cipher
	//     directory with that user's credentials: the backing
	//     filesystem's own checks on the cipher files (whose modes and
	//     owners are the plain files') refuse what the user may not do,
	//     and access(2) is answered from the same modes (go-fuse's
	//     default Access). No default_permissions then: it would cost a
	//     GETATTR of the parent directory before most creates, unlinks,
	//     mkdirs and renames (each one invalidates the directory's cached
	//     attributes in the kernel; docs/performance.md). gocryptfs and
	//     securefs mount the same way.
	//   - With --allow-other other users come in and this process may run
	//     as root: the kernel must check every access against the modes
	//     and owners we report before a request reaches us
	//     (default_permissions), as on a local filesystem.
	if mo.AllowOther {
		fo.MountOptions.Options = append(fo.MountOptions.Options, "default_permissions")
	}
	if o.ReadOnly {
		fo.MountOptions.Options = append(fo.MountOptions.Options, "ro")
		fo.MountOptions.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
	}
	if testMountHook != nil {
		testMountHook(r)
	}
	// gofs.Mount, with the node tree's raw filesystem wrapped so the
	// kernel's kill flags reach it (killpriv.go).
	r.killPriv = &killPrivFS{RawFileSystem: gofs.NewNodeFS(&node{r: r}, fo)}
	server, err := fuse.NewServer(r.killPriv, mountpoint, &fo.MountOptions)
	if err == nil {
		go server.Serve()
		err = server.WaitMount()
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	go func() {
		server.Wait()
		r.close()
	}()
	raiseReadahead(mountpoint, fo.MountOptions.MaxWrite, r.log)
	return server, nil
}

// raiseReadahead lets the kernel read ahead maxRead bytes at a time
// instead of its default 128 KiB: a sequential read is then one FUSE
// request (one pread of the cipher file, one reply) per MiB instead of
// eight, about 1.5x the throughput of a cold sequential read
// (docs/performance.md). FUSE caps the readahead its INIT reply asks for
// at the default, so the mount's backing device info is raised after the
// mount through sysfs, which only root may write; for anyone else the
// default stays.
func raiseReadahead(mountpoint string, maxRead int, log *slog.Logger) {
	if !runsAsRoot {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	cur, err := os.ReadFile(p)
	if err != nil {
		return
	}
	if kb, err := strconv.Atoi(strings.TrimSpace(string(cur))); err == nil && kb >= maxRead>>10 {
		return
	}
	if err := os.WriteFile(p, []byte(strconv.Itoa(maxRead>>10)), 0); err != nil {
		log.Debug("cannot raise the mount's readahead", "path", p, "err", err.Error())
	}
}

// testMountHook, set by tests only, sees the root of each mount.
var testMountHook func(*root)

// root holds the state every node shares. Nodes hold only a pointer to it.
type root struct {
	dir     string // absolute cipher directory, for messages and statfs
	tree    *cipherdir.Tree
	rootDir *dirHandle // the tree's root handle (permanent)
	dirs    dirCache
	dev     uint64 // its device, mixed out of inode numbers
	rootIno uint64
	layout  crypto.Layout
	keys    FileKeys
	log     *slog.Logger
	ro      bool
	files   openTable
	ids     fileIDs
	stamps  cacheStamps
	// killPriv is the raw filesystem the server serves, which passes
	// the kernel's set-ID kill flags on (killpriv.go).
	killPriv *killPrivFS
}

func newRoot(o Options) (*root, error) {
	if o.Keys == nil {
		return nil, errors.New("fs: Options.Keys is nil")
	}
	if err := o.Layout.Validate(); err != nil {
		return nil, fmt.Errorf("fs: %w", err)
	}
	dir, err := filepath.Abs(o.CipherDir)
	if err == nil {
		// The root is stat'ed without following symlinks like every
		// other node: resolve a symlinked cipher dir once here.
		dir, err = filepath.EvalSymlinks(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("fs: cipher dir: %w", err)
	}
	tree, err := cipherdir.OpenTree(dir, o.Names)
	if err != nil {
		return nil, fmt.Errorf("fs: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(tree.Root(), &st); err != nil {
		tree.Close()
		return nil, fmt.Errorf("fs: cipher dir %s: %w", dir, err)
	}
	if o.Names != nil {
		// The root's own ID must be readable before anything else.
		if _, err := tree.ReadDirID(tree.Root()); err != nil {
			tree.Close()
			return nil, fmt.Errorf("fs: cipher dir %s: root %w: restore %s from a backup, or run kmsfs fsck --repair", dir, err, cipherdir.DirIDName)
		}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &root{
		dir:     dir,
		tree:    tree,
		rootDir: &dirHandle{fd: tree.Root(), permanent: true},
		dev:     uint64(st.Dev),
		layout:  o.Layout,
		keys:    o.Keys,
		log:     log,
		ro:      o.ReadOnly,
	}
	r.rootIno = r.ino(&st)
	r.files.m = map[fileKey]*openFile{}
	return r, nil
}

// close runs once the serve loop has ended: every handle is released by
// then; anything left (a kernel that never sent RELEASE) is closed here.
func (r *root) close() {
	r.files.mu.Lock()
	for k, of := range r.files.m {
		of.f.Close()
		delete(r.files.m, k)
	}
	r.files.mu.Unlock()
	r.closeDirs()
	r.tree.Close()
}

// hidden reports whether name in directory dir is kmsfs's own (with
// plaintext names, the root's kmsfs.conf, kmsfs.names, kmsfs.dirid and
// .kmsfs; with encrypted names no plain name is).
func (r *root) hidden(dir *node, name string) bool {
	return r.tree.Reserved(name, dir.IsRoot())
}

// ino mixes the device into the inode number as go-fuse's loopback does, so
// a cipher directory spanning mounts keeps inode numbers unique; on the
// cipher directory's own device it is the cipher inode number.
func (r *root) ino(st *syscall.Stat_t) uint64 {
	dev := uint64(st.Dev)
	swapped := (dev << 32) | (dev >> 32)
	swappedRoot := (r.dev << 32) | (r.dev >> 32)
	return (swapped ^ swappedRoot) ^ st.Ino
}

// stableAttr is the go-fuse identity of a cipher inode. gen tells a reused
// inode number from the inode that had it before.
func (r *root) stableAttr(st *syscall.Stat_t, gen uint64) gofs.StableAttr {
	return gofs.StableAttr{Mode: st.Mode & syscall.S_IFMT, Ino: r.ino(st), Gen: gen}
}

// fstatGen is lstat for an open fd.
func fstatGen(fd int, st *syscall.Stat_t) (gen uint64, err error) {
	return statxAt(fd, "", unix.AT_EMPTY_PATH, st)
}

func statxAt(dirfd int, path string, flags int, st *syscall.Stat_t) (gen uint64, err error) {
	var x unix.Statx_t
	err = unix.Statx(dirfd, path, flags, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &x)
	if err == unix.ENOSYS {
		if path == "" {
			return 1, syscall.Fstat(dirfd, st)
		}
		var ust unix.Stat_t
		if err := unix.Fstatat(dirfd, path, &ust, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return 1, err
		}
		*st = syscall.Stat_t{Dev: ust.Dev, Ino: ust.Ino, Nlink: ust.Nlink, Mode: ust.Mode, Uid: ust.Uid, Gid: ust.Gid,
			Rdev: ust.Rdev, Size: ust.Size, Blksize: ust.Blksize, Blocks: ust.Blocks,
			Atim: syscall.Timespec(ust.Atim), Mtim: syscall.Timespec(ust.Mtim), Ctim: syscall.Timespec(ust.Ctim)}
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	*st = syscall.Stat_t{}
	setNum(&st.Dev, unix.Mkdev(x.Dev_major, x.Dev_minor))
	setNum(&st.Ino, x.Ino)
	setNum(&st.Nlink, uint64(x.Nlink))
	setNum(&st.Mode, uint64(x.Mode))
	setNum(&st.Uid, uint64(x.Uid))
	setNum(&st.Gid, uint64(x.Gid))
	setNum(&st.Rdev, unix.Mkdev(x.Rdev_major, x.Rdev_minor))
	setNum(&st.Size, x.Size)
	setNum(&st.Blksize, uint64(x.Blksize))
	setNum(&st.Blocks, x.Blocks)
	st.Atim = syscall.NsecToTimespec(x.Atime.Sec*1e9 + int64(x.Atime.Nsec))
	st.Mtim = syscall.NsecToTimespec(x.Mtime.Sec*1e9 + int64(x.Mtime.Nsec))
	st.Ctim = syscall.NsecToTimespec(x.Ctime.Sec*1e9 + int64(x.Ctime.Nsec))
	if x.Mask&unix.STATX_BTIME == 0 || (x.Btime.Sec == 0 && x.Btime.Nsec == 0) {
		return 1, nil
	}
	return uint64(x.Btime.Sec)*1e9 + uint64(x.Btime.Nsec), nil
}

// setNum stores v in *dst whatever width the architecture gives the field.
func setNum[T ~int32 | ~int64 | ~uint32 | ~uint64](dst *T, v uint64) { *dst = T(v) }

// plainSizeOf is the plain size of a cipher file of cipherSize bytes. A
// file too short for its head (a crash mid-create) is empty; a size no
// plain size maps to reports its whole chunks (reads of the tail give EIO).
func (r *root) plainSizeOf(cipherSize int64) int64 {
	if cipherSize < r.layout.ContentOffset() {
		return 0
	}
	p, _ := r.layout.PlainSize(cipherSize)
	return p
}

// fillAttr converts a cipher stat to the plain attributes: the same but
// for a regular file's size, which is the plain size. An open file's size
// is read under its content lock, so it never shows a write half done.
func (r *root) fillAttr(st *syscall.Stat_t, out *fuse.Attr) {
	out.FromStat(st)
	if st.Mode&syscall.S_IFMT == syscall.S_IFLNK && r.tree.Encrypted() {
		// A symlink's size is its target's length: the plain one.
		out.Size = uint64(crypto.PlainTargetLen(st.Size))
		return
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return
	}
	if of := r.files.peek(fileKey{uint64(st.Dev), st.Ino}); of != nil {
		of.mu.RLock()
		var fst syscall.Stat_t
		if err := syscall.Fstat(int(of.f.Fd()), &fst); err == nil {
			st = &fst
		}
		of.mu.RUnlock()
		r.release(of)
	}
	out.Size = uint64(r.plainSizeOf(st.Size))
}

// errno maps err for the kernel. An error nobody expected is logged at
// warning with its text (which never holds a path: cipher files are
// opened under names made of their inode number).
func (r *root) errno(op string, ino uint64, err error) syscall.Errno {
	errno, known := classify(err)
	if !known {
		r.log.Warn("unexpected error", "op", op, "inode", ino, "err", err.Error())
	}
	return errno
}

// runsAsRoot: the mount process's effective user is root (it never
// changes; asked once instead of on every create).
var runsAsRoot = os.Geteuid() == 0
