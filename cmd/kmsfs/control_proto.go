package main

// control_proto.go: the wire protocol of a mount's control socket. While a
// cipher directory is mounted only the mount process can open its header
// index (badger's lock), so commands that need the index (rewrap, status)
// ask the mount. The server is in control_server.go, the operations it
// runs in control_ops.go, the client side in control_client.go.
//
// The socket is a unix stream socket, mode 0600, in the 0700 runtime
// directory next to the mount record (cipherdir.ControlPath), named in the
// record's "control" field. Only the mount's own user (or root) may talk to
// it (SO_PEERCRED is checked).
//
// Protocol, version 1: the client sends one JSON object on one line,
//
//	{"v":1,"op":"status"|"rewrap"|"key-changed"|"ping","rewrap":{...}}
//
// and the server answers with JSON lines: any number of
//
//	{"type":"progress","done":N,"total":M}
//
// then exactly one {"type":"result",...} or {"type":"error","error":"..."},
// and closes the connection. A client that hangs up cancels its rewrap
// (which resumes at the next run). One rewrap runs at a time per mount.
//
// The server trusts no client to be well-behaved: a request line longer
// than controlMaxRequest, or not complete within controlRequestTimeout of
// the connection, gets an error line and the connection is closed; at
// most controlMaxConns connections are served at once, and one more gets
// a "busy" error line and is closed at once.

import (
	"bufio"
	"errors"
	"time"
)

const (
	controlVersion = 1
	// controlProgressEvery throttles progress lines.
	controlProgressEvery = 100 * time.Millisecond
	// controlDialTimeout bounds connecting and sending a request.
	controlDialTimeout = 5 * time.Second
	// controlMaxLine bounds one protocol line the client reads.
	controlMaxLine = 4 << 20
	// controlMaxRequest bounds the request line the server reads: a
	// request is a few hundred bytes (the largest, rewrap, names a key
	// ARN and a few numbers).
	controlMaxRequest = 64 << 10
	// controlRequestTimeout bounds the time from accept to the end of
	// the request line, so a client that trickles bytes (or none) holds
	// a connection slot for no longer.
	controlRequestTimeout = controlDialTimeout
	// controlMaxConns bounds the connections served at once: one
	// rewrap and a few status or ping calls are the normal load.
	controlMaxConns = 8
)

// Control operations.
const (
	opPing       = "ping"
	opStatus     = "status"
	opRewrap     = "rewrap"
	opKeyChanged = "key-changed"
)

type controlRequest struct {
	V      int            `json:"v"`
	Op     string         `json:"op"`
	Rewrap *rewrapRequest `json:"rewrap,omitempty"`
}

type controlResponse struct {
	Type   string         `json:"type"` // progress, result, error
	Done   int            `json:"done,omitempty"`
	Total  int            `json:"total,omitempty"`
	Error  string         `json:"error,omitempty"`
	Rewrap *rewrapSummary `json:"rewrap,omitempty"`
	Status *mountStatus   `json:"status,omitempty"`
}

// mountStatus is the mount's answer to "status": its index's counts and
// the key new files get.
type mountStatus struct {
	PID       int           `json:"pid"`
	KeyARN    string        `json:"key_arn"`
	Epoch     uint32        `json:"rewrap_epoch,omitempty"`
	Files     int           `json:"files"`
	Keys      []keyVersions `json:"keys"`
	KeyStores *keyStores    `json:"key_stores,omitempty"`
}

// keyStores is what a mount's DEK cache and DEK pool hold and have done
// since it started (keymgr.ManagerStats), for status.
type keyStores struct {
	CacheEntries      int    `json:"cache_entries"`
	CacheCapacity     int    `json:"cache_capacity"`
	CacheLockedBytes  int    `json:"cache_locked_bytes"`
	CacheHits         uint64 `json:"cache_hits"`
	CacheMisses       uint64 `json:"cache_misses"`
	PoolReady         int    `json:"pool_ready"`
	PoolTarget        int    `json:"pool_target"`
	PoolSize          int    `json:"pool_size"`
	PoolTaken         uint64 `json:"pool_taken"`
	PoolWaits         uint64 `json:"pool_waits"`
	PoolSyncFallbacks uint64 `json:"pool_sync_fallbacks"`
	PoolRefillErrors  uint64 `json:"pool_refill_errors"`
	// ProcessLocked: the whole mount process is locked in memory
	// (mlockall, memlock.go), the key schedules in its heap included;
	// false: only the DEK cache and pool are.
	ProcessLocked bool `json:"process_locked"`
}

// errRequestTooLarge: a request line longer than the server reads.
var errRequestTooLarge = errors.New("control request too large")

// readRequestLine reads one line of at most max bytes (newline included)
// from br: errRequestTooLarge once more arrive without a newline.
func readRequestLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for len(line) <= max { // each round consumes at least one byte or ends
		part, err := br.ReadSlice('\n')
		line = append(line, part...)
		switch {
		case len(line) > max:
			return nil, errRequestTooLarge
		case err == nil:
			return line, nil
		case !errors.Is(err, bufio.ErrBufferFull):
			return nil, err
		}
	}
	return nil, errRequestTooLarge
}
