package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestControlSocket: the socket is 0600, answers ping, and refuses an
// unknown operation and a request of another protocol version with an
// error line.
func TestControlSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "kmsfs-ctl-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "c.sock")
	s, err := startControl(controlOptions{Path: path, CipherDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket: %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r, err := controlCall(ctx, path, controlRequest{Op: opPing}, nil); err != nil || r.Type != "result" {
		t.Errorf("ping: got %+v, %v; want a result", r, err)
	}
	if _, err := controlCall(ctx, path, controlRequest{Op: "format-disk"}, nil); err == nil || !strings.Contains(err.Error(), "unknown control operation") {
		t.Errorf("unknown op: got %v, want an unknown-operation error", err)
	}
	if _, err := controlCall(ctx, path, controlRequest{Op: opRewrap}, nil); err == nil {
		t.Errorf("rewrap without parameters: no error")
	}
	// Another protocol version, sent by hand.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(`{"v":99,"op":"ping"}` + "\n"))
	var r controlResponse
	if err := json.NewDecoder(c).Decode(&r); err != nil || r.Type != "error" || !strings.Contains(r.Error, "protocol version") {
		t.Errorf("version 99: got %+v, %v; want a protocol-version error", r, err)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
}

// startTestControl starts a control server on a short socket path with o's
// limits and returns its path.
func startTestControl(t *testing.T, o controlOptions) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsfs-ctl-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	o.Path = filepath.Join(dir, "c.sock")
	o.CipherDir = dir
	o.Logger = slog.New(slog.DiscardHandler)
	s, err := startControl(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return o.Path
}

// readAnswer reads the server's one answer line and then expects the
// connection closed, both within d.
func readAnswer(t *testing.T, c net.Conn, d time.Duration) controlResponse {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	dec := json.NewDecoder(c)
	var r controlResponse
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("no answer line: %v", err)
	}
	var more json.RawMessage
	if err := dec.Decode(&more); err == nil {
		t.Errorf("a second line %s after the answer, want the connection closed", more)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("connection still open %s after the answer, want it closed", d)
	}
	return r
}

// TestControlRefusesOversizedRequest: a request line longer than the
// server's bound gets an error line and the connection is closed, without
// the server reading on (the client's 1 MiB is never read whole); a
// request just under the bound is served.
func TestControlRefusesOversizedRequest(t *testing.T) {
	const max = 1024
	path := startTestControl(t, controlOptions{MaxRequest: max, RequestTimeout: 10 * time.Second})

	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wrote := make(chan int64, 1)
	go func() {
		// No newline ever: a server without a bound reads until
		// its deadline (or its memory) runs out.
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		n, _ := c.Write(bytes.Repeat([]byte("x"), 1<<20))
		wrote <- int64(n)
	}()
	start := time.Now()
	r := readAnswer(t, c, 5*time.Second)
	if r.Type != "error" || !strings.Contains(r.Error, "larger than 1024 bytes") {
		t.Errorf("oversized request: got %+v, want an error naming the 1024-byte bound", r)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("answer after %s, want it at once (not at the request deadline)", d)
	}
	if n := <-wrote; n >= 1<<20 {
		t.Errorf("the server took all %d bytes of the request, want it to stop after %d", n, max)
	}

	// A ping padded to just under the bound is still a request.
	ping := []byte(`{"v":1,"op":"ping"}`)
	line := append(ping, bytes.Repeat([]byte(" "), max-1-len(ping))...)
	line = append(line, '\n')
	c2, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write(line); err != nil {
		t.Fatal(err)
	}
	if r := readAnswer(t, c2, 5*time.Second); r.Type != "result" {
		t.Errorf("ping of %d bytes: got %+v, want a result", len(line), r)
	}
}

// TestControlSlowLoris: a client that trickles its request without ever
// ending the line, or sends nothing, is answered with an error and cut
// off at the request deadline, not held open as long as it keeps sending.
func TestControlSlowLoris(t *testing.T) {
	const timeout = 300 * time.Millisecond
	path := startTestControl(t, controlOptions{RequestTimeout: timeout})
	for _, tt := range []struct {
		name    string
		trickle bool
	}{{"trickle", true}, {"silent", false}} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			done := make(chan struct{})
			defer close(done)
			if tt.trickle {
				go func() {
					// One byte every 20ms for at most 10s: far past the deadline.
					for i := 0; i < 500; i++ {
						select {
						case <-done:
							return
						case <-time.After(20 * time.Millisecond):
						}
						if _, err := c.Write([]byte(" ")); err != nil {
							return
						}
					}
				}()
			}
			start := time.Now()
			r := readAnswer(t, c, 5*time.Second)
			d := time.Since(start)
			if r.Type != "error" || !strings.Contains(r.Error, "no complete control request within") {
				t.Errorf("got %+v, want a request-deadline error", r)
			}
			if d < timeout-50*time.Millisecond || d > timeout+3*time.Second {
				t.Errorf("cut off after %s, want about %s", d, timeout)
			}
		})
	}
}

// TestControlConnectionCap: with the cap reached by idle connections, one
// more gets a "busy" error line and is closed at once; when one of them
// ends, a new connection is served again.
func TestControlConnectionCap(t *testing.T) {
	const max = 2
	path := startTestControl(t, controlOptions{MaxConns: max, RequestTimeout: 30 * time.Second})
	var idle []net.Conn
	for i := 0; i < max; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// The server accepts in order: these two hold both slots before
	// the next one is accepted.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := readAnswer(t, c, 5*time.Second); r.Type != "error" || !strings.Contains(r.Error, "busy") {
		t.Errorf("connection %d of %d allowed: got %+v, want a busy error", max+1, max, r)
	}

	idle[0].Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var r controlResponse
	for i := 0; i < 100; i++ { // the slot frees once the server sees the hang-up
		if r, err = controlCall(ctx, path, controlRequest{Op: opPing}, nil); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || r.Type != "result" {
		t.Errorf("ping after a connection ended: got %+v, %v; want a result", r, err)
	}
}
