package main

// stack.go: the key stack every command that needs file keys builds the
// same way (mount, and the offline readers cat, export and verify): the
// provider opened with the passphrase, the audit log around it, the key
// checked, the header index (or none), the locked DEK cache and the
// Manager. Plus the walk of a cipher tree those commands share.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
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
	s.audit, err = keymgr.OpenAuditLog(cipherdir.AuditPath(dir))
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

// offlineCacheEntries: the offline readers keep a few keys only; each file
// is opened once.
const offlineCacheEntries = 1024

// openOfflineStack is what cat, export and verify start with: the cipher
// directory resolved and loaded, and a key stack without the index, so
// they run whether or not the directory is mounted.
func openOfflineStack(ctx context.Context, g *globals, arg string, warn io.Writer) (*keyStack, error) {
	dir, err := canonicalPath(arg)
	if err != nil {
		return nil, err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return nil, err
	}
	spec, err := providerSpecOf(g, conf)
	if err != nil {
		return nil, err
	}
	return openKeyStack(ctx, dir, conf, spec, newPassSource(g), stackOptions{
		index:         noIndex,
		cacheEntries:  offlineCacheEntries,
		poolSize:      1,
		auditOptional: true,
		warn:          warn,
	})
}

// openOfflineTarget opens the offline key stack of CIPHERDIR (dirArg) and
// resolves PATH (pathArg, a plain path) in it: the stack, PATH cleaned
// and relative to the root, its cipher path and its FileInfo (not
// followed). The caller closes the stack.
func openOfflineTarget(ctx context.Context, g *globals, dirArg, pathArg string, warn io.Writer) (ks *keyStack, rel, path string, fi os.FileInfo, err error) {
	if ks, err = openOfflineStack(ctx, g, dirArg, warn); err != nil {
		return nil, "", "", nil, err
	}
	if rel, err = plainRel(ks.conf, pathArg); err == nil {
		path, fi, err = resolveBeneath(ks.dir, rel)
	}
	if err != nil {
		ks.Close()
		return nil, "", "", nil, err
	}
	return ks, rel, path, fi, nil
}

// plainRel checks PATH, a plain path relative to the mount root, and
// returns it cleaned with OS separators ("." for the root). In format
// version 1 names are stored as themselves, so it is also the cipher path
// relative to CIPHERDIR; name encryption will map it here.
func plainRel(conf cipherdir.Config, p string) (string, error) {
	if conf.Features[cipherdir.FeatureNameEncryption] {
		return "", fmt.Errorf("encrypted names are not supported by this kmsfs: upgrade kmsfs")
	}
	if strings.ContainsRune(p, 0) {
		return "", usagef("path %q contains a NUL byte", p)
	}
	c := filepath.Clean(strings.TrimPrefix(p, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", usagef("path %s leaves the filesystem: give a path relative to the mount root, e.g. docs/a.txt", p)
	}
	first, _, _ := strings.Cut(c, string(filepath.Separator))
	if cipherdir.IsMeta(first) {
		return "", fmt.Errorf("%s is kmsfs's own metadata, not part of the plain view", p)
	}
	return c, nil
}

// resolveBeneath lstats every component of rel below dir and refuses a
// symlink before the last one: a plain symlink's target means something in
// the plain view, not in the cipher directory. It returns the cipher path
// and the last component's FileInfo (not followed).
func resolveBeneath(dir, rel string) (string, os.FileInfo, error) {
	path := dir
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", nil, err
	}
	if rel == "." {
		return path, fi, nil
	}
	parts := strings.Split(rel, string(filepath.Separator))
	for i, part := range parts {
		path = filepath.Join(path, part)
		if fi, err = os.Lstat(path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", nil, fmt.Errorf("%s: no such file or directory in the plain view", filepath.Join(parts[:i+1]...))
			}
			return "", nil, err
		}
		if i < len(parts)-1 && !fi.IsDir() {
			if fi.Mode()&os.ModeSymlink != 0 {
				return "", nil, fmt.Errorf("%s is a symlink: give the path without it", filepath.Join(parts[:i+1]...))
			}
			return "", nil, fmt.Errorf("%s is not a directory", filepath.Join(parts[:i+1]...))
		}
	}
	return path, fi, nil
}

// walkTree calls fn for every entry at or below root (a path in the cipher
// directory dir), in lexical order, not following symlinks, skipping
// kmsfs.conf and .kmsfs in dir itself. rel is relative to dir.
//
// (A shared walker of the cipher tree, fs/cipherdir/walk.go, is being
// added for rewrap; this one can move there.)
func walkTree(dir, root string, fn func(path, rel string, d fs.DirEntry) error) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walk %s: %w", path, err)
		}
		rel, rerr := filepath.Rel(dir, path)
		if rerr != nil {
			return rerr
		}
		if filepath.Dir(rel) == "." && cipherdir.IsMeta(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		return fn(path, rel, d)
	})
}

// fileIDString names a file by its ID in messages, or "-".
func fileIDString(id crypto.FileID, ok bool) string {
	if !ok {
		return "-"
	}
	return id.String()
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
