package main

// export.go: `kmsfs export CIPHERDIR PATH DEST` decrypts one file or a
// subtree to DEST without FUSE (restoring on a machine that cannot mount).
//
// The cipher directory is untrusted input: whoever can write it chooses
// every name, type, owner and mode export sees. So each cipher entry is
// opened through its directory handle without following it and refused
// unless it is still what the walk saw (cat.go openCipherEntry); each
// output entry is created relative to an open handle of its output
// directory with *at calls that neither follow a symlink nor replace a
// directory; and owners and set-ID bits are restored only when asked for
// (--preserve-owner, as root, with a warning).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/internal/atomicfile"
)

// exportOptions are the flags of export.
type exportOptions struct {
	force         bool // overwrite existing files in DEST
	preserveOwner bool // restore owners and set-ID bits (root only)
}

func newExportCmd(g *globals) *cobra.Command {
	var opts exportOptions
	cmd := &cobra.Command{
		Use:   "export [--force] [--preserve-owner] CIPHERDIR PATH DEST",
		Short: "decrypt a file or a subtree to DEST, without mounting",
		Long: `export decrypts PATH (relative to the mount root; "." is everything) of
CIPHERDIR to DEST, without FUSE: files with their permission bits,
modification times and user.* extended attributes, directories, symlinks,
FIFOs and hard links. DEST is what PATH becomes: a file is written to DEST
(or into DEST when DEST is an existing directory); a tree is merged into
the directory DEST, created if missing. Existing files are never
overwritten without --force: export then checks the whole tree first and
changes nothing. Each file is written to a temporary name and renamed when
complete; runs of zeros are left as holes (sparse files). A file that
fails authentication, or an entry whose encrypted name does not decrypt,
is reported and left out, the others are exported, and the exit status is
1. Names and symlink targets are written decrypted. Works whether or not
CIPHERDIR is mounted.

Everything exported belongs to the user running export, with the
permission bits (rwx and sticky) of the original: owners, groups and
set-user-ID/set-group-ID bits are chosen by whoever can write CIPHERDIR,
so they are restored only with --preserve-owner, which needs root and
warns about what it restores.`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), g, args[0], args[1], args[2], opts, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&opts.force, "force", false, "overwrite existing files in DEST")
	cmd.Flags().BoolVar(&opts.preserveOwner, "preserve-owner", false,
		"as root: also restore owners, groups and set-user-ID/set-group-ID bits, as the cipher directory's metadata gives them")
	return cmd
}

// exportItem is one entry to export.
type exportItem struct {
	rel, dst string // plain path, destination (for messages and the plan)
	st       unix.Stat_t
}

