package main

// stack.go: the key stack every command that needs file keys builds the
// same way (mount, and the offline readers cat, export and verify): the
// provider opened with the passphrase, the audit log around it, the key
// checked, the header index (or none), the locked DEK cache and the
// Manager. Plus the cipher tree the offline readers share, which maps
// their plain paths (fs/cipherdir.Tree).

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

// indexMode says how a key stack uses the header index.
type indexMode int

const (
	// noIndex: every open reads the file's header mirror; nothing is
	// written to the index. Works while a mount holds the index lock.
	noIndex indexMode = iota
	// healingIndex: the index read-write, a corrupt one moved aside and
	// rebuilt (mount).
	healingIndex
)

// stackOptions configures openKeyStack.
type stackOptions struct {
	index        indexMode
	cacheEntries int          // DEK cache size
	poolSize     int          // DEK pool size (only a Started Manager fills it)
	logger       *slog.Logger // nil: discard
	// auditOptional: an audit log that cannot be opened (a read-only
	// backup medium) is reported on warn and the stack runs without one.
	// Otherwise it is an error.
	auditOptional bool
	warn          io.Writer
	audit         keymgr.AuditOptions // the audit log's size cap and rotated logs kept (zero: defaults)
}

// keyStack is an open key stack. Close releases it in reverse order and
// zeroes every key it holds.
type keyStack struct {
	dir   string
	conf  cipherdir.Config
	prov  *openedProvider
	audit *keymgr.AuditLog // nil when optional and unavailable
	index *keymgr.Index    // nil with noIndex
	cache *keymgr.Cache
	mgr   *keymgr.Manager
}

// openKeyStack opens the provider of spec with pass, checks that the
// filesystem's key is usable, and builds the index, cache and Manager.
// The Manager is not started: a caller that creates files calls Start.
func openKeyStack(ctx context.Context, dir string, conf cipherdir.Config, spec providerSpec, pass passSource, o stackOptions) (s *keyStack, err error) {
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	s = &keyStack{dir: dir, conf: conf}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	if s.prov, err = openProvider(spec, pass); err != nil {
		return s, err
	}
	var prov keymgr.Provider = s.prov.Provider
	s.audit, err = keymgr.OpenAuditLog(cipherdir.AuditPath(dir), o.audit)
	switch {
	case err == nil:
		prov = keymgr.NewAuditingProvider(prov, s.audit, nil)
	case o.auditOptional:
		if o.warn != nil {
			fmt.Fprintf(o.warn, "kmsfs: warning: audit log %s cannot be opened (%v): key use is not logged\n", cipherdir.AuditPath(dir), oneLine(err.Error()))
		}
		err = nil
	default:
		return s, fmt.Errorf("open audit log %s: %w", cipherdir.AuditPath(dir), err)
	}
	if _, err = describeUsable(ctx, prov, conf.KeyARN, s.prov.where()); err != nil {
		return s, err
	}
	if o.index == healingIndex {
		if s.index, err = openIndexHealing(dir, o.logger); err != nil {
			return s, err
		}
	}
	if s.cache, err = keymgr.NewCache(keymgr.CacheOptions{MaxEntries: o.cacheEntries, TTL: cacheTTL}); err != nil {
		return s, fmt.Errorf("DEK cache: %w", err)
	}
	s.mgr, err = keymgr.NewManager(keymgr.ManagerOptions{
		FilesystemID: conf.FilesystemID,
		KeyARN:       conf.KeyARN,
		Provider:     prov,
		Index:        s.index,
		Cache:        s.cache,
		PoolSize:     o.poolSize,
		Layout:       conf.Layout(),
		Rand:         rand.Reader,
		Logger:       o.logger,
	})
	if err != nil {
		return s, fmt.Errorf("key manager: %w", err)
	}
	return s, nil
}

// Close closes the Manager, cache, index, audit log and provider, in that
// order; keys are zeroed on the way. The first error is returned.
func (s *keyStack) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	if s.mgr != nil {
		errs = append(errs, s.mgr.Close())
	}
	if s.cache != nil {
		errs = append(errs, s.cache.Close())
	}
	if s.index != nil {
		errs = append(errs, s.index.Close())
	}
	if s.audit != nil {
		errs = append(errs, s.audit.Close())
	}
	if s.prov != nil {
		errs = append(errs, s.prov.Close())
	}
	return errors.Join(errs...)
}

