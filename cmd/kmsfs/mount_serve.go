package main

// mount_serve.go: the mount process itself (mount -f, or the background
// child): open the key stores, mount, start the control socket and write
// the mount record, then tear down in order on unmount or a signal.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

// Sizes of the key stores of a mount.
const (
	cacheEntries = 100000
	cacheTTL     = time.Hour
	poolSize     = keymgr.DefaultPoolSize
)

// openIndexHealing opens the index read-write; a corrupt index is moved
// aside and replaced by a fresh one, which files refill from their header
// mirrors as they are opened.
func openIndexHealing(dir string, log *slog.Logger) (*keymgr.Index, error) {
	path := cipherdir.IndexDir(dir)
	ix, err := openCipherIndex(dir, keymgr.IndexOptions{Logger: log})
	switch {
	case err == nil:
		return ix, nil
	case errors.Is(err, keymgr.ErrIndexLocked):
		return nil, errMountedElsewhere(dir)
	case errors.Is(err, keymgr.ErrIndexCorrupt):
		cause := err
		ix, aside, err := replaceIndex(path, log)
		if err != nil {
			return nil, fmt.Errorf("header index %s is corrupt and cannot be replaced (%v): run kmsfs fsck --repair %s", path, err, dir)
		}
		log.Warn("header index corrupt: moved aside, starting a fresh one; files heal from their header mirrors on open; kmsfs fsck --repair rebuilds it at once",
			"index", path, "moved_to", aside, "error", cause)
		return ix, nil
	default:
		return nil, fmt.Errorf("header index %s: %w", path, err)
	}
}

// serve is the mount process: it wires the key stores, mounts, reports
// ready, and on SIGINT/SIGTERM (or an external unmount) tears down in
// order, zeroing keys.
func serve(g *globals, f *mountFlags, t mountTarget, pass passSource, report func(error)) (err error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).
		With("pid", os.Getpid())
	lockProcessMemory(log) // before any key is read (memlock.go)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func() {
		if err != nil {
			log.Error("mount failed", "cipherdir", t.cipherDir, "mountpoint", t.mountpoint, "error", err)
		}
	}()
	// Signals from here on: a SIGTERM before the mount is ready must not
	// kill the process with keys in memory un-zeroed.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// The mount record goes last, after every key store is closed.
	recordDir := ""
	defer func() {
		if recordDir != "" {
			if rerr := cipherdir.RemoveMountRecord(recordDir, t.mountpoint, os.Getpid()); rerr != nil {
				log.Warn("remove mount record", "error", rerr)
			}
		}
	}()

	so := stackOptions{
		index:        healingIndex,
		cacheEntries: cacheEntries,
		poolSize:     poolSize,
		logger:       log,
		audit:        g.audit,
	}
	if !t.writable {
		// A read-only cipher directory (checked: only with --ro): no
		// index to open or heal (each open reads the file's own
		// header), and no audit log to append to, which is said once.
		so.index, so.auditOptional, so.warn = noIndex, true, os.Stderr
	}
	ks, err := openKeyStack(ctx, t.cipherDir, t.conf, t.spec, pass, so)
	if err != nil {
		return err
	}
	defer func() {
		cancel()
		if cerr := ks.Close(); cerr != nil {
			log.Warn("close key stores", "error", cerr)
		}
	}()
	mgr := ks.mgr
	if t.conf.RewrapEpoch != 0 { // aws: new files carry the rewrap epoch (rewrap.go)
		if err := mgr.SetWrapKey(t.conf.KeyARN, t.conf.RewrapEpoch); err != nil {
			return err
		}
	}
	if !f.readOnly { // a read-only mount creates no file: no data keys ahead
		mgr.Start(ctx)
	}

	names, err := ks.nameCipher(ctx)
	if err != nil {
		return err
	}
	if names != nil {
		defer names.Zero()
	}
	server, err := kfs.Mount(t.mountpoint, kfs.Options{
		CipherDir: t.cipherDir,
		Layout:    t.conf.Layout(),
		Keys:      mgr,
		Names:     names,
		ReadOnly:  f.readOnly,
		Logger:    log,
	}, kfs.MountOptions{AllowOther: f.allowOther, NoXattr: f.noXattr, Debug: f.fuseDebug, FsName: "kmsfs:" + t.cipherDir})
	if err != nil {
		return mountError(t.mountpoint, err)
	}
	rtDir, rerr := cipherdir.RuntimeDir()
	if rerr == nil {
		rec := cipherdir.MountRecord{PID: os.Getpid(), CipherDir: t.cipherDir, Mountpoint: t.mountpoint}
		// The control socket (control_server.go): rewrap and status while mounted.
		ctl, cerr := startControl(controlOptions{
			Path:      cipherdir.ControlPath(rtDir, t.mountpoint),
			CipherDir: t.cipherDir,
			Conf:      t.conf,
			Provider:  keymgr.NewAuditingProvider(ks.prov.Provider, ks.audit, nil),
			Index:     ks.index,
			Manager:   mgr,
			Reload:    ks.prov.keyringReloader(),
			Trust:     trustFor(ks.prov.pinned, ks.conf.FilesystemID),
			Logger:    log,
		})
		if cerr != nil {
			log.Warn("no control socket: kmsfs rewrap and status cannot reach this mount", "error", cerr)
		} else {
			defer ctl.Close() // before the key stores close
			rec.Control = ctl.path
		}
		rerr = cipherdir.WriteMountRecord(rtDir, rec)
	}
	if rerr != nil {
		log.Warn("no mount record: kmsfs unmount will not wait for this process", "error", rerr)
	} else {
		recordDir = rtDir
	}
	log.Info("mounted", "cipherdir", t.cipherDir, "mountpoint", t.mountpoint, "key_arn", t.conf.KeyARN, "read_only", f.readOnly)
	report(nil)

	done := make(chan struct{})
	go func() {
		server.Wait()
		close(done)
	}()
	for {
		select {
		case <-done:
			log.Info("unmounted; closing key stores", "mountpoint", t.mountpoint)
			cancel()
			return nil
		case s := <-sigs:
			log.Info("signal: unmounting", "signal", s.String(), "mountpoint", t.mountpoint)
			go unmountRetry(server.Unmount, t.mountpoint, log)
		}
	}
}

// unmountRetry keeps trying while the mount is busy; the files open in it
// may close soon (go-fuse already retries briefly inside Unmount).
func unmountRetry(unmount func() error, mnt string, log *slog.Logger) {
	const tries = 10
	for i := 1; ; i++ {
		err := unmount()
		if err == nil {
			return
		}
		if i == tries {
			log.Error("unmount failed: still mounted; close the files open in it and run kmsfs unmount",
				"mountpoint", mnt, "error", err)
			return
		}
		log.Warn("unmount failed, retrying", "mountpoint", mnt, "try", i, "error", err)
		time.Sleep(time.Second)
	}
}

func mountError(mnt string, err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, os.ErrPermission) || strings.Contains(msg, "permission denied") || strings.Contains(msg, "Operation not permitted"):
		return fmt.Errorf("mount %s: %v: run as root, or as a user who can open /dev/fuse with fuse3's fusermount3 installed", mnt, err)
	case strings.Contains(msg, "fusermount"):
		return fmt.Errorf("mount %s: fusermount3 refused (%v): its reason is in the mount log", mnt, err)
	}
	return fmt.Errorf("mount %s: %w", mnt, err)
}
