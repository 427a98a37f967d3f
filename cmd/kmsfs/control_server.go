package main

// control_server.go: the mount's side of the control socket: listen,
// check the peer, read one request within the framing limits
// (control_proto.go) and dispatch it to an operation (control_ops.go).

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

	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

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
