package main

// export.go: `kmsfs export CIPHERDIR PATH DEST` decrypts one file or a
// subtree to DEST without FUSE (restoring on a machine that cannot mount).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

func newExportCmd(g *globals) *cobra.Command {
	force := false
	cmd := &cobra.Command{
		Use:   "export [--force] CIPHERDIR PATH DEST",
		Short: "decrypt a file or a subtree to DEST, without mounting",
		Long: `export decrypts PATH (relative to the mount root; "." is everything) of
CIPHERDIR to DEST, without FUSE: files with their modes, modification
times and user.* extended attributes, directories, symlinks, FIFOs and hard
links (owners too when run as root). DEST is what PATH becomes: a file is written to DEST (or into DEST
when DEST is an existing directory); a tree is merged into the directory
DEST, created if missing. Existing files are never overwritten without
--force: export then checks the whole tree first and changes nothing.
Each file is written to a temporary name and renamed when complete. A
file that fails authentication, or an entry whose encrypted name does not
decrypt, is reported and left out, the others are exported, and the exit
status is 1. Names and symlink targets are written decrypted. Works
whether or not CIPHERDIR is mounted.`,
		Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), g, args[0], args[1], args[2], force, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing files in DEST")
	return cmd
}

// exportItem is one entry to export.
type exportItem struct {
	rel, dst string // plain path, destination
	st       unix.Stat_t
}

func (it exportItem) isDir() bool { return it.st.Mode&unix.S_IFMT == unix.S_IFDIR }

type exportRun struct {
	o                             *offlineTree
	force                         bool
	errw                          io.Writer
	failed                        []string
	links                         map[[2]uint64]string // inode -> first exported path (hard links)
	asRoot                        bool
	files, dirs, symlinks, others int
	xattrWarned                   bool // DEST refused user.* attributes once
}

