package keymgr

// aws.go: the aws provider, AWS KMS through aws-sdk-go-v2 (service/kms).
// This is the only file of the module that imports the AWS SDK.
//
// Every call carries the file's encryption context; Decrypt always names
// the key (KeyId), so a blob wrapped by another key fails even where the
// caller may use both, and every answer is checked to name the key asked
// for (checkAnswerKey: a misrouted or impersonating endpoint answering for
// another key is refused, its plaintext zeroed). The SDK's standard retryer rides out throttling,
// 5xx answers and dropped connections with jittered exponential backoff;
// each HTTP attempt has its own timeout (a hung connection is retried) and
// each call a total one. Errors wrap the sentinels of errors.go and say
// what to do about them.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// Defaults of AWSOptions.
const (
	DefaultAWSCallTimeout = 10 * time.Second
	DefaultAWSMaxAttempts = 5
	DefaultAWSMaxBackoff  = 2 * time.Second
	// minAWSAttemptTimeout is the floor of the default per-attempt timeout.
	minAWSAttemptTimeout = time.Second
	// maxGrantTokens is the KMS limit on grant tokens per request.
	maxGrantTokens = 10
)

// AWSOptions configures NewAWSProvider. The zero value uses the default
// credential chain (environment, shared config and credentials files with
// SSO, web identity, container and instance roles) and the region of the
// environment or profile.
type AWSOptions struct {
	// Region overrides AWS_REGION / the profile's region.
	Region string
	// Endpoint, when set, replaces the regional KMS endpoint: a VPC
	// endpoint, LocalStack or local-kms ("http://127.0.0.1:8080").
	Endpoint string
	// Profile selects a profile of the shared config files (AWS_PROFILE
	// otherwise).
	Profile string
	// GrantTokens go with every call (at most 10), for grants not yet
	// eventually consistent.
	GrantTokens []string
	// CallTimeout bounds each call, retries included (0: 10 s).
	CallTimeout time.Duration
	// AttemptTimeout bounds each HTTP attempt, so a hung connection is
	// retried (0: CallTimeout/MaxAttempts, at least 1 s).
	AttemptTimeout time.Duration
	// MaxAttempts is the number of tries per call, the first included
	// (0: 5).
	MaxAttempts int
	// MaxBackoff caps the jittered exponential backoff between attempts
	// (0: 2 s; throttling backs off from 1 s, other errors from 50 ms).
	MaxBackoff time.Duration
	// HTTPClient replaces the SDK's default HTTP client (tests).
	HTTPClient *http.Client
	// Logger receives the SDK's retry messages at debug level (nil: discard).
	Logger *slog.Logger
}

// awsProvider implements Provider over AWS KMS. Its fields are set once by
// NewAWSProvider; kms.Client is safe for concurrent use.
type awsProvider struct {
	client      *kms.Client
	grantTokens []string
	callTimeout time.Duration
	where       string // "KMS at http://127.0.0.1:4599" or "KMS in region eu-west-2", for messages
}

