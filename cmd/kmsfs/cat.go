package main

// cat.go: `kmsfs cat CIPHERDIR PATH`, one file decrypted to stdout without
// FUSE, mounted or not. It and export share openCipherFile, which opens
// content as the mount does (cipherfile.OpenContent).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

func newCatCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cat CIPHERDIR PATH",
		Short: "decrypt one file to stdout, without mounting",
		Long: `cat decrypts the file at PATH (relative to the mount root, e.g. docs/a.txt)
of CIPHERDIR to stdout, without FUSE: for a machine that cannot mount, or a
quick look. It works whether or not CIPHERDIR is mounted; each file's key
comes from its own header, and with encrypted names the names key is
unwrapped to find PATH. A chunk that fails authentication stops the
output there (everything before it is authentic) and exits 1.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCat(cmd.Context(), g, args[0], args[1], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
}

func runCat(ctx context.Context, g *globals, dirArg, pathArg string, out, errw io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	o, err := openOfflineTree(ctx, g, dirArg, errw)
	if err != nil {
		return err
	}
	defer o.Close()
	loc, st, err := o.resolve(pathArg)
	if err != nil {
		return err
	}
	defer loc.Close()
	rel := plainLabel(loc.Plain)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		return fmt.Errorf("%s is a directory: use kmsfs export to decrypt a tree", rel)
	case unix.S_IFLNK:
		target, err := o.readTarget(loc.Parent, loc.Entry, rel)
		if err != nil {
			return err
		}
		return fmt.Errorf("%s is a symlink to %s: cat its target", rel, target)
	default:
		return fmt.Errorf("%s is not a regular file (%v)", rel, cipherdir.StatInfo(rel, &st).Mode().Type())
	}
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(rel)
	}
	f, err := openCipherEntry(loc.Parent, loc.Entry, rel, o.ks.dir)
	if err != nil {
		return err
	}
	cf, err := openCipherFile(ctx, o.ks, f, rel)
	if err != nil {
		return err
	}
	defer cf.Close()
	if w, base, ok := sparseTarget(out); ok {
		// A regular file written at its end: holes stay holes. The
		// offset is left after the content, as a dense write leaves it.
		n, err := cf.copySparse(w, base)
		if _, serr := w.Seek(base+n, io.SeekStart); err == nil && serr != nil {
			err = fmt.Errorf("write %s: %w", rel, serr)
		}
		return err
	}
	_, err = cf.copyTo(out)
	return err
}

// testHookBeforeOpen, when set by a test, runs after cat or export has
// looked at a cipher entry and before it opens it: the window in which a
// writer of the cipher directory may swap the entry.
var testHookBeforeOpen func(rel string)

// openCipherEntry opens the cipher file entry of dirfd (rel, its plain
// path, names it in errors) for reading with cipherdir.OpenRegularAt: a
// FIFO, device or symlink put in its place after the walk is refused,
// promptly and without being followed. dir is the cipher directory, for
// the fix.
func openCipherEntry(dirfd int, entry, rel, dir string) (*os.File, error) {
	f, _, err := cipherdir.OpenRegularAt(dirfd, entry, rel)
	if errors.Is(err, cipherdir.ErrNotRegular) {
		return nil, fmt.Errorf("%s: its cipher file is %v now: the cipher directory changed under kmsfs or was tampered with; nothing was read from it: run kmsfs verify %s", rel, err, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: open its cipher file: %w", rel, err)
	}
	return f, nil
}

// sparseTarget reports whether w is a regular file that copySparse may
// write: not in append mode, and written at its end (so every byte it
// skips reads as zeros); base is that end.
func sparseTarget(w io.Writer) (f *os.File, base int64, ok bool) {
	f, ok = w.(*os.File)
	if !ok {
		return nil, 0, false
	}
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, 0, false
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_APPEND != 0 {
		return nil, 0, false
	}
	base, err = unix.Seek(fd, 0, io.SeekCurrent)
	if err != nil || base != st.Size {
		return nil, 0, false
	}
	return f, base, true
}

// plainFile is an open cipher file ready to decrypt.
type plainFile struct {
	rel   string
	id    crypto.FileID
	hasID bool
	f     *os.File
	l     crypto.Layout
	cf    *cipherfile.File // nil for an empty (0-byte) cipher file
}

func (p *plainFile) Close() error { return p.f.Close() }

// fileError names a file by its plain path and file ID.
func fileError(rel string, id crypto.FileID, hasID bool, format string, args ...any) error {
	return fmt.Errorf("%s (file %s): %s", rel, fileIDString(id, hasID), fmt.Sprintf(format, args...))
}

// openCipherFile gets the key of the open cipher file f (rel, its plain
// path, names it in errors) from its own header mirror; f is the
// plainFile's from then on, closed with it or on an error. A 0-byte cipher
// file (created, never written through a writable open) is an empty file
// with no header.
func openCipherFile(ctx context.Context, ks *keyStack, f *os.File, rel string) (*plainFile, error) {
	p := &plainFile{rel: rel, f: f}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%v)", rel, fi.Mode().Type())
	}
	if fi.Size() == 0 {
		return p, nil
	}
	l := ks.conf.Layout()
	p.l = l
	cf, err := cipherfile.OpenContent(f, l, ks.keySource(ctx))
	if err != nil {
		f.Close()
		var oe *cipherfile.OpenError
		if !errors.As(err, &oe) {
			return nil, fileError(rel, p.id, false, "not a readable cipher file: %v", unwrapCause(err))
		}
		pre := oe.Preamble
		switch {
		case oe.Key:
			return nil, fileError(rel, pre.FileID, true, "cannot get its key: %v", keyOpenCause(oe.Err))
		case errors.Is(err, crypto.ErrLayoutMismatch):
			return nil, fileError(rel, pre.FileID, true, "chunk/slot shift %d/%d differs from the filesystem's %d/%d",
				pre.ChunkShift, pre.SlotShift, l.ChunkShift, l.SlotShift)
		}
		return nil, fileError(rel, pre.FileID, true, "%v", err)
	}
	p.id, p.hasID, p.cf = cf.FileID(), true, cf
	return p, nil
}

// keyOpenCause says why a file key did not open, with the fix.
func keyOpenCause(err error) string {
	switch {
	case errors.Is(err, crypto.ErrNoValidHeader), errors.Is(err, crypto.ErrBadHeader):
		return fmt.Sprintf("no valid header (%v): kmsfs fsck --repair restores it from the index when the index has it", unwrapCause(err))
	case errors.Is(err, keymgr.ErrKeyDisabled):
		return fmt.Sprintf("%v: enable the key that wrapped it (kmsfs keys enable)", err)
	}
	return err.Error()
}

// copyTo writes the plain content to w, stopping at the first chunk that
// fails authentication.
func (p *plainFile) copyTo(w io.Writer) (int64, error) {
	if p.cf == nil {
		return 0, nil
	}
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := p.cf.ReadAt(buf, off)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return off, fmt.Errorf("write %s: %w", p.rel, werr)
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return off, nil
		}
		if err != nil {
			return off, p.readError(err)
		}
	}
}

// readError says why a ReadAt of the content failed, with the fix.
func (p *plainFile) readError(err error) error {
	var ce *cipherfile.ChunkError
	if errors.As(err, &ce) && errors.Is(err, crypto.ErrAuth) {
		return fileError(p.rel, p.id, p.hasID, "chunk %d fails authentication (damaged or tampered): run kmsfs verify for the full list", ce.Index)
	}
	return fileError(p.rel, p.id, p.hasID, "read: %v", err)
}

// copySparse writes the plain content to the regular file w at offsets
// base.., where everything reads as zeros already (a new file, or a file
// written at its end), and returns the plain bytes copied. A whole chunk
// that is a hole in the cipher file (found with SEEK_DATA, not read) or
// opens to zeros is not written, so it stays a hole in w; w is then
// extended with ftruncate to base plus the bytes copied, also when a
// chunk fails authentication (everything before it is authentic, zeros
// included). The last chunk is always read: it is never a hole, and one
// that is must fail authentication as ReadAt reports it.
func (p *plainFile) copySparse(w *os.File, base int64) (int64, error) {
	if p.cf == nil {
		return 0, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(p.f.Fd()), &st); err != nil {
		return 0, fileError(p.rel, p.id, p.hasID, "fstat: %v", err)
	}
	// The best answer for a damaged size too: its last chunk is the cut
	// one, which ReadAt reports.
	plainSize, _ := p.l.PlainSize(st.Size)
	plainLast := max(0, p.l.ChunkCount(plainSize)-1) << p.l.ChunkShift
	chunk := int(p.l.ChunkSize())
	buf := make([]byte, max(1<<20, chunk)) // a whole number of chunks
	zero := make([]byte, chunk)
	var off int64
	extend := func(err error) (int64, error) {
		var wst unix.Stat_t
		ferr := unix.Fstat(int(w.Fd()), &wst)
		if ferr == nil && wst.Size < base+off {
			ferr = unix.Ftruncate(int(w.Fd()), base+off)
		}
		if err == nil && ferr != nil {
			err = fmt.Errorf("write %s: %w", p.rel, ferr)
		}
		return off, err
	}
	for {
		if off < plainLast {
			off = p.nextData(off, plainLast)
		}
		n, err := p.cf.ReadAt(buf, off)
		for i := 0; i < n; i += chunk {
			piece := buf[i:min(i+chunk, n)]
			if bytes.Equal(piece, zero[:len(piece)]) {
				continue
			}
			if _, werr := w.WriteAt(piece, base+off+int64(i)); werr != nil {
				off += int64(i)
				return extend(fmt.Errorf("write %s: %w", p.rel, werr))
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) {
			return extend(nil)
		}
		if err != nil {
			return extend(p.readError(err))
		}
	}
}

// nextData is the plain offset of the first chunk at or after the chunk
// at plainOff that is not wholly a hole of the cipher file, at most
// plainLast (the last chunk). Where SEEK_DATA is not supported it is
// plainOff: every chunk is read.
func (p *plainFile) nextData(plainOff, plainLast int64) int64 {
	index := plainOff >> p.l.ChunkShift
	cipherOff := p.l.CipherChunkOffset(index)
	cipherData, err := unix.Seek(int(p.f.Fd()), cipherOff, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return plainLast // nothing but a hole up to the end
	}
	if err != nil || cipherData <= cipherOff {
		return plainOff
	}
	// The chunk holding cipherData has data; those before it are zeros
	// from cipherOff on, and a non-last chunk of zeros is a hole.
	dataIndex := (cipherData - p.l.ContentOffset()) / p.l.CipherChunkSize()
	return min(max(plainOff, dataIndex<<p.l.ChunkShift), plainLast)
}

// xattrs reads and opens the file's user.* extended attributes (stored
// sealed under the file's key, docs/format.md "Extended attributes"). A
// value that fails authentication is named in bad, not returned.
func (p *plainFile) xattrs() (values map[string][]byte, bad []string, err error) {
	if p.cf == nil {
		return nil, nil, nil
	}
	fd := int(p.f.Fd())
	names, err := cipherdir.ListXattrFd(fd)
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fileError(p.rel, p.id, p.hasID, "list extended attributes: %v", err)
	}
	for _, name := range names {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		sealed, err := cipherdir.GetXattrFd(fd, name)
		if err != nil {
			return nil, nil, fileError(p.rel, p.id, p.hasID, "read extended attribute %s: %v", name, err)
		}
		v, err := p.cf.Cipher().OpenXattr(name, sealed)
		if err != nil {
			bad = append(bad, name)
			continue
		}
		if values == nil {
			values = map[string][]byte{}
		}
		values[name] = v
	}
	return values, bad, nil
}
