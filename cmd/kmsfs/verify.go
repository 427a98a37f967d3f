package main

// verify.go: `kmsfs verify CIPHERDIR [PATH]` authenticates every chunk of
// every file (in parallel), and reports each damaged file with its chunk
// ranges and header problems.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/crypto"
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

// verifyTarget is one cipher file to verify.
type verifyTarget struct{ path, rel string }

// verifyResult is what verify found in one file.
type verifyResult struct {
	rel      string
	id       crypto.FileID
	hasID    bool
	chunks   int64
	problems []string
}

func (r verifyResult) lines() []string {
	out := make([]string, len(r.problems))
	for i, p := range r.problems {
		out[i] = fmt.Sprintf("%s (file %s): %s", r.rel, fileIDString(r.id, r.hasID), p)
	}
	return out
}

func runVerify(ctx context.Context, g *globals, dirArg, pathArg string, jobs int, out, errw io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ks, rel, root, fi, err := openOfflineTarget(ctx, g, dirArg, pathArg, errw)
	if err != nil {
		return err
	}
	defer ks.Close()
	var targets []verifyTarget
	switch {
	case fi.Mode().IsRegular():
		targets = append(targets, verifyTarget{root, rel})
	case fi.IsDir():
		seen := map[[2]uint64]bool{}
		err = walkTree(ks.dir, root, func(path, rel string, d fs.DirEntry) error {
			if !d.Type().IsRegular() {
				return nil
			}
			if info, err := d.Info(); err == nil {
				if st, ok := info.Sys().(*syscall.Stat_t); ok {
					k := [2]uint64{uint64(st.Dev), st.Ino}
					if seen[k] {
						return nil // another hard link of a file already listed
					}
					seen[k] = true
				}
			}
			targets = append(targets, verifyTarget{path, rel})
			return nil
		})
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s is not a regular file or a directory: nothing to verify", rel)
	}

	var bar *progressbar.ProgressBar
	if f, ok := errw.(*os.File); ok && len(targets) > 1 && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(len(targets), progressbar.OptionSetWriter(errw),
			progressbar.OptionSetDescription("verify"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	results := make([]verifyResult, len(targets))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(jobs, max(1, len(targets))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for i := range work {
				results[i] = verifyFile(ctx, ks, targets[i], buf)
				if bar != nil {
					bar.Add(1)
				}
			}
		}()
	}
	for i := range targets {
		work <- i
	}
	close(work)
	wg.Wait()
	if bar != nil {
		bar.Finish()
	}

	sort.Slice(results, func(i, j int) bool { return results[i].rel < results[j].rel })
	damaged := 0
	var chunks int64
	for _, r := range results {
		chunks += r.chunks
		if len(r.problems) > 0 {
			damaged++
			for _, l := range r.lines() {
				fmt.Fprintln(out, l)
			}
		}
	}
	fmt.Fprintf(out, "verified %d files, %d chunks: %d damaged\n", len(results), chunks, damaged)
	if damaged > 0 {
		return fmt.Errorf("%d of %d files in %s fail verification (listed on stdout): restore them from a backup", damaged, len(results), ks.dir)
	}
	return nil
}

// verifyFile checks one cipher file: preamble, both header slots, the key,
// and every content chunk. buf is the worker's read buffer.
func verifyFile(ctx context.Context, ks *keyStack, t verifyTarget, buf []byte) (r verifyResult) {
	r.rel = t.rel
	l := ks.conf.Layout()
	problem := func(format string, args ...any) { r.problems = append(r.problems, fmt.Sprintf(format, args...)) }
	f, err := os.Open(t.path)
	if err != nil {
		problem("cannot open: %v", err)
		return r
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		problem("cannot stat: %v", err)
		return r
	}
	if fi.Size() == 0 {
		return r // created and never written: an empty file with no header yet
	}
	head := make([]byte, l.ContentOffset())
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		problem("cannot read its header: %v", err)
		return r
	}
	clear(head[n:])
	pre, err := crypto.ParsePreamble(head[:min(n, crypto.PreambleSize)])
	if err != nil {
		problem("invalid preamble (%v): not a readable cipher file", unwrapCause(err))
		return r
	}
	r.id, r.hasID = pre.FileID, true
	if pre.Layout() != l {
		problem("header: chunk/slot shift %d/%d differs from the filesystem's %d/%d (preamble damaged?)",
			pre.ChunkShift, pre.SlotShift, l.ChunkShift, l.SlotShift)
		return r
	}
	var slotErr [2]error
	for i := range 2 {
		_, slotErr[i] = crypto.DecodeSlot(head[l.SlotOffset(i):l.SlotOffset(i)+l.SlotSize()], pre.FileID)
	}
	h, cur, err := crypto.PickSlot(head[l.SlotOffset(0):l.SlotOffset(1)], head[l.SlotOffset(1):l.ContentOffset()], pre.FileID)
	if err != nil {
		problem("header: no valid header slot (slot 0: %v; slot 1: %v): kmsfs fsck --repair restores it if the index has it",
			unwrapCause(slotErr[0]), unwrapCause(slotErr[1]))
		return r
	}
	if other := 1 - cur; slotErr[other] != nil && !errors.Is(slotErr[other], crypto.ErrEmptySlot) {
		problem("header: slot %d is damaged (%v); slot %d is valid: kmsfs fsck --repair rewrites it", other, unwrapCause(slotErr[other]), cur)
	}
	c, err := ks.mgr.OpenFile(ctx, pre.FileID, func() (crypto.Header, error) { return h, nil })
	if err != nil {
		problem("cannot get its key: %v", keyOpenCause(err))
		return r
	}
	cf, err := cipherfile.New(f, c)
	if err != nil {
		problem("%v", err)
		return r
	}
	if names, err := listXattrs(int(f.Fd())); err == nil {
		for _, name := range names {
			if !strings.HasPrefix(name, "user.") {
				continue
			}
			sealed, err := getXattr(int(f.Fd()), name)
			if err == nil {
				_, err = c.OpenXattr(name, sealed)
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
