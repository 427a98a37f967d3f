package main

// control_client.go: the command side of the control socket: find a
// live mount's socket, send one request, follow its progress lines.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

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