// keySource is the Manager's OpenFile as cipherfile.OpenContent asks for
// keys.
func (s *keyStack) keySource(ctx context.Context) cipherfile.KeySource {
	return func(id crypto.FileID, header func() (crypto.Header, error)) (*crypto.ContentCipher, error) {
		return s.mgr.OpenFile(ctx, id, header)
	}
}

// nameCipher returns the filesystem's name cipher, or nil, nil with
// plaintext names. The names key is unwrapped from kmsfs.names or, when
// that does not open, its copy .kmsfs/names, and zeroed once the cipher
// holds it. The caller zeroes the cipher (NameCipher.Zero).
func (s *keyStack) nameCipher(ctx context.Context) (*crypto.NameCipher, error) {
	if !s.conf.EncryptedNames() {
		return nil, nil
	}
	key, err := s.mgr.OpenNamesKey(ctx, cipherdir.NamesKeyReaders(s.dir, s.conf.Layout())...)
	if err != nil {
		return nil, namesKeyError(s.dir, err)
	}
	defer crypto.Zero(key)
	nc, err := crypto.NewNameCipher(key, s.conf.FilesystemID)
	if err != nil {
		return nil, fmt.Errorf("names key of %s: %w", s.dir, err)
	}
	return nc, nil
}

// namesKeyError says why no copy of the names key opened and what to do:
// fix the key's access when the KMS refused, else restore the file.
func namesKeyError(dir string, err error) error {
	paths := cipherdir.NamesKeyPaths(dir)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("names key of %s: %w", dir, err)
	}
	for _, kms := range []error{keymgr.ErrKeyNotFound, keymgr.ErrKeyDisabled, keymgr.ErrKeyInvalidState,
		keymgr.ErrAccessDenied, keymgr.ErrKMSUnavailable, keymgr.ErrThrottled} {
		if errors.Is(err, kms) {
			return fmt.Errorf("the names key in %s (copy %s) did not unwrap: %s: make the key usable (kmsfs keys list, or the KMS's key policy) and try again",
				paths[0], paths[1], oneLine(err.Error()))
		}
	}
	return fmt.Errorf("the names key of %s is unreadable: neither %s nor its copy %s opens (%s): no name can be read without it: restore %s from a backup of the cipher directory",
		dir, paths[0], paths[1], oneLine(err.Error()), cipherdir.NamesName)
}

// offlineCacheEntries: the offline readers keep a few keys only; each file
// is opened once.
const offlineCacheEntries = 1024

// openOfflineStack is what the offline readers start with (through
// openOfflineTree): the cipher directory resolved and loaded, and a key
// stack without the index, so they run whether or not the directory is
// mounted.
func openOfflineStack(ctx context.Context, g *globals, arg string, warn io.Writer) (*keyStack, error) {
	dir, err := canonicalPath(arg)
	if err != nil {
		return nil, err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return nil, err
	}
	spec, err := providerSpecOf(g, dir, conf)
	if err != nil {
		return nil, err
	}
	return openKeyStack(ctx, dir, conf, spec, newPassSource(g), stackOptions{
		index:         noIndex,
		cacheEntries:  offlineCacheEntries,
		poolSize:      1,
		auditOptional: true,
		warn:          warn,
		audit:         g.audit,
	})
}

// offlineTree is what the offline readers (cat, export, verify, path)
// work with: the key stack without the index, and the cipher tree with
// the filesystem's name cipher, so they take and print plain paths
// whatever the filesystem's names.
type offlineTree struct {
	ks    *keyStack
	tree  *cipherdir.Tree
	names *crypto.NameCipher // nil with plaintext names
}

// openOfflineTree opens the offline key stack of CIPHERDIR (dirArg), its
// names key when names are encrypted, and the cipher tree. The caller
// closes it.
func openOfflineTree(ctx context.Context, g *globals, dirArg string, warn io.Writer) (o *offlineTree, err error) {
	o = &offlineTree{}
	defer func() {
		if err != nil {
			o.Close()
			o = nil
		}
	}()
	if o.ks, err = openOfflineStack(ctx, g, dirArg, warn); err != nil {
		return o, err
	}
	if o.names, err = o.ks.nameCipher(ctx); err != nil {
		return o, err
	}
	o.tree, err = cipherdir.OpenTree(o.ks.dir, o.names)
	return o, err
}

