package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// envKeyring names the environment variable holding the keyring path.
const envKeyring = "KMSFS_KEYRING"

// defaultKeyAlias is the key init uses, and creates, when --key is not given.
const defaultKeyAlias = "alias/kmsfs/default"

// awsFlags are the --aws-* flags; empty means not given.
type awsFlags struct {
	region, endpoint, profile string
}

// firstSet returns the first non-empty value.
func firstSet(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// resolve applies the precedence flag > standard AWS environment >
// kmsfs.conf (> the key ARN's region), so a cipher directory mounts with no
// AWS flags yet each can still be overridden.
func (f awsFlags) resolve(conf awsFlags, keyARN string) awsFlags {
	arnRegion, _ := keymgr.AWSRegionFromARN(keyARN)
	return awsFlags{
		region:   firstSet(f.region, os.Getenv("AWS_REGION"), os.Getenv("AWS_DEFAULT_REGION"), conf.region, arnRegion),
		endpoint: firstSet(f.endpoint, os.Getenv("AWS_ENDPOINT_URL_KMS"), os.Getenv("AWS_ENDPOINT_URL"), conf.endpoint),
		profile:  firstSet(f.profile, os.Getenv("AWS_PROFILE"), conf.profile),
	}
}

// keyringPath is --keyring, else $KMSFS_KEYRING, else the default, made absolute.
func keyringPath(g *globals) (string, error) {
	p := g.keyring
	if p == "" {
		p = os.Getenv(envKeyring)
	}
	if p == "" {
		p = keymgr.DefaultKeyringPath()
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("keyring path %s: %w", p, err)
	}
	return abs, nil
}

// providerSpec says which KMS to open. It is the one place a provider is
// chosen: the aws provider slots in here.
type providerSpec struct {
	kind        string   // cipherdir.ProviderLocal or cipherdir.ProviderAWS
	keyringPath string   // local: absolute keyring path
	create      bool     // local: create the keyring when it does not exist
	aws         awsFlags // aws: region, endpoint, profile, already resolved
	// pin: the provider uses only the trusted keys (more may be added
	// with openedProvider.pinned.Trust, as init does once its key is
	// resolved). Off only for the keyring commands, which name no
	// filesystem.
	pin     bool
	trusted []string
}

// openedProvider is an open KMS and what must be closed with it.
type openedProvider struct {
	keymgr.Provider
	// pinned is Provider when the spec pins keys (nil otherwise).
	pinned         *keymgr.PinnedProvider
	keyring        *keymgr.Keyring // local only
	keyringPath    string
	createdKeyring bool     // this call created the keyring file
	createdDir     bool     // ... and its directory
	awsWhere       awsFlags // aws only: where the KMS is, for messages
}

// Close zeroes the keyring's key material.
func (o *openedProvider) Close() error {
	if o.keyring != nil {
		return o.keyring.Close()
	}
	return nil
}

// discard removes a keyring this call created (a failed init); an existing
// keyring is never touched.
func (o *openedProvider) discard() {
	if !o.createdKeyring {
		return
	}
	os.Remove(o.keyringPath)
	if o.createdDir {
		os.Remove(filepath.Dir(o.keyringPath))
	}
}

func openProvider(spec providerSpec, pass passSource) (*openedProvider, error) {
	var o *openedProvider
	var err error
	switch spec.kind {
	case cipherdir.ProviderLocal:
		o, err = openLocal(spec, pass)
	case cipherdir.ProviderAWS:
		if err := checkEndpoint(spec.aws.endpoint); err != nil {
			return nil, err
		}
		o, err = openAWS(spec)
	default:
		return nil, usagef("unknown KMS provider %q: use local or aws", spec.kind)
	}
	if err != nil {
		return nil, err
	}
	if spec.pin {
		o.pinned = keymgr.NewPinnedProvider(o.Provider, spec.trusted)
		o.Provider = o.pinned
	}
	return o, nil
}

func openAWS(spec providerSpec) (*openedProvider, error) {
	p, err := keymgr.NewAWSProvider(context.Background(), keymgr.AWSOptions{
		Region:   spec.aws.region,
		Endpoint: spec.aws.endpoint,
		Profile:  spec.aws.profile,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: set --aws-region (or AWS_REGION), --aws-endpoint and --aws-profile as needed", err)
	}
	return &openedProvider{Provider: p, awsWhere: spec.aws}, nil
}

func openLocal(spec providerSpec, pass passSource) (*openedProvider, error) {
	path := spec.keyringPath
	_, statErr := os.Stat(path)
	create := spec.create && errors.Is(statErr, os.ErrNotExist)
	if !create && errors.Is(statErr, os.ErrNotExist) {
		// Say so before asking for a passphrase.
		return nil, keyringError(path, keymgr.ErrKeyringNotFound)
	}
	pp, err := pass.get(path, create)
	if err != nil {
		return nil, err
	}
	defer crypto.Zero(pp)
	o := &openedProvider{keyringPath: path}
	var k *keymgr.Keyring
	if create {
		_, dirErr := os.Stat(filepath.Dir(path))
		k, err = keymgr.CreateKeyring(path, pp, keymgr.KeyringOptions{})
		if err == nil {
			o.createdKeyring = true
			o.createdDir = errors.Is(dirErr, os.ErrNotExist)
		}
	} else {
		k, err = keymgr.OpenKeyring(path, pp, keymgr.KeyringOptions{})
	}
	if err != nil {
		return nil, keyringError(path, err)
	}
	o.keyring = k
	o.Provider = keymgr.NewLocalProvider(k)
	return o, nil
}

// keyringError turns a keyring error into a cause and a fix.
func keyringError(path string, err error) error {
	switch {
	case errors.Is(err, keymgr.ErrWrongPassphrase):
		return fmt.Errorf("wrong passphrase for keyring %s: check %s or --passphrase-file", path, envPassphrase)
	case errors.Is(err, keymgr.ErrKeyringNotFound), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("keyring %s not found: create one with kmsfs init or kmsfs keys create, or point --keyring or %s at it", path, envKeyring)
	case errors.Is(err, keymgr.ErrKeyringInsecure):
		return err // names the file or its directory, and the chmod to run
	case errors.Is(err, keymgr.ErrKeyringCorrupt):
		return fmt.Errorf("keyring %s is corrupt (%v): restore it from a backup", path, err)
	case errors.Is(err, keymgr.ErrKeyringExists):
		return fmt.Errorf("keyring %s already exists: open it instead of creating it", path)
	case errors.Is(err, keymgr.ErrMemlock):
		return err
	}
	return fmt.Errorf("keyring %s: %w", path, err)
}

// keyError turns a key lookup error into a cause and a fix. The aws
// provider's errors already name their fix (an aws CLI command, a policy),
// so they pass through; the local provider's fixes are kmsfs commands.
func keyError(ref, where string, err error) error {
	if !strings.HasPrefix(where, "keyring ") {
		return fmt.Errorf("key %s in %s: %w", ref, where, err)
	}
	switch {
	case errors.Is(err, keymgr.ErrKeyNotFound):
		return fmt.Errorf("key %s not found in %s: see kmsfs keys list, or create it with kmsfs keys create --alias NAME", ref, where)
	case errors.Is(err, keymgr.ErrKeyDisabled):
		return fmt.Errorf("key %s is disabled: run kmsfs keys enable %s", ref, ref)
	case errors.Is(err, keymgr.ErrKeyInvalidState):
		return fmt.Errorf("key %s cannot be used (%v): see kmsfs keys list", ref, err)
	case errors.Is(err, keymgr.ErrAccessDenied):
		return fmt.Errorf("access to key %s is denied: check the key policy", ref)
	case errors.Is(err, keymgr.ErrKMSUnavailable):
		return fmt.Errorf("KMS unavailable for key %s: %v", ref, err)
	}
	return fmt.Errorf("key %s: %w", ref, err)
}

// describeUsable resolves ref and refuses a key that is not enabled.
func describeUsable(ctx context.Context, p keymgr.Provider, ref, where string) (keymgr.KeyMetadata, error) {
	md, err := p.DescribeKey(ctx, ref)
	if err != nil {
		return md, keyError(ref, where, err)
	}
	if md.State != keymgr.KeyEnabled {
		if md.State == keymgr.KeyDisabled {
			return md, keyError(ref, where, fmt.Errorf("%w%s", keymgr.ErrKeyDisabled, awsStateFix(where, md)))
		}
		return md, keyError(ref, where, fmt.Errorf("%w: state %s%s", keymgr.ErrKeyInvalidState, md.State, awsStateFix(where, md)))
	}
	return md, nil
}

// awsStateFix says how to make an AWS KMS key usable again (the local
// provider's fixes are kmsfs commands, in keyError): DescribeKey succeeds
// on a disabled key, so no provider error carries the advice.
func awsStateFix(where string, md keymgr.KeyMetadata) string {
	if strings.HasPrefix(where, "keyring ") {
		return ""
	}
	id := firstSet(md.ARN, md.KeyID)
	switch md.State {
	case keymgr.KeyDisabled:
		return fmt.Sprintf(": enable it with `aws kms enable-key --key-id %s`", id)
	case keymgr.KeyPendingDeletion:
		return fmt.Sprintf(": cancel the deletion with `aws kms cancel-key-deletion --key-id %s`, then enable it with `aws kms enable-key --key-id %s`", id, id)
	}
	return fmt.Sprintf(": see `aws kms describe-key --key-id %s`", id)
}

// providerSpecOf is the spec that opens a cipher directory's provider. It
// is where kmsfs.conf meets the user's trust record (trust.go): a
// difference is refused before any KMS call, and the KMS is reached with
// the record's values, which the command line's --keyring (a moved
// keyring) and --aws-* flags and the AWS environment override, never with
// kmsfs.conf's. The provider it opens uses only the record's keys.
func providerSpecOf(g *globals, dir string, c cipherdir.Config) (providerSpec, error) {
	rec, err := checkTrust(g, dir, c)
	if err != nil {
		return providerSpec{}, err
	}
	spec := providerSpec{kind: rec.Provider, keyringPath: rec.Keyring, pin: true, trusted: rec.Keys}
	if rec.Provider == cipherdir.ProviderAWS {
		spec.aws = g.aws.resolve(awsFlags{region: rec.AWSRegion, endpoint: rec.AWSEndpoint, profile: rec.AWSProfile}, rec.KeyARN)
		if err := checkEndpoint(spec.aws.endpoint); err != nil {
			return spec, err
		}
		return spec, nil
	}
	if g.keyring != "" {
		abs, err := filepath.Abs(g.keyring)
		if err != nil {
			return spec, fmt.Errorf("keyring path %s: %w", g.keyring, err)
		}
		spec.keyringPath = abs
	}
	return spec, nil
}

// where names the key store in messages.
func (o *openedProvider) where() string {
	if o.keyring != nil {
		return "keyring " + o.keyringPath
	}
	if o.awsWhere.endpoint != "" {
		return "AWS KMS at " + o.awsWhere.endpoint
	}
	return "AWS KMS in " + firstSet(o.awsWhere.region, "the default region")
}
