package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keymgr"
)

// describeOnly is a provider whose DescribeKey answers md; nothing else
// may be called.
type describeOnly struct {
	keymgr.Provider
	md keymgr.KeyMetadata
}

func (d describeOnly) DescribeKey(context.Context, string) (keymgr.KeyMetadata, error) {
	return d.md, nil
}

// TestDescribeUsableAdvice: a key that is not enabled is refused with the
// sentinel of its state and the command that fixes it: aws CLI commands
// for AWS KMS (DescribeKey succeeds on such a key, so no provider error
// carries the advice), kmsfs commands for the keyring.
func TestDescribeUsableAdvice(t *testing.T) {
	const arn = "arn:aws:kms:eu-west-2:111122223333:key/0b6f5a3c-1d2e-4f70-8a9b-0c1d2e3f4a5b"
	tests := []struct {
		name  string
		where string
		state keymgr.KeyState
		want  error
		words []string
	}{
		{"aws enabled", "AWS KMS in eu-west-2", keymgr.KeyEnabled, nil, nil},
		{"aws disabled", "AWS KMS in eu-west-2", keymgr.KeyDisabled, keymgr.ErrKeyDisabled,
			[]string{"alias/data", "is disabled", "aws kms enable-key --key-id " + arn}},
		{"aws pending deletion", "AWS KMS at http://127.0.0.1:4599", keymgr.KeyPendingDeletion, keymgr.ErrKeyInvalidState,
			[]string{"PendingDeletion", "aws kms cancel-key-deletion --key-id " + arn, "aws kms enable-key --key-id " + arn}},
		{"aws other state", "AWS KMS in eu-west-2", keymgr.KeyState("PendingImport"), keymgr.ErrKeyInvalidState,
			[]string{"PendingImport", "aws kms describe-key --key-id " + arn}},
		{"keyring disabled", "keyring /k.json", keymgr.KeyDisabled, nil,
			[]string{"is disabled", "kmsfs keys enable alias/data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := describeOnly{md: keymgr.KeyMetadata{ARN: arn, State: tt.state, Symmetric: true, EncryptDecrypt: true}}
			_, err := describeUsable(context.Background(), p, "alias/data", tt.where)
			if tt.words == nil {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got no error, want a refusal")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("got %v, want an error wrapping %v", err, tt.want)
			}
			for _, w := range tt.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
