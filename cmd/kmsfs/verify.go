package main

// verify.go: `kmsfs verify CIPHERDIR [PATH]` authenticates every chunk of
// every file (in parallel), and reports each damaged file with its chunk
// ranges and header problems.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

func newVerifyCmd(g *globals) *cobra.Command {
	jobs := 0
	cmd := &cobra.Command{
		Use:   "verify [--jobs N] CIPHERDIR [PATH]",
		Short: "authenticate every chunk of every file",
		Long: `verify decrypts every chunk of every file of CIPHERDIR (or of the file or
subtree PATH, relative to the mount root) and reports each file that fails:
its chunk ranges that fail authentication, a damaged or missing header, an
extended attribute that fails authentication, a key that does not unwrap. Nothing is written. It works whether or not
CIPHERDIR is mounted (a file being written while it runs may be reported).
Exit status 1 when anything fails.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return usagef("%s takes 1 or 2 arguments, got %d (usage: %s)", cmd.CommandPath(), len(args), cmd.UseLine())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "."
			if len(args) == 2 {
				path = args[1]
			}
			if jobs < 1 {
				return usagef("--jobs must be at least 1, got %d", jobs)
			}
			return runVerify(cmd.Context(), g, args[0], path, jobs, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().IntVarP(&jobs, "jobs", "j", runtime.GOMAXPROCS(0), "files verified in parallel")
	return cmd
}

// verifyResult is what verify found in one file, or in one name that
// does not map (nameLine).
type verifyResult struct {
	rel      string
	id       crypto.FileID
	hasID    bool
	chunks   int64
	problems []string
	nameLine string // a name the walk could not map, said in full
}

func (r verifyResult) lines() []string {
	if r.nameLine != "" {
		return []string{r.nameLine}
	}
	out := make([]string, len(r.problems))
	for i, p := range r.problems {
		out[i] = fmt.Sprintf("%s (file %s): %s", r.rel, fileIDString(r.id, r.hasID), p)
	}
	return out
}

// verifyJob is one open cipher file for a worker; the worker closes it.
type verifyJob struct {
	f   *os.File
	rel string
}

func runVerify(ctx context.Context, g *globals, dirArg, pathArg string, jobs int, out, errw io.Writer) error {
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
	isTree := false
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		isTree = true
	default:
		return fmt.Errorf("%s is not a regular file or a directory: nothing to verify", rel)
	}

	var bar *progressbar.ProgressBar
	if f, ok := errw.(*os.File); ok && isTree && term.IsTerminal(int(f.Fd())) {
		n := 0
		_ = o.tree.Walk(loc.Plain, func(e cipherdir.WalkEntry) error {
			if e.Type == 0 {
				n++
			}
			return nil
		}, func(*cipherdir.WalkError) error { return nil })
		if n > 1 {
			bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(errw),
				progressbar.OptionSetDescription("verify"), progressbar.OptionShowCount(),
				progressbar.OptionClearOnFinish())
		}
	}
	var (
		mu      sync.Mutex
		results []verifyResult
		files   int
	)
	addResult := func(r verifyResult) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}
	// The walk opens each file and hands it to a worker: at most jobs+1
	// files are open at once, and no path is built.
	work := make(chan verifyJob)
	var wg sync.WaitGroup
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range work {
				r := verifyFile(ctx, o.ks, j, buf)
				j.f.Close()
				addResult(r)
				if bar != nil {
					bar.Add(1)
				}
			}
		}()
	}
	var seen cipherdir.InodeSet // hard links: a file is verified once
	submit := func(dirfd int, entry, rel string) {
		fd, err := cipherdir.OpenAt(dirfd, entry, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			files++
			addResult(verifyResult{rel: rel, problems: []string{fmt.Sprintf("cannot open: %v", err)}})
			return
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && !seen.AddInode(cipherdir.Inode{Dev: st.Dev, Ino: st.Ino}) {
			unix.Close(fd) // another hard link of a file already listed
			return
		}
		files++
		work <- verifyJob{f: os.NewFile(uintptr(fd), rel), rel: rel}
	}
	if isTree {
		err = o.tree.Walk(loc.Plain, func(e cipherdir.WalkEntry) error {
			if e.Type == 0 {
				submit(e.Dir, e.Entry, e.Plain)
			}
			return nil
		}, func(we *cipherdir.WalkError) error {
			addResult(verifyResult{rel: we.Plain, nameLine: nameProblem(o.ks.dir, we)})
			return nil
		})
	} else {
		submit(loc.Parent, loc.Entry, rel)
	}
	close(work)
	wg.Wait()
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return o.treeError(err)
	}

	sort.SliceStable(results, func(i, j int) bool { return results[i].rel < results[j].rel })
	damaged, names := 0, 0
	var chunks int64
	for _, r := range results {
		chunks += r.chunks
		switch {
		case r.nameLine != "":
			names++
		case len(r.problems) > 0:
			damaged++
		default:
			continue
		}
		for _, l := range r.lines() {
			fmt.Fprintln(out, l)
		}
	}
	summary := fmt.Sprintf("verified %d files, %d chunks: %d damaged", files, chunks, damaged)
	if names > 0 {
		summary += fmt.Sprintf(", %d names unreadable", names)
	}
	fmt.Fprintln(out, summary)
	switch {
	case damaged > 0 && names > 0:
		return fmt.Errorf("%d of %d files in %s fail verification and %d names cannot be read (listed on stdout): restore them from a backup", damaged, files, o.ks.dir, names)
	case damaged > 0:
		return fmt.Errorf("%d of %d files in %s fail verification (listed on stdout): restore them from a backup", damaged, files, o.ks.dir)
	case names > 0:
		return fmt.Errorf("%d names in %s cannot be read, so their files were not verified (listed on stdout): run kmsfs fsck %s", names, o.ks.dir, o.ks.dir)
	}
	return nil
}

// verifyFile checks one open cipher file: preamble, both header slots, the
// key, and every content chunk. buf is the worker's read buffer.
func verifyFile(ctx context.Context, ks *keyStack, j verifyJob, buf []byte) (r verifyResult) {
	r.rel = j.rel
	f := j.f
	l := ks.conf.Layout()
	problem := func(format string, args ...any) { r.problems = append(r.problems, fmt.Sprintf(format, args...)) }
	fi, err := f.Stat()
	if err != nil {
		problem("cannot stat: %v", err)
		return r
	}
	if !fi.Mode().IsRegular() {
		problem("not a regular file (%v)", fi.Mode().Type())
		return r
	}
	if fi.Size() == 0 {
		return r // created and never written: an empty file with no header yet
	}
	hd, err := cipherfile.ReadHead(f, l)
	switch {
	case err == nil, errors.Is(err, crypto.ErrNoValidHeader), errors.Is(err, crypto.ErrLayoutMismatch):
		r.id, r.hasID = hd.Preamble.FileID, true
	case isPreambleError(err):
		problem("invalid preamble (%v): not a readable cipher file", unwrapCause(err))
		return r
	default:
		problem("cannot read its header: %v", errors.Unwrap(err))
		return r
	}
	slot := hd.Slots
	switch {
	case errors.Is(err, crypto.ErrLayoutMismatch):
		pre := hd.Preamble
		problem("header: chunk/slot shift %d/%d differs from the filesystem's %d/%d (preamble damaged?)",
			pre.ChunkShift, pre.SlotShift, l.ChunkShift, l.SlotShift)
		return r
	case err != nil:
		problem("header: no valid header slot (slot 0: %v; slot 1: %v): kmsfs fsck --repair restores it if the index has it",
			unwrapCause(slot[0].Err), unwrapCause(slot[1].Err))
		return r
	}
	if cur, other := hd.Current, 1-hd.Current; slot[other].Err != nil && !errors.Is(slot[other].Err, crypto.ErrEmptySlot) {
		problem("header: slot %d is damaged (%v); slot %d is valid: kmsfs fsck --repair rewrites it", other, unwrapCause(slot[other].Err), cur)
	}
	cf, err := cipherfile.OpenContent(f, l, ks.keySource(ctx))
	var oe *cipherfile.OpenError
	switch {
	case errors.As(err, &oe) && oe.Key:
		problem("cannot get its key: %v", keyOpenCause(oe.Err))
		return r
	case err != nil:
		problem("%v", err)
		return r
	}
	fd := int(f.Fd())
	if names, err := cipherdir.ListXattrFd(fd); err == nil {
		for _, name := range names {
			if !strings.HasPrefix(name, "user.") {
				continue
			}
			sealed, err := cipherdir.GetXattrFd(fd, name)
			if err == nil {
				_, err = cf.Cipher().OpenXattr(name, sealed)
			}
			if err != nil {
				problem("extended attribute %s fails authentication (%v)", name, err)
			}
		}
	}
	bad, chunks, err := authenticateChunks(cf, l, buf)
	r.chunks = chunks
	if len(bad) > 0 {
		problem("%s", chunkRanges(bad))
	}
	if err != nil {
		problem("read failed after chunk %d: %v", chunks, err)
	}
	return r
}

// isPreambleError reports whether err is a preamble that does not parse
// (rather than one that does not read).
func isPreambleError(err error) bool {
	return errors.Is(err, crypto.ErrNotCipherFile) || errors.Is(err, crypto.ErrUnsupportedVersion) || errors.Is(err, crypto.ErrBadPreamble)
}

// authenticateChunks reads the whole content, batch by batch; a chunk that
// fails stops a batch, is recorded, and the read resumes after it. It
// returns the failing chunk indexes (ascending) and the number of chunks.
func authenticateChunks(cf *cipherfile.File, l crypto.Layout, buf []byte) (bad []int64, chunks int64, err error) {
	var off int64
	for {
		n, rerr := cf.ReadAt(buf, off)
		off += int64(n)
		if rerr == nil {
			continue
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		var ce *cipherfile.ChunkError
		if !errors.As(rerr, &ce) {
			return bad, l.ChunkCount(off), rerr
		}
		if len(bad) == 0 || bad[len(bad)-1] < ce.Index {
			bad = append(bad, ce.Index)
		}
		next := (ce.Index + 1) << l.ChunkShift
		if next <= off {
			break // a bad tail past the last whole chunk: nothing after it
		}
		off = next
	}
	chunks = l.ChunkCount(off)
	if len(bad) > 0 {
		chunks = max(chunks, bad[len(bad)-1]+1)
	}
	return bad, chunks, nil
}

// chunkRanges says which chunks fail: "chunk 5 fails authentication",
// "chunks 1, 5-7 fail authentication". idx is ascending.
func chunkRanges(idx []int64) string {
	var parts []string
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && idx[j+1] == idx[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, strconv.FormatInt(idx[i], 10))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", idx[i], idx[j]))
		}
		i = j + 1
	}
	if len(idx) == 1 {
		return "chunk " + parts[0] + " fails authentication"
	}
	return "chunks " + strings.Join(parts, ", ") + " fail authentication"
}
