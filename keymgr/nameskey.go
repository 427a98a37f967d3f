package keymgr

// nameskey.go: the filesystem's names key, one 256-bit key per filesystem
// that encrypts file names. It is wrapped by the filesystem's CMK like a
// DEK, under NamesContext (no file), and its header (file ID
// crypto.NamesKeyID) is kept by the caller in cipher-file heads, in two
// copies so that losing one file never loses every name. It is never in the
// header index, the DEK pool or the DEK cache: it comes from its own
// GenerateDataKey, and the caller holds (and zeroes) the plaintext.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsfs/kmsfs/crypto"
)

// NewNamesKey generates a filesystem's names key with GenerateDataKey under
// the key new files wrap under (WrapKey), with NamesContext. It returns the
// header to store (file ID crypto.NamesKeyID, generation 1, one wrapped
// key) and the crypto.NamesKeySize-byte plaintext key, which the caller
// must crypto.Zero.
func (m *Manager) NewNamesKey(ctx context.Context) (crypto.Header, []byte, error) {
	if m.isClosed() {
		return crypto.Header{}, nil, fmt.Errorf("new names key: %w", errManagerClosed)
	}
	keyARN, epoch := m.WrapKey()
	m.kms.generate.Add(1)
	dk, err := m.provider.GenerateDataKey(ctx, keyARN, NamesContext(m.fsID))
	if err != nil {
		m.kms.errors.Add(1)
		return crypto.Header{}, nil, fmt.Errorf("generate names key with %s: %w", keyARN, err)
	}
	if len(dk.Plaintext) != crypto.NamesKeySize {
		crypto.Zero(dk.Plaintext)
		return crypto.Header{}, nil, fmt.Errorf("generate names key with %s: provider %s returned a %d-byte key, want %d",
			keyARN, m.provider.Name(), len(dk.Plaintext), crypto.NamesKeySize)
	}
	wk := crypto.WrappedKey{KeyARN: cmp.Or(dk.KeyARN, keyARN), KeyVersion: cmp.Or(dk.KeyVersion, epoch), EDK: dk.Ciphertext}
	h := crypto.Header{FileID: crypto.NamesKeyID, Generation: 1, Keys: []crypto.WrappedKey{wk}}
	if _, err := h.Marshal(); err != nil { // an empty or oversized EDK
		crypto.Zero(dk.Plaintext)
		return crypto.Header{}, nil, fmt.Errorf("generate names key with %s: provider %s: %w", keyARN, m.provider.Name(), err)
	}
	m.log.Info("generated names key", "purpose", PurposeNames, "key_arn", wk.KeyARN, "key_version", wk.KeyVersion)
	return h, dk.Plaintext, nil
}

// OpenNamesKey unwraps the names key from the first of readHeaders (the
// copies of its header, in order of preference) that reads and unwraps
// under NamesContext. It returns the crypto.NamesKeySize-byte key, which
// the caller must crypto.Zero. A copy that fails while another works is
// logged as a warning. When none works, the error names each copy ("copy
// 1", "copy 2", ... in the order given) and why it failed.
func (m *Manager) OpenNamesKey(ctx context.Context, readHeaders ...func() (crypto.Header, error)) ([]byte, error) {
	if m.isClosed() {
		return nil, fmt.Errorf("open names key: %w", errManagerClosed)
	}
	if len(readHeaders) == 0 {
		return nil, errors.New("open names key: no copy of its header to read")
	}
	var errs []error
	for i, read := range readHeaders {
		key, err := m.openNamesCopy(ctx, read)
		if err == nil {
			if len(errs) > 0 {
				m.log.Warn("names key: a copy of its header is unusable; another opened",
					"purpose", PurposeNames, "copy", i+1, "err", joinErrors(errs))
			}
			return key, nil
		}
		errs = append(errs, fmt.Errorf("copy %d of %d: %w", i+1, len(readHeaders), err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("open names key: %w", joinErrors(errs))
}

// joinErrors is errors.Join on one line: "; " between the errors.
func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	args := make([]any, len(errs))
	for i, e := range errs {
		args[i] = e
	}
	return fmt.Errorf(strings.TrimSuffix(strings.Repeat("%w; ", len(errs)), "; "), args...)
}

// openNamesCopy reads one copy of the names-key header and unwraps the
// first of its wrapped keys the KMS accepts.
func (m *Manager) openNamesCopy(ctx context.Context, read func() (crypto.Header, error)) ([]byte, error) {
	if read == nil {
		return nil, errors.New("no header reader")
	}
	h, err := read()
	if err != nil {
		return nil, err
	}
	if h.FileID != crypto.NamesKeyID {
		return nil, fmt.Errorf("header names file %s, not the names key (file ID %s): %w", h.FileID, crypto.NamesKeyID, crypto.ErrBadHeader)
	}
	key := make([]byte, crypto.NamesKeySize)
	if err := m.unwrap(ctx, h, key); err != nil {
		return nil, err
	}
	return key, nil
}