// NewAWSProvider loads the AWS configuration (without contacting AWS:
// credentials are fetched at the first call) and returns the "aws"
// provider. It fails when no region is configured.
func NewAWSProvider(ctx context.Context, o AWSOptions) (Provider, error) {
	p, err := newAWSProvider(ctx, o)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func newAWSProvider(ctx context.Context, o AWSOptions) (*awsProvider, error) {
	switch {
	case o.CallTimeout < 0:
		return nil, fmt.Errorf("aws provider: call timeout %v is negative", o.CallTimeout)
	case o.AttemptTimeout < 0:
		return nil, fmt.Errorf("aws provider: attempt timeout %v is negative", o.AttemptTimeout)
	case o.MaxAttempts < 0:
		return nil, fmt.Errorf("aws provider: max attempts %d is negative", o.MaxAttempts)
	case o.MaxBackoff < 0:
		return nil, fmt.Errorf("aws provider: max backoff %v is negative", o.MaxBackoff)
	case len(o.GrantTokens) > maxGrantTokens:
		return nil, fmt.Errorf("aws provider: %d grant tokens, KMS takes at most %d", len(o.GrantTokens), maxGrantTokens)
	}
	for i, g := range o.GrantTokens {
		if g == "" {
			return nil, fmt.Errorf("aws provider: grant token %d is empty", i)
		}
	}
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("aws provider: endpoint %q is not an http(s) URL such as https://kms.eu-west-2.amazonaws.com or http://127.0.0.1:8080", o.Endpoint)
		}
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = DefaultAWSCallTimeout
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultAWSMaxAttempts
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultAWSMaxBackoff
	}
	if o.AttemptTimeout == 0 {
		o.AttemptTimeout = min(max(o.CallTimeout/time.Duration(o.MaxAttempts), minAWSAttemptTimeout), o.CallTimeout)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}

	maxAttempts, maxBackoff := o.MaxAttempts, o.MaxBackoff
	loadOpts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = maxAttempts
				so.MaxBackoff = maxBackoff
			})
		}),
		config.WithLogger(slogLogger{log: o.Logger}),
		config.WithClientLogMode(aws.LogRetries),
	}
	if o.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(o.Region))
	}
	if o.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(o.Profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("aws provider: load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("aws provider: no AWS region: pass --aws-region, set AWS_REGION, or set a region in the AWS profile")
	}
	if cfg.Credentials != nil {
		cfg.Credentials = taggedCredentials{p: cfg.Credentials}
	}
	client := kms.NewFromConfig(cfg, func(ko *kms.Options) {
		// The config's client (AWS_CA_BUNDLE applied) also fetches
		// credentials; only KMS calls get the per-attempt timeout.
		if o.HTTPClient != nil {
			ko.HTTPClient = o.HTTPClient
		}
		if ko.HTTPClient == nil {
			ko.HTTPClient = awshttp.NewBuildableClient()
		}
		// The DEK pool keeps up to DefaultPoolRefillers calls in flight,
		// and opens unwrap keys alongside: with the SDK's 10 idle
		// connections per host, the 11th concurrent call's connection
		// would be closed after use and the next one dialled (and, with
		// TLS, handshaken) again.
		if bc, ok := ko.HTTPClient.(*awshttp.BuildableClient); ok {
			ko.HTTPClient = bc.WithTransportOptions(func(tr *http.Transport) {
				tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, awsIdleConnsPerHost)
				tr.MaxIdleConns = max(tr.MaxIdleConns, awsIdleConnsPerHost)
			})
		}
		ko.HTTPClient = attemptTimeoutClient{c: ko.HTTPClient, timeout: o.AttemptTimeout}
		if o.Endpoint != "" {
			ko.BaseEndpoint = aws.String(o.Endpoint)
		}
	})
	where := "KMS in region " + cfg.Region
	if o.Endpoint != "" {
		where = "KMS at " + o.Endpoint
	}
	o.Logger.Debug("aws KMS provider", "region", cfg.Region, "endpoint", o.Endpoint, "profile", o.Profile,
		"max_attempts", o.MaxAttempts, "call_timeout", o.CallTimeout, "attempt_timeout", o.AttemptTimeout)
	return &awsProvider{
		client:      client,
		grantTokens: append([]string(nil), o.GrantTokens...),
		callTimeout: o.CallTimeout,
		where:       where,
	}, nil
}

// awsIdleConnsPerHost is how many idle connections to the KMS endpoint are
// kept for reuse: the pool's refills plus a burst of opens.
const awsIdleConnsPerHost = 2 * DefaultPoolRefillers

func (p *awsProvider) Name() string { return "aws" }

// awsContext turns a nil or empty context into nil (KMS treats both alike).
func awsContext(ec EncryptionContext) map[string]string {
	if len(ec) == 0 {
		return nil
	}
	return map[string]string(ec)
}

func (p *awsProvider) GenerateDataKey(ctx context.Context, keyRef string, ec EncryptionContext) (DataKey, error) {
	const op = "GenerateDataKey"
	if keyRef == "" {
		return DataKey{}, fmt.Errorf("aws %s: %w: empty key reference", op, ErrKeyNotFound)
	}
	cctx, cancel := context.WithTimeout(ctx, p.callTimeout)
	defer cancel()
	out, err := p.client.GenerateDataKey(cctx, &kms.GenerateDataKeyInput{
		KeyId:             aws.String(keyRef),
		KeySpec:           types.DataKeySpecAes256,
		EncryptionContext: awsContext(ec),
		GrantTokens:       p.grantTokens,
	})
	if err != nil {
		return DataKey{}, p.fail(ctx, cctx, awsCall{op: op, key: keyRef}, err)
	}
	if len(out.Plaintext) != 32 || len(out.CiphertextBlob) == 0 || aws.ToString(out.KeyId) == "" {
		clear(out.Plaintext)
		return DataKey{}, fmt.Errorf("aws %s %s: %s answered a %d-byte key, a %d-byte EDK and key %q, want 32 bytes, an EDK and the key ARN",
			op, keyRef, p.where, len(out.Plaintext), len(out.CiphertextBlob), aws.ToString(out.KeyId))
	}
	if err := p.checkAnswerKey(op, "key", keyRef, aws.ToString(out.KeyId)); err != nil {
		clear(out.Plaintext)
		return DataKey{}, err
	}
	return DataKey{Plaintext: out.Plaintext, Ciphertext: out.CiphertextBlob, KeyARN: aws.ToString(out.KeyId)}, nil
}

