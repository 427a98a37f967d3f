package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"syscall"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
	"github.com/spf13/cobra"
)

type initFlags struct {
	kms            string
	key            string
	chunkSize      int64
	plaintextNames bool
}

func newInitCmd(g *globals) *cobra.Command {
	f := &initFlags{}
	cmd := &cobra.Command{
		Use:   "init [--kms local|aws] [--key REF] [--keyring PATH] [--aws-region R] [--aws-endpoint URL] [--aws-profile P] [--chunk-size N] [--plaintext-names] CIPHERDIR",
		Short: "create a new cipher directory",
		Long: `init creates CIPHERDIR (which must not exist or be empty) as a kmsfs cipher
directory. With the local provider it opens the keyring, creating it when
missing (the passphrase is asked twice on a terminal), and uses --key, or
alias/kmsfs/default, creating that key when the keyring has none.

With --kms aws, --key names an existing symmetric AWS KMS key (key ID, key
ARN, alias/NAME or alias ARN). init checks it with DescribeKey and a
GenerateDataKey/Decrypt round trip, and records its ARN, the region, the
endpoint and the profile in kmsfs.conf, so later commands need no AWS flags.

File names and symlink targets are encrypted under a names key made by the
KMS for this filesystem, whose wrapped form is kept in CIPHERDIR/kmsfs.names
and, as a copy, in CIPHERDIR/.kmsfs/names. --plaintext-names stores names
as they are (anyone who sees the cipher directory reads every name); it
cannot be changed later.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInit(cmd.Context(), g, f, args[0], cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kms, "kms", cipherdir.ProviderLocal, "KMS provider: local or aws")
	fl.StringVar(&f.key, "key", "", "master key: key ID, ARN or alias (default alias/kmsfs/default, created if missing)")
	fl.Int64Var(&f.chunkSize, "chunk-size", 4096, "plaintext bytes per chunk: a power of two, 4096..1048576")
	fl.BoolVar(&f.plaintextNames, "plaintext-names", false, "store file names and symlink targets unencrypted")
	return cmd
}

// chunkShift turns --chunk-size into chunk_shift.
func chunkShift(size int64) (uint8, error) {
	if size < 1<<crypto.MinChunkShift || size > 1<<crypto.MaxChunkShift || size&(size-1) != 0 {
		return 0, usagef("--chunk-size %d: must be a power of two from %d to %d", size, 1<<crypto.MinChunkShift, 1<<crypto.MaxChunkShift)
	}
	return uint8(bits.TrailingZeros64(uint64(size))), nil
}

// checkNewCipherDir: dir must not exist or be an empty directory. existed
// reports which, so a failed init removes only what it created.
func checkNewCipherDir(dir string) (existed bool, err error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		parent := filepath.Dir(dir)
		if pfi, perr := os.Stat(parent); perr != nil || !pfi.IsDir() {
			return false, fmt.Errorf("cannot create %s: parent directory %s does not exist: create it first", dir, parent)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cipher directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return true, fmt.Errorf("%s is not a directory: choose a new path for the cipher directory", dir)
	}
	if cipherdir.IsCipherDir(dir) {
		return true, fmt.Errorf("%s is already a kmsfs cipher directory: mount it with kmsfs mount %s MOUNTPOINT", dir, dir)
	}
	empty, err := isEmptyDir(dir)
	if err != nil {
		return true, err
	}
	if !empty {
		return true, fmt.Errorf("%s is not empty: init needs a new or empty directory", dir)
	}
	return true, nil
}

func isEmptyDir(dir string) (bool, error) {
	d, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err == io.EOF || (err == nil && len(names) == 0) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", dir, err)
	}
	return false, nil
}

func runInit(ctx context.Context, g *globals, f *initFlags, dirArg string, out io.Writer) (err error) {
	if ctx == nil {
		ctx = context.Background()
	}
	shift, err := chunkShift(f.chunkSize)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(dirArg)
	if err != nil {
		return fmt.Errorf("cipher directory %s: %w", dirArg, err)
	}
	existed, err := checkNewCipherDir(dir)
	if err != nil {
		return err
	}
	spec := providerSpec{kind: f.kms, create: true, pin: true}
	switch f.kms {
	case cipherdir.ProviderLocal:
		if spec.keyringPath, err = keyringPath(g); err != nil {
			return err
		}
	case cipherdir.ProviderAWS:
		if f.key == "" {
			return usagef("--kms aws needs --key REF: a key ID, key ARN, alias/NAME or alias ARN of a symmetric AWS KMS key")
		}
		spec.aws = g.aws.resolve(awsFlags{}, f.key)
	default:
		return usagef("unknown KMS provider %q: use local or aws", f.kms)
	}
	// From here on every failure undoes what this call made.
	p, err := openProvider(spec, newPassSource(g))
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			p.discard()
		}
		if cerr := p.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close keyring: %w", cerr)
		}
	}()

	ref := f.key
	createdKey := false
	var md keymgr.KeyMetadata
	if ref == "" {
		ref = defaultKeyAlias
		if p.keyring != nil {
			if _, rerr := p.keyring.Resolve(ref); errors.Is(rerr, keymgr.ErrKeyNotFound) {
				if md, err = p.keyring.CreateKey("kmsfs default key", ref); err != nil {
					return fmt.Errorf("create key %s in keyring %s: %w", ref, p.keyringPath, err)
				}
				createdKey = true
			}
		}
	}
	if md, err = describeUsable(ctx, p, ref, p.where()); err != nil {
		return err
	}
	switch {
	case !md.Symmetric:
		return fmt.Errorf("key %s (%s) is asymmetric: kmsfs wraps data keys with GenerateDataKey, which needs a symmetric key (key spec SYMMETRIC_DEFAULT): choose or create one", ref, md.ARN)
	case !md.EncryptDecrypt:
		return fmt.Errorf("key %s (%s) is not for encryption (key usage is not ENCRYPT_DECRYPT): choose or create a key with usage ENCRYPT_DECRYPT", ref, md.ARN)
	}
	// The key the user named is the one key this filesystem trusts.
	p.pinned.Trust(md.ARN)

	fsid, err := cipherdir.NewFilesystemID(rand.Reader)
	if err != nil {
		return err
	}
	keyringAbs := ""
	if p.keyring != nil {
		keyringAbs = p.keyringPath
	}
	conf := cipherdir.New(fsid, spec.kind, ref, md.ARN, keyringAbs, shift)
	conf.SetEncryptedNames(!f.plaintextNames)
	if spec.kind == cipherdir.ProviderAWS {
		conf.AWSRegion, conf.AWSEndpoint, conf.AWSProfile = spec.aws.region, spec.aws.endpoint, spec.aws.profile
	}
	if err := conf.Validate(); err != nil {
		return fmt.Errorf("new kmsfs.conf: %w", err)
	}

	// Create the directory; undo on failure.
	if !existed {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	defer func() {
		if err != nil {
			undoCipherDir(dir, existed)
		}
	}()
	if err := os.Mkdir(cipherdir.MetaDir(dir), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", cipherdir.MetaDir(dir), err)
	}
	audit, err := keymgr.OpenAuditLog(cipherdir.AuditPath(dir), g.audit)
	if err != nil {
		return fmt.Errorf("open audit log %s: %w", cipherdir.AuditPath(dir), err)
	}
	defer audit.Close()
	prov := keymgr.NewAuditingProvider(p.Provider, audit, nil)
	if err := roundTrip(ctx, prov, md.ARN, fsid); err != nil {
		return err
	}
	ix, err := openCipherIndex(dir, keymgr.IndexOptions{})
	if err != nil {
		return fmt.Errorf("create header index %s: %w", cipherdir.IndexDir(dir), err)
	}
	if err := ix.Close(); err != nil {
		return fmt.Errorf("close header index %s: %w", cipherdir.IndexDir(dir), err)
	}
	if conf.EncryptedNames() {
		if err := initNames(ctx, dir, conf, prov); err != nil {
			return err
		}
	}
	// The trust record before kmsfs.conf, whose presence marks a finished
	// cipher directory: every later command checks kmsfs.conf against it.
	if err := saveTrust(recordOf(conf, dir)); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(trustPath(conf.FilesystemID))
		}
	}()
	if err := cipherdir.Save(dir, conf); err != nil {
		return err
	}
	if createdKey {
		if err := p.keyring.Save(); err != nil {
			return fmt.Errorf("save keyring %s: %w", p.keyringPath, err)
		}
	}

	if p.createdKeyring {
		fmt.Fprintf(out, "created keyring %s\n", p.keyringPath)
	}
	if createdKey {
		fmt.Fprintf(out, "created key %s (%s)\n", ref, md.ARN)
	}
	fmt.Fprintf(out, "created cipher directory %s\n", dir)
	fmt.Fprintf(out, "  provider:   %s\n  key:        %s\n  key_arn:    %s\n  chunk size: %d bytes\n", conf.Provider, conf.Key, conf.KeyARN, conf.Layout().ChunkSize())
	if conf.EncryptedNames() {
		fmt.Fprintf(out, "  names:      encrypted (names key in %s and %s)\n", cipherdir.NamesName, filepath.Join(cipherdir.MetaName, "names"))
	} else {
		fmt.Fprintf(out, "  names:      plaintext\n")
	}
	fmt.Fprintf(out, "mount it with: kmsfs mount %s MOUNTPOINT\n", dirArg)
	return nil
}

// roundTrip proves the key wraps and unwraps before anything depends on it.
func roundTrip(ctx context.Context, p keymgr.Provider, keyARN, fsid string) error {
	id, err := crypto.NewFileID(rand.Reader)
	if err != nil {
		return err
	}
	ec := keymgr.FileContext(fsid, id)
	dk, err := p.GenerateDataKey(ctx, keyARN, ec)
	if err != nil {
		return keyError(keyARN, "the KMS", err)
	}
	defer crypto.Zero(dk.Plaintext)
	plain, err := p.Decrypt(ctx, keyARN, dk.Ciphertext, ec)
	if err != nil {
		return keyError(keyARN, "the KMS", err)
	}
	defer crypto.Zero(plain)
	if !bytes.Equal(plain, dk.Plaintext) {
		return fmt.Errorf("key %s: a data key did not survive a wrap/unwrap round trip: the KMS is broken", keyARN)
	}
	return nil
}

// initNames makes the names key of a new encrypted-names filesystem and
// writes its two copies, then the root's kmsfs.dirid; kmsfs.conf, which
// names the feature, comes after (runInit). The plaintext key is not
// needed here and is zeroed at once. p is the audited provider.
func initNames(ctx context.Context, dir string, conf cipherdir.Config, p keymgr.Provider) error {
	cache, err := keymgr.NewCache(keymgr.CacheOptions{MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("DEK cache: %w", err)
	}
	defer cache.Close()
	mgr, err := keymgr.NewManager(keymgr.ManagerOptions{
		FilesystemID: conf.FilesystemID,
		KeyARN:       conf.KeyARN,
		Provider:     p,
		Cache:        cache,
		PoolSize:     1,
		Layout:       conf.Layout(),
		Rand:         rand.Reader,
	})
	if err != nil {
		return fmt.Errorf("key manager: %w", err)
	}
	defer mgr.Close() // never started: its pool holds no key
	h, key, err := mgr.NewNamesKey(ctx)
	if err != nil {
		return keyError(conf.KeyARN, "the KMS", err)
	}
	crypto.Zero(key)
	if err := cipherdir.WriteNamesKey(dir, conf.Layout(), h); err != nil {
		return err
	}
	// Read both copies back: a names key that does not read is every
	// name lost.
	want, err := h.Marshal()
	if err != nil {
		return fmt.Errorf("names key header: %w", err)
	}
	for _, read := range cipherdir.NamesKeyReaders(dir, conf.Layout()) {
		got, err := read()
		if err != nil {
			return fmt.Errorf("read back: %w", err)
		}
		if b, err := got.Marshal(); err != nil || !bytes.Equal(b, want) {
			return fmt.Errorf("names key in %s: what was read back differs from what was written: check the disk", dir)
		}
	}
	return writeRootDirID(dir)
}

// writeRootDirID gives the root directory its ID: kmsfs.dirid, 16 random
// bytes, created O_EXCL|O_NOFOLLOW, mode 0444, and fsynced with the root.
func writeRootDirID(dir string) error {
	fd, err := cipherdir.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	root := os.NewFile(uintptr(fd), dir)
	defer root.Close()
	id := make([]byte, crypto.DirIDSize)
	if _, err := rand.Read(id); err != nil {
		return fmt.Errorf("new directory ID: %w", err)
	}
	path := filepath.Join(dir, cipherdir.DirIDName)
	if err := cipherdir.WriteDirID(fd, id); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := root.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// undoCipherDir removes what a failed init created.
func undoCipherDir(dir string, existed bool) {
	if !existed {
		os.RemoveAll(dir)
		return
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}
