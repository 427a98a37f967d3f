package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		want  syscall.Errno
		known bool
	}{
		{"nil", nil, 0, true},
		{"EOF", io.EOF, 0, true},
		{"wrapped EOF", fmt.Errorf("read: %w", io.EOF), 0, true},
		{"errno", syscall.ENOENT, syscall.ENOENT, true},
		{"path error", &os.PathError{Op: "open", Path: "x", Err: syscall.EACCES}, syscall.EACCES, true},
		{"wrapped errno", fmt.Errorf("a: %w", fmt.Errorf("b: %w", syscall.ENOSPC)), syscall.ENOSPC, true},
		{"ENOSYS never", syscall.ENOSYS, syscall.EOPNOTSUPP, true},
		{"auth", fmt.Errorf("x: %w", crypto.ErrAuth), syscall.EIO, true},
		{"chunk error", fmt.Errorf("read: %w", &cipherfile.ChunkError{Index: 3, Err: crypto.ErrAuth}), syscall.EIO, true},
		{"not cipher file", crypto.ErrNotCipherFile, syscall.EIO, true},
		{"bad header", crypto.ErrBadHeader, syscall.EIO, true},
		{"no valid header", crypto.ErrNoValidHeader, syscall.EIO, true},
		{"layout mismatch", crypto.ErrLayoutMismatch, syscall.EIO, true},
		{"unsupported version", crypto.ErrUnsupportedVersion, syscall.EIO, true},
		{"access denied", fmt.Errorf("decrypt: %w", keymgr.ErrAccessDenied), syscall.EACCES, true},
		{"key disabled", keymgr.ErrKeyDisabled, syscall.EACCES, true},
		{"key invalid state", keymgr.ErrKeyInvalidState, syscall.EACCES, true},
		{"key not found", keymgr.ErrKeyNotFound, syscall.EACCES, true},
		{"kms unavailable over errno", fmt.Errorf("%w: dial: %w", keymgr.ErrKMSUnavailable, syscall.ECONNREFUSED), syscall.EIO, true},
		{"throttled", keymgr.ErrThrottled, syscall.EIO, true},
		{"untrusted key", fmt.Errorf("unwrap: %w", keymgr.ErrUntrustedKey), syscall.EIO, true},
		{"key mismatch", fmt.Errorf("unwrap: %w", keymgr.ErrKeyMismatch), syscall.EIO, true},
		{"invalid ciphertext", keymgr.ErrInvalidCiphertext, syscall.EIO, true},
		{"index locked", keymgr.ErrIndexLocked, syscall.EIO, true},
		{"memlock", fmt.Errorf("cache: %w", keymgr.ErrMemlock), syscall.EIO, true},
		{"canceled", fmt.Errorf("open: %w", context.Canceled), syscall.EINTR, true},
		{"negative offset", cipherfile.ErrNegativeOffset, syscall.EINVAL, true},
		{"too large", cipherfile.ErrFileTooLarge, syscall.EFBIG, true},
		{"unknown", errors.New("something odd"), syscall.EIO, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, known := classify(tc.err)
			if got != tc.want {
				t.Errorf("errno: got %v, want %v", got, tc.want)
			}
			if known != tc.known {
				t.Errorf("known: got %v, want %v", known, tc.known)
			}
		})
	}
}