func (p *awsProvider) Decrypt(ctx context.Context, keyRef string, blob []byte, ec EncryptionContext) ([]byte, error) {
	const op = "Decrypt"
	if keyRef == "" {
		return nil, fmt.Errorf("aws %s: %w: empty key reference (the key is pinned)", op, ErrKeyNotFound)
	}
	if len(blob) == 0 {
		return nil, fmt.Errorf("aws %s %s: %w: empty wrapped key", op, keyRef, ErrInvalidCiphertext)
	}
	cctx, cancel := context.WithTimeout(ctx, p.callTimeout)
	defer cancel()
	out, err := p.client.Decrypt(cctx, &kms.DecryptInput{
		KeyId:               aws.String(keyRef),
		CiphertextBlob:      blob,
		EncryptionContext:   awsContext(ec),
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
		GrantTokens:         p.grantTokens,
	})
	if err != nil {
		return nil, p.fail(ctx, cctx, awsCall{op: op, key: keyRef}, err)
	}
	if err := p.checkAnswerKey(op, "key", keyRef, aws.ToString(out.KeyId)); err != nil {
		clear(out.Plaintext)
		return nil, err
	}
	return out.Plaintext, nil
}

func (p *awsProvider) ReEncrypt(ctx context.Context, srcKeyRef string, blob []byte, ec EncryptionContext, dstKeyRef string) (DataKey, error) {
	const op = "ReEncrypt"
	if srcKeyRef == "" || dstKeyRef == "" {
		return DataKey{}, fmt.Errorf("aws %s: %w: empty source or destination key reference", op, ErrKeyNotFound)
	}
	if len(blob) == 0 {
		return DataKey{}, fmt.Errorf("aws %s %s: %w: empty wrapped key", op, srcKeyRef, ErrInvalidCiphertext)
	}
	cctx, cancel := context.WithTimeout(ctx, p.callTimeout)
	defer cancel()
	out, err := p.client.ReEncrypt(cctx, &kms.ReEncryptInput{
		CiphertextBlob:                 blob,
		SourceKeyId:                    aws.String(srcKeyRef),
		SourceEncryptionContext:        awsContext(ec),
		SourceEncryptionAlgorithm:      types.EncryptionAlgorithmSpecSymmetricDefault,
		DestinationKeyId:               aws.String(dstKeyRef),
		DestinationEncryptionContext:   awsContext(ec),
		DestinationEncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault,
		GrantTokens:                    p.grantTokens,
	})
	if err != nil {
		return DataKey{}, p.fail(ctx, cctx, awsCall{op: op, key: srcKeyRef, dst: dstKeyRef}, err)
	}
	if len(out.CiphertextBlob) == 0 || aws.ToString(out.KeyId) == "" {
		return DataKey{}, fmt.Errorf("aws %s %s -> %s: %s answered no EDK or no key ARN", op, srcKeyRef, dstKeyRef, p.where)
	}
	if err := p.checkAnswerKey(op, "source key", srcKeyRef, aws.ToString(out.SourceKeyId)); err != nil {
		return DataKey{}, err
	}
	if err := p.checkAnswerKey(op, "destination key", dstKeyRef, aws.ToString(out.KeyId)); err != nil {
		return DataKey{}, err
	}
	return DataKey{Ciphertext: out.CiphertextBlob, KeyARN: aws.ToString(out.KeyId)}, nil
}

