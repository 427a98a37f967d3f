package main

// trust.go: the trust anchor. kmsfs.conf lives in the cipher directory,
// which anyone who can write that directory (a backup or sync provider, a
// shared disk's admin) can rewrite: it cannot be what says which KMS to
// call and which key to trust. Like SSH's known_hosts, each user keeps a
// trust record per filesystem ID outside the cipher directory:
//
//	$XDG_CONFIG_HOME/kmsfs/trusted/<filesystem ID>.json
//	(default ~/.config/kmsfs/trusted/; the directory 0700, files 0600)
//
// init writes it; `kmsfs trust` writes it after the user reviewed the
// values (a cipher directory restored on a new machine, or changed on
// another one); rewrap --to extends it. Every command that uses a key
// loads kmsfs.conf, compares it with the record and refuses any
// difference before a KMS call, naming the field and the fix. The KMS is
// then reached with the record's values (or the user's own flags and
// environment), never kmsfs.conf's, and only under the record's keys
// (keymgr.PinnedProvider).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/internal/atomicfile"
)

// trustFormat is the trust record format this build writes and reads.
const trustFormat = 1

// maxTrustRecord bounds a trust record read; a real one is under 1 KiB.
const maxTrustRecord = 64 << 10

// trustRecord is what a user trusts for one filesystem ID. Every field
// but TrustedAt and CipherDir is compared with kmsfs.conf.
type trustRecord struct {
	Format       int    `json:"format"`
	FilesystemID string `json:"filesystem_id"`
	Provider     string `json:"provider"`
	// KeyARN wraps new files' keys; kmsfs.conf's key_arn must equal it.
	KeyARN string `json:"key_arn"`
	// Keys are every key trusted to unwrap the filesystem's keys: KeyARN,
	// keys migrated from, and a rewrap --to target while it runs. A
	// header naming any other key is refused without a KMS call.
	Keys []string `json:"keys"`
	// MigratingTo is the target of a rewrap --to under way: kmsfs.conf
	// may name it as key_arn as well as KeyARN, since the migration
	// writes kmsfs.conf before it can finish this record (a run killed in
	// between must not lock the user out). The first command that finds
	// kmsfs.conf naming it makes it KeyARN. Only a key the user asked to
	// migrate to is ever put here.
	MigratingTo    string `json:"migrating_to,omitempty"`
	Keyring        string `json:"keyring,omitempty"`
	AWSRegion      string `json:"aws_region,omitempty"`
	AWSEndpoint    string `json:"aws_endpoint,omitempty"`
	AWSProfile     string `json:"aws_profile,omitempty"`
	EncryptedNames bool   `json:"encrypted_names"`
	// TrustedAt and CipherDir are for the reader of the file.
	TrustedAt string `json:"trusted_at"`
	CipherDir string `json:"cipher_dir,omitempty"`
}

// recordOf is the record that trusts c as it is.
func recordOf(c cipherdir.Config, dir string) trustRecord {
	return trustRecord{
		Format:         trustFormat,
		FilesystemID:   c.FilesystemID,
		Provider:       c.Provider,
		KeyARN:         c.KeyARN,
		Keys:           []string{c.KeyARN},
		Keyring:        c.Keyring,
		AWSRegion:      c.AWSRegion,
		AWSEndpoint:    c.AWSEndpoint,
		AWSProfile:     c.AWSProfile,
		EncryptedNames: c.EncryptedNames(),
		TrustedAt:      time.Now().UTC().Format(time.RFC3339),
		CipherDir:      dir,
	}
}

// trustDir is where this user's trust records live.
func trustDir() string {
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "kmsfs", "trusted")
	}
	home := os.Getenv("HOME")
	if !filepath.IsAbs(home) {
		// A service without HOME: the account's home from the user
		// database, never a path relative to the working directory.
		home = "/nonexistent"
		if u, err := user.Current(); err == nil && filepath.IsAbs(u.HomeDir) {
			home = u.HomeDir
		}
	}
	return filepath.Join(home, ".config", "kmsfs", "trusted")
}

// trustPath is the record of filesystem fsid.
func trustPath(fsid string) string {
	return filepath.Join(trustDir(), fsid+".json")
}

