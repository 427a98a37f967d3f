package main

// The loopback-nopt system: go-fuse's loopback filesystem with the options
// of its example program (the `loopback` system), except that it never
// hands the kernel a backing file. As root on Linux 6.9+, `loopback` opens
// files with FOPEN_PASSTHROUGH, and the kernel then reads and writes the
// backing file itself: its data rows measure the disk, not FUSE. Here
// every READ and WRITE makes the round trip through this process, as in
// any filesystem that must see the data (kmsfs decrypts it): the FUSE
// limit of a Go filesystem.
//
// It runs as the bench binary itself, in a process of its own, when
// loopbackEnv is set to "MOUNTPOINT ORIGINAL".

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const loopbackEnv = "KMSFS_BENCH_LOOPBACK_NOPT"

// plainFile is a loopback file without PassthroughFd: the file operations
// of fs.LoopbackFile, and nothing that would offer its fd to the kernel.
type plainFile struct{ loopbackFileOps }

type loopbackFileOps interface {
	fs.FileReleaser
	fs.FileGetattrer
	fs.FileReader
	fs.FileWriter
	fs.FileLseeker
	fs.FileFlusher
	fs.FileFsyncer
	fs.FileSetattrer
	fs.FileAllocater
}

// plainNode is a loopback node whose open files are plainFiles.
type plainNode struct{ fs.LoopbackNode }

var (
	_ fs.NodeOpener      = (*plainNode)(nil)
	_ fs.NodeCreater     = (*plainNode)(nil)
	_ fs.FileReader      = plainFile{}
	_ fs.NodeWrapChilder = (*plainNode)(nil)
)

func wrapFile(fh fs.FileHandle) fs.FileHandle {
	if ops, ok := fh.(loopbackFileOps); ok {
		return plainFile{ops}
	}
	return fh
}

func (n *plainNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return wrapFile(fh), fl, errno
}

func (n *plainNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, wrapFile(fh), fl, errno
}

// WrapChild makes every node of the tree a plainNode.
func (n *plainNode) WrapChild(_ context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &plainNode{LoopbackNode: fs.LoopbackNode{RootData: ln.RootData}}
	}
	return ops
}

// serveLoopbackNoPassthrough mounts ORIGINAL on MOUNTPOINT (spec) and
// serves until unmounted or sent SIGTERM.
func serveLoopbackNoPassthrough(spec string) error {
	mnt, orig, ok := strings.Cut(spec, " ")
	if !ok {
		return fmt.Errorf("%s=%q: want \"MOUNTPOINT ORIGINAL\"", loopbackEnv, spec)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(orig, &st); err != nil {
		return err
	}
	root := &fs.LoopbackRoot{Path: orig, Dev: uint64(st.Dev)}
	node := &plainNode{LoopbackNode: fs.LoopbackNode{RootData: root}}
	root.RootNode = node
	sec := time.Second
	server, err := fs.Mount(mnt, node, &fs.Options{
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			DirectMount: os.Geteuid() == 0,
			FsName:      orig,
			Name:        "loopback-nopt",
		},
	})
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		server.Unmount()
	}()
	server.Wait()
	return nil
}