// Close closes the tree and the key stack and zeroes the names key.
func (o *offlineTree) Close() error {
	var errs []error
	if o.tree != nil {
		errs = append(errs, o.tree.Close())
	}
	if o.names != nil {
		o.names.Zero()
	}
	errs = append(errs, o.ks.Close())
	return errors.Join(errs...)
}

// cleanPlain checks PATH, a plain path relative to the mount root (a
// leading "/" allowed), and returns it cleaned, "." for the root. ".."
// may not climb above the root.
func cleanPlain(p string) (string, error) {
	if strings.ContainsRune(p, 0) {
		return "", usagef("path %q contains a NUL byte", p)
	}
	c := path.Clean(strings.TrimPrefix(p, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", usagef("path %s leaves the filesystem: give a path relative to the mount root, e.g. docs/a.txt", p)
	}
	return c, nil
}

// resolve finds PATH (pathArg, a plain path relative to the mount root)
// in the tree: its location and its stat, not followed. The caller closes
// the location.
func (o *offlineTree) resolve(pathArg string) (*cipherdir.Location, unix.Stat_t, error) {
	var st unix.Stat_t
	c, err := cleanPlain(pathArg)
	if err != nil {
		return nil, st, err
	}
	loc, err := o.tree.Resolve(c)
	if err != nil {
		return nil, st, o.treeError(err)
	}
	if st, err = loc.Lstat(); err != nil {
		loc.Close()
		if errors.Is(err, unix.ENOENT) {
			return nil, st, fmt.Errorf("%s: no such file or directory in the plain view", c)
		}
		return nil, st, fmt.Errorf("%s: %w", c, err)
	}
	return loc, st, nil
}

// treeError adds the fix to an error of Tree.Resolve.
func (o *offlineTree) treeError(err error) error {
	var we *cipherdir.WalkError
	switch {
	case errors.As(err, &we):
		return errors.New(nameProblem(o.ks.dir, we))
	case errors.Is(err, cipherdir.ErrBadDirID):
		return fmt.Errorf("%w: no name in that directory can be read: run kmsfs fsck %s", err, o.ks.dir)
	case errors.Is(err, crypto.ErrNameTooLong):
		return usagef("%v: a name is at most %d bytes", err, crypto.MaxPlainName)
	}
	return err
}

// readTarget reads the symlink entry of dirfd and returns its plain
// target. rel names it in the error.
func (o *offlineTree) readTarget(dirfd int, entry, rel string) (string, error) {
	stored, err := cipherdir.Readlinkat(dirfd, entry)
	if err != nil {
		return "", fmt.Errorf("%s: %w", rel, err)
	}
	target, err := o.tree.DecryptTarget(stored)
	if err != nil {
		return "", fmt.Errorf("%s: its symlink target does not decrypt (%v): the link is damaged: restore it from a backup of the cipher directory", rel, err)
	}
	return string(target), nil
}

// plainLabel is a plain path for messages: "." for the root.
func plainLabel(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// nameProblem says what a name the tree could not map is (a
// cipherdir.WalkError from a walk or a path mapping of the cipher
// directory dir), and what to do about it. It names cipher paths and
// plain directories, never what a name failed to decrypt to.
func nameProblem(dir string, e *cipherdir.WalkError) string {
	switch {
	case errors.Is(e, cipherdir.ErrBadDirID):
		return fmt.Sprintf("directory %s (cipher %s): its %s is missing or damaged, so none of its entries can be named: run kmsfs fsck %s",
			plainLabel(e.Plain), e.Cipher, cipherdir.DirIDName, dir)
	case errors.Is(e, cipherdir.ErrLongName):
		return fmt.Sprintf("cipher entry %s in directory %s: its long-name side file %s%s is missing or does not match: restore it from a backup of the cipher directory (kmsfs fsck %s lists every one)",
			e.Cipher, plainLabel(e.Plain), path.Base(e.Cipher), crypto.LongNameSuffix, dir)
	case errors.Is(e, crypto.ErrNameAuth), errors.Is(e, crypto.ErrBadName):
		return fmt.Sprintf("cipher entry %s in directory %s does not decrypt: it was moved from another directory or damaged: move it back, or restore it from a backup of the cipher directory (kmsfs fsck %s says more)",
			e.Cipher, plainLabel(e.Plain), dir)
	case errors.Is(e, cipherdir.ErrOwnEntry):
		return fmt.Sprintf("%s is kmsfs's own entry, not part of the plain view", e.Cipher)
	case errors.Is(e, unix.ENOTDIR):
		return fmt.Sprintf("cipher %s is not a directory (a file or a symlink, which kmsfs never follows)", e.Cipher)
	case errors.Is(e, unix.ENOENT):
		return fmt.Sprintf("cipher %s: no such entry", e.Cipher)
	}
	return fmt.Sprintf("cipher %s in directory %s: %v", e.Cipher, plainLabel(e.Plain), e.Err)
}

// eachCipherFile opens every cipher file of the cipher directory dir in
// turn, read-only through its directory's handle (no path built, no
// symlink followed, kmsfs's own files passed over as conf's names
// require: cipherdir.WalkCipherFiles), and calls fn with it and its cipher
// path; the file is closed when fn returns. A file that does not open is
// passed as nil with the error. It needs no key. fn's first error stops
// the walk.
func eachCipherFile(dir string, conf cipherdir.Config, fn func(f *os.File, rel string, openErr error) error) error {
	root, err := cipherdir.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open cipher directory %s: %w", dir, err)
	}
	defer unix.Close(root)
	return cipherdir.WalkCipherFiles(root, conf.EncryptedNames(), func(d *cipherdir.CipherDir, e cipherdir.CipherEntry) error {
		rel := d.Path(e.Name)
		fd, err := cipherdir.OpenAt(d.Fd, e.Name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return fn(nil, rel, err)
		}
		f := os.NewFile(uintptr(fd), rel)
		defer f.Close()
		return fn(f, rel, nil)
	})
}

// fileIDString names a file by its ID in messages, or "-".
func fileIDString(id crypto.FileID, ok bool) string {
	if !ok {
		return "-"
	}
	return id.String()
}

// openCipherIndex opens the header index of the cipher directory dir
// after checking that neither .kmsfs nor the index is, or holds, a
// symlink (badger opens its files by path and would follow one). An index
// that is or holds one wraps keymgr.ErrIndexCorrupt, so it is moved aside
// and rebuilt from the files like any corrupt index.
func openCipherIndex(dir string, o keymgr.IndexOptions) (*keymgr.Index, error) {
	if err := cipherdir.CheckIndexDir(dir); err != nil {
		if errors.Is(err, cipherdir.ErrUnsafeIndex) {
			return nil, fmt.Errorf("%w: %w", keymgr.ErrIndexCorrupt, err)
		}
		return nil, err
	}
	return keymgr.OpenIndex(cipherdir.IndexDir(dir), o)
}

// replaceIndex moves the index at path aside, if there is one, to
// PATH.corrupt-<unix time> (with -2, -3, ... after it when a name is
// taken: two repairs may fall in one second), and opens a fresh, empty
// index in its place. It returns the fresh index and where the old one
// went ("" when there was none). Files refill a fresh index from their
// header mirrors.
func replaceIndex(path string, log *slog.Logger) (*keymgr.Index, string, error) {
	aside := ""
	if _, err := os.Lstat(path); err == nil {
		base := path + ".corrupt-" + strconv.FormatInt(time.Now().Unix(), 10)
		aside = base
		for n := 2; ; n++ {
			if _, err := os.Lstat(aside); errors.Is(err, os.ErrNotExist) {
				break
			}
			aside = base + "-" + strconv.Itoa(n)
		}
		if err := os.Rename(path, aside); err != nil {
			return nil, "", fmt.Errorf("move header index %s aside: %w", path, err)
		}
	}
	ix, err := keymgr.OpenIndex(path, keymgr.IndexOptions{Logger: log})
	if err != nil {
		return nil, aside, fmt.Errorf("create a fresh header index %s: %w", path, err)
	}
	return ix, aside, nil
}
