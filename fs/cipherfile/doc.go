// Package cipherfile does the content I/O of one kmsfs cipher file over an
// open file descriptor, with plaintext semantics: ReadAt, WriteAt and
// Truncate take plain offsets and sizes and turn them into preads, pwrites
// and ftruncates of sealed chunks (docs/format.md). It also reads and
// writes the file's preamble and header slots, and it is the one way a
// cipher file is inspected (ReadHead: each slot's own result, for fsck
// and verify) and opened with a key source (OpenContent), for the mount
// and every offline command alike.
//
// It owns the order of those writes (what a crash in the middle leaves) and
// the rules that keep a file openable: the last chunk is sealed with the
// last flag and is never a hole; an extending write re-seals the old last
// chunk without it; skipped whole chunks stay holes.
//
// It must not import go-fuse, talk to a KMS, or lock: the FUSE layer
// serialises writers (an RWMutex per inode; ReadAt is safe for concurrent
// callers), and the offline tools (fsck, verify, rewrap) use the same code
// on unmounted files. Offsets and sizes are named plain... or cipher... by
// the side they count.
package cipherfile
