package main

// index.go: `kmsfs index backup|restore CIPHERDIR FILE`, a copy of the
// header index on badger's Backup/Load.
//
// A backup file is one line "kmsfs-index-backup/1 <filesystem id>\n"
// followed by badger's backup stream, so a restore refuses the index of
// another filesystem before it touches anything.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/internal/atomicfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

const indexBackupMagic = "kmsfs-index-backup/1"

func newIndexCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "index",
		Short: "back up and restore the header index",
		Long: `The header index (CIPHERDIR/.kmsfs/index) is a cache of the headers every
cipher file carries; it can always be rebuilt from the files (kmsfs fsck
--repair). A backup of it keeps a second copy of each file's wrapped key,
which fsck --repair writes back into a file whose own header slots are
both damaged.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %s", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "backup CIPHERDIR FILE",
			Short: "write the header index of an unmounted cipher directory to FILE (- for stdout)",
			Args:  exactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				return runIndexBackup(args[0], args[1], cmd.OutOrStdout(), cmd.ErrOrStderr())
			},
		},
		&cobra.Command{
			Use:   "restore CIPHERDIR FILE",
			Short: "add the entries of an index backup to an unmounted cipher directory's index, then heal it from the files",
			Long: `restore loads FILE (from kmsfs index backup; - for stdin) into the header
