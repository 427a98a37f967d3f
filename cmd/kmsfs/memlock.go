package main

// memlock.go: the mount process locks all of its memory when the memlock
// limit allows it, so that the copies of keys kmsfs cannot keep in its own
// locked slabs (the AES key schedule of every open file and of the names
// key, which the standard library keeps in the Go heap; a provider's
// answer on its way to the DEK cache) never reach swap. The DEK cache and
// pool are locked either way (keymgr.LockedSlab).
//
// mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT): ONFAULT locks pages as
// they are touched, so the Go runtime's address-space reservations cost
// nothing until used. It is tried only with CAP_IPC_LOCK (root, usually)
// or an unlimited RLIMIT_MEMLOCK: under a finite limit, MCL_FUTURE makes
// every later mmap fail once the process's whole address space (which the
// Go runtime reserves generously) passes the limit, and a Go runtime whose
// heap cannot grow aborts.

import (
	"fmt"
	"log/slog"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// processLocked records a successful lockProcessMemory, for status.
var processLocked atomic.Bool

// capIPCLock is CAP_IPC_LOCK's bit in the capability sets.
const capIPCLock = 14

// lockProcessMemory locks the mount process's memory, present and future,
// when the limit allows, and logs what it did. It never fails a mount: the
// keys' own slabs are locked regardless.
func lockProcessMemory(log *slog.Logger) {
	if err := canLockAll(); err != nil {
		log.Info("process memory not locked (the DEK cache and pool are): "+err.Error(),
			"hint", "run the mount as root, or with LimitMEMLOCK=infinity (ulimit -l unlimited), so heap copies of keys cannot be swapped")
		return
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		log.Info("process memory not locked (the DEK cache and pool are): mlockall failed", "err", err)
		return
	}
	processLocked.Store(true)
	log.Info("process memory locked (mlockall): no page of the mount process is swapped out")
}

// canLockAll reports why mlockall should not be tried, or nil.
func canLockAll() error {
	if hasCapability(capIPCLock) {
		return nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return fmt.Errorf("RLIMIT_MEMLOCK: %w", err)
	}
	if lim.Cur == unix.RLIM_INFINITY {
		return nil
	}
	return fmt.Errorf("RLIMIT_MEMLOCK is %d bytes and the process lacks CAP_IPC_LOCK", lim.Cur)
}

// hasCapability reports whether capability bit is in the effective set.
func hasCapability(bit uint) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[bit/32].Effective&(1<<(bit%32)) != 0
}