func (it exportItem) isDir() bool { return it.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// destDir is an open directory of the destination; its metadata (from
// it) is set when everything below it is exported.
type destDir struct {
	sub string // path below the destination root, "" for the root
	fd  int
	it  exportItem
}

type exportRun struct {
	o      *offlineTree
	opts   exportOptions
	errw   io.Writer
	bar    *progressbar.ProgressBar
	failed []string
	// rootfd is the output directory everything is created below (DEST
	// for a tree, the directory of the file for one file); links maps an
	// inode to the path below rootfd of its first exported name.
	rootfd                        int
	links                         map[[2]uint64]string
	stack                         []destDir // the open directories from the root down to the current one
	files, dirs, symlinks, others int
	xattrWarned                   bool // DEST refused user.* attributes once
	setIDs, foreign               int  // restored set-ID entries, foreign owners (--preserve-owner)
}

func runExport(ctx context.Context, g *globals, dirArg, pathArg, destArg string, opts exportOptions, out, errw io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if opts.preserveOwner && os.Geteuid() != 0 {
		return usagef("--preserve-owner restores owners and set-ID bits, which only root can give: run export as root, or without --preserve-owner to export everything as your own user")
	}
	o, err := openOfflineTree(ctx, g, dirArg, errw)
	if err != nil {
		return err
	}
	defer o.Close()
	loc, rootSt, err := o.resolve(pathArg)
	if err != nil {
		return err
	}
	defer loc.Close()
	dest, err := filepath.Abs(destArg)
	if err != nil {
		return err
	}
	if within(dest, o.ks.dir) {
		return usagef("destination %s is inside the cipher directory %s: export somewhere else", dest, o.ks.dir)
	}
	start := loc.Plain
	rootItem := exportItem{rel: plainLabel(start), dst: dest, st: rootSt}
	isTree := rootItem.isDir()
	if !isTree {
		if dfi, err := os.Stat(dest); err == nil && dfi.IsDir() {
			rootItem.dst = filepath.Join(dest, path.Base(loc.Plain))
		}
	}
	// subOf is the path below DEST where the walk entry e goes.
	subOf := func(e cipherdir.WalkEntry) string {
		return strings.TrimPrefix(strings.TrimPrefix(e.Plain, start), "/")
	}

	// Plan: every entry with its destination, and the conflicts. Names
	// that do not map are reported by the export walk below. The plan
	// goes by path; the export itself does not trust it (it creates
	// through directory handles, refusing what changed).
	var items []exportItem
	if isTree {
		err = o.tree.Walk(start, func(e cipherdir.WalkEntry) error {
			it := exportItem{rel: plainLabel(e.Plain), dst: filepath.Join(dest, filepath.FromSlash(subOf(e)))}
			if err := unix.Fstatat(e.Dir, e.Entry, &it.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if errors.Is(err, unix.ENOENT) {
					// Gone since the listing (a writer of the cipher
					// directory at work): the export pass reports it and
					// the rest is exported.
					return nil
				}
				return fmt.Errorf("%s: %w", it.rel, err)
			}
			items = append(items, it)
			return nil
		}, func(*cipherdir.WalkError) error { return nil })
		if err != nil {
			return o.treeError(err)
		}
	} else {
		items = append(items, rootItem)
	}
	var conflicts []string
	for _, it := range items {
		dfi, err := os.Lstat(it.dst)
		if err != nil {
			continue
		}
		switch {
		case it.isDir() && dfi.IsDir():
		case it.isDir():
			conflicts = append(conflicts, fmt.Sprintf("%s exists and is not a directory", it.dst))
		case dfi.IsDir():
			conflicts = append(conflicts, fmt.Sprintf("%s exists and is a directory", it.dst))
		case !opts.force:
			conflicts = append(conflicts, fmt.Sprintf("%s exists", it.dst))
		}
	}
	if len(conflicts) > 0 {
		for i, c := range conflicts {
			if i == 10 {
				fmt.Fprintf(errw, "kmsfs: ... and %d more\n", len(conflicts)-10)
				break
			}
			fmt.Fprintf(errw, "kmsfs: %s\n", c)
		}
		hint := ": export to another DEST, or use --force to overwrite files"
		if opts.force {
			hint = ": remove them or export to another DEST"
		}
		return fmt.Errorf("%d entries in the way under %s, nothing exported%s", len(conflicts), dest, hint)
	}

	r := &exportRun{o: o, opts: opts, errw: errw, links: map[[2]uint64]string{}, rootfd: -1}
	defer r.closeDirs()
	if opts.preserveOwner {
		fmt.Fprintf(errw, "kmsfs: warning: --preserve-owner: restoring owners, groups and set-user-ID/set-group-ID bits as the metadata of %s gives them; whoever can write it chooses them: check what was restored (listed below) before using %s\n", o.ks.dir, dest)
	}
	if f, ok := errw.(*os.File); ok && isTree && term.IsTerminal(int(f.Fd())) {
		r.bar = progressbar.NewOptions(len(items), progressbar.OptionSetWriter(errw),
			progressbar.OptionSetDescription("export"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	if !isTree {
		parent, err := openUserDir(filepath.Dir(rootItem.dst))
		if err != nil {
			return err
		}
		r.rootfd = parent
		defer unix.Close(parent)
		if testHookBeforeOpen != nil {
			testHookBeforeOpen(rootItem.rel)
		}
		name := filepath.Base(rootItem.dst)
		if err := r.export(ctx, loc.Parent, loc.Entry, parent, name, name, rootItem); err != nil {
			r.report(rootItem.rel, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dest), err)
		}
		err = o.tree.Walk(start, func(e cipherdir.WalkEntry) error {
			if r.bar != nil {
				r.bar.Add(1)
			}
			sub := subOf(e)
			it := exportItem{rel: plainLabel(e.Plain), dst: filepath.Join(dest, filepath.FromSlash(sub))}
			if err := unix.Fstatat(e.Dir, e.Entry, &it.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				r.report(it.rel, fmt.Errorf("%s: %w", it.rel, err))
				return skipIfDir(e)
			}
			if testHookBeforeOpen != nil {
				testHookBeforeOpen(it.rel)
			}
			if sub == "" {
				// DEST itself: a path the user gave.
				return r.openRoot(dest, it)
			}
			parent, err := r.parentOf(sub)
			if err != nil {
				r.report(it.rel, err)
				return skipIfDir(e)
			}
			name := path.Base(sub)
			if it.isDir() {
				if err := r.mkdirAt(parent, name, sub, it); err != nil {
					r.report(it.rel, fmt.Errorf("%w: left out with everything in it", err))
					return cipherdir.SkipDir
				}
				r.dirs++
				return nil
			}
			if err := r.export(ctx, e.Dir, e.Entry, parent, name, sub, it); err != nil {
				r.report(it.rel, err)
			}
			return nil
		}, func(we *cipherdir.WalkError) error {
			r.report(we.Cipher, errors.New(nameProblem(o.ks.dir, we)+": left out"))
			return nil
		})
		if err != nil {
			return o.treeError(err)
		}
		// Deepest first, so a parent's mtime is set after its children change.
		r.finishDirs(0)
	}
	if r.bar != nil {
		r.bar.Finish()
	}
	fmt.Fprintf(out, "exported %d files, %d directories, %d symlinks, %d other entries to %s; %d failed\n",
		r.files, r.dirs, r.symlinks, r.others, dest, len(r.failed))
	if opts.preserveOwner && r.setIDs+r.foreign > 0 {
		fmt.Fprintf(errw, "kmsfs: warning: --preserve-owner restored set-ID bits on %d entries and owners other than root on %d\n", r.setIDs, r.foreign)
	}
	if len(r.failed) > 0 {
		return fmt.Errorf("%d entries were not exported (listed above): run kmsfs verify %s for details", len(r.failed), o.ks.dir)
	}
	return nil
}

// skipIfDir is what the walk callback returns for an entry it gave up
// on: a directory's entries are left out with it.
func skipIfDir(e cipherdir.WalkEntry) error {
	if e.Type == os.ModeDir {
		return cipherdir.SkipDir
	}
	return nil
}

// report prints a failed entry and counts it.
func (r *exportRun) report(rel string, err error) {
	if r.bar != nil {
		r.bar.Clear()
	}
	fmt.Fprintf(r.errw, "kmsfs: %s\n", oneLine(err.Error()))
	r.failed = append(r.failed, rel)
}

// openUserDir opens dir, a directory path the user gave (symlinks on the
// way are the user's own), as the handle output entries are created in.
func openUserDir(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open the destination directory %s: %w: create it first or export elsewhere", dir, err)
	}
	return fd, nil
}

// openRoot creates DEST (the tree's root, a path the user gave) if
// missing and opens it as the root of the output.
func (r *exportRun) openRoot(dest string, it exportItem) error {
	if err := os.Mkdir(dest, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create directory %s: %w", dest, err)
	}
	fd, err := unix.Open(dest, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open directory %s: %w: remove what is there or export elsewhere", dest, err)
	}
	r.rootfd = fd
	r.stack = append(r.stack, destDir{sub: "", fd: fd, it: it})
	r.dirs++
	return nil
}

// parentOf is the handle of the output directory of sub (a path below
// DEST). The walk goes parents first, depth first, so it is on the
// stack; the directories left on the way up are finished.
func (r *exportRun) parentOf(sub string) (int, error) {
	parent := path.Dir(sub)
	if parent == "." {
		parent = ""
	}
	for i := len(r.stack) - 1; i >= 0; i-- {
		if r.stack[i].sub == parent {
			r.finishDirs(i + 1)
			return r.stack[i].fd, nil
		}
	}
	return -1, fmt.Errorf("%s: its directory %s was not exported: left out", sub, plainLabel(parent))
}

// finishDirs sets the metadata of the open directories from the top of
// the stack down to depth (deepest first) and closes them.
func (r *exportRun) finishDirs(depth int) {
	for len(r.stack) > depth {
		d := r.stack[len(r.stack)-1]
		r.stack = r.stack[:len(r.stack)-1]
		if err := r.setMetaFd(d.fd, &d.it); err != nil {
			r.report(d.it.rel, err)
		}
		if err := syncDirFd(d.fd); err != nil {
			r.report(d.it.rel, fmt.Errorf("%s: fsync the directory: %w", d.it.dst, err))
		}
		unix.Close(d.fd)
		if d.sub == "" {
			r.rootfd = -1
		}
	}
}

// syncDirFd fsyncs the directory dirfd names (which may be an O_PATH
// handle) through a readable handle of it.
func syncDirFd(dirfd int) error {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// closeDirs closes what is left open after an error, setting nothing.
func (r *exportRun) closeDirs() {
	for _, d := range r.stack {
		unix.Close(d.fd)
	}
	r.stack = nil
}

// mkdirAt creates (or, merging, reuses) the directory name in parent and
// pushes its handle. An existing entry must be a directory: a symlink is
// refused (O_NOFOLLOW), never followed out of the destination.
func (r *exportRun) mkdirAt(parent int, name, sub string, it exportItem) error {
	// Writable while we fill it; its mode and times are set last.
	if err := unix.Mkdirat(parent, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create directory %s: %w", it.dst, err)
	}
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("create directory %s: something else than a directory is there now (%w): remove it or export elsewhere", it.dst, err)
		}
		return fmt.Errorf("open directory %s: %w", it.dst, err)
	}
	r.stack = append(r.stack, destDir{sub: sub, fd: fd, it: it})
	return nil
}

// createAt runs mk, which creates name in parent; with --force an
// existing non-directory there is removed first (unlinkat, which neither
// follows a symlink nor removes a directory).
func (r *exportRun) createAt(parent int, name string, mk func() error) error {
	err := mk()
	if errors.Is(err, unix.EEXIST) && r.opts.force {
		if err := unix.Unlinkat(parent, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
		err = mk()
	}
	return err
}

// export writes one non-directory entry: entry in the cipher directory
// handle dirfd becomes name in the output directory handle parent (sub,
// its path below rootfd).
func (r *exportRun) export(ctx context.Context, dirfd int, entry string, parent int, name, sub string, it exportItem) error {
	st := &it.st
	if st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, ok := r.links[key]; ok {
			if err := r.linkAt(first, parent, name); err != nil {
				return fmt.Errorf("%s: hard link to %s: %w", it.rel, first, err)
			}
			r.files++
			return nil
		}
		defer func() {
			var dst unix.Stat_t
			if unix.Fstatat(parent, name, &dst, unix.AT_SYMLINK_NOFOLLOW) == nil {
				r.links[key] = sub
			}
		}()
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := r.exportFile(ctx, dirfd, entry, parent, name, it); err != nil {
			return err
		}
		r.files++
		return nil
	case unix.S_IFLNK:
		target, err := r.o.readTarget(dirfd, entry, it.rel)
		if err != nil {
			return err
		}
		if err := r.createAt(parent, name, func() error { return unix.Symlinkat(target, parent, name) }); err != nil {
			return fmt.Errorf("%s: symlink %s: %w", it.rel, it.dst, err)
		}
		r.symlinks++
		return r.setSymlinkMeta(parent, name, &it)
	case unix.S_IFIFO:
		if err := r.createAt(parent, name, func() error { return unix.Mknodat(parent, name, unix.S_IFIFO|0o600, 0) }); err != nil {
			return fmt.Errorf("%s: mkfifo %s: %w", it.rel, it.dst, err)
		}
		// Opened for its metadata: O_NONBLOCK, so no writer is waited for.
		fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: open FIFO %s: %w", it.rel, it.dst, err)
		}
		defer unix.Close(fd)
		var got unix.Stat_t
		if err := unix.Fstat(fd, &got); err != nil || got.Mode&unix.S_IFMT != unix.S_IFIFO {
			return fmt.Errorf("%s: %s is no longer the FIFO export made (%v): left as it is", it.rel, it.dst, err)
		}
		r.others++
		return r.setMetaFd(fd, &it)
	default:
		// Sockets and device nodes are not content: skipped, reported.
		return fmt.Errorf("%s: %v is not exported (sockets and devices are skipped)", it.rel, cipherdir.StatInfo(it.rel, st).Mode().Type())
	}
}

