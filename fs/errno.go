package fs

// errno.go: the one place an error becomes an errno. go-fuse's fs.ToErrno
// does not unwrap %w errors and answers ENOSYS for them, which the kernel
// may remember for the whole mount; classify unwraps, maps the sentinels of
// crypto, cipherdir and key management (keymgr/kmserr, so fs links neither
// keymgr nor its badger index nor the AWS SDK), and never answers ENOSYS.
//
// Sentinels are tested before any wrapped syscall.Errno, so a KMS error
// that wraps a network errno (ECONNREFUSED) still reads as EIO.

import (
	"context"
	"errors"
	"io"
	"syscall"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr/kmserr"
)

// errnoRule maps every error that errors.Is one of its sentinels.
type errnoRule struct {
	errno     syscall.Errno
	sentinels []error
}

var errnoRules = []errnoRule{
	// A plain name or symlink target too long to store (before the
	// ErrBadName rule: these wrap it too).
	{syscall.ENAMETOOLONG, []error{crypto.ErrNameTooLong, crypto.ErrTargetTooLong}},
	// A stored name, symlink target, directory ID or long-name side file
	// that does not decrypt or match: damaged or moved, never shown.
	{syscall.EIO, []error{crypto.ErrNameAuth, crypto.ErrBadName, cipherdir.ErrBadDirID, cipherdir.ErrLongName}},
	// Tampered or damaged content, headers or wrapped keys: never wrong
	// bytes, always EIO.
	{syscall.EIO, []error{
		crypto.ErrAuth, crypto.ErrBadSize, crypto.ErrNotCipherFile,
		crypto.ErrUnsupportedVersion, crypto.ErrBadPreamble, crypto.ErrBadHeader,
		crypto.ErrEmptySlot, crypto.ErrBadChecksum, crypto.ErrNoValidHeader,
		crypto.ErrHeaderTooLarge, crypto.ErrLayoutMismatch, crypto.ErrBadLayout,
		crypto.ErrBadFileID, kmserr.ErrInvalidCiphertext,
	}},
	// The key exists but may not be used: a permission problem to the
	// caller, and its cause is in the log and the KMS audit trail.
	{syscall.EACCES, []error{
		kmserr.ErrAccessDenied, kmserr.ErrKeyDisabled,
		kmserr.ErrKeyInvalidState, kmserr.ErrKeyNotFound,
	}},
	// The KMS or the index could not answer: files whose DEK is cached
	// keep working, the others fail with EIO.
	{syscall.EIO, []error{
		kmserr.ErrKMSUnavailable, kmserr.ErrThrottled, kmserr.ErrNotIndexed,
		kmserr.ErrIndexCorrupt, kmserr.ErrIndexLocked, kmserr.ErrMemlock,
		context.DeadlineExceeded,
	}},
	// The caller was interrupted (FUSE INTERRUPT cancels the context).
	{syscall.EINTR, []error{context.Canceled}},
}

// classify returns the errno of err and whether err was expected: an
// unexpected error is EIO and worth a warning with its text.
func classify(err error) (syscall.Errno, bool) {
	if err == nil || errors.Is(err, io.EOF) {
		return 0, true
	}
	for _, r := range errnoRules {
		for _, s := range r.sentinels {
			if errors.Is(err, s) {
				return r.errno, true
			}
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case 0:
			// An Errno 0 wrapped in an error is a bug somewhere below.
			return syscall.EIO, false
		case syscall.ENOSYS:
			// ENOSYS would make the kernel stop sending the opcode
			// for the whole mount.
			return syscall.EOPNOTSUPP, true
		}
		return errno, true
	}
	return syscall.EIO, false
}