// errNotTrusted: no trust record for the filesystem ID.
var errNotTrusted = errors.New("no trust record")

// loadTrust reads the record of fsid. A record that is a symlink, not a
// regular file, not owned by this user or writable by others is refused:
// it is the one thing kmsfs.conf is checked against. errNotTrusted when
// there is none.
func loadTrust(fsid string) (trustRecord, error) {
	var r trustRecord
	path := trustPath(fsid)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return r, errNotTrusted
	}
	if err != nil {
		return r, fmt.Errorf("trust record %s: %w (a symlink is refused): remove it and run kmsfs trust CIPHERDIR", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return r, fmt.Errorf("trust record %s: %w", path, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return r, fmt.Errorf("trust record %s is not a regular file: remove it and run kmsfs trust CIPHERDIR", path)
	case st != nil && int(st.Uid) != os.Geteuid():
		return r, fmt.Errorf("trust record %s belongs to uid %d, not to you (uid %d): remove it and run kmsfs trust CIPHERDIR", path, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		return r, fmt.Errorf("trust record %s is writable by group or others (mode %04o): chmod 600 %s and review it", path, fi.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTrustRecord+1))
	if err != nil {
		return r, fmt.Errorf("read trust record %s: %w", path, err)
	}
	if len(b) > maxTrustRecord {
		return r, fmt.Errorf("trust record %s is larger than %d bytes: remove it and run kmsfs trust CIPHERDIR", path, maxTrustRecord)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("trust record %s is damaged (%v): remove it and run kmsfs trust CIPHERDIR", path, err)
	}
	if r.Format != trustFormat || r.FilesystemID != fsid || r.KeyARN == "" || !slices.Contains(r.Keys, r.KeyARN) {
		return r, fmt.Errorf("trust record %s is not a format-%d record of filesystem %s naming its key among its keys: remove it and run kmsfs trust CIPHERDIR", path, trustFormat, fsid)
	}
	return r, nil
}

// saveTrust writes r atomically (atomicfile: temp file, fsync, rename,
// fsync of the directory), mode 0600, creating the directory 0700.
func saveTrust(r trustRecord) error {
	dir := trustDir()
	path := trustPath(r.FilesystemID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create trust directory %s: %w", dir, err)
	}
	r.Format = trustFormat
	slices.Sort(r.Keys)
	r.Keys = slices.Compact(r.Keys)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("trust record %s: %w", path, err)
	}
	b = append(b, '\n')
	if err := atomicfile.WriteFile(path, b, 0o600, atomicfile.TempPrefix(".trust.tmp-")); err != nil {
		return fmt.Errorf("write trust record %s: %w", path, err)
	}
	return nil
}

// trustDiff is one field where kmsfs.conf and the trust record differ.
type trustDiff struct{ field, conf, trusted string }

// diffTrust lists the fields of c that r does not trust. keyringFlag: the
// user gave --keyring, which replaces kmsfs.conf's keyring (a moved
// keyring), so that field is not compared.
func diffTrust(c cipherdir.Config, r trustRecord, keyringFlag bool) []trustDiff {
	var d []trustDiff
	add := func(field, conf, trusted string) {
		if conf != trusted {
			d = append(d, trustDiff{field, conf, trusted})
		}
	}
	add("provider", c.Provider, r.Provider)
	if r.MigratingTo == "" || c.KeyARN != r.MigratingTo {
		add("key_arn", c.KeyARN, r.KeyARN)
	}
	if !keyringFlag {
		add("keyring", c.Keyring, r.Keyring)
	}
	add("aws_region", c.AWSRegion, r.AWSRegion)
	add("aws_endpoint", c.AWSEndpoint, r.AWSEndpoint)
	add("aws_profile", c.AWSProfile, r.AWSProfile)
	add("features.name_encryption", fmt.Sprint(c.EncryptedNames()), fmt.Sprint(r.EncryptedNames))
	return d
}

// checkTrust is what every command that uses a key runs after loading
// kmsfs.conf, before any KMS call: the trust record of c's filesystem ID
// must exist and agree with c field by field.
func checkTrust(g *globals, dir string, c cipherdir.Config) (trustRecord, error) {
	r, err := loadTrust(c.FilesystemID)
	if errors.Is(err, errNotTrusted) {
		return r, fmt.Errorf("filesystem %s in %s is not trusted by this user yet (no %s; a new machine, or a cipher directory made elsewhere): review its key and KMS, then accept them with: kmsfs trust %s",
			c.FilesystemID, dir, trustPath(c.FilesystemID), dir)
	}
	if err != nil {
		return r, err
	}
	if d := diffTrust(c, r, g.keyring != ""); len(d) > 0 {
		parts := make([]string, len(d))
		for i, x := range d {
			parts[i] = fmt.Sprintf("%s is %q, trusted %q", x.field, x.conf, x.trusted)
		}
		return r, fmt.Errorf("kmsfs.conf of %s differs from what you trust for filesystem %s (%s): %s: a writer of the cipher directory may have changed it; nothing was done. If you made the change yourself (on another machine), review it and accept it with: kmsfs trust %s",
			dir, c.FilesystemID, trustPath(c.FilesystemID), strings.Join(parts, "; "), dir)
	}
	if r.MigratingTo != "" && c.KeyARN == r.MigratingTo {
		// A migration finished kmsfs.conf but not the record: finish it.
		if err := trustKey(c.FilesystemID, c.KeyARN, true); err != nil {
			return r, err
		}
		r.KeyARN, r.MigratingTo = c.KeyARN, ""
	}
	return r, nil
}

// checkEndpoint refuses a KMS endpoint that is not https, unless it is on
// a loopback address (a local-kms or LocalStack on this machine).
func checkEndpoint(endpoint string) error {
	if endpoint == "" {
		return nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return usagef("KMS endpoint %q is not a URL: give https://HOST[:PORT]", endpoint)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if host == "localhost" {
			return nil
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return nil
		}
		return usagef("KMS endpoint %s is plain http on a host that is not loopback: keys would cross the network in the clear; use https://", endpoint)
	}
	return usagef("KMS endpoint %s: the scheme must be https (http only on a loopback address)", endpoint)
}

type trustFlags struct {
	yes  bool
	keys []string
}

func newTrustCmd(g *globals) *cobra.Command {
	f := &trustFlags{}
	cmd := &cobra.Command{
		Use:   "trust [--yes] [--key ARN]... CIPHERDIR",
		Short: "review and trust a cipher directory's key and KMS (a new machine, or a change made elsewhere)",
		Long: `trust shows what CIPHERDIR's kmsfs.conf asks for (provider, key ARN and
its account, region, endpoint, keyring) and, once you accept, records it
as what you trust for this filesystem in ~/.config/kmsfs/trusted/
($XDG_CONFIG_HOME/kmsfs/trusted/).

kmsfs.conf lives in the cipher directory, which a backup provider, a sync
service or a shared disk's admin can rewrite; every kmsfs command checks
it against your trust record and refuses a difference before any KMS
call. kmsfs init records its own cipher directory; run trust for one
restored on a new machine, or after you changed it on another machine
(kmsfs rewrap --to there).

--key ARN (repeatable) accepts without asking when kmsfs.conf's key_arn
is one of the ARNs given, and trusts every one of them to unwrap (keys
that still wrap older files). --yes accepts without asking.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTrust(g, f, args[0], cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.yes, "yes", false, "accept without asking")
	fl.StringArrayVar(&f.keys, "key", nil, "accept when kmsfs.conf's key_arn is this ARN, and trust it to unwrap (repeatable)")
	return cmd
}

func runTrust(g *globals, f *trustFlags, arg string, in io.Reader, out io.Writer) error {
	dir, err := canonicalPath(arg)
	if err != nil {
		return err
	}
	c, err := loadCipherDir(dir)
	if err != nil {
		return err
	}
	for _, k := range f.keys {
		if !strings.HasPrefix(k, "arn:") {
			return usagef("--key %q: give a key ARN (arn:...)", k)
		}
	}
	if len(f.keys) > 0 && !slices.Contains(f.keys, c.KeyARN) {
		return fmt.Errorf("kmsfs.conf of %s names key %s, which is not among the --key ARNs given: nothing was trusted; check where this cipher directory came from", dir, c.KeyARN)
	}
	if c.Provider == cipherdir.ProviderAWS {
		if err := checkEndpoint(c.AWSEndpoint); err != nil {
			return fmt.Errorf("kmsfs.conf of %s: %w", dir, err)
		}
	}
	old, err := loadTrust(c.FilesystemID)
	hadOld := err == nil
	if err != nil && !errors.Is(err, errNotTrusted) {
		return err
	}
	rec := recordOf(c, dir)
	if hadOld && old.Provider == c.Provider {
		// Keys trusted before stay trusted: files may still be wrapped
		// under them.
		rec.Keys = append(rec.Keys, old.Keys...)
	}
	rec.Keys = append(rec.Keys, f.keys...)

	fmt.Fprintf(out, "filesystem %s in %s\n", c.FilesystemID, dir)
	fmt.Fprintf(out, "  provider:     %s\n", c.Provider)
	fmt.Fprintf(out, "  key:          %s\n  key_arn:      %s\n", c.Key, c.KeyARN)
	switch c.Provider {
	case cipherdir.ProviderAWS:
		account, region := arnAccountRegion(c.KeyARN)
		fmt.Fprintf(out, "  account:      %s\n  key region:   %s\n", firstSet(account, "?"), firstSet(region, "?"))
		fmt.Fprintf(out, "  aws_region:   %s\n", firstSet(c.AWSRegion, "(none: the key's, or $AWS_REGION)"))
		fmt.Fprintf(out, "  aws_endpoint: %s\n", firstSet(c.AWSEndpoint, "(none: AWS KMS itself)"))
		if c.AWSProfile != "" {
			fmt.Fprintf(out, "  aws_profile:  %s\n", c.AWSProfile)
		}
	case cipherdir.ProviderLocal:
		fmt.Fprintf(out, "  keyring:      %s\n", c.Keyring)
	}
	fmt.Fprintf(out, "  names:        %s\n", map[bool]string{true: "encrypted", false: "plaintext"}[c.EncryptedNames()])
	if hadOld {
		if d := diffTrust(c, old, false); len(d) == 0 {
			fmt.Fprintf(out, "already trusted as it is (%s)\n", trustPath(c.FilesystemID))
			if len(f.keys) == 0 {
				return nil
			}
		} else {
			fmt.Fprintf(out, "changed since you last trusted it:\n")
			for _, x := range d {
				fmt.Fprintf(out, "  %s: was %q, now %q\n", x.field, x.trusted, x.conf)
			}
		}
	}
	if !f.yes && len(f.keys) == 0 {
		ok, err := confirm(in, out, "Trust this key and KMS for this filesystem? [y/N] ")
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("not trusted: nothing was changed")
		}
	}
	if err := saveTrust(rec); err != nil {
		return err
	}
	fmt.Fprintf(out, "trusted: %s\n", trustPath(c.FilesystemID))
	return nil
}

// confirm asks a yes/no question on a terminal; without one it refuses
// with the non-interactive way to accept.
func confirm(in io.Reader, out io.Writer, question string) (bool, error) {
	if f, ok := in.(*os.File); !ok || !term.IsTerminal(int(f.Fd())) {
		return false, usagef("not a terminal to ask on: review the values above and run again with --yes, or with --key ARN to accept only that key")
	}
	fmt.Fprint(out, question)
	line, err := bufio.NewReader(io.LimitReader(in, 256)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read answer: %w", err)
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes", nil
}

// arnAccountRegion splits arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE.
func arnAccountRegion(arn string) (account, region string) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) < 6 {
		return "", ""
	}
	return parts[4], parts[3]
}

// trustKey adds a key to dir's trust record (a rewrap --to target, before
// the first file moves to it) and, when wrap is set, makes it the key new
// files wrap under (the migration finished and kmsfs.conf names it).
func trustKey(fsid, keyARN string, wrap bool) error {
	r, err := loadTrust(fsid)
	if err != nil {
		return err
	}
	r.Keys = append(r.Keys, keyARN)
	if wrap {
		r.KeyARN, r.MigratingTo = keyARN, ""
	} else if keyARN != r.KeyARN {
		r.MigratingTo = keyARN
	}
	return saveTrust(r)
}