// linkAt makes name in parent a hard link of first, a path below rootfd
// exported before; its directory is reopened component by component
// without following a symlink.
func (r *exportRun) linkAt(first string, parent int, name string) error {
	dir := path.Dir(first)
	if dir == "." {
		dir = ""
	}
	firstDir, err := cipherdir.OpenDirPath(r.rootfd, dir)
	if err != nil {
		return err
	}
	defer unix.Close(firstDir)
	return r.createAt(parent, name, func() error { return unix.Linkat(firstDir, path.Base(first), parent, name, 0) })
}

// exportTempPrefix starts the name of a file being exported.
const exportTempPrefix = ".kmsfs-export-"

// exportFile decrypts a regular file into a temporary file in parent, sets
// its metadata and moves it to name (atomicfile: fsync, then without
// --force a link, which fails if DEST appeared since the plan, with
// --force a rename; then fsync of parent).
func (r *exportRun) exportFile(ctx context.Context, dirfd int, entry string, parent int, name string, it exportItem) error {
	f, err := openCipherEntry(dirfd, entry, it.rel, r.o.ks.dir)
	if err != nil {
		return err
	}
	pf, err := openCipherFile(ctx, r.o.ks, f, it.rel)
	if err != nil {
		return err
	}
	defer pf.Close()
	opts := []atomicfile.Option{atomicfile.TempPrefix(exportTempPrefix)}
	if len(r.stack) > 0 {
		// A tree: its directories are fsynced once each, when finished
		// (finishDirs), not once per file.
		opts = append(opts, atomicfile.CallerSyncsDir())
	}
	if !r.opts.force {
		opts = append(opts, atomicfile.Exclusive())
	}
	pending, err := atomicfile.CreateAt(parent, name, 0o600, opts...)
	if err != nil {
		return fmt.Errorf("%s: create a temporary file next to %s: %w", it.rel, it.dst, err)
	}
	defer pending.Abort()
	tmp := pending.File()
	if _, err := pf.copySparse(tmp, 0); err != nil {
		return err
	}
	xv, bad, err := pf.xattrs()
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fileError(it.rel, pf.id, pf.hasID, "extended attribute %s fails authentication", strings.Join(bad, ", "))
	}
	for xname, v := range xv {
		err := unix.Fsetxattr(int(tmp.Fd()), xname, v, 0)
		if errors.Is(err, unix.ENOTSUP) {
			if !r.xattrWarned {
				r.xattrWarned = true
				fmt.Fprintf(r.errw, "kmsfs: warning: %s does not support extended attributes: user.* attributes are not exported\n", filepath.Dir(it.dst))
			}
			break
		}
		if err != nil {
			return fmt.Errorf("%s: set extended attribute %s: %w", it.rel, xname, err)
		}
	}
	if err := r.setMetaFd(int(tmp.Fd()), &it); err != nil {
		return err
	}
	if err := pending.Commit(); err != nil {
		return fmt.Errorf("%s: %s: %w", it.rel, it.dst, err)
	}
	return nil
}

