// Package cipherdir owns the cipher directory on disk, besides the content
// of its cipher files: directory handles and the *at calls every access
// goes through (openat one name at a time, no symlink in the cipher
// directory ever followed), the mapping of plain names to cipher names
// (encrypted or plaintext, long names, directory IDs, hidden entries), tree
// walks, the kmsfs.conf configuration (parsed strictly), the paths of the
// .kmsfs metadata directory, the per-user runtime directory that holds the
// records of running mounts, extended-attribute reads, the
// permission-lending open of a file its owner may not open read-write
// (lend.go), and the identity of hard links (inodes.go). The mount and
// every offline command (init, status, fsck, rewrap, export) share it.
//
// It must not import go-fuse, fs, or keymgr (nor, through it, badger or
// the AWS SDK): it knows no KMS and no FUSE. It may use crypto for name
// encryption and fs/cipherfile to read a head, and must not build absolute
// paths per request.
package cipherdir
