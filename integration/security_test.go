package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/hkdf"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// TestMountProcessHardening: the mount process holds its keys in locked
// memory (VmLck > 0 once a file was created and read) and cannot dump
// core (RLIMIT_CORE 0).
func TestMountProcessHardening(t *testing.T) {
	f := newFixture(t)
	f.init()
	pid := f.mount()
	if pid == 0 {
		t.Fatal("mount: no pid for the mount process (neither in its output nor in a mount record)")
	}
	if !isOurMountProcess(pid) {
		t.Fatalf("pid %d is not a kmsfs process", pid)
	}
	want := randBytes(t, 10000)
	p := filepath.Join(f.mnt, "locked")
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}

	t.Run("VmLck", func(t *testing.T) {
		if kb := procStatusKB(t, pid, "VmLck"); kb <= 0 {
			t.Errorf("mount process %d: VmLck got %d kB, want > 0 (DEKs in mlock'ed memory)", pid, kb)
		} else {
			t.Logf("mount process %d: VmLck %d kB", pid, kb)
		}
	})

	t.Run("no core dumps", func(t *testing.T) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "Max core file size"); ok {
				found = true
				fl := strings.Fields(rest)
				if len(fl) < 2 || fl[0] != "0" || fl[1] != "0" {
					t.Errorf("mount process %d: %q, want soft and hard limit 0", pid, strings.TrimSpace(l))
				}
			}
		}
		if !found {
			t.Errorf("/proc/%d/limits has no Max core file size line:\n%s", pid, b)
		}
	})
	f.unmount()
}

