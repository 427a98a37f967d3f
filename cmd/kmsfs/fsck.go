package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

// progressThreshold: trees with more regular files than this get a
// progress bar (on a terminal).
const progressThreshold = 2000

func newFsckCmd(g *globals) *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:   "fsck [--repair] CIPHERDIR",
		Short: "check cipher file headers against the header index",
		Long: `fsck checks an unmounted cipher directory: every cipher file's preamble and
layout, both header slots, and that the header index holds the file's
header mirror; index entries without a file are orphans. With --repair it
puts header mirrors into the index, deletes orphans, rewrites a damaged
slot from the valid one, and rebuilds a corrupt index from all mirrors.
It never touches file content. Exit status 1 when findings remain.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFsck(args[0], repair, cmd.OutOrStdout(), os.Stderr)
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "repair what can be repaired")
	return cmd
}

// finding is one problem fsck found.
type finding struct {
	rel      string // cipher path relative to CIPHERDIR, or "" for index-only
	id       string // file ID, or "-"
	problem  string
	repaired bool
	fixable  bool
}

func (f finding) String() string {
	path := f.rel
	if path == "" {
		path = "(index)"
	}
	s := fmt.Sprintf("%s %s: %s", path, f.id, f.problem)
	switch {
	case f.repaired:
		s += " [repaired]"
	case f.fixable:
		s += " [--repair fixes it]"
	}
	return s
}

type fsckRun struct {
	dir      string
	layout   crypto.Layout
	repair   bool
	ix       *keymgr.Index
	findings []finding
	seen     map[crypto.FileID]string // file ID -> first cipher path
	inodes   map[[2]uint64]bool
	files    int
	notes    []string
}

func (r *fsckRun) add(f finding) { r.findings = append(r.findings, f) }

func runFsck(arg string, repair bool, out, errw io.Writer) error {
	dir, err := canonicalPath(arg)
	if err != nil {
		return err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return err
	}
	r := &fsckRun{dir: dir, layout: conf.Layout(), repair: repair,
		seen: map[crypto.FileID]string{}, inodes: map[[2]uint64]bool{}}

	indexPath := cipherdir.IndexDir(dir)
	r.ix, err = keymgr.OpenIndex(indexPath, keymgr.IndexOptions{ReadOnly: !repair})
	switch {
	case err == nil:
	case errors.Is(err, keymgr.ErrIndexLocked):
		return fmt.Errorf("%s is mounted (its header index is locked): kmsfs unmount it first", dir)
	case errors.Is(err, keymgr.ErrIndexCorrupt), errors.Is(err, os.ErrNotExist):
		if !repair {
			r.add(finding{id: "-", problem: fmt.Sprintf("header index %s does not open (%v)", indexPath, err), fixable: true})
			r.ix = nil
			break
		}
		var aside string
		r.ix, aside, err = replaceIndex(indexPath, nil)
		if aside != "" {
			r.notes = append(r.notes, "moved the corrupt header index to "+aside)
		}
		if err != nil {
			return err
		}
		r.add(finding{id: "-", problem: "header index did not open: rebuilt from the header mirrors", repaired: true, fixable: true})
	default:
		return fmt.Errorf("open header index: %w", err)
	}
	if r.ix != nil {
		defer r.ix.Close()
	}

	var bar *progressbar.ProgressBar
	if f, ok := errw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		n := 0
		_ = cipherdir.WalkFiles(dir, func(string, string, fs.DirEntry) error { n++; return nil })
		if n > progressThreshold {
			bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(errw),
				progressbar.OptionSetDescription("fsck"), progressbar.OptionShowCount(),
				progressbar.OptionClearOnFinish())
		}
	}
	err = cipherdir.WalkFiles(dir, func(path, rel string, d fs.DirEntry) error {
		if bar != nil {
			bar.Add(1)
		}
		r.checkFile(path, rel)
		return nil
	})
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return err
	}
	if r.ix != nil {
		r.checkOrphans()
	}

	sort.SliceStable(r.findings, func(i, j int) bool { return r.findings[i].rel < r.findings[j].rel })
	remaining, repaired := 0, 0
	for _, f := range r.findings {
		fmt.Fprintln(out, f)
		if f.repaired {
			repaired++
		} else {
			remaining++
		}
	}
	for _, n := range r.notes {
		fmt.Fprintf(out, "note: %s\n", n)
	}
	fmt.Fprintf(out, "checked %d cipher files: %d findings, %d repaired, %d remaining\n", r.files, len(r.findings), repaired, remaining)
	if remaining > 0 {
		hint := ""
		for _, f := range r.findings {
			if !f.repaired && f.fixable && !repair {
				hint = ": run kmsfs fsck --repair " + dir
				break
			}
		}
		return fmt.Errorf("%d findings remain in %s%s", remaining, dir, hint)
	}
	return nil
}

func sameHeader(a, b crypto.Header) bool {
	if a.FileID != b.FileID || a.Generation != b.Generation || len(a.Keys) != len(b.Keys) {
		return false
	}
	for i := range a.Keys {
		if a.Keys[i].KeyARN != b.Keys[i].KeyARN || a.Keys[i].KeyVersion != b.Keys[i].KeyVersion || !bytes.Equal(a.Keys[i].EDK, b.Keys[i].EDK) {
			return false
		}
	}
	return true
}

func (r *fsckRun) checkFile(path, rel string) {
	r.files++
	flags := os.O_RDONLY
	if r.repair {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil && r.repair {
		f, err = os.OpenFile(path, os.O_RDONLY, 0)
	}
	if err != nil {
		r.add(finding{rel: rel, id: "-", problem: fmt.Sprintf("cannot open: %v", err)})
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		r.add(finding{rel: rel, id: "-", problem: fmt.Sprintf("cannot stat: %v", err)})
		return
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if r.inodes[key] {
			return // another hard link of a file already checked
		}
		r.inodes[key] = true
	}
	// A 0-byte file is an empty file without a header yet (a create cut
	// short by a crash, or mknod): the mount reads it as empty and gives
	// it a header on its first write.
	if fi.Size() == 0 {
		return
	}

	p, err := cipherfile.ReadPreamble(f)
	if err != nil {
		r.add(finding{rel: rel, id: "-", problem: fmt.Sprintf("invalid preamble: %v", unwrapCause(err))})
		return
	}
	id := p.FileID
	ids := id.String()
	if got := p.Layout(); got != r.layout {
		r.add(finding{rel: rel, id: ids, problem: fmt.Sprintf("layout chunk/slot shift %d/%d differs from the filesystem's %d/%d",
			got.ChunkShift, got.SlotShift, r.layout.ChunkShift, r.layout.SlotShift)})
		return
	}
	if first, dup := r.seen[id]; dup {
		r.notes = append(r.notes, fmt.Sprintf("%s has the file ID %s of %s (a copied cipher file): both open, but they share one data key", rel, ids, first))
		return
	}
	r.seen[id] = rel
	if _, err := r.layout.PlainSize(fi.Size()); err != nil {
		r.add(finding{rel: rel, id: ids, problem: fmt.Sprintf("cipher size %d is not a whole number of chunks (cut off?): its tail reads as EIO", fi.Size())})
	}

	// Both slots, each on its own.
	head := make([]byte, r.layout.ContentOffset())
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		r.add(finding{rel: rel, id: ids, problem: fmt.Sprintf("cannot read header slots: %v", err)})
		return
	}
	clear(head[n:])
	var slotH [2]crypto.Header
	var slotErr [2]error
	for i := range 2 {
		slotH[i], slotErr[i] = crypto.DecodeSlot(head[r.layout.SlotOffset(i):r.layout.SlotOffset(i)+r.layout.SlotSize()], id)
	}
	h, cur, err := crypto.PickSlot(head[r.layout.SlotOffset(0):r.layout.SlotOffset(1)], head[r.layout.SlotOffset(1):r.layout.ContentOffset()], id)
	if err != nil {
		r.noValidHeader(f, rel, id, slotErr)
		return
	}
	other := 1 - cur
	if oerr := slotErr[other]; oerr != nil && !errors.Is(oerr, crypto.ErrEmptySlot) {
		fd := finding{rel: rel, id: ids, problem: fmt.Sprintf("header slot %d is torn or invalid (%v); slot %d is valid", other, unwrapCause(oerr), cur), fixable: true}
		if r.repair {
			nh := h
			nh.Generation = h.Generation + 1
			if err := cipherfile.WriteHeader(f, r.layout, nh, cur); err != nil {
				fd.problem += fmt.Sprintf("; repair failed: %v", err)
			} else {
				fd.repaired = true
				h = nh
			}
		}
		r.add(fd)
	}
	r.checkIndexEntry(rel, h)
}

// noValidHeader: neither slot decodes. The index may still hold the
// header; with --repair it is written back into both slots.
func (r *fsckRun) noValidHeader(f *os.File, rel string, id crypto.FileID, slotErr [2]error) {
	fd := finding{rel: rel, id: id.String(), problem: fmt.Sprintf("no valid header slot (slot 0: %v; slot 1: %v)", unwrapCause(slotErr[0]), unwrapCause(slotErr[1]))}
	var ih crypto.Header
	var err error
	if r.ix != nil {
		ih, err = r.ix.Get(id)
	} else {
		err = keymgr.ErrNotIndexed
	}
	if err != nil {
		fd.problem += ": the index has no copy either; the file cannot be decrypted"
		r.add(fd)
		return
	}
	fd.problem += "; the index holds its header"
	fd.fixable = true
	if r.repair {
		h0 := ih
		h0.Generation = ih.Generation + 1
		h1 := ih
		h1.Generation = ih.Generation + 2
		if err := cipherfile.WriteHeader(f, r.layout, h0, 1); err != nil {
			fd.problem += fmt.Sprintf("; repair failed: %v", err)
		} else if err := cipherfile.WriteHeader(f, r.layout, h1, 0); err != nil {
			fd.problem += fmt.Sprintf("; repair failed: %v", err)
		} else if err := r.ix.Put(h1); err != nil {
			fd.problem += fmt.Sprintf("; repair failed: %v", err)
		} else {
			fd.repaired = true
		}
	}
	r.add(fd)
}

func (r *fsckRun) checkIndexEntry(rel string, h crypto.Header) {
	if r.ix == nil {
		return
	}
	ids := h.FileID.String()
	ih, err := r.ix.Get(h.FileID)
	var fd finding
	switch {
	case err == nil && sameHeader(ih, h):
		return
	case err == nil:
		fd = finding{rel: rel, id: ids, problem: fmt.Sprintf("index entry differs from the header mirror (index generation %d, file generation %d)", ih.Generation, h.Generation)}
	case errors.Is(err, keymgr.ErrNotIndexed):
		fd = finding{rel: rel, id: ids, problem: "no index entry"}
	default:
		fd = finding{rel: rel, id: ids, problem: fmt.Sprintf("index entry unreadable (%v)", unwrapCause(err))}
	}
	fd.fixable = true
	if r.repair {
		if err := r.ix.Put(h); err != nil {
			fd.problem += fmt.Sprintf("; repair failed: %v", err)
		} else {
			fd.repaired = true
			if fd.problem == "no index entry" {
				fd.problem = "no index entry: added from the header mirror"
			} else {
				fd.problem += ": replaced by the header mirror"
			}
		}
	}
	// A rebuilt index makes every file "missing": one summary line is enough.
	if fd.repaired && r.rebuilt() && errors.Is(err, keymgr.ErrNotIndexed) {
		return
	}
	r.add(fd)
}

func (r *fsckRun) rebuilt() bool {
	return len(r.findings) > 0 && r.findings[0].rel == "" && r.findings[0].repaired
}

func (r *fsckRun) checkOrphans() {
	var orphans []crypto.FileID
	err := r.ix.ForEach(func(h crypto.Header) error {
		if _, ok := r.seen[h.FileID]; !ok {
			orphans = append(orphans, h.FileID)
		}
		return nil
	})
	if err != nil {
		r.add(finding{id: "-", problem: fmt.Sprintf("header index unreadable while listing entries (%v)", unwrapCause(err)), fixable: true})
		return
	}
	for _, id := range orphans {
		fd := finding{id: id.String(), problem: "orphan index entry: no cipher file has this file ID", fixable: true}
		if r.repair {
			if err := r.ix.Delete(id); err != nil {
				fd.problem += fmt.Sprintf("; repair failed: %v", err)
			} else {
				fd.repaired = true
				fd.problem += ": deleted"
			}
		}
		r.add(fd)
	}
}

// unwrapCause drops the "read header of /path:" style prefixes of a
// wrapped error chain's outer layers when the sentinel says enough.
func unwrapCause(err error) error {
	for _, s := range []error{crypto.ErrNotCipherFile, crypto.ErrUnsupportedVersion, crypto.ErrBadPreamble,
		crypto.ErrEmptySlot, crypto.ErrBadChecksum, crypto.ErrBadHeader} {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}
