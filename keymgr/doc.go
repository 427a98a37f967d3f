// Package keymgr owns the lifecycle of keys: the KMS providers (local and
// aws) and the trust pinning over them, the badger header index, the
// memory-locked DEK cache, the DEK pool, the Manager that hands the
// filesystem its content ciphers, rewrap of wrapped keys, and the audit log.
//
// It must not know about FUSE or the cipher directory: it imports nothing
// under fs/ (go list -deps ./keymgr | grep kmsfs/fs is empty). Whatever
// touches a cipher file is the caller's and comes in as a callback:
// Manager.OpenFile takes the read of a file's header mirror, Rewrap an
// opener of RewrapFiles. Its sentinel errors that the layers above must
// recognise live in the leaf package keymgr/kmserr, so that fs maps them
// without linking keymgr. Within it, only aws.go imports the AWS SDK and
// only the index files (index.go, indexqueue.go) import badger.
package keymgr