func (p *awsProvider) DescribeKey(ctx context.Context, keyRef string) (KeyMetadata, error) {
	const op = "DescribeKey"
	if keyRef == "" {
		return KeyMetadata{}, fmt.Errorf("aws %s: %w: empty key reference", op, ErrKeyNotFound)
	}
	cctx, cancel := context.WithTimeout(ctx, p.callTimeout)
	defer cancel()
	out, err := p.client.DescribeKey(cctx, &kms.DescribeKeyInput{KeyId: aws.String(keyRef), GrantTokens: p.grantTokens})
	if err != nil {
		return KeyMetadata{}, p.fail(ctx, cctx, awsCall{op: op, key: keyRef}, err)
	}
	km := out.KeyMetadata
	if km == nil {
		return KeyMetadata{}, fmt.Errorf("aws %s %s: %s answered no key metadata", op, keyRef, p.where)
	}
	md := KeyMetadata{
		KeyID:          aws.ToString(km.KeyId),
		ARN:            aws.ToString(km.Arn),
		State:          KeyState(km.KeyState),
		Description:    aws.ToString(km.Description),
		Symmetric:      km.KeySpec == types.KeySpecSymmetricDefault,
		EncryptDecrypt: km.KeyUsage == types.KeyUsageTypeEncryptDecrypt,
	}
	// DescribeKey names no aliases (ListAliases would need another
	// permission); the alias the key was found by is one.
	if name, ok := aliasName(keyRef); ok {
		md.Aliases = []string{name}
	}
	return md, nil
}

// checkAnswerKey checks that got, the key ARN a KMS answer names (KeyId,
// SourceKeyId), is the key the call named by ref: the same ARN for a key
// ARN, an ARN ending in ":key/<ref>" for a bare key ID, and at least a key
// ARN for an alias (which only the KMS resolves: the answer's ARN is
// returned, and PinnedProvider checks it is trusted). A mismatch wraps
// ErrKeyMismatch and names both keys; the caller zeroes any plaintext.
func (p *awsProvider) checkAnswerKey(op, role, ref, got string) error {
	if awsAnswerMatches(ref, got) {
		return nil
	}
	return fmt.Errorf("aws %s %s: %w: %s answered for %s %q, the call named %s %s: check the endpoint and region (a misrouted or impersonating KMS)",
		op, ref, ErrKeyMismatch, p.where, role, got, role, ref)
}

// awsAnswerMatches reports whether the answer's key ARN got fits ref (see
// checkAnswerKey).
func awsAnswerMatches(ref, got string) bool {
	if !strings.HasPrefix(got, "arn:") || !strings.Contains(got, ":key/") {
		return false // an answer always names the key by its ARN
	}
	if _, isAlias := aliasName(ref); isAlias {
		return true
	}
	if strings.HasPrefix(ref, "arn:") {
		return got == ref
	}
	return strings.HasSuffix(got, ":key/"+ref)
}

