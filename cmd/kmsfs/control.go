package main

// control.go: the control socket of a mount. While a cipher directory is
// mounted only the mount process can open its header index (badger's
// lock), so commands that need the index (rewrap, status) ask the mount.
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
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
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
}

func keyStoresOf(st keymgr.ManagerStats) *keyStores {
	return &keyStores{
		CacheEntries: st.CacheEntries, CacheCapacity: st.CacheCapacity, CacheLockedBytes: st.CacheLockedBytes,
		CacheHits: st.CacheHits, CacheMisses: st.CacheMisses,
		PoolReady: st.PoolReady, PoolTarget: st.PoolTarget, PoolSize: st.PoolSize, PoolTaken: st.PoolTaken,
		PoolWaits: st.PoolWaits, PoolSyncFallbacks: st.PoolSyncFallbacks, PoolRefillErrors: st.PoolRefillErrors,
	}
}

// controlServer serves a mount's control socket.
type controlServer struct {
	path   string
	ln     *net.UnixListener
	log    *slog.Logger
	dir    string
	prov   keymgr.Provider
	ix     *keymgr.Index
	mgr    *keymgr.Manager
	reload func() error                         // re-read the local keyring now; nil for aws
	trust  func(keyARN string, wrap bool) error // rewrapEnv.trust

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex // guards conf
	conf cipherdir.Config

	busy sync.Mutex // held by the running rewrap

	slots      chan struct{} // one token per connection being served
	reqTimeout time.Duration // controlRequestTimeout unless a test sets it
	maxRequest int           // controlMaxRequest unless a test sets it
}

type controlOptions struct {
	Path      string
	CipherDir string
	Conf      cipherdir.Config
	Provider  keymgr.Provider
	Index     *keymgr.Index
	Manager   *keymgr.Manager
	Reload    func() error
	// Trust adds a rewrap --to target to the keys the mount may use and
	// to the user's trust record (rewrapEnv.trust); nil: none.
	Trust  func(keyARN string, wrap bool) error
	Logger *slog.Logger

	// Limits; zero means the default (controlMaxConns,
	// controlRequestTimeout, controlMaxRequest). Tests make them small.
	MaxConns       int
	RequestTimeout time.Duration
	MaxRequest     int
}

// startControl listens on o.Path (a stale socket there is replaced) and
// serves until Close.
func startControl(o controlOptions) (*controlServer, error) {
	if err := os.Remove(o.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket %s: %w", o.Path, err)
	}
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: o.Path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", o.Path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(o.Path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", o.Path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &controlServer{
		path: o.Path, ln: ln, log: o.Logger.With("component", "control"), dir: o.CipherDir,
		prov: o.Provider, ix: o.Index, mgr: o.Manager, reload: o.Reload, trust: o.Trust,
		ctx: ctx, cancel: cancel, conf: o.Conf,
		slots:      make(chan struct{}, cmp.Or(o.MaxConns, controlMaxConns)),
		reqTimeout: cmp.Or(o.RequestTimeout, controlRequestTimeout),
		maxRequest: cmp.Or(o.MaxRequest, controlMaxRequest),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *controlServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("control socket accept failed; no more control requests", "err", err)
			}
			return
		}
		select {
		case s.slots <- struct{}{}:
		default:
			// Answered here, without a goroutine: a fresh socket's
			// buffer takes one short line at once.
			s.log.Warn("control connection refused: too many at once", "max", cap(s.slots))
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_ = json.NewEncoder(c).Encode(controlResponse{Type: "error", Error: fmt.Sprintf("mount busy: %d control connections already open: try again when one ends", cap(s.slots))})
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.slots }()
			defer c.Close()
			s.handle(c)
		}()
	}
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

// Close stops accepting, cancels a running rewrap (it resumes at the next
// run) and waits for the handlers.
func (s *controlServer) Close() {
	s.cancel()
	s.ln.Close()
	s.wg.Wait()
}

// peerAllowed: the mount's own user, or root.
func peerAllowed(c *net.UnixConn) (bool, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return false, err
	}
	if cerr != nil {
		return false, cerr
	}
	return cred.Uid == 0 || int(cred.Uid) == os.Getuid(), nil
}

