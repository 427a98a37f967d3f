package main

// rewrap.go: `kmsfs rewrap`, which moves every file's wrapped key to the
// current version of the filesystem's key, or (--to) to another key, with
// the KMS's ReEncrypt. Unmounted, it opens the header index itself;
// mounted, it asks the mount over its control socket (control_*.go), which
// runs the same job with its own index and streams progress back. The
// keys move in keymgr.Rewrap; the cipher-file I/O it needs is here
// (rewrapOpener), over fs/cipherdir and fs/cipherfile.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

// maxRewrapJobs bounds --jobs.
const maxRewrapJobs = 256

// maxVerifyPasses bounds the extra passes of an online rewrap that catch
// files renamed or created behind the walk before kmsfs.conf changes.
const maxVerifyPasses = 3

type rewrapFlags struct {
	to     string
	jobs   int
	dryRun bool
}

func newRewrapCmd(g *globals) *cobra.Command {
	f := &rewrapFlags{}
	cmd := &cobra.Command{
		Use:   "rewrap [--to REF] [--jobs N] [--dry-run] CIPHERDIR",
		Short: "re-wrap every file's data key under the current key version, or another key",
		Long: `rewrap moves the wrapped data key (EDK) of every file with the KMS's
ReEncrypt: the data key never leaves the KMS and no content is rewritten;
only the header mirrored in each file (and its index entry) changes.

Without --to it re-wraps every EDK not under the current version of the
filesystem's key: after kmsfs keys rotate (local keyring), or, for AWS KMS,
whose key versions are hidden, every file once per run (a new rewrap epoch;
a run that was interrupted resumes its epoch).

With --to REF it migrates every file to another key of the same KMS, then
makes REF the filesystem's key in kmsfs.conf, last, once every file has
moved: the old key may then be disabled.

It works on a mounted cipher directory (through the mount) and an
unmounted one, runs --jobs files at a time, and can be interrupted at any
moment: every file stays readable, and running it again finishes the job.
--dry-run reports what it would do and changes nothing.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.jobs < 1 || f.jobs > maxRewrapJobs {
				return usagef("--jobs %d: give 1..%d", f.jobs, maxRewrapJobs)
			}
			return runRewrap(g, f, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.to, "to", "", "migrate to this key (key ID, ARN or alias) and make it the filesystem's key")
	fl.IntVar(&f.jobs, "jobs", keymgr.DefaultRewrapJobs, "files rewrapped in parallel")
	fl.BoolVar(&f.dryRun, "dry-run", false, "report what would be rewrapped; change nothing")
	return cmd
}

// rewrapRequest is what a rewrap is asked to do (also the control
// protocol's "rewrap" request).
type rewrapRequest struct {
	To     string `json:"to,omitempty"`
	Jobs   int    `json:"jobs"`
	DryRun bool   `json:"dry_run,omitempty"`
}

// rewrapFailure is one file that did not move.
type rewrapFailure struct {
	Path   string `json:"path"` // relative to the cipher directory
	FileID string `json:"file_id,omitempty"`
	Error  string `json:"error"`
}

// rewrapSummary is what a rewrap did.
type rewrapSummary struct {
	CipherDir     string          `json:"cipherdir"`
	Online        bool            `json:"online"` // run by the mount
	DryRun        bool            `json:"dry_run,omitempty"`
	KeyARN        string          `json:"key_arn"`     // target key
	KeyVersion    uint32          `json:"key_version"` // target version (or epoch)
	Epoch         bool            `json:"epoch,omitempty"`
	Files         int             `json:"files"`
	Rewrapped     int             `json:"rewrapped"`
	Current       int             `json:"current"`
	IndexFixed    int             `json:"index_fixed"`
	Skipped       int             `json:"skipped"`
	Failed        int             `json:"failed"`
	Failures      []rewrapFailure `json:"failures,omitempty"`
	ElapsedMS     int64           `json:"elapsed_ms"`
	ConfigUpdated bool            `json:"config_updated,omitempty"` // kmsfs.conf now names the --to key
	Key           string          `json:"key,omitempty"`            // ... as given
}

// rewrapEnv is what a rewrap job runs with: the CLI's own stores
// (unmounted) or the mount's.
type rewrapEnv struct {
	dir    string
	conf   *cipherdir.Config // updated when the job saves kmsfs.conf
	prov   keymgr.Provider   // audited
	ix     *keymgr.Index
	log    *slog.Logger
	online bool
	// setWrapKey, when set (a mount), makes new files wrap under the
	// target from the start of the job.
	setWrapKey func(keyARN string, epoch uint32) error
	// trust adds a key to the keys the provider may use and to the
	// user's trust record (trust.go); wrap also makes it the key new
	// files wrap under in the record. A --to target is trusted before
	// the first file moves to it: the user named it.
	trust func(keyARN string, wrap bool) error
}

// trustFor is rewrapEnv.trust for a provider pinned by p and the trust
// record of filesystem fsid.
func trustFor(p *keymgr.PinnedProvider, fsid string) func(string, bool) error {
	return func(keyARN string, wrap bool) error {
		if p != nil {
			p.Trust(keyARN)
		}
		if err := trustKey(fsid, keyARN, wrap); err != nil {
			return fmt.Errorf("trust key %s: %w", keyARN, err)
		}
		return nil
	}
}

// runRewrapJob is the whole rewrap: resolve the target, raise the aws
// epoch when a new full rewrap starts, walk and rewrap, check again when
// files may have moved behind the walk (online), and write kmsfs.conf last.
func runRewrapJob(ctx context.Context, env rewrapEnv, req rewrapRequest, progress func(done, total int)) (rewrapSummary, error) {
	start := time.Now()
	conf := *env.conf
	sum := rewrapSummary{CipherDir: env.dir, Online: env.online, DryRun: req.DryRun}
	ref := conf.KeyARN
	if req.To != "" {
		ref = req.To
	}
	tg, _, err := keymgr.ResolveRewrapTarget(ctx, env.prov, ref, conf.RewrapEpoch)
	if err != nil {
		return sum, keyError(ref, env.prov.Name()+" KMS", err)
	}
	migrating := tg.KeyARN != conf.KeyARN
	if migrating && !req.DryRun && env.trust != nil {
		if err := env.trust(tg.KeyARN, false); err != nil {
			return sum, err
		}
	}
	// A new full rewrap of an aws key re-encrypts every file: the epoch
	// in a header is not authenticated, so a header claiming the new
	// epoch proves nothing. Only a resumed run skips the files at its
	// epoch (keymgr.RewrapOptions.Resume).
	resume := conf.RewrapPending
	save := func(c cipherdir.Config) error {
		if err := cipherdir.Save(env.dir, c); err != nil {
			return err
		}
		conf = c
		*env.conf = c
		return nil
	}
	if tg.Epoch && !migrating && !conf.RewrapPending {
		// A new full rewrap of an aws key: raise the epoch first, so an
		// interrupted run is resumed, not started over.
		c := conf
		c.RewrapEpoch++
		c.RewrapPending = true
		tg.Version = c.RewrapEpoch
		if !req.DryRun {
			if err := save(c); err != nil {
				return sum, err
			}
		}
	}
	sum.KeyARN, sum.KeyVersion, sum.Epoch = tg.KeyARN, tg.Version, tg.Epoch
	if env.setWrapKey != nil && !req.DryRun {
		epoch := conf.RewrapEpoch
		if err := env.setWrapKey(tg.KeyARN, epoch); err != nil {
			return sum, err
		}
	}

	opts := keymgr.RewrapOptions{
		FilesystemID: conf.FilesystemID,
		Provider:     env.prov,
		Index:        env.ix,
		Target:       tg,
		Resume:       resume,
		Jobs:         req.Jobs,
		DryRun:       req.DryRun,
		Progress:     progress,
		Logger:       env.log,
	}
	var total keymgr.RewrapStats
	for pass := 0; ; pass++ {
		paths, err := cipherdir.ListFiles(env.dir)
		if err != nil {
			return sum, fmt.Errorf("list the cipher files of %s: %w", env.dir, err)
		}
		paths = append(paths, rewrapRootHeads(env.dir, conf)...)
		opts.Open = rewrapOpener(env.dir, conf.Layout()) // each pass takes every file once
		st, err := keymgr.Rewrap(ctx, opts, paths)
		if pass == 0 {
			total = st
		} else {
			// Later passes only catch stragglers: count what they moved.
			total.Rewrapped += st.Rewrapped
			total.Files += st.Rewrapped
			total.Failed += st.Failed
			total.Failures = append(total.Failures, st.Failures...)
		}
		if err != nil {
			fillSummary(&sum, total, env.dir, start)
			return sum, fmt.Errorf("%w: every file is still readable; run kmsfs rewrap again to finish", err)
		}
		opts.Progress = nil
		opts.Resume = true // later passes only look for files pass 0 did not see
		if !env.online || req.DryRun || st.Failed > 0 || st.Rewrapped == 0 || pass+1 >= maxVerifyPasses {
			break
		}
	}
	fillSummary(&sum, total, env.dir, start)
	if total.Failed > 0 {
		return sum, fmt.Errorf("%d of %d files were not rewrapped (see above); they still open under their old key: fix the cause and run kmsfs rewrap again", total.Failed, total.Files)
	}
	if req.DryRun {
		return sum, nil
	}
	switch {
	case migrating:
		c := conf
		c.Key, c.KeyARN, c.RewrapPending = req.To, tg.KeyARN, false
		if err := save(c); err != nil {
			return sum, fmt.Errorf("every file is wrapped under %s, but %w: run kmsfs rewrap --to %s again", tg.KeyARN, err, req.To)
		}
		if env.trust != nil {
			if err := env.trust(tg.KeyARN, true); err != nil {
				return sum, fmt.Errorf("kmsfs.conf now names %s, but %w: review it and accept it with kmsfs trust %s", tg.KeyARN, err, env.dir)
			}
		}
		sum.ConfigUpdated, sum.Key = true, req.To
	case conf.RewrapPending:
		c := conf
		c.RewrapPending = false
		if err := save(c); err != nil {
			return sum, err
		}
	}
	return sum, nil
}

// rewrapRootHeads are the heads a rewrap moves besides the cipher files
// the walk lists, which leaves out the root's own entries: the copies of
// the names key (kmsfs.names, .kmsfs/names) of an encrypted-names
// filesystem, so that the old key can go once a rewrap --to is done; they
// count as files in the summary. With plaintext names, a root file named
// kmsfs.names or kmsfs.dirid is a user's file from before those names were
// reserved, which the walk now skips: it is listed so that it moves too.
// Only regular files are listed: a missing copy is fsck's to report.
func rewrapRootHeads(dir string, conf cipherdir.Config) []string {
	candidates := cipherdir.NamesKeyPaths(dir)
	if !conf.EncryptedNames() {
		candidates = []string{cipherdir.NamesPath(dir), filepath.Join(dir, cipherdir.DirIDName)}
	}
	var out []string
	for _, p := range candidates {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().IsRegular() {
			out = append(out, p)
		}
	}
	return out
}

// rewrapOpener is keymgr.RewrapOptions.Open over the cipher directory dir
// for one pass. A path is reached one component at a time from the root
// (no symlink followed, no PATH_MAX limit); a file its owner may read but
// not write (chmod 444) is opened for writing by lending the owner the
// write bit for the open (cipherdir.OpenLending); what is not a regular
// file, an empty file (no header yet: it gets the current key when first
// written) and every hard link of a file after the first are skipped
// (keymgr.ErrRewrapSkip).
func rewrapOpener(dir string, layout crypto.Layout) func(path string, write bool) (keymgr.RewrapFile, error) {
	var taken cipherdir.InodeSet
	return func(path string, write bool) (keymgr.RewrapFile, error) {
		f, err := openForRewrap(dir, path, write)
		if err != nil {
			return nil, fmt.Errorf("open: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("stat: %w", err)
		}
		if !fi.Mode().IsRegular() || fi.Size() == 0 || !taken.Add(fi) {
			f.Close()
			return nil, keymgr.ErrRewrapSkip
		}
		return &rewrapFile{f: f, layout: layout}, nil
	}
}

// openForRewrap opens path in dir for reading and, when write is set,
// writing; O_NONBLOCK, so that a fifo swapped in cannot hold the open.
func openForRewrap(dir, path string, write bool) (*os.File, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK
	if write {
		flags = os.O_RDWR | syscall.O_NONBLOCK
	}
	f, err := cipherdir.OpenBeneath(dir, path, flags)
	if err == nil || !write || !errors.Is(err, os.ErrPermission) {
		return f, err
	}
	// Perhaps read-only for its owner: lend the write bit. Refused,
	// the first open's error stands.
	var parent *os.File
	var perr error
	if filepath.Dir(path) == filepath.Clean(dir) {
		parent, perr = os.Open(dir)
	} else {
		parent, perr = cipherdir.OpenBeneath(dir, filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY)
	}
	if perr != nil {
		return nil, err
	}
	defer parent.Close()
	fd, lerr := cipherdir.OpenLending(int(parent.Fd()), filepath.Base(path), flags, cipherdir.LendWrite)
	if lerr == syscall.EACCES {
		return nil, err
	}
	if lerr != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: lerr}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// rewrapFile is a cipher file open for a rewrap (keymgr.RewrapFile): its
// header slots through fs/cipherfile.
type rewrapFile struct {
	f      *os.File
	layout crypto.Layout
	slot   int // the slot ReadHeader picked; WriteHeader writes the other
}

func (r *rewrapFile) ReadHeader() (crypto.Header, error) {
	h, slot, err := cipherfile.ReadHeader(r.f, r.layout)
	r.slot = slot
	return h, err
}

func (r *rewrapFile) WriteHeader(h crypto.Header) error {
	return cipherfile.WriteHeader(r.f, r.layout, h, r.slot)
}

func (r *rewrapFile) Unlinked() bool {
	var st unix.Stat_t
	return unix.Fstat(int(r.f.Fd()), &st) == nil && st.Nlink == 0
}

func (r *rewrapFile) Close() error { return r.f.Close() }

func fillSummary(sum *rewrapSummary, st keymgr.RewrapStats, dir string, start time.Time) {
	sum.Files, sum.Rewrapped, sum.Current = st.Files, st.Rewrapped, st.Current
	sum.IndexFixed, sum.Skipped, sum.Failed = st.IndexFixed, st.Skipped, st.Failed
	sum.Failures = sum.Failures[:0]
	for _, f := range st.Failures {
		rel, err := filepath.Rel(dir, f.Path)
		if err != nil {
			rel = f.Path
		}
		msg := "unknown error"
		if f.Err != nil {
			msg = oneLine(f.Err.Error())
		}
		sum.Failures = append(sum.Failures, rewrapFailure{Path: rel, FileID: f.FileID, Error: msg})
	}
	sum.ElapsedMS = time.Since(start).Milliseconds()
}

func runRewrap(g *globals, f *rewrapFlags, arg string, out, errw io.Writer) error {
	dir, err := canonicalPath(arg)
	if err != nil {
		return err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	req := rewrapRequest{To: f.to, Jobs: f.jobs, DryRun: f.dryRun}
	bar := newRewrapBar(errw)

	if sock, ok := mountControl(dir); ok {
		sum, err := controlRewrap(ctx, sock, req, bar.update)
		bar.finish()
		if sum.CipherDir != "" {
			printRewrapSummary(out, sum)
		}
		return err
	}

	ix, err := openCipherIndex(dir, keymgr.IndexOptions{ReadOnly: f.dryRun})
	switch {
	case err == nil:
	case errors.Is(err, keymgr.ErrIndexLocked):
		return fmt.Errorf("the header index of %s is locked by another process: a mount without a control socket (an older kmsfs?) or another kmsfs command (rewrap, fsck --repair) still running: unmount it, or wait, and run kmsfs rewrap again", dir)
	default:
		return fmt.Errorf("header index of %s: %w", dir, err)
	}
	defer ix.Close()
	spec, err := providerSpecOf(g, dir, conf)
	if err != nil {
		return err
	}
	p, err := openProvider(spec, newPassSource(g))
	if err != nil {
		return err
	}
	defer p.Close()
	audit, err := keymgr.OpenAuditLog(cipherdir.AuditPath(dir), g.audit)
	if err != nil {
		return fmt.Errorf("open audit log %s: %w", cipherdir.AuditPath(dir), err)
	}
	defer audit.Close()
	env := rewrapEnv{
		dir:   dir,
		conf:  &conf,
		prov:  keymgr.NewAuditingProvider(p.Provider, audit, nil),
		ix:    ix,
		log:   slog.New(slog.DiscardHandler),
		trust: trustFor(p.pinned, conf.FilesystemID),
	}
	sum, err := runRewrapJob(ctx, env, req, bar.update)
	bar.finish()
	if sum.KeyARN != "" {
		printRewrapSummary(out, sum)
	}
	return err
}

// rewrapBar is the progress bar on a terminal (nothing otherwise).
type rewrapBar struct {
	w   io.Writer
	tty bool
	bar *progressbar.ProgressBar
}

func newRewrapBar(w io.Writer) *rewrapBar {
	b := &rewrapBar{w: w}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b.tty = true
	}
	return b
}

func (b *rewrapBar) update(done, total int) {
	if !b.tty || total <= 0 {
		return
	}
	if b.bar == nil {
		b.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetDescription("rewrap"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("files"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish())
	}
	_ = b.bar.Set(done)
}

func (b *rewrapBar) finish() {
	if b.bar != nil {
		_ = b.bar.Finish()
	}
}

func printRewrapSummary(w io.Writer, s rewrapSummary) {
	where := "unmounted"
	if s.Online {
		where = "through the mount"
	}
	version := fmt.Sprintf("version %d", s.KeyVersion)
	if s.Epoch {
		version = fmt.Sprintf("rewrap epoch %d", s.KeyVersion)
	}
	verb := "rewrapped"
	if s.DryRun {
		verb = "would rewrap"
		fmt.Fprintf(w, "dry run: nothing was changed\n")
	}
	fmt.Fprintf(w, "target: %s %s (%s)\n", s.KeyARN, version, where)
	for i, f := range s.Failures {
		if i == 20 {
			fmt.Fprintf(w, "failed: ... and %d more\n", s.Failed-20)
			break
		}
		id := f.FileID
		if id == "" {
			id = "-"
		}
		fmt.Fprintf(w, "failed: %s %s: %s\n", f.Path, id, f.Error)
	}
	elapsed := time.Duration(s.ElapsedMS) * time.Millisecond
	rate := ""
	if s.Rewrapped > 0 && elapsed > 0 {
		rate = fmt.Sprintf(" (%.0f files/s)", float64(s.Rewrapped)/elapsed.Seconds())
	}
	fmt.Fprintf(w, "files: %d; %s: %d; already current: %d; failed: %d", s.Files, verb, s.Rewrapped, s.Current, s.Failed)
	if s.Skipped > 0 {
		fmt.Fprintf(w, "; skipped: %d", s.Skipped)
	}
	if s.IndexFixed > 0 {
		fmt.Fprintf(w, "; index entries fixed: %d", s.IndexFixed)
	}
	fmt.Fprintf(w, "; elapsed: %s%s\n", elapsed.Round(time.Millisecond), rate)
	if s.ConfigUpdated {
		fmt.Fprintf(w, "kmsfs.conf: the filesystem's key is now %s (%s); the old key is no longer needed\n", s.Key, s.KeyARN)
	}
}
