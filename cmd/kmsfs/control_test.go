package main

import (
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
