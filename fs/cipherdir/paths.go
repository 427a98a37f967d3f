package cipherdir

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Names inside a cipher directory (docs/format.md, "Cipher directory").
const (
	ConfName = "kmsfs.conf"
	MetaName = ".kmsfs"
	// NamesName is the names-key head of a filesystem with encrypted
	// names; .kmsfs/names is its copy (nameskey.go).
	NamesName = "kmsfs.names"
)

// ConfPath is CIPHERDIR/kmsfs.conf.
func ConfPath(dir string) string { return filepath.Join(dir, ConfName) }

// NamesPath is CIPHERDIR/kmsfs.names, the names-key head.
func NamesPath(dir string) string { return filepath.Join(dir, NamesName) }

// MetaNamesPath is CIPHERDIR/.kmsfs/names, the names-key head's copy.
func MetaNamesPath(dir string) string { return filepath.Join(dir, MetaName, "names") }

// MetaDir is CIPHERDIR/.kmsfs, mode 0700.
func MetaDir(dir string) string { return filepath.Join(dir, MetaName) }

// IndexDir is CIPHERDIR/.kmsfs/index, the badger header index.
func IndexDir(dir string) string { return filepath.Join(dir, MetaName, "index") }

// AuditPath is CIPHERDIR/.kmsfs/audit.log.
func AuditPath(dir string) string { return filepath.Join(dir, MetaName, "audit.log") }

// MountLogPath is CIPHERDIR/.kmsfs/mount.log, the log of a background mount.
func MountLogPath(dir string) string { return filepath.Join(dir, MetaName, "mount.log") }

// IsMeta reports whether rel, a slash- or OS-separated path relative to the
// cipher directory root, is one of the root entries kmsfs owns (kmsfs.conf,
// .kmsfs, kmsfs.names, kmsfs.dirid) rather than a cipher file.
func IsMeta(rel string) bool {
	switch rel {
	case ConfName, MetaName, NamesName, DirIDName:
		return true
	}
	return false
}

// IsCipherDir reports whether dir holds a kmsfs.conf regular file.
func IsCipherDir(dir string) bool {
	fi, err := os.Lstat(ConfPath(dir))
	return err == nil && fi.Mode().IsRegular()
}

// ChooseRuntimeDir picks the directory for mount records without touching
// the disk beyond the exists probe: $XDG_RUNTIME_DIR/kmsfs, else
// /run/user/UID/kmsfs when /run/user/UID exists, else TMPDIR/kmsfs-UID.
func ChooseRuntimeDir(xdgRuntimeDir string, uid int, tempDir string, exists func(string) bool) string {
	if xdgRuntimeDir != "" && filepath.IsAbs(xdgRuntimeDir) {
		return filepath.Join(xdgRuntimeDir, "kmsfs")
	}
	runUser := filepath.Join("/run/user", strconv.Itoa(uid))
	if exists(runUser) {
		return filepath.Join(runUser, "kmsfs")
	}
	return filepath.Join(tempDir, "kmsfs-"+strconv.Itoa(uid))
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// RuntimeDir returns the runtime directory for this user, creating it with
// mode 0700. A directory that exists but is not owned by the user or is
// open to others is refused (it may be a trap in a shared /tmp).
func RuntimeDir() (string, error) {
	dir := ChooseRuntimeDir(os.Getenv("XDG_RUNTIME_DIR"), os.Getuid(), os.TempDir(), dirExists)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create runtime directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("runtime directory %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("runtime directory %s is not a directory of mode 0700 owned by uid %d: remove it", dir, os.Getuid())
	}
	return dir, nil
}

// MountRecord tells other kmsfs commands which process serves a mount.
type MountRecord struct {
	PID        int    `json:"pid"`
	CipherDir  string `json:"cipherdir"`
	Mountpoint string `json:"mountpoint"`
	// Control is the mount's control socket (ControlPath), "" when the
	// mount runs without one.
	Control string `json:"control,omitempty"`
}

// ControlPath is the control socket of the mount at an absolute mount
// point: the record's name with .sock, so it sits next to the record in
// the 0700 runtime directory.
func ControlPath(runtimeDir, mountpoint string) string {
	rec := RecordPath(runtimeDir, mountpoint)
	return strings.TrimSuffix(rec, ".json") + ".sock"
}

// FindMounts returns the records in runtimeDir of mounts of cipherDir (an
// absolute, canonical path; "" for every cipher directory) whose process
// is still alive.
func FindMounts(runtimeDir, cipherDir string) []MountRecord {
	paths, _ := filepath.Glob(filepath.Join(runtimeDir, "*.json"))
	var out []MountRecord
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var r MountRecord
		if json.Unmarshal(b, &r) != nil || (cipherDir != "" && r.CipherDir != cipherDir) || r.PID <= 0 {
			continue
		}
		if err := syscall.Kill(r.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
			continue // the process is gone: a stale record
		}
		out = append(out, r)
	}
	return out
}

// RecordPath is the mount record file for an absolute mount point: a hash
// of the path, so any path maps to one flat file name.
func RecordPath(runtimeDir, mountpoint string) string {
	sum := sha256.Sum256([]byte(mountpoint))
	return filepath.Join(runtimeDir, hex.EncodeToString(sum[:16])+".json")
}

// WriteMountRecord writes r atomically to RecordPath(runtimeDir, r.Mountpoint).
func WriteMountRecord(runtimeDir string, r MountRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode mount record: %w", err)
	}
	path := RecordPath(runtimeDir, r.Mountpoint)
	tmp, err := os.CreateTemp(runtimeDir, ".record-*")
	if err != nil {
		return fmt.Errorf("write mount record: %w", err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if werr != nil || cerr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write mount record %s: %w", path, errors.Join(werr, cerr))
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write mount record %s: %w", path, err)
	}
	return nil
}

// ReadMountRecord reads the record of mountpoint; os.ErrNotExist when none.
func ReadMountRecord(runtimeDir, mountpoint string) (MountRecord, error) {
	var r MountRecord
	b, err := os.ReadFile(RecordPath(runtimeDir, mountpoint))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("mount record of %s: %w", mountpoint, err)
	}
	return r, nil
}

// RemoveMountRecord removes the record of mountpoint if it names pid (so a
// late exit never removes the record of a newer mount at the same place);
// pid 0 removes it unconditionally.
func RemoveMountRecord(runtimeDir, mountpoint string, pid int) error {
	if pid != 0 {
		r, err := ReadMountRecord(runtimeDir, mountpoint)
		if err != nil || r.PID != pid {
			return nil
		}
	}
	err := os.Remove(RecordPath(runtimeDir, mountpoint))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