// AWSRegionFromARN returns the region of a KMS key or alias ARN
// ("arn:aws:kms:eu-west-2:111122223333:key/...") and whether ref is one.
// A key ID or an alias name has no region.
func AWSRegionFromARN(ref string) (string, bool) {
	parts := strings.SplitN(ref, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "kms" || parts[3] == "" {
		return "", false
	}
	return parts[3], true
}

// aliasName returns "alias/x" for "alias/x" and for an alias ARN.
func aliasName(ref string) (string, bool) {
	if strings.HasPrefix(ref, "alias/") {
		return ref, true
	}
	if strings.HasPrefix(ref, "arn:") {
		if i := strings.Index(ref, ":alias/"); i >= 0 {
			return ref[i+1:], true
		}
	}
	return "", false
}

// awsCall names a failed call in its error.
type awsCall struct {
	op  string // KMS operation, e.g. "Decrypt"
	key string // key reference (source key of ReEncrypt)
	dst string // destination key of ReEncrypt
}

func (c awsCall) String() string {
	if c.dst != "" {
		return fmt.Sprintf("aws %s %s -> %s", c.op, c.key, c.dst)
	}
	return fmt.Sprintf("aws %s %s", c.op, c.key)
}

// permissions names the IAM actions the call needs, for AccessDenied.
func (c awsCall) permissions() string {
	if c.op == "ReEncrypt" {
		return fmt.Sprintf("kms:ReEncryptFrom on %s or kms:ReEncryptTo on %s", c.key, c.dst)
	}
	return fmt.Sprintf("kms:%s on %s", c.op, c.key)
}

// keys names the key(s) of the call for advice.
func (c awsCall) keys() string {
	if c.dst != "" && c.dst != c.key {
		return c.key + " or " + c.dst
	}
	return c.key
}

// throttleCodes are the error codes of a throttled request.
var throttleCodes = map[string]bool{
	"ThrottlingException":       true,
	"Throttling":                true,
	"TooManyRequestsException":  true,
	"RequestLimitExceeded":      true,
	"LimitExceededException":    true,
	"RequestThrottledException": true,
}

// unavailableCodes are KMS-side failures worth calling "unavailable".
var unavailableCodes = map[string]bool{
	"KMSInternalException":        true,
	"DependencyTimeoutException":  true,
	"KeyUnavailableException":     true,
	"InternalFailure":             true,
	"ServiceUnavailable":          true,
	"ServiceUnavailableException": true,
}

// fail maps an SDK error to one that wraps the sentinel for its cause and
// says what to do. parent is the caller's context, cctx the call's own (with
// the call timeout). Only the sentinel is wrapped (the SDK error is quoted
// as text), except when the caller gave up: then ctx.Err() is wrapped, so
// callers can tell their own cancellation from a KMS failure.
func (p *awsProvider) fail(parent, cctx context.Context, c awsCall, err error) error {
	if cerr := parent.Err(); cerr != nil {
		return fmt.Errorf("%s: %w", c, cerr)
	}
	var (
		notFound     *types.NotFoundException
		disabled     *types.DisabledException
		invalidState *types.KMSInvalidStateException
		badCipher    *types.InvalidCiphertextException
		incorrectKey *types.IncorrectKeyException
		badUsage     *types.InvalidKeyUsageException
		badARN       *types.InvalidArnException
		credErr      *credentialsError
		apiErr       smithy.APIError
		maxAttempts  *retry.MaxAttemptsError
	)
	code, kmsMsg := "", ""
	if errors.As(err, &apiErr) {
		code, kmsMsg = apiErr.ErrorCode(), apiErr.ErrorMessage()
	}
	said := ""
	if kmsMsg != "" {
		said = " (KMS: " + kmsMsg + ")"
	}
	attempts := ""
	if errors.As(err, &maxAttempts) {
		attempts = fmt.Sprintf(" after %d attempts", maxAttempts.Attempt)
	}

	switch {
	case errors.As(err, &notFound):
		return fmt.Errorf("%s: %w: %s has no key %s: check the key ID or alias, the account and the region%s",
			c, ErrKeyNotFound, p.where, c.keys(), said)
	case errors.As(err, &badARN):
		return fmt.Errorf("%s: %w: %s is not a valid key ARN%s", c, ErrKeyNotFound, c.keys(), said)
	case errors.As(err, &disabled):
		return fmt.Errorf("%s: %w: %s%s", c, ErrKeyDisabled, enableAdvice(c), said)
	case errors.As(err, &invalidState):
		return fmt.Errorf("%s: %w: %s%s", c, ErrKeyInvalidState, stateAdvice(c, kmsMsg), said)
	case errors.As(err, &badUsage):
		return fmt.Errorf("%s: %w: %s is not a symmetric encryption key (key spec SYMMETRIC_DEFAULT, usage ENCRYPT_DECRYPT): create one with `aws kms create-key`%s",
			c, ErrKeyInvalidState, c.keys(), said)
	case errors.As(err, &badCipher), errors.As(err, &incorrectKey):
		return fmt.Errorf("%s: %w: the file was tampered with or comes from another filesystem%s",
			c, ErrInvalidCiphertext, said)
	case code == "AccessDeniedException":
		return fmt.Errorf("%s: %w: the key policy or IAM policy does not allow %s: grant it (see docs/aws.md)%s",
			c, ErrAccessDenied, c.permissions(), said)
	case errors.As(err, &credErr):
		return fmt.Errorf("%s: %w: no usable AWS credentials: set AWS_PROFILE or --aws-profile, run `aws sso login`, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (%v)",
			c, ErrAccessDenied, credErr.err)
	case throttleCodes[code] || httpStatus(err) == http.StatusTooManyRequests:
		return fmt.Errorf("%s: %w%s: %s kept throttling: the account's request quota for KMS cryptographic operations is used up: lower the load or ask AWS for a higher quota (see docs/aws.md)%s",
			c, ErrThrottled, attempts, p.where, said)
	case cctx.Err() != nil:
		return fmt.Errorf("%s: %w: cannot reach %s: no answer within %v: check the network, region and endpoint (%v)",
			c, ErrKMSUnavailable, p.where, p.callTimeout, err)
	case unavailableCodes[code] || httpStatus(err) >= 500 || isNetworkError(err):
		return fmt.Errorf("%s: %w: cannot reach %s%s: check the network, region and endpoint (%v)",
			c, ErrKMSUnavailable, p.where, attempts, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w: cannot reach %s: no answer in time: check the network, region and endpoint (%v)",
			c, ErrKMSUnavailable, p.where, err)
	}
	return fmt.Errorf("%s: %s: %v", c, p.where, err)
}

// enableAdvice says how to enable the call's key.
func enableAdvice(c awsCall) string {
	for _, k := range []string{c.key, c.dst} {
		if k == "" {
			continue
		}
		if _, isAlias := aliasName(k); isAlias {
			return fmt.Sprintf("enable the key of %s with `aws kms enable-key --key-id <key ID>` (`aws kms describe-key --key-id %s` shows the ID)", c.keys(), k)
		}
	}
	if c.dst != "" && c.dst != c.key {
		return fmt.Sprintf("enable %s with `aws kms enable-key --key-id <key>`", c.keys())
	}
	return fmt.Sprintf("enable it with `aws kms enable-key --key-id %s`", c.key)
}

// stateAdvice explains a KMSInvalidStateException.
func stateAdvice(c awsCall, kmsMsg string) string {
	m := strings.ToLower(kmsMsg)
	switch {
	case strings.Contains(m, "pending deletion") || strings.Contains(m, "pendingdeletion"):
		return fmt.Sprintf("key %s is pending deletion: cancel the deletion with `aws kms cancel-key-deletion --key-id %s`, then enable it with `aws kms enable-key`", c.keys(), c.key)
	case strings.Contains(m, "pending import") || strings.Contains(m, "pendingimport"):
		return fmt.Sprintf("key %s has no key material yet: import it with `aws kms import-key-material`", c.keys())
	}
	return fmt.Sprintf("key %s cannot be used for kms:%s in its current state: see `aws kms describe-key --key-id %s`", c.keys(), c.op, c.key)
}

// httpStatus is the HTTP status of the KMS answer err came from, or 0.
func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// isNetworkError reports errors of the connection rather than of KMS.
func isNetworkError(err error) bool {
	var (
		conn   interface{ ConnectionError() bool }
		netErr net.Error
		urlErr *url.Error
	)
	switch {
	case errors.As(err, &conn) && conn.ConnectionError():
		return true
	case errors.As(err, &urlErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	return false
}

// attemptTimeoutClient gives every HTTP attempt its own deadline, so the
// retryer gets a chance at a connection that hangs. The deadline covers
// reading the body too: it ends when the body is closed.
type attemptTimeoutClient struct {
	c       aws.HTTPClient
	timeout time.Duration
}

func (a attemptTimeoutClient) Do(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(req.Context(), a.timeout)
	resp, err := a.c.Do(req.WithContext(ctx))
	if err != nil {
		cancel()
		if ctx.Err() == context.DeadlineExceeded && req.Context().Err() == nil {
			return nil, fmt.Errorf("no answer within the attempt timeout of %v: %w", a.timeout, err)
		}
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// credentialsError marks a failure to obtain credentials, so it is told
// apart from a failure to reach KMS.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// taggedCredentials wraps the credential chain's errors in credentialsError.
type taggedCredentials struct{ p aws.CredentialsProvider }

func (t taggedCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := t.p.Retrieve(ctx)
	if err != nil {
		return c, &credentialsError{err: err}
	}
	return c, nil
}

// ProviderSources passes on the chain's sources (for the SDK's user agent).
func (t taggedCredentials) ProviderSources() []aws.CredentialSource {
	if s, ok := t.p.(aws.CredentialProviderSource); ok {
		return s.ProviderSources()
	}
	return nil
}

// slogLogger hands the SDK's log messages (retries) to slog.
type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Logf(c logging.Classification, format string, v ...any) {
	level := slog.LevelDebug
	if c == logging.Warn {
		level = slog.LevelWarn
	}
	l.log.Log(context.Background(), level, "aws sdk: "+fmt.Sprintf(format, v...))
}