// exportMode is the mode bits export gives an entry whose cipher mode is
// mode: the permission bits and the sticky bit; with --preserve-owner
// the set-ID bits too.
func (r *exportRun) exportMode(mode uint32) uint32 {
	if r.opts.preserveOwner {
		return mode & 0o7777
	}
	return mode & (0o777 | unix.S_ISVTX)
}

// setMetaFd gives the entry open as fd (a file, directory or FIFO) the
// mode and times of it.st, and with --preserve-owner its owner and group,
// chown first (it clears set-ID bits).
func (r *exportRun) setMetaFd(fd int, it *exportItem) error {
	st := &it.st
	if r.opts.preserveOwner {
		if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", it.dst, err)
		}
		r.noteRestored(it)
	}
	if err := unix.Fchmod(fd, r.exportMode(st.Mode)); err != nil {
		return fmt.Errorf("chmod %s: %w", it.dst, err)
	}
	ts := [2]unix.Timespec{st.Atim, st.Mtim}
	// utimensat(fd, NULL, ...) is futimens(fd).
	if _, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); e != 0 {
		return fmt.Errorf("set times of %s: %w", it.dst, e)
	}
	return nil
}

// setSymlinkMeta gives the symlink name in parent the times of it.st,
// and with --preserve-owner its owner and group, without following it.
func (r *exportRun) setSymlinkMeta(parent int, name string, it *exportItem) error {
	st := &it.st
	if r.opts.preserveOwner {
		if err := unix.Fchownat(parent, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %s: %w", it.dst, err)
		}
		r.noteRestored(it)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(parent, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", it.dst, err)
	}
	return nil
}

// noteRestored warns about a set-ID bit --preserve-owner restores, naming
// the entry, and counts it and owners other than root.
func (r *exportRun) noteRestored(it *exportItem) {
	st := &it.st
	var bits []string
	if st.Mode&unix.S_ISUID != 0 {
		bits = append(bits, fmt.Sprintf("set-user-ID (owner uid %d)", st.Uid))
	}
	if st.Mode&unix.S_ISGID != 0 {
		bits = append(bits, fmt.Sprintf("set-group-ID (group gid %d)", st.Gid))
	}
	if len(bits) > 0 {
		r.setIDs++
		fmt.Fprintf(r.errw, "kmsfs: warning: %s: restored %s\n", it.dst, strings.Join(bits, " and "))
	}
	if st.Uid != 0 || st.Gid != 0 {
		r.foreign++
	}
}