func (s *controlServer) handle(c *net.UnixConn) {
	enc := json.NewEncoder(c)
	var wmu sync.Mutex
	send := func(r controlResponse) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return enc.Encode(r)
	}
	if ok, err := peerAllowed(c); err != nil || !ok {
		s.log.Warn("control request refused: peer is another user", "err", err)
		_ = send(controlResponse{Type: "error", Error: "permission denied: only the mount's own user may control it"})
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(s.reqTimeout))
	br := bufio.NewReaderSize(c, 4<<10)
	line, err := readRequestLine(br, s.maxRequest)
	var ne net.Error
	switch {
	case errors.Is(err, errRequestTooLarge):
		s.log.Warn("control request refused: too large", "max_bytes", s.maxRequest)
		_ = send(controlResponse{Type: "error", Error: fmt.Sprintf("control request larger than %d bytes: send one JSON line (kmsfs and its mount of different versions?)", s.maxRequest)})
		return
	case errors.As(err, &ne) && ne.Timeout():
		s.log.Warn("control request refused: not complete in time", "timeout", s.reqTimeout)
		_ = send(controlResponse{Type: "error", Error: fmt.Sprintf("no complete control request within %s: send one JSON line at once", s.reqTimeout)})
		return
	case err != nil:
		return // the client hung up before asking anything
	}
	_ = c.SetReadDeadline(time.Time{})
	var req controlRequest
	if err := json.Unmarshal(line, &req); err != nil || req.V != controlVersion {
		_ = send(controlResponse{Type: "error", Error: fmt.Sprintf("bad control request (protocol version %d expected): %v", controlVersion, err)})
		return
	}
	switch req.Op {
	case opPing:
		_ = send(controlResponse{Type: "result"})
	case opStatus:
		st, err := s.status()
		if err != nil {
			_ = send(controlResponse{Type: "error", Error: err.Error()})
			return
		}
		_ = send(controlResponse{Type: "result", Status: &st})
	case opKeyChanged:
		if err := s.keyChanged(); err != nil {
			_ = send(controlResponse{Type: "error", Error: err.Error()})
			return
		}
		_ = send(controlResponse{Type: "result"})
	case opRewrap:
		if req.Rewrap == nil {
			_ = send(controlResponse{Type: "error", Error: "rewrap request without parameters"})
			return
		}
		// The client hanging up (killed, Ctrl-C) cancels the rewrap.
		ctx, cancel := context.WithCancel(s.ctx)
		defer cancel()
		go func() {
			_, _ = br.ReadByte() // blocks until EOF or error
			cancel()
		}()
		// A client that stops reading is gone too.
		sendOrCancel := func(r controlResponse) error {
			err := send(r)
			if err != nil {
				cancel()
			}
			return err
		}
		sum, err := s.rewrap(ctx, *req.Rewrap, sendOrCancel)
		resp := controlResponse{Type: "result", Rewrap: &sum}
		if err != nil {
			resp.Type, resp.Error = "error", err.Error()
		}
		_ = send(resp)
	default:
		_ = send(controlResponse{Type: "error", Error: fmt.Sprintf("unknown control operation %q", req.Op)})
	}
}

func (s *controlServer) status() (mountStatus, error) {
	var c counter
	if err := s.ix.ForEach(func(h crypto.Header) error { c.add(h); return nil }); err != nil {
		return mountStatus{}, fmt.Errorf("mount's header index: %w", err)
	}
	arn, epoch := s.mgr.WrapKey()
	return mountStatus{PID: os.Getpid(), KeyARN: arn, Epoch: epoch, Files: c.files, Keys: c.rows(),
		KeyStores: keyStoresOf(s.mgr.Stats())}, nil
}

// keyChanged re-reads the keyring now and refills the DEK pool, so new
// files wrap under a version made a moment ago (keys rotate).
func (s *controlServer) keyChanged() error {
	if s.reload == nil {
		return nil // not a local keyring: nothing of ours changed
	}
	if err := s.reload(); err != nil {
		return fmt.Errorf("reload keyring: %w", err)
	}
	s.mu.Lock()
	conf := s.conf
	s.mu.Unlock()
	return s.mgr.SetWrapKey(conf.KeyARN, conf.RewrapEpoch)
}

func (s *controlServer) rewrap(ctx context.Context, req rewrapRequest, send func(controlResponse) error) (rewrapSummary, error) {
	if !s.busy.TryLock() {
		return rewrapSummary{}, errors.New("a rewrap is already running in this mount: wait for it to finish")
	}
	defer s.busy.Unlock()
	if req.Jobs < 1 || req.Jobs > maxRewrapJobs {
		req.Jobs = keymgr.DefaultRewrapJobs
	}
	if s.reload != nil {
		// See a rotation made a moment ago (the provider itself
		// looks at most once a second).
		if err := s.reload(); err != nil {
			return rewrapSummary{}, fmt.Errorf("reload keyring: %w", err)
		}
	}
	s.mu.Lock()
	conf := s.conf
	s.mu.Unlock()
	s.log.Info("rewrap requested", "to", req.To, "jobs", req.Jobs, "dry_run", req.DryRun)
	var last time.Time
	progress := func(done, total int) {
		if now := time.Now(); done == total || now.Sub(last) >= controlProgressEvery {
			last = now
			_ = send(controlResponse{Type: "progress", Done: done, Total: total})
		}
	}
	env := rewrapEnv{
		dir: s.dir, conf: &conf, prov: s.prov, ix: s.ix, log: s.log, online: true,
		setWrapKey: s.mgr.SetWrapKey,
		trust:      s.trust,
	}
	sum, err := runRewrapJob(ctx, env, req, progress)
	s.mu.Lock()
	s.conf = conf
	s.mu.Unlock()
	if err != nil {
		s.log.Info("rewrap ended with an error", "err", err, "rewrapped", sum.Rewrapped, "failed", sum.Failed)
	} else {
		s.log.Info("rewrap done", "files", sum.Files, "rewrapped", sum.Rewrapped, "current", sum.Current, "key_arn", sum.KeyARN, "key_version", sum.KeyVersion)
	}
	return sum, err
}