func runExport(ctx context.Context, g *globals, dirArg, pathArg, destArg string, force bool, out, errw io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
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
	// dstOf is where the walk entry e goes.
	dstOf := func(e cipherdir.WalkEntry) string {
		sub := strings.TrimPrefix(strings.TrimPrefix(e.Plain, start), "/")
		return filepath.Join(dest, filepath.FromSlash(sub))
	}

	// Plan: every entry with its destination, and the conflicts. Names
	// that do not map are reported by the export walk below.
	var items []exportItem
	if isTree {
		err = o.tree.Walk(start, func(e cipherdir.WalkEntry) error {
			it := exportItem{rel: plainLabel(e.Plain), dst: dstOf(e)}
			if err := unix.Fstatat(e.Dir, e.Entry, &it.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
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
		case !force:
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
		if force {
			hint = ": remove them or export to another DEST"
		}
		return fmt.Errorf("%d entries in the way under %s, nothing exported%s", len(conflicts), dest, hint)
	}

	r := &exportRun{o: o, force: force, errw: errw, links: map[[2]uint64]string{}, asRoot: os.Geteuid() == 0}
	var bar *progressbar.ProgressBar
	if f, ok := errw.(*os.File); ok && isTree && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(len(items), progressbar.OptionSetWriter(errw),
			progressbar.OptionSetDescription("export"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	report := func(rel string, err error) {
		if bar != nil {
			bar.Clear()
		}
		fmt.Fprintf(errw, "kmsfs: %s\n", oneLine(err.Error()))
		r.failed = append(r.failed, rel)
	}
	if !isTree {
		if err := r.export(ctx, loc.Parent, loc.Entry, rootItem); err != nil {
			report(rootItem.rel, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dest), err)
		}
		var dirs []exportItem
		err = o.tree.Walk(start, func(e cipherdir.WalkEntry) error {
			if bar != nil {
				bar.Add(1)
			}
			it := exportItem{rel: plainLabel(e.Plain), dst: dstOf(e)}
			if err := unix.Fstatat(e.Dir, e.Entry, &it.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				report(it.rel, fmt.Errorf("%s: %w", it.rel, err))
				return nil
			}
			if it.isDir() {
				// Writable while we fill it; its mode and times are set last.
				if err := os.Mkdir(it.dst, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
					return fmt.Errorf("create directory %s: %w", it.dst, err)
				}
				dirs = append(dirs, it)
				r.dirs++
				return nil
			}
			if err := r.export(ctx, e.Dir, e.Entry, it); err != nil {
				report(it.rel, err)
			}
			return nil
		}, func(we *cipherdir.WalkError) error {
			report(we.Cipher, errors.New(nameProblem(o.ks.dir, we)+": left out"))
			return nil
		})
		if err != nil {
			return o.treeError(err)
		}
		// Deepest first, so a parent's mtime is set after its children change.
		sort.Slice(dirs, func(i, j int) bool { return dirs[i].dst > dirs[j].dst })
		for _, it := range dirs {
			if err := r.setMeta(it.dst, &it.st, false); err != nil {
				report(it.rel, err)
			}
		}
	}
	if bar != nil {
		bar.Finish()
	}
	fmt.Fprintf(out, "exported %d files, %d directories, %d symlinks, %d other entries to %s; %d failed\n",
		r.files, r.dirs, r.symlinks, r.others, dest, len(r.failed))
	if len(r.failed) > 0 {
		return fmt.Errorf("%d entries were not exported (listed above): run kmsfs verify %s for details", len(r.failed), o.ks.dir)
	}
	return nil
}

// export writes one non-directory entry, entry in the cipher directory
// dirfd.
func (r *exportRun) export(ctx context.Context, dirfd int, entry string, it exportItem) error {
	st := &it.st
	if st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, ok := r.links[key]; ok {
			if r.force {
				os.Remove(it.dst)
			}
			if err := os.Link(first, it.dst); err != nil {
				return fmt.Errorf("%s: hard link to %s: %w", it.rel, first, err)
			}
			r.files++
			return nil
		}
		defer func() {
			if _, err := os.Lstat(it.dst); err == nil {
				r.links[key] = it.dst
			}
		}()
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := r.exportFile(ctx, dirfd, entry, it); err != nil {
			return err
		}
		r.files++
		return nil
	case unix.S_IFLNK:
		target, err := r.o.readTarget(dirfd, entry, it.rel)
		if err != nil {
			return err
		}
		if r.force {
			os.Remove(it.dst)
		}
		if err := os.Symlink(target, it.dst); err != nil {
			return fmt.Errorf("%s: %w", it.rel, err)
		}
		r.symlinks++
		return r.setMeta(it.dst, st, true)
	case unix.S_IFIFO:
		if r.force {
			os.Remove(it.dst)
		}
		if err := unix.Mkfifo(it.dst, st.Mode&0o777); err != nil {
			return fmt.Errorf("%s: mkfifo: %w", it.rel, err)
		}
		r.others++
		return r.setMeta(it.dst, st, false)
	default:
		// Sockets and device nodes are not content: skipped, reported.
		return fmt.Errorf("%s: %v is not exported (sockets and devices are skipped)", it.rel, cipherdir.StatInfo(it.rel, st).Mode().Type())
	}
}

// exportFile decrypts a regular file into a temporary file next to its
// destination, sets its metadata and renames it into place.
func (r *exportRun) exportFile(ctx context.Context, dirfd int, entry string, it exportItem) error {
	fd, err := cipherdir.OpenAt(dirfd, entry, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", it.rel, err)
	}
	pf, err := openCipherFile(ctx, r.o.ks, os.NewFile(uintptr(fd), it.rel), it.rel)
	if err != nil {
		return err
	}
	defer pf.Close()
	tmp, err := os.CreateTemp(filepath.Dir(it.dst), "."+filepath.Base(it.dst)+".kmsfs-export-*")
	if err != nil {
		return fmt.Errorf("%s: %w", it.rel, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := pf.copyTo(tmp); err != nil {
		return err
	}
	xv, bad, err := pf.xattrs()
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fileError(it.rel, pf.id, pf.hasID, "extended attribute %s fails authentication", strings.Join(bad, ", "))
	}
	for name, v := range xv {
		err := unix.Fsetxattr(int(tmp.Fd()), name, v, 0)
		if errors.Is(err, unix.ENOTSUP) {
			if !r.xattrWarned {
				r.xattrWarned = true
				fmt.Fprintf(r.errw, "kmsfs: warning: %s does not support extended attributes: user.* attributes are not exported\n", filepath.Dir(it.dst))
			}
			break
		}
		if err != nil {
			return fmt.Errorf("%s: set extended attribute %s: %w", it.rel, name, err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%s: %w", it.rel, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", it.rel, err)
	}
	if err := r.setMeta(tmp.Name(), &it.st, false); err != nil {
		return err
	}
	if !r.force {
		// Link, not rename: fails if DEST appeared since the plan.
		if err := os.Link(tmp.Name(), it.dst); err != nil {
			return fmt.Errorf("%s: %w", it.rel, err)
		}
		os.Remove(tmp.Name())
	} else if err := os.Rename(tmp.Name(), it.dst); err != nil {
		return fmt.Errorf("%s: %w", it.rel, err)
	}
	done = true
	return nil
}

// setMeta gives path the owner (as root), mode and times of st.
func (r *exportRun) setMeta(path string, st *unix.Stat_t, symlink bool) error {
	if r.asRoot {
		if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	flags := 0
	if symlink {
		flags = unix.AT_SYMLINK_NOFOLLOW
	} else if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
		// After chown, which clears set-id bits.
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, flags); err != nil {
		return fmt.Errorf("set times of %s: %w", path, err)
	}
	return nil
}