// TestMountIsPrivate: without --allow-other another user cannot even stat
// the mount's contents (EACCES from the kernel); with --allow-other the
// kernel checks modes (default_permissions) and that user reads a 0644
// file and is refused a 0600 and a 0000 one. (The owner's own rights
// without --allow-other: TestUnprivilegedUser.)
func TestMountIsPrivate(t *testing.T) {
	requireKmsfs(t)
	u := needTestUser(t)
	f := newFixture(t)
	f.init()
	userEnv := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/", "LC_ALL=C"}
	pub, priv := filepath.Join(f.mnt, "public.txt"), filepath.Join(f.mnt, "private.txt")

	f.mount()
	// The cipher dir is 0700; open the plain root for traversal so only
	// the FUSE access rules decide.
	if err := os.Chmod(f.mnt, 0o755); err != nil {
		t.Fatalf("chmod 0755 of the mount root: %v", err)
	}
	if err := os.WriteFile(pub, []byte("public content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(priv, []byte("private content\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pub, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(priv, 0o600); err != nil {
		t.Fatal(err)
	}
	none := filepath.Join(f.mnt, "none.txt")
	if err := os.WriteFile(none, []byte("mode 0000 content\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(none, 0); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(none); err != nil || fi.Mode().Perm() != 0 {
		t.Errorf("stat of a file after chmod 0000: %v, %v; want mode 0000", fi, err)
	}
	line := mountinfoLine(f.mnt)
	if strings.Contains(line, "allow_other") {
		t.Errorf("mountinfo of %s: got %q, want no allow_other without --allow-other", f.mnt, line)
	}
	for _, p := range []string{pub, f.mnt} {
		out, code := runAsUser(t, u, userEnv, "stat", "-c", "%s", p)
		if code == 0 || !strings.Contains(out, "Permission denied") {
			t.Errorf("stat %s as %s without --allow-other: exit %d, %q; want Permission denied (EACCES)", p, u.name, code, out)
		}
	}
	f.unmount()

	f.mount("--allow-other")
	line = mountinfoLine(f.mnt)
	for _, opt := range []string{"default_permissions", "allow_other"} {
		if !strings.Contains(line, opt) {
			t.Errorf("mountinfo of %s with --allow-other: got %q, want %s", f.mnt, line, opt)
		}
	}
	if out, code := runAsUser(t, u, userEnv, "cat", pub); code != 0 || out != "public content\n" {
		t.Errorf("cat a 0644 file as %s with --allow-other: exit %d, %q; want its content", u.name, code, out)
	}
	for _, p := range []string{priv, none} {
		if out, code := runAsUser(t, u, userEnv, "cat", p); code == 0 || !strings.Contains(out, "Permission denied") {
			t.Errorf("cat %s as %s with --allow-other: exit %d, %q; want Permission denied", filepath.Base(p), u.name, code, out)
		}
	}
	// Writing into a 0755 root-owned directory is refused too.
	if out, code := runAsUser(t, u, userEnv, "sh", "-c", "echo x > "+filepath.Join(f.mnt, "intruder")); code == 0 {
		t.Errorf("create a file in the 0755 root as %s: exit 0 (%q), want Permission denied", u.name, out)
	}
	f.unmount()
}

// recordingProvider keeps a copy of every plaintext DEK the KMS hands out
// (GenerateDataKey, Decrypt), so the test can look for them on disk.
type recordingProvider struct {
	keymgr.Provider
	mu   sync.Mutex
	deks [][]byte
}

func (p *recordingProvider) record(b []byte) {
	if len(b) == 0 {
		return
	}
	p.mu.Lock()
	p.deks = append(p.deks, append([]byte(nil), b...))
	p.mu.Unlock()
}

func (p *recordingProvider) GenerateDataKey(ctx context.Context, keyRef string, ec keymgr.EncryptionContext) (keymgr.DataKey, error) {
	dk, err := p.Provider.GenerateDataKey(ctx, keyRef, ec)
	if err == nil {
		p.record(dk.Plaintext)
	}
	return dk, err
}

func (p *recordingProvider) Decrypt(ctx context.Context, keyRef string, blob []byte, ec keymgr.EncryptionContext) ([]byte, error) {
	b, err := p.Provider.Decrypt(ctx, keyRef, blob, ec)
	if err == nil {
		p.record(b)
	}
	return b, err
}

func (p *recordingProvider) ReEncrypt(ctx context.Context, src string, blob []byte, ec keymgr.EncryptionContext, dst string) (keymgr.DataKey, error) {
	dk, err := p.Provider.ReEncrypt(ctx, src, blob, ec, dst)
	if err == nil {
		p.record(dk.Plaintext) // must be empty: ReEncrypt never exposes the DEK
	}
	return dk, err
}

func (p *recordingProvider) recorded() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.deks...)
}

// warnCapture records warning-level log lines: the test fails on them.
type warnCapture struct {
	mu    sync.Mutex
	lines []string
}

func (c *warnCapture) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (c *warnCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	c.mu.Lock()
	c.lines = append(c.lines, b.String())
	c.mu.Unlock()
	return nil
}
func (c *warnCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *warnCapture) WithGroup(string) slog.Handler      { return c }

// dekNeedles is every recorded DEK raw, in hex and in base64.
func dekNeedles(deks [][]byte) (*needles, func([]byte) string) {
	var list [][]byte
	names := map[string]string{}
	for i, d := range deks {
		for enc, s := range map[string][]byte{
			"raw":       d,
			"hex":       []byte(hex.EncodeToString(d)),
			"HEX":       []byte(strings.ToUpper(hex.EncodeToString(d))),
			"base64":    []byte(base64.RawStdEncoding.EncodeToString(d)),
			"base64url": []byte(base64.RawURLEncoding.EncodeToString(d)),
		} {
			list = append(list, s)
			names[string(s)] = fmt.Sprintf("DEK #%d (%s)", i, enc)
		}
	}
	return newNeedles(list), func(b []byte) string { return names[string(b)] }
}

// TestNoDEKOnDisk builds the real stack in this process (keyring, local
// provider, audit log, index, cache, manager, names key, FUSE mount) with a
// provider that records every plaintext key it hands out (each file's DEK
// and the names key), works 200 files through the mount of a filesystem
// with encrypted names, shuts everything down and then looks for every
// key, and the two keys derived from the names key, raw, hex or base64,
// in every byte under the cipher dir and in the keyring file.
func TestNoDEKOnDisk(t *testing.T) {
	if fuseSkip != "" {
		t.Skip(fuseSkip)
	}
	base, err := os.MkdirTemp("", "kmsfs-it-dek-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	cipher, mnt := filepath.Join(base, "cipher"), filepath.Join(base, "mnt")
	keyringPath := filepath.Join(base, "keyring", "keyring.json")
	for _, d := range []string{cipher, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}

	kr, err := keymgr.CreateKeyring(keyringPath, []byte("dek test passphrase"),
		keymgr.KeyringOptions{ArgonTime: 1, ArgonMemoryKiB: 64, ArgonThreads: 1})
	if err != nil {
		t.Fatalf("CreateKeyring: %v", err)
	}
	krClosed := false
	closeKeyring := func() {
		if !krClosed {
			krClosed = true
			if err := kr.Close(); err != nil {
				t.Errorf("keyring Close: %v", err)
			}
		}
	}
	t.Cleanup(closeKeyring)
	md, err := kr.CreateKey("integration DEK test", "alias/kmsfs/dek-test")
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if err := kr.Save(); err != nil {
		t.Fatalf("keyring Save: %v", err)
	}

	warns := &warnCapture{}
	log := slog.New(warns)
	rec := &recordingProvider{Provider: keymgr.NewLocalProvider(kr)}
	audit, err := keymgr.OpenAuditLog(filepath.Join(cipher, ".kmsfs", "audit.log"), keymgr.AuditOptions{})
	if err != nil {
		t.Fatalf("OpenAuditLog: %v", err)
	}
	t.Cleanup(func() { audit.Close() }) // after a failure; a second Close is harmless here
	prov := keymgr.NewAuditingProvider(rec, audit, nil)
	layout := crypto.DefaultLayout()
	fsID := hex.EncodeToString(randBytes(t, 16))
	// As kmsfs init does: the root's directory ID; the names key is made
	// by the first mountStack, and opened from its head by the others.
	rootfd, err := cipherdir.OpenRoot(cipher)
	if err != nil {
		t.Fatal(err)
	}
	err = cipherdir.WriteDirID(rootfd, randBytes(t, crypto.DirIDSize))
	unix.Close(rootfd)
	if err != nil {
		t.Fatalf("root directory ID: %v", err)
	}
	var derived [][]byte // the name and target keys derived from the names key
	// mountStack opens the index, a fresh cache and manager, and mounts;
	// the returned func unmounts and closes them, once.
	mountStack := func() (shutdown func()) {
		t.Helper()
		ix, err := keymgr.OpenIndex(filepath.Join(cipher, ".kmsfs", "index"), keymgr.IndexOptions{Logger: log})
		if err != nil {
			t.Fatalf("OpenIndex: %v", err)
		}
		cache, err := keymgr.NewCache(keymgr.CacheOptions{MaxEntries: 4096, TTL: time.Hour})
		if err != nil {
			ix.Close()
			t.Fatalf("NewCache: %v", err)
		}
		mgr, err := keymgr.NewManager(keymgr.ManagerOptions{
			FilesystemID: fsID,
			KeyARN:       md.ARN,
			Provider:     prov,
			Index:        ix,
			Cache:        cache,
			PoolSize:     8,
			Layout:       layout,
			Rand:         rand.Reader,
			Logger:       log,
		})
		if err != nil {
			cache.Close()
			ix.Close()
			t.Fatalf("NewManager: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		mgr.Start(ctx)
		var namesKey []byte
		if derived == nil {
			h, key, err := mgr.NewNamesKey(ctx)
			if err == nil {
				err = cipherdir.WriteNamesKey(cipher, layout, h)
			}
			if err != nil {
				t.Fatalf("names key: %v", err)
			}
			namesKey = key
			for _, info := range []string{"kmsfs v1 name", "kmsfs v1 symlink target"} {
				k := make([]byte, 64)
				if _, err := io.ReadFull(hkdf.New(sha256.New, key, []byte(fsID), []byte(info)), k); err != nil {
					t.Fatal(err)
				}
				derived = append(derived, k)
			}
		} else if namesKey, err = mgr.OpenNamesKey(ctx, cipherdir.NamesKeyReaders(cipher, layout)...); err != nil {
			t.Fatalf("OpenNamesKey: %v", err)
		}
		names, err := crypto.NewNameCipher(namesKey, fsID)
		crypto.Zero(namesKey)
		if err != nil {
			t.Fatalf("NewNameCipher: %v", err)
		}
		server, err := kfs.Mount(mnt, kfs.Options{CipherDir: cipher, Layout: layout, Keys: mgr, Names: names, Logger: log}, kfs.MountOptions{})
		if err != nil {
			names.Zero()
			cancel()
			mgr.Close()
			cache.Close()
			ix.Close()
			t.Fatalf("fs.Mount: %v", err)
		}
		var once sync.Once
		shutdown = func() {
			once.Do(func() {
				var uerr error
				for i := 0; i < 50; i++ { // bounded: 5 s of a busy mount
					if uerr = server.Unmount(); uerr == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if uerr != nil {
					t.Errorf("Unmount: %v", uerr)
					lazyUnmount(mnt)
				}
				done := make(chan struct{})
				go func() { server.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(30 * time.Second):
					t.Errorf("server.Wait did not return 30 s after unmount")
				}
				cancel()
				names.Zero()
				for _, c := range []struct {
					name  string
					close func() error
				}{{"manager", mgr.Close}, {"cache", cache.Close}, {"index", ix.Close}} {
					if err := c.close(); err != nil {
						t.Errorf("close %s: %v", c.name, err)
					}
				}
			})
		}
		t.Cleanup(shutdown)
		return shutdown
	}
	shutdown := mountStack()

	// 200 files: create, write, read back; some get an xattr (sealed
	// with the DEK), some are rewritten, truncated, renamed or removed.
	const nFiles = 200
	contents := map[string][]byte{}
	for i := 0; i < nFiles; i++ {
		name := filepath.Join(mnt, fmt.Sprintf("d%d", i%7), fmt.Sprintf("file-%03d", i))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		b := randBytes(t, (i*1237)%20000)
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		contents[name] = b
		if i%10 == 0 {
			if err := unix.Setxattr(name, "user.kmsfs-test", []byte("xattr value"), 0); err != nil {
				t.Errorf("setxattr %s: %v", name, err)
			}
		}
		switch i % 20 {
		case 3: // rewrite the middle
			if len(b) > 100 {
				fh, err := os.OpenFile(name, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				patch := randBytes(t, 50)
				if _, err := fh.WriteAt(patch, int64(len(b)/2)); err != nil {
					t.Errorf("rewrite %s: %v", name, err)
				}
				fh.Close()
				copy(contents[name][len(b)/2:], patch)
			}
		case 7: // truncate
			if err := os.Truncate(name, int64(len(b)/3)); err != nil {
				t.Errorf("truncate %s: %v", name, err)
			}
			contents[name] = b[:len(b)/3]
		case 11: // rename
			to := name + ".renamed"
			if err := os.Rename(name, to); err != nil {
				t.Errorf("rename %s: %v", name, err)
			}
			contents[to] = contents[name]
			delete(contents, name)
		case 13: // remove
			if err := os.Remove(name); err != nil {
				t.Errorf("remove %s: %v", name, err)
			}
			delete(contents, name)
		}
	}
	// A second mount with an empty cache: every DEK comes from Decrypt.
	shutdown()
	decryptsBefore := len(rec.recorded())
	shutdown = mountStack()
	for name, want := range contents {
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s: %d bytes, %v; want %d bytes", name, len(got), err, len(want))
		}
	}
	for i := 0; i < nFiles; i += 10 {
		name := filepath.Join(mnt, fmt.Sprintf("d%d", i%7), fmt.Sprintf("file-%03d", i))
		buf := make([]byte, 64)
		if n, err := unix.Getxattr(name, "user.kmsfs-test", buf); err != nil || string(buf[:n]) != "xattr value" {
			t.Errorf("getxattr %s: %q, %v", name, buf[:max(n, 0)], err)
		}
	}

	shutdown()
	if err := audit.Close(); err != nil {
		t.Errorf("close audit log: %v", err)
	}
	closeKeyring()
	for _, l := range warns.lines {
		t.Errorf("unexpected warning: %s", l)
	}

	deks := rec.recorded()
	if len(deks) < nFiles {
		t.Fatalf("recorded %d DEKs, want at least %d (one per file)", len(deks), nFiles)
	}
	if got := len(deks) - decryptsBefore; got < len(contents) {
		t.Errorf("second mount: %d DEKs from Decrypt, want at least %d (one per file read)", got, len(contents))
	}
	for i, d := range deks {
		if len(d) != crypto.DEKSize {
			t.Errorf("DEK #%d: %d bytes, want %d", i, len(d), crypto.DEKSize)
		}
	}
	// The names key is among the recorded keys; its two derived keys last.
	n, label := dekNeedles(append(deks, derived...))

	// Self-check: the scanner finds a DEK in each encoding where one is.
	probe := filepath.Join(t.TempDir(), "probe")
	var pb bytes.Buffer
	pb.Write(randBytes(t, 3000))
	pb.Write(deks[len(deks)/2])
	pb.WriteString(" " + hex.EncodeToString(deks[0]) + " " + base64.RawStdEncoding.EncodeToString(deks[1]) + "\n")
	if err := os.WriteFile(probe, pb.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if hits, _ := scanDirFor(t, filepath.Dir(probe), n, label); len(hits) != 3 {
		t.Fatalf("scanner self-check: got %d hits, want 3: %v", len(hits), hits)
	}

	hits, files := scanDirFor(t, base, n, label)
	for _, h := range hits {
		t.Errorf("DEK on disk: %s", h)
	}
	if files < len(contents)+3 {
		t.Errorf("scanned %d files under %s, want at least %d", files, base, len(contents)+3)
	}
	t.Logf("scanned %d files for %d keys (raw, hex, base64; the DEKs, the names key and its 2 derived keys): %d hits", files, len(deks)+len(derived), len(hits))
}
