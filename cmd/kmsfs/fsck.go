package main

// fsck.go: `kmsfs fsck [--repair] CIPHERDIR`. One walk of the cipher tree
// (cipherdir.WalkCipherDirs, no path built): every cipher file's head
// against the header index, and with encrypted names every directory's ID,
// names and long-name side files (checkDir); then a second pass over the
// directories whose ID is in doubt (checkDirIDs), which needs every
// directory's ID to tell a swapped one from a damaged one.

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
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
		Short: "check cipher file headers, the header index and encrypted names",
		Long: `fsck checks an unmounted cipher directory: every cipher file's preamble and
layout, both header slots, and that the header index holds the file's
header mirror; index entries without a file are orphans. With encrypted
names it also checks every directory's ID (kmsfs.dirid: missing, damaged,
or not the one its names decrypt under), every name (one that does not
decrypt was moved from another directory or damaged) and every long-name
side file (missing, not matching its entry, or orphaned); this unwraps
the names key, so it needs the passphrase or the KMS like kmsfs cat.

With --repair it puts header mirrors into the index, deletes orphans,
rewrites a damaged slot from the valid one, and rebuilds a corrupt index
from all mirrors. With encrypted names it writes a directory ID that is
missing or wrong when the directory is empty or when exactly one known ID
(the directory's user.kmsfs.dirid attribute, or another directory's)
decrypts its names, rewrites a side file whose encoding another side file
holds, and removes orphan side files. The rest is reported with the fix
to take. It never touches file content. Exit status 1 when findings
remain.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFsck(cmd.Context(), g, args[0], repair, cmd.OutOrStdout(), os.Stderr)
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "repair what can be repaired")
	return cmd
}

// finding is one problem fsck found.
type finding struct {
	rel      string // where: the cipher path (with encrypted names, the plain path and the cipher path), or "" for index-only
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
	inodes   cipherdir.InodeSet       // hard links: a file is checked once
	files    int
	notes    []string

	// Encrypted names (checkDir, checkDirIDs).
	encrypted bool
	tree      *cipherdir.Tree    // the cipher tree, with names when they are checked
	names     *crypto.NameCipher // nil: names not checked (plaintext, or the key did not unwrap)
	plainDirs map[string]string  // cipher path -> plain path ('?' for a name that did not map), directories only
	dirs      []*fsckDir         // every directory, for the second pass

	trusted []string // the trust record's keys; nil: not checked (no record)
}

func (r *fsckRun) add(f finding) { r.findings = append(r.findings, f) }

func runFsck(ctx context.Context, g *globals, arg string, repair bool, out, errw io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	dir, err := canonicalPath(arg)
	if err != nil {
		return err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return err
	}
	r := &fsckRun{dir: dir, layout: conf.Layout(), repair: repair, encrypted: conf.EncryptedNames(),
		seen: map[crypto.FileID]string{}, plainDirs: map[string]string{".": ""}}
	if rec, err := checkTrust(g, dir, conf); err == nil {
		r.trusted = rec.Keys
	} else {
		r.notes = append(r.notes, "the keys files name were not checked: "+oneLine(err.Error()))
	}

	indexPath := cipherdir.IndexDir(dir)
	r.ix, err = openCipherIndex(dir, keymgr.IndexOptions{ReadOnly: !repair})
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

	if r.encrypted {
		// The names key: without it the names are not checked, the rest is.
		ks, err := openOfflineStack(ctx, g, dir, errw)
		if err == nil {
			defer ks.Close()
			r.names, err = ks.nameCipher(ctx)
		}
		if err != nil {
			r.add(finding{rel: ".", id: "-", problem: fmt.Sprintf("names were not checked (only directory IDs and side files are): %s", oneLine(err.Error()))})
		}
		if r.names != nil {
			defer r.names.Zero()
		}
	}
	if r.tree, err = cipherdir.OpenTree(dir, r.names); err != nil {
		return err
	}
	defer r.tree.Close()

	var bar *progressbar.ProgressBar
	if f, ok := errw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		n := 0
		_ = cipherdir.WalkCipherFiles(r.tree.Root(), r.encrypted, func(*cipherdir.CipherDir, cipherdir.CipherEntry) error { n++; return nil })
		if n > progressThreshold {
			bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(errw),
				progressbar.OptionSetDescription("fsck"), progressbar.OptionShowCount(),
				progressbar.OptionClearOnFinish())
		}
	}
	err = cipherdir.WalkCipherDirs(r.tree.Root(), r.encrypted, func(d *cipherdir.CipherDir) error {
		var plainNames map[string]string
		if r.encrypted {
			plainNames = r.checkDir(d)
		}
		for _, e := range d.Entries {
			if !e.IsCipherFile() {
				continue
			}
			if bar != nil {
				bar.Add(1)
			}
			r.checkFile(d.Fd, e.Name, r.where(d, e.Name, plainNames))
		}
		delete(r.plainDirs, d.Cipher) // only directories still to visit are kept
		return nil
	})
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return err
	}
	if r.encrypted {
		r.checkDirIDs()
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
	summary := fmt.Sprintf("checked %d cipher files", r.files)
	if r.encrypted {
		summary += fmt.Sprintf(" in %d directories", len(r.dirs))
	}
	fmt.Fprintf(out, "%s: %d findings, %d repaired, %d remaining\n", summary, len(r.findings), repaired, remaining)
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

// where names an entry of d in findings: its cipher path, and with
// encrypted names its plain path first ('?' for a name that does not
// map), from plainNames (d's entries' plain names).
func (r *fsckRun) where(d *cipherdir.CipherDir, name string, plainNames map[string]string) string {
	cipher := d.Path(name)
	if !r.encrypted {
		return cipher
	}
	plain, ok := plainNames[name]
	if !ok {
		plain = "?"
	}
	return whereEncrypted(cipher, joinPlain(r.plainDirs[d.Cipher], plain))
}

// whereEncrypted is how a finding names a path with encrypted names.
func whereEncrypted(cipher, plain string) string {
	if cipher == "." {
		return "."
	}
	return fmt.Sprintf("%s (cipher %s)", plainLabel(plain), cipher)
}

func joinPlain(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// checkFile checks the cipher file entry of dirfd; rel names it in
// findings.
func (r *fsckRun) checkFile(dirfd int, entry, rel string) {
	r.files++
	flags := unix.O_RDONLY
	if r.repair {
		flags = unix.O_RDWR
	}
	fd, err := cipherdir.OpenAt(dirfd, entry, flags|unix.O_NONBLOCK, 0)
	if err != nil && r.repair {
		fd, err = cipherdir.OpenAt(dirfd, entry, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		r.add(finding{rel: rel, id: "-", problem: fmt.Sprintf("cannot open: %v", err)})
		return
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		r.add(finding{rel: rel, id: "-", problem: fmt.Sprintf("cannot stat: %v", err)})
		return
	}
	if !r.inodes.Add(fi) {
		return // another hard link of a file already checked
	}
	// A 0-byte file is an empty file without a header yet (a create cut
	// short by a crash, or mknod): the mount reads it as empty and gives
	// it a header on its first write.
	if fi.Size() == 0 {
		return
	}

	hd, err := cipherfile.ReadHead(f, r.layout)
	if err != nil && !errors.Is(err, crypto.ErrLayoutMismatch) && !errors.Is(err, crypto.ErrNoValidHeader) {
		r.add(finding{rel: rel, id: "-", problem: fmt.Sprintf("invalid preamble: %v", unwrapCause(err))})
		return
	}
	p := hd.Preamble
	id := p.FileID
	ids := id.String()
	if errors.Is(err, crypto.ErrLayoutMismatch) {
		r.add(finding{rel: rel, id: ids, problem: fmt.Sprintf("layout chunk/slot shift %d/%d differs from the filesystem's %d/%d",
			p.ChunkShift, p.SlotShift, r.layout.ChunkShift, r.layout.SlotShift)})
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
	slotErr := [2]error{hd.Slots[0].Err, hd.Slots[1].Err}
	if err != nil {
		r.noValidHeader(f, rel, id, slotErr)
		return
	}
	h, cur := hd.Header, hd.Current
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
	r.checkKeys(rel, h)
	r.checkIndexEntry(rel, h)
}

// checkKeys reports a header that names a key the user's trust record
// does not hold: the mount refuses to ask the KMS about it, so the file
// reads EIO. It is a file planted by a writer of the cipher directory, or
// one wrapped under a key of the user's that was never trusted here.
func (r *fsckRun) checkKeys(rel string, h crypto.Header) {
	if r.trusted == nil {
		return
	}
	for _, k := range h.Keys {
		if !slices.Contains(r.trusted, k.KeyARN) {
			r.add(finding{rel: rel, id: h.FileID.String(), problem: fmt.Sprintf(
				"wrapped under key %s, which you do not trust for this filesystem: it reads EIO and no KMS is asked; if it was planted, remove it; if the key is yours, trust it with kmsfs trust --key %s", k.KeyARN, k.KeyARN)})
		}
	}
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
	case err == nil && ih.Equal(h):
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

// fsckDir is what the first pass learnt about one directory of an
// encrypted-names tree, for the second (checkDirIDs).
type fsckDir struct {
	cipher, plain string
	fileID        []byte // kmsfs.dirid, when it is 16 bytes
	xattr         []byte // user.kmsfs.dirid, when it is 16 bytes
	id            []byte // the ID its names decrypt under, when one does
	// failing are the entries whose names do not decrypt under the
	// directory's ID, and failingEnc their encodings.
	failing, failingEnc []string
	// suspect: the directory's ID is missing or wrong and only a known
	// ID can replace it; idProblem says what is wrong with it.
	suspect   bool
	idProblem string
}

// checkDir checks the names of d (encrypted names): its long-name side
// files, its ID and, with the names key, every name. It returns the plain
// names of the entries that map, and records d for checkDirIDs.
func (r *fsckRun) checkDir(d *cipherdir.CipherDir) map[string]string {
	fd := &fsckDir{cipher: d.Cipher, plain: r.plainDirs[d.Cipher]}
	r.dirs = append(r.dirs, fd)
	where := whereEncrypted(d.Cipher, fd.plain)
	present := map[string]bool{}
	var names, sides []string // entries of the plain view; side files
	for _, e := range d.Entries {
		present[e.Name] = true
		switch {
		case !e.Own:
			names = append(names, e.Name)
		case crypto.IsLongNameSideFile(e.Name):
			sides = append(sides, e.Name)
		}
	}

	// Long names: every side file's content names its own entry (the
	// hash), so one found under another side file's name is no guess.
	sideEnc := map[string]string{}    // side file -> its content
	encodingOf := map[string]string{} // long entry -> its encoding, from any side file
	for _, side := range sides {
		if b, err := cipherdir.ReadSmallFileAt(d.Fd, side, 4096); err == nil {
			sideEnc[side] = string(b)
			encodingOf[crypto.LongName(string(b))] = string(b)
		}
	}
	badSide := map[string]bool{}
	for _, n := range names {
		if !crypto.IsLongName(n) {
			continue
		}
		side := n + crypto.LongNameSuffix
		content, read := sideEnc[side]
		if read && crypto.LongName(content) == n {
			continue
		}
		f := finding{rel: whereEncrypted(d.Path(n), joinPlain(fd.plain, "?")), id: "-"}
		switch {
		case !slices.Contains(sides, side):
			f.problem = "its long-name side file " + side + " is missing"
		case !read:
			f.problem = "its long-name side file " + side + " is unreadable"
		default:
			f.problem = "its long-name side file " + side + " holds another entry's name (swapped or damaged)"
		}
		if enc, ok := encodingOf[n]; ok {
			f.problem += "; another side file holds its name"
			f.fixable = true
			if r.repair {
				if err := r.tree.PrepareEntry(d.Fd, n, enc); err != nil {
					f.problem += fmt.Sprintf("; repair failed: %v", err)
				} else {
					f.repaired = true
					f.problem += ": rewritten"
				}
			}
		} else {
			f.problem += fmt.Sprintf(": the entry cannot be named: restore %s from a backup of the cipher directory", filepath.Join(r.dir, filepath.FromSlash(d.Path(side))))
		}
		badSide[n] = !f.repaired
		r.add(f)
	}
	for _, side := range sides {
		entry := strings.TrimSuffix(side, crypto.LongNameSuffix)
		if present[entry] {
			continue
		}
		f := finding{rel: whereEncrypted(d.Path(side), fd.plain), id: "-", fixable: true,
			problem: "orphan long-name side file: no entry " + entry + " (a crash between the two writes leaves one)"}
		if r.repair {
			if err := unix.Unlinkat(d.Fd, side, 0); err != nil {
				f.problem += fmt.Sprintf("; repair failed: %v", err)
			} else {
				f.repaired = true
				f.problem += ": removed"
			}
		}
		r.add(f)
	}

	// The directory's ID.
	fileID, ferr := cipherdir.ReadSmallFileAt(d.Fd, cipherdir.DirIDName, crypto.DirIDSize)
	state := ""
	switch {
	case errors.Is(ferr, unix.ENOENT):
		state = "is missing"
	case errors.Is(ferr, unix.EFBIG):
		state = fmt.Sprintf("is damaged (longer than %d bytes)", crypto.DirIDSize)
	case ferr != nil:
		state = fmt.Sprintf("is unreadable (%v)", ferr)
	case len(fileID) != crypto.DirIDSize:
		state = fmt.Sprintf("is damaged (%d bytes, want %d)", len(fileID), crypto.DirIDSize)
	default:
		fd.fileID = fileID
	}
	if x, err := r.tree.DirIDXattr(d.Fd); err == nil {
		fd.xattr = x
	}
	// decrypt maps every name (but those whose side file is wrong, already
	// reported) under id.
	decrypt := func(id []byte) (plain map[string]string, failing, failingEnc []string) {
		plain = map[string]string{}
		for _, n := range names {
			if badSide[n] {
				continue
			}
			p, _, err := r.tree.PlainName(d.Fd, id, n, d.Root)
			if err != nil {
				enc := n
				if e, ok := encodingOf[n]; ok {
					enc = e
				}
				failing, failingEnc = append(failing, n), append(failingEnc, enc)
				continue
			}
			plain[n] = p
		}
		return plain, failing, failingEnc
	}
	var plain map[string]string
	idFinding := finding{rel: where, id: "-", problem: cipherdir.DirIDName + " " + state}
	switch {
	case r.names == nil && fd.fileID != nil:
		// Names not checked: the key did not unwrap.
	case r.names == nil:
		switch {
		case len(names) == 0:
			r.newDirID(d.Fd, &idFinding)
		case fd.xattr != nil:
			idFinding.problem += "; its user.kmsfs.dirid attribute holds an ID (the mount uses it), which fsck cannot check without the names key: make the key usable and run kmsfs fsck again"
		default:
			idFinding.problem += fmt.Sprintf(": none of its %d entries can be named: restore %s from a backup of the cipher directory",
				len(names), filepath.Join(r.dir, filepath.FromSlash(d.Path(cipherdir.DirIDName))))
		}
		r.add(idFinding)
	case fd.fileID != nil:
		plain, fd.failing, fd.failingEnc = decrypt(fd.fileID)
		switch {
		case len(plain) > 0:
			fd.id = fd.fileID
		case len(fd.failing) == 0:
		case fd.xattr != nil && bytes.Equal(fd.xattr, fd.fileID):
			// Its attribute agrees: the entries came from elsewhere.
		default:
			fd.suspect = true
			fd.idProblem = fmt.Sprintf("its names do not decrypt under its %s (0 of %d: swapped with another directory's, or damaged)", cipherdir.DirIDName, len(fd.failing))
		}
	default:
		if fd.xattr != nil {
			var failing, failingEnc []string
			if plain, failing, failingEnc = decrypt(fd.xattr); len(plain) > 0 || len(names) == 0 {
				fd.id, fd.failing, fd.failingEnc = fd.xattr, failing, failingEnc
				idFinding.problem += "; its user.kmsfs.dirid attribute holds the ID its names decrypt under"
				r.writeDirID(d.Fd, fd.xattr, &idFinding)
				r.add(idFinding)
				break
			}
			plain = nil
		}
		if len(names) == 0 {
			r.newDirID(d.Fd, &idFinding)
			r.add(idFinding)
			break
		}
		fd.suspect, fd.idProblem = true, idFinding.problem
		for _, n := range names { // every name is for the second pass to try
			if badSide[n] {
				continue
			}
			enc := n
			if e, ok := encodingOf[n]; ok {
				enc = e
			}
			fd.failing, fd.failingEnc = append(fd.failing, n), append(fd.failingEnc, enc)
		}
	}
	for _, e := range d.Entries {
		if e.Type == os.ModeDir && !e.Own {
			p, ok := plain[e.Name]
			if !ok {
				p = "?"
			}
			r.plainDirs[d.Path(e.Name)] = joinPlain(fd.plain, p)
		}
	}
	return plain
}

// newDirID gives the empty directory dirfd a new ID (with --repair): any
// ID serves a directory with no names.
func (r *fsckRun) newDirID(dirfd int, f *finding) {
	f.problem += "; the directory is empty, so a new ID serves"
	id := make([]byte, crypto.DirIDSize)
	if _, err := crand.Read(id); err != nil {
		f.fixable = true
		f.problem += fmt.Sprintf("; repair failed: %v", err)
		return
	}
	r.writeDirID(dirfd, id, f)
}

// writeDirID replaces the kmsfs.dirid of dirfd (and its attribute) by id
// with --repair, and marks f fixable (and repaired).
func (r *fsckRun) writeDirID(dirfd int, id []byte, f *finding) {
	f.fixable = true
	if !r.repair {
		return
	}
	if err := unix.Unlinkat(dirfd, cipherdir.DirIDName, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		f.problem += fmt.Sprintf("; repair failed: remove the damaged %s: %v", cipherdir.DirIDName, err)
		return
	}
	if err := cipherdir.WriteDirID(dirfd, id); err != nil {
		f.problem += fmt.Sprintf("; repair failed: %v", err)
		return
	}
	f.repaired = true
	f.problem += ": written"
}

// knownID is a directory ID found in the tree, and the directory whose
// kmsfs.dirid (or attribute) holds it.
type knownID struct {
	id   []byte
	from *fsckDir
}

// maxHintTries bounds the decryptions checkDirIDs spends telling where
// names that do not decrypt came from.
const maxHintTries = 1 << 20

// checkDirIDs is the second pass over an encrypted-names tree: each
// directory whose ID is missing or wrong gets the one known ID that
// decrypts all its names (its attribute, or an ID no other directory's
// names use: two swapped kmsfs.dirid files), or is reported; each name
// that does not decrypt in a sound directory is reported with the
// directory it decrypts in, when one does.
func (r *fsckRun) checkDirIDs() {
	if r.names == nil {
		return
	}
	// pool: IDs no directory's names use, the candidates for a directory
	// whose ID is wrong; all: every ID, where a moved name may decrypt.
	var pool, all []knownID
	for _, d := range r.dirs {
		switch {
		case d.id != nil:
			all = append(all, knownID{d.id, d})
		case d.fileID != nil:
			all = append(all, knownID{d.fileID, d})
			if !slices.ContainsFunc(pool, func(k knownID) bool { return bytes.Equal(k.id, d.fileID) }) {
				pool = append(pool, knownID{d.fileID, d})
			}
		}
	}
	tries := 0
	for _, d := range r.dirs {
		if !d.suspect {
			for i, n := range d.failing {
				r.add(r.movedName(d, n, d.failingEnc[i], all, &tries))
			}
			continue
		}
		f := finding{rel: whereEncrypted(d.cipher, d.plain), id: "-", problem: d.idProblem}
		restore := fmt.Sprintf("restore %s from a backup of the cipher directory (or, if its entries were moved in from another directory, move them back)",
			filepath.Join(r.dir, filepath.FromSlash(d.cipher), cipherdir.DirIDName))
		dirfd, err := cipherdir.OpenDirPath(r.tree.Root(), d.cipher)
		if err != nil {
			f.problem += fmt.Sprintf(": %s (cannot reopen it to look further: %v)", restore, err)
			r.add(f)
			continue
		}
		cands := pool
		if d.xattr != nil && !bytes.Equal(d.xattr, d.fileID) {
			cands = append([]knownID{{d.xattr, d}}, pool...)
		}
		var matches []knownID
		for _, c := range cands {
			if bytes.Equal(c.id, d.fileID) || slices.ContainsFunc(matches, func(k knownID) bool { return bytes.Equal(k.id, c.id) }) {
				continue
			}
			if r.tree.DirIDOf(dirfd, d.failing, [][]byte{c.id}) != nil {
				matches = append(matches, c)
			}
		}
		switch len(matches) {
		case 0:
			f.problem += ": " + restore
		case 1:
			if matches[0].from == d {
				f.problem += "; its user.kmsfs.dirid attribute holds the ID its names decrypt under"
			} else {
				f.problem += fmt.Sprintf("; its names all decrypt under the %s of directory %s", cipherdir.DirIDName, whereEncrypted(matches[0].from.cipher, matches[0].from.plain))
			}
			r.writeDirID(dirfd, matches[0].id, &f)
		default:
			f.problem += fmt.Sprintf("; %d known IDs decrypt its names and fsck does not guess: %s", len(matches), restore)
		}
		unix.Close(dirfd)
		r.add(f)
	}
}

// movedName reports entry n of d, whose name (encoding enc) does not
// decrypt under d's ID, with the directory it does decrypt in if any.
func (r *fsckRun) movedName(d *fsckDir, n, enc string, known []knownID, tries *int) finding {
	f := finding{rel: whereEncrypted(joinCipher(d.cipher, n), joinPlain(d.plain, "?")), id: "-",
		problem: "name does not decrypt under its directory's ID: it was moved here from another directory, or damaged"}
	for _, k := range known {
		if k.from == d || *tries >= maxHintTries {
			continue
		}
		*tries++
		if _, err := r.names.DecryptName(k.id, enc); err == nil {
			f.problem += fmt.Sprintf("; it decrypts in directory %s: move it back there, or restore it from a backup of the cipher directory", whereEncrypted(k.from.cipher, k.from.plain))
			return f
		}
	}
	f.problem += ": restore it from a backup of the cipher directory, or delete it"
	return f
}

func joinCipher(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}
