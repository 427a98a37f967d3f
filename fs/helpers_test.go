package fs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// testFS is a real stack: local keyring and provider, badger index in the
// cipher directory, DEK cache, key manager, FUSE mount.
type testFS struct {
	t      *testing.T
	cipher string
	mnt    string
	layout crypto.Layout
	kr     *keymgr.Keyring
	keyARN string
	fsID   string
	// names: the name cipher (encrypted names, the default); nil for a
	// plaintext-names filesystem (newTestFSPlain).
	names *crypto.NameCipher

	mo MountOptions // for the next mount

	// per mount
	server *fuse.Server
	ix     *keymgr.Index
	cache  *keymgr.Cache
	mgr    *keymgr.Manager
	cancel context.CancelFunc
	logs   *logCapture
	// allowWarn: the test expects warning log lines.
	allowWarn bool
}

// logCapture records warning-level lines; tests fail on them unless they
// expect them.
type logCapture struct {
	mu    sync.Mutex
	warns []string
}

func (c *logCapture) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (c *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	c.mu.Lock()
	c.warns = append(c.warns, b.String())
	c.mu.Unlock()
	return nil
}
func (c *logCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *logCapture) WithGroup(string) slog.Handler      { return c }

func (c *logCapture) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.warns...)
}

// newTestFS mounts a fresh encrypted-names filesystem (the default).
func newTestFS(t *testing.T) *testFS {
	t.Helper()
	return newTestFSIn(t, t.TempDir())
}

// newTestFSPlain mounts a fresh plaintext-names filesystem.
func newTestFSPlain(t *testing.T) *testFS {
	t.Helper()
	return newTestFSMode(t, t.TempDir(), false)
}

// newTestFSIn builds the stack in base (the cipher directory's filesystem
// matters for xattr limits).
func newTestFSIn(t *testing.T, base string) *testFS {
	t.Helper()
	return newTestFSMode(t, base, true)
}

// eachNames runs fn as a subtest on each kind of filesystem.
func eachNames(t *testing.T, fn func(t *testing.T, e *testFS)) {
	t.Run("encrypted-names", func(t *testing.T) { fn(t, newTestFS(t)) })
	t.Run("plaintext-names", func(t *testing.T) { fn(t, newTestFSPlain(t)) })
}

func newTestFSMode(t *testing.T, base string, encryptedNames bool) *testFS {
	t.Helper()
	e := &testFS{
		t:      t,
		cipher: filepath.Join(base, "cipher"),
		mnt:    filepath.Join(base, "mnt"),
		layout: crypto.DefaultLayout(),
		fsID:   "4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12",
	}
	for _, d := range []string{e.cipher, e.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// kmsfs.conf stands in for the real one: the mount must hide it.
	if err := os.WriteFile(filepath.Join(e.cipher, "kmsfs.conf"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kr, err := keymgr.CreateKeyring(filepath.Join(base, "keyring.json"), []byte("test passphrase"),
		keymgr.KeyringOptions{ArgonTime: 1, ArgonMemoryKiB: 8, ArgonThreads: 1})
	if err != nil {
		t.Fatalf("CreateKeyring: %v", err)
	}
	e.kr = kr
	md, err := kr.CreateKey("fs test", "alias/kmsfs/test")
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	e.keyARN = md.ARN
	if encryptedNames {
		key := pattern(crypto.NamesKeySize, 77)
		if e.names, err = crypto.NewNameCipher(key, e.fsID); err != nil {
			t.Fatalf("NewNameCipher: %v", err)
		}
		if err := os.WriteFile(filepath.Join(e.cipher, cipherdir.DirIDName), pattern(crypto.DirIDSize, 1), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		e.unmount()
		kr.Close()
	})
	e.mount(false)
	return e
}

func (e *testFS) mount(ro bool) {
	t := e.t
	t.Helper()
	ix, err := keymgr.OpenIndex(filepath.Join(e.cipher, ".kmsfs", "index"), keymgr.IndexOptions{})
	if err != nil {
		t.Fatalf("OpenIndex: %v", err)
	}
	cache, err := keymgr.NewCache(keymgr.CacheOptions{MaxEntries: 1024})
	if err != nil {
		ix.Close()
		t.Fatalf("NewCache: %v", err)
	}
	e.logs = &logCapture{}
	log := slog.New(e.logs)
	mgr, err := keymgr.NewManager(keymgr.ManagerOptions{
		FilesystemID: e.fsID,
		KeyARN:       e.keyARN,
		Provider:     keymgr.NewLocalProvider(e.kr),
		Index:        ix,
		Cache:        cache,
		PoolSize:     4,
		Layout:       e.layout,
		Logger:       log,
	})
	if err != nil {
		cache.Close()
		ix.Close()
		t.Fatalf("NewManager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mgr.Start(ctx)
	server, err := Mount(e.mnt, Options{CipherDir: e.cipher, Layout: e.layout, Keys: mgr, Names: e.names, ReadOnly: ro, Logger: log}, e.mo)
	if err != nil {
		cancel()
		mgr.Close()
		cache.Close()
		ix.Close()
		t.Fatalf("Mount: %v", err)
	}
	e.server, e.ix, e.cache, e.mgr, e.cancel = server, ix, cache, mgr, cancel
}

func (e *testFS) unmount() {
	if e.server == nil {
		return
	}
	var err error
	for i := 0; i < 50; i++ {
		if err = e.server.Unmount(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		e.t.Errorf("Unmount: %v", err)
	}
	e.server.Wait()
	e.cancel()
	e.mgr.Close()
	e.cache.Close()
	e.ix.Close()
	e.server = nil
	if !e.allowWarn {
		for _, l := range e.logs.lines() {
			e.t.Errorf("unexpected warning: %s", l)
		}
	}
}

func (e *testFS) remount() {
	e.t.Helper()
	e.unmount()
	e.mount(false)
}

// p is a path on the mount.
func (e *testFS) p(name string) string { return filepath.Join(e.mnt, name) }

// c is the cipher path of plain path name (which need not exist; its
// parent must); kmsfs's own root entries are themselves.
func (e *testFS) c(name string) string {
	e.t.Helper()
	if cipherdir.IsMeta(name) {
		return filepath.Join(e.cipher, name)
	}
	tree, err := cipherdir.OpenTree(e.cipher, e.names)
	if err != nil {
		e.t.Fatalf("OpenTree: %v", err)
	}
	defer tree.Close()
	l, err := tree.Resolve(name)
	if err != nil {
		e.t.Fatalf("Resolve %s: %v", name, err)
	}
	defer l.Close()
	return filepath.Join(e.cipher, l.Cipher)
}

// pattern is deterministic content that no chunk of it repeats.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}
