package cipherdir

// inodes.go: telling hard links of one file apart from distinct files, so
// a pass over the tree (rewrap, fsck) handles a file once however many
// names it has.

import (
	"io/fs"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Inode names a file by identity: its device and inode number.
type Inode struct {
	Dev, Ino uint64
}

// InodeOf is the identity of fi, a stat of an open file or an entry
// (os.FileInfo of os.File.Stat or os.Lstat, or StatInfo); false when fi
// carries no stat.
func InodeOf(fi fs.FileInfo) (Inode, bool) {
	switch st := fi.Sys().(type) {
	case *syscall.Stat_t:
		return Inode{Dev: uint64(st.Dev), Ino: st.Ino}, true
	case *unix.Stat_t:
		return Inode{Dev: st.Dev, Ino: st.Ino}, true
	}
	return Inode{}, false
}

// InodeSet is the files a pass has taken, by identity. The zero value is
// an empty set; it is safe for concurrent use.
type InodeSet struct {
	mu   sync.Mutex
	seen map[Inode]struct{}
}

// Add takes the file fi is a stat of and reports whether it is the first
// time: false for another hard link of a file already taken. A stat
// without an identity cannot be told apart from others and counts as new.
func (s *InodeSet) Add(fi fs.FileInfo) bool {
	id, ok := InodeOf(fi)
	if !ok {
		return true
	}
	return s.AddInode(id)
}

// AddInode is Add for an identity already known.
func (s *InodeSet) AddInode(id Inode) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.seen[id]; dup {
		return false
	}
	if s.seen == nil {
		s.seen = make(map[Inode]struct{})
	}
	s.seen[id] = struct{}{}
	return true
}

// Len is the number of files taken.
func (s *InodeSet) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}
