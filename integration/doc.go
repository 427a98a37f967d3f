// Package integration holds the end-to-end tests of kmsfs: they build the
// kmsfs binary, mount cipher directories for real (as root with a direct
// mount, or through fusermount3), and drive the mount as users and programs
// would: round trips, git, tar, gcc, sqlite3, tampering, memory locking and
// an unprivileged user. It holds no product code and is never imported by
// product code.
//
// Run with `go test ./integration` (root, or a user with fusermount3);
// every test skips with its reason when FUSE is not available.
package integration