index of an unmounted CIPHERDIR: entries the index lacks are added, entries
it has are kept. Then every cipher file's own header is put into the index
wherever the index lacks it or differs (the file is the truth), so a backup
older than some files loses none of them. An index that does not open is
moved aside first. A backup of another filesystem is refused.`,
			Args: exactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				return runIndexRestore(args[0], args[1], cmd.OutOrStdout(), cmd.InOrStdin())
			},
		},
	)
	return cmd
}

// indexMounted is the error of an index held by a mount.
func indexMounted(dir, what string) error {
	return fmt.Errorf("%s is mounted (its header index is locked by the mount): kmsfs unmount it, then %s", dir, what)
}

func runIndexBackup(dirArg, file string, out, errw io.Writer) (err error) {
	dir, err := canonicalPath(dirArg)
	if err != nil {
		return err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return err
	}
	ix, err := openCipherIndex(dir, keymgr.IndexOptions{ReadOnly: true})
	switch {
	case errors.Is(err, keymgr.ErrIndexLocked):
		return indexMounted(dir, "back up its index (or back up the cipher directory itself: the index can be rebuilt from it)")
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s has no header index: mount it once, or run kmsfs fsck --repair %s", dir, dir)
	case err != nil:
		return err
	}
	defer ix.Close()
	n, err := ix.Count()
	if err != nil {
		return err
	}

	var w io.Writer = out
	var tmp *atomicfile.Pending
	if file != "-" {
		if tmp, err = atomicfile.Create(file, 0o600); err != nil {
			return fmt.Errorf("create %s: %w", file, err)
		}
		defer tmp.Abort()
		w = tmp.File()
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	fmt.Fprintf(bw, "%s %s\n", indexBackupMagic, conf.FilesystemID)
	if err := ix.Backup(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if tmp == nil {
		fmt.Fprintf(errw, "backed up %d index entries of %s\n", n, dir)
		return nil
	}
	if err := tmp.Commit(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	fmt.Fprintf(out, "backed up %d index entries of %s to %s\n", n, dir, file)
	return nil
}

// restoreStats counts what a restore did.
type restoreStats struct {
	loaded, kept          int // backup entries added / already in the index
	added, replaced, same int // file headers put into the index / already there
	unreadable            int // cipher files with no valid header
	orphans               int // index entries without a file
	total                 int
	movedAside            string
}

func runIndexRestore(dirArg, file string, out io.Writer, stdin io.Reader) error {
	dir, err := canonicalPath(dirArg)
	if err != nil {
		return err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return err
	}
	// Refuse a mounted directory before reading anything.
	if ix, err := openCipherIndex(dir, keymgr.IndexOptions{ReadOnly: true}); err == nil {
		ix.Close()
	} else if errors.Is(err, keymgr.ErrIndexLocked) {
		return indexMounted(dir, "restore its index")
	}
	var in io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("open index backup: %w", err)
		}
		defer f.Close()
		in = f
	}
	br := bufio.NewReaderSize(in, 64<<10)
	line, err := br.ReadString('\n')
	if err != nil && len(line) == 0 {
		return fmt.Errorf("%s is not a kmsfs index backup (empty): make one with kmsfs index backup", file)
	}
	magic, fsID, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if magic != indexBackupMagic {
		return fmt.Errorf("%s is not a kmsfs index backup (no %q line): make one with kmsfs index backup", file, indexBackupMagic)
	}
	if fsID != conf.FilesystemID {
		return fmt.Errorf("%s is the index of filesystem %s, and %s is filesystem %s: restore it into its own cipher directory", file, fsID, dir, conf.FilesystemID)
	}

	var st restoreStats
	live, err := openIndexForRestore(dir, &st)
	if err != nil {
		return err
	}
	defer live.Close()

	// Load into a scratch index first: a damaged backup changes nothing.
	scratchDir, err := os.MkdirTemp(cipherdir.MetaDir(dir), "index-restore-")
	if err != nil {
		return fmt.Errorf("scratch index: %w", err)
	}
	defer os.RemoveAll(scratchDir)
	scratch, err := keymgr.OpenIndex(scratchDir, keymgr.IndexOptions{})
	if err != nil {
		return fmt.Errorf("scratch index: %w", err)
	}
	defer scratch.Close()
	if err := scratch.Load(br); err != nil {
		return fmt.Errorf("%s is not a readable index backup (%v): nothing was changed", file, oneLine(err.Error()))
	}
	err = scratch.ForEach(func(h crypto.Header) error {
		if _, err := live.Get(h.FileID); err == nil {
			st.kept++
			return nil
		}
		st.loaded++
		return live.Put(h)
	})
	if err != nil {
		return fmt.Errorf("restore index entries: %w", err)
	}

	if err := healIndex(dir, conf, live, &st); err != nil {
		return err
	}
	n, err := live.Count()
	if err != nil {
		return err
	}
	st.total = n
	fmt.Fprintf(out, "restored %d index entries from %s (%d already present)\n", st.loaded, file, st.kept)
	fmt.Fprintf(out, "from the cipher files: %d headers added, %d stale entries replaced, %d already current\n", st.added, st.replaced, st.same)
	if st.movedAside != "" {
		fmt.Fprintf(out, "note: the old index did not open and was moved to %s\n", st.movedAside)
	}
	if st.unreadable > 0 {
		fmt.Fprintf(out, "note: %d cipher files have no valid header: kmsfs fsck --repair %s writes back those the index holds\n", st.unreadable, dir)
	}
	if st.orphans > 0 {
		fmt.Fprintf(out, "note: %d index entries have no cipher file (deleted since the backup?): kmsfs fsck --repair %s removes them\n", st.orphans, dir)
	}
	fmt.Fprintf(out, "the index of %s holds %d entries\n", dir, st.total)
	return nil
}

// openIndexForRestore opens the live index read-write: refused while
// mounted, moved aside when it does not open, created when missing.
func openIndexForRestore(dir string, st *restoreStats) (*keymgr.Index, error) {
	path := cipherdir.IndexDir(dir)
	ix, err := openCipherIndex(dir, keymgr.IndexOptions{})
	switch {
	case err == nil:
		return ix, nil
	case errors.Is(err, keymgr.ErrIndexLocked):
		return nil, indexMounted(dir, "restore its index")
	case errors.Is(err, keymgr.ErrIndexCorrupt):
		ix, st.movedAside, err = replaceIndex(path, nil)
		if err != nil {
			return nil, fmt.Errorf("header index %s does not open: %w", path, err)
		}
		return ix, nil
	default:
		return nil, err
	}
}

// healIndex puts every cipher file's header mirror into ix where ix lacks
// it or holds another, and counts the entries left without a file.
func healIndex(dir string, conf cipherdir.Config, ix *keymgr.Index, st *restoreStats) error {
	l := conf.Layout()
	seen := map[crypto.FileID]bool{}
	err := eachCipherFile(dir, conf, func(f *os.File, _ string, err error) error {
		if err != nil {
			st.unreadable++
			return nil
		}
		if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
			return nil // no header yet
		}
		h, _, err := cipherfile.ReadHeader(f, l)
		if err != nil {
			if pre, perr := cipherfile.ReadPreamble(f); perr == nil {
				seen[pre.FileID] = true // its index entry is not an orphan
			}
			st.unreadable++
			return nil
		}
		seen[h.FileID] = true
		ih, err := ix.Get(h.FileID)
		switch {
		case err == nil && ih.Equal(h):
			st.same++
			return nil
		case err == nil:
			st.replaced++
		default:
			st.added++
		}
		return ix.Put(h)
	})
	if err != nil {
		return err
	}
	return ix.ForEach(func(h crypto.Header) error {
		if !seen[h.FileID] {
			st.orphans++
		}
		return nil
	})
}
