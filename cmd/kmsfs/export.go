package main

// export.go: `kmsfs export CIPHERDIR PATH DEST` decrypts one file or a
// subtree to DEST without FUSE (restoring on a machine that cannot mount).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
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
file that fails authentication is reported and left out, the others are
exported, and the exit status is 1. Works whether or not CIPHERDIR is
mounted.`,
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
	src, rel, dst string
	fi            os.FileInfo
}

type exportRun struct {
	ks                            *keyStack
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
	ks, rel, root, rootFi, err := openOfflineTarget(ctx, g, dirArg, pathArg, errw)
	if err != nil {
		return err
	}
	defer ks.Close()
	dest, err := filepath.Abs(destArg)
	if err != nil {
		return err
	}
	if within(dest, ks.dir) {
		return usagef("destination %s is inside the cipher directory %s: export somewhere else", dest, ks.dir)
	}

	// Plan: every entry with its destination, and the conflicts.
	var items []exportItem
	if rootFi.IsDir() {
		err = walkTree(ks.dir, root, func(path, r string, d fs.DirEntry) error {
			fi, err := d.Info()
			if err != nil {
				return fmt.Errorf("%s: %w", r, err)
			}
			sub, _ := filepath.Rel(root, path)
			items = append(items, exportItem{src: path, rel: r, dst: filepath.Join(dest, sub), fi: fi})
			return nil
		})
		if err != nil {
			return err
		}
	} else {
		dst := dest
		if dfi, err := os.Stat(dest); err == nil && dfi.IsDir() {
			dst = filepath.Join(dest, filepath.Base(root))
		}
		items = append(items, exportItem{src: root, rel: rel, dst: dst, fi: rootFi})
	}
	var conflicts []string
	for _, it := range items {
		dfi, err := os.Lstat(it.dst)
		if err != nil {
			continue
		}
		switch {
		case it.fi.IsDir() && dfi.IsDir():
		case it.fi.IsDir():
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

	r := &exportRun{ks: ks, force: force, errw: errw, links: map[[2]uint64]string{}, asRoot: os.Geteuid() == 0}
	var bar *progressbar.ProgressBar
	if f, ok := errw.(*os.File); ok && rootFi.IsDir() && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(len(items), progressbar.OptionSetWriter(errw),
			progressbar.OptionSetDescription("export"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	if rootFi.IsDir() {
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dest), err)
		}
	}
	var dirs []exportItem
	for _, it := range items {
		if bar != nil {
			bar.Add(1)
		}
		if it.fi.IsDir() {
			// Writable while we fill it; its mode and times are set last.
			if err := os.Mkdir(it.dst, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create directory %s: %w", it.dst, err)
			}
			dirs = append(dirs, it)
			r.dirs++
			continue
		}
		if err := r.export(ctx, it); err != nil {
			if bar != nil {
				bar.Clear()
			}
			fmt.Fprintf(errw, "kmsfs: %s\n", oneLine(err.Error()))
			r.failed = append(r.failed, it.rel)
		}
	}
	// Deepest first, so a parent's mtime is set after its children change.
	sort.Slice(dirs, func(i, j int) bool { return dirs[i].dst > dirs[j].dst })
	for _, it := range dirs {
		if err := r.setMeta(it.dst, it.fi, false); err != nil {
			fmt.Fprintf(errw, "kmsfs: %s\n", oneLine(err.Error()))
			r.failed = append(r.failed, it.rel)
		}
	}
	if bar != nil {
		bar.Finish()
	}
	fmt.Fprintf(out, "exported %d files, %d directories, %d symlinks, %d other entries to %s; %d failed\n",
		r.files, r.dirs, r.symlinks, r.others, dest, len(r.failed))
	if len(r.failed) > 0 {
		return fmt.Errorf("%d entries were not exported (listed above): run kmsfs verify %s for details", len(r.failed), ks.dir)
	}
	return nil
}

// export writes one non-directory entry.
func (r *exportRun) export(ctx context.Context, it exportItem) error {
	st, _ := it.fi.Sys().(*syscall.Stat_t)
	if st != nil && st.Nlink > 1 && !it.fi.IsDir() {
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
	mode := it.fi.Mode()
	switch {
	case mode.IsRegular():
		if err := r.exportFile(ctx, it); err != nil {
			return err
		}
		r.files++
		return nil
	case mode&os.ModeSymlink != 0:
		target, err := os.Readlink(it.src)
		if err != nil {
			return fmt.Errorf("%s: %w", it.rel, err)
		}
		if r.force {
			os.Remove(it.dst)
		}
		if err := os.Symlink(target, it.dst); err != nil {
			return fmt.Errorf("%s: %w", it.rel, err)
		}
		r.symlinks++
		return r.setMeta(it.dst, it.fi, true)
	case mode&os.ModeNamedPipe != 0:
		if r.force {
			os.Remove(it.dst)
		}
		if err := unix.Mkfifo(it.dst, uint32(mode.Perm())); err != nil {
			return fmt.Errorf("%s: mkfifo: %w", it.rel, err)
		}
		r.others++
		return r.setMeta(it.dst, it.fi, false)
	default:
		// Sockets and device nodes are not content: skipped, reported.
		return fmt.Errorf("%s: %v is not exported (sockets and devices are skipped)", it.rel, mode.Type())
	}
}

// exportFile decrypts a regular file into a temporary file next to its
// destination, sets its metadata and renames it into place.
func (r *exportRun) exportFile(ctx context.Context, it exportItem) error {
	pf, err := openCipherFile(ctx, r.ks, it.src, it.rel)
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
	if err := r.setMeta(tmp.Name(), it.fi, false); err != nil {
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

// setMeta gives path the owner (as root), mode and times of fi.
func (r *exportRun) setMeta(path string, fi os.FileInfo, symlink bool) error {
	st, _ := fi.Sys().(*syscall.Stat_t)
	if r.asRoot && st != nil {
		if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	flags := 0
	if symlink {
		flags = unix.AT_SYMLINK_NOFOLLOW
	} else if st != nil {
		// After chown, which clears set-id bits.
		if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	if st == nil {
		return nil
	}
	ts := []unix.Timespec{unix.NsecToTimespec(syscall.TimespecToNsec(st.Atim)), unix.NsecToTimespec(syscall.TimespecToNsec(st.Mtim))}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, flags); err != nil {
		return fmt.Errorf("set times of %s: %w", path, err)
	}
	return nil
}
