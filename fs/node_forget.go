package fs

// node_forget.go: forgetting the key of a file whose last name is removed
// (unlink, rename over it): its file ID, then the index entry and cached
// DEK.

import (
	"context"
	"os"
	"strconv"
	"syscall"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
)

// doomedFileID returns the file ID of the regular file at l when removing
// that name removes the file (its last link), so its key can be forgotten.
func (r *root) doomedFileID(l loc) (crypto.FileID, fileKey, bool) {
	var st syscall.Stat_t
	gen, err := statAt(l.d.fd, l.entry, &st)
	if err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Nlink != 1 || st.Size == 0 {
		return crypto.FileID{}, fileKey{}, false
	}
	key := fileKey{uint64(st.Dev), st.Ino}
	if id, ok := r.ids.get(key, gen); ok {
		return id, key, true
	}
	fd, err := openNoatime(l.d.fd, l.entry, syscall.O_RDONLY|syscall.O_NONBLOCK)
	if err != nil {
		return crypto.FileID{}, fileKey{}, false
	}
	f := os.NewFile(uintptr(fd), "cipher inode "+strconv.FormatUint(st.Ino, 10))
	defer f.Close()
	pre, err := cipherfile.ReadPreamble(f)
	if err != nil || pre.FileID == crypto.NamesKeyID {
		return crypto.FileID{}, fileKey{}, false
	}
	return pre.FileID, key, true
}

// forget drops the key of a file whose last name is gone. An open file
// keeps its content cipher; only the index entry and cached DEK go.
func (r *root) forget(ctx context.Context, op string, id crypto.FileID, key fileKey) {
	r.ids.drop(key)
	if err := r.keys.Forget(context.WithoutCancel(ctx), id); err != nil {
		r.log.Warn("cannot forget file key", "op", op, "inode", key.ino, "file_id", id.String(), "err", err.Error())
	}
}