// mountControl returns the control socket of a live mount of dir.
func mountControl(dir string) (string, bool) {
	rt, err := cipherdir.RuntimeDir()
	if err != nil {
		return "", false
	}
	for _, r := range cipherdir.FindMounts(rt, dir) {
		if r.Control != "" {
			return r.Control, true
		}
	}
	return "", false
}

// controlCall sends req to the socket and passes each progress line to
// onProgress; it returns the final line.
func controlCall(ctx context.Context, sock string, req controlRequest, onProgress func(done, total int)) (controlResponse, error) {
	req.V = controlVersion
	d := net.Dialer{Timeout: controlDialTimeout}
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return controlResponse{}, fmt.Errorf("control socket %s: %w", sock, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return controlResponse{}, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(controlDialTimeout))
	if _, err := c.Write(append(b, '\n')); err != nil {
		return controlResponse{}, fmt.Errorf("control socket %s: %w", sock, err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), controlMaxLine)
	for sc.Scan() {
		var r controlResponse
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return controlResponse{}, fmt.Errorf("control socket %s: bad answer: %w", sock, err)
		}
		switch r.Type {
		case "progress":
			if onProgress != nil {
				onProgress(r.Done, r.Total)
			}
		case "result":
			return r, nil
		case "error":
			return r, errors.New(r.Error)
		}
	}
	if err := ctx.Err(); err != nil {
		return controlResponse{}, err
	}
	if err := sc.Err(); err != nil {
		return controlResponse{}, fmt.Errorf("control socket %s: %w", sock, err)
	}
	return controlResponse{}, fmt.Errorf("control socket %s: the mount hung up without an answer (unmounted meanwhile?)", sock)
}

// controlRewrap runs a rewrap in the mount behind sock.
func controlRewrap(ctx context.Context, sock string, req rewrapRequest, onProgress func(done, total int)) (rewrapSummary, error) {
	r, err := controlCall(ctx, sock, controlRequest{Op: opRewrap, Rewrap: &req}, onProgress)
	var sum rewrapSummary
	if r.Rewrap != nil {
		sum = *r.Rewrap
	}
	if err != nil {
		if ctx.Err() != nil {
			return sum, fmt.Errorf("interrupted: every file is still readable; run kmsfs rewrap again to finish")
		}
		return sum, fmt.Errorf("rewrap through the mount: %w", err)
	}
	return sum, nil
}

// notifyKeyChanged tells every running mount of this user that the keyring
// changed (keys rotate), so their new files use the new version at once.
// Best effort: a mount that does not answer sees it within a second anyway
// for unwraps, and at its next pool refill for new files.
func notifyKeyChanged() {
	rt, err := cipherdir.RuntimeDir()
	if err != nil {
		return
	}
	for _, r := range cipherdir.FindMounts(rt, "") {
		if r.Control == "" {
			continue
		}
		sock := r.Control
		ctx, cancel := context.WithTimeout(context.Background(), 2*controlDialTimeout)
		_, _ = controlCall(ctx, sock, controlRequest{Op: opKeyChanged}, nil)
		cancel()
	}
}

// keyringReloader returns a func that re-reads the local keyring now, or
// nil for a provider without one (aws).
func (o *openedProvider) keyringReloader() func() error {
	if o.keyring == nil {
		return nil
	}
	return o.keyring.Reload
}

// mountStatusOf asks the mount of dir for its index's counts.
func mountStatusOf(dir string) (mountStatus, error) {
	sock, ok := mountControl(dir)
	if !ok {
		return mountStatus{}, errors.New("no control socket")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := controlCall(ctx, sock, controlRequest{Op: opStatus}, nil)
	if err != nil {
		return mountStatus{}, err
	}
	if r.Status == nil {
		return mountStatus{}, errors.New("the mount sent no status")
	}
	return *r.Status, nil
}
