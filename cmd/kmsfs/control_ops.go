package main

// control_ops.go: the operations a mount runs for its control socket
// (status, key-changed, rewrap), on the mount's own index and key manager.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/keymgr"
)

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

func keyStoresOf(st keymgr.ManagerStats) *keyStores {
	return &keyStores{
		CacheEntries: st.CacheEntries, CacheCapacity: st.CacheCapacity, CacheLockedBytes: st.CacheLockedBytes,
		CacheHits: st.CacheHits, CacheMisses: st.CacheMisses,
		PoolReady: st.PoolReady, PoolTarget: st.PoolTarget, PoolSize: st.PoolSize, PoolTaken: st.PoolTaken,
		PoolWaits: st.PoolWaits, PoolSyncFallbacks: st.PoolSyncFallbacks, PoolRefillErrors: st.PoolRefillErrors,
		ProcessLocked: processLocked.Load(),
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
