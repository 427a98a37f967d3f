package kmserr

import (
	"errors"
	"fmt"
	"testing"
)

func TestKinds(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"untrusted is invalid ciphertext", ErrUntrustedKey, ErrInvalidCiphertext, true},
		{"mismatch is invalid ciphertext", ErrKeyMismatch, ErrInvalidCiphertext, true},
		{"wrapped untrusted", fmt.Errorf("decrypt: %w", ErrUntrustedKey), ErrInvalidCiphertext, true},
		{"wrapped untrusted is itself", fmt.Errorf("decrypt: %w", ErrUntrustedKey), ErrUntrustedKey, true},
		{"invalid ciphertext is not untrusted", ErrInvalidCiphertext, ErrUntrustedKey, false},
		{"untrusted is not mismatch", ErrUntrustedKey, ErrKeyMismatch, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := errors.Is(tc.err, tc.target); got != tc.want {
				t.Errorf("errors.Is(%v, %v): got %v, want %v", tc.err, tc.target, got, tc.want)
			}
		})
	}
	if got, want := ErrUntrustedKey.Error(), "key is not trusted for this filesystem"; got != want {
		t.Errorf("message: got %q, want %q", got, want)
	}
}
