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

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/atomicfile"
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

// runtimeSpot is one place the runtime directory may live: the entry name
// in the directory base.
type runtimeSpot struct {
	base, name string
	// owned: base must belong to the effective user (XDG_RUNTIME_DIR,
	// /run/user/UID); otherwise root may own it too, and it may be
	// writable by others if sticky (/tmp), where nobody else can rename
	// or remove the entry kmsfs makes.
	owned bool
}

// runtimeSpots lists, in order of preference, where the runtime directory
// may live: $XDG_RUNTIME_DIR/kmsfs, /run/user/UID/kmsfs, then
// TMPDIR/kmsfs-UID and /tmp/kmsfs-UID.
func runtimeSpots(xdgRuntimeDir string, uid int, runUser string, tempDirs ...string) []runtimeSpot {
	var out []runtimeSpot
	if xdgRuntimeDir != "" && filepath.IsAbs(xdgRuntimeDir) {
		out = append(out, runtimeSpot{base: filepath.Clean(xdgRuntimeDir), name: "kmsfs", owned: true})
	}
	out = append(out, runtimeSpot{base: filepath.Join(runUser, strconv.Itoa(uid)), name: "kmsfs", owned: true})
	seen := map[string]bool{}
	for _, t := range tempDirs {
		if t == "" || !filepath.IsAbs(t) || seen[filepath.Clean(t)] {
			continue
		}
		seen[filepath.Clean(t)] = true
		out = append(out, runtimeSpot{base: filepath.Clean(t), name: "kmsfs-" + strconv.Itoa(uid)})
	}
	return out
}

// ChooseRuntimeDir is the runtime directory by paths alone, as RuntimeDir
// would pick it if every base that exists also passed its ownership
// checks: $XDG_RUNTIME_DIR/kmsfs, else /run/user/UID/kmsfs when
// /run/user/UID exists, else TMPDIR/kmsfs-UID. It decides nothing:
// RuntimeDir checks what this only names.
func ChooseRuntimeDir(xdgRuntimeDir string, uid int, tempDir string, exists func(string) bool) string {
	spots := runtimeSpots(xdgRuntimeDir, uid, "/run/user", tempDir)
	for _, sp := range spots {
		if sp.base == filepath.Clean(xdgRuntimeDir) || !sp.owned || exists(sp.base) {
			return filepath.Join(sp.base, sp.name)
		}
	}
	return filepath.Join(tempDir, "kmsfs-"+strconv.Itoa(uid))
}

// RuntimeDir returns the runtime directory of this process's effective
// user (mount records, control sockets), creating it with mode 0700.
//
// Every base is checked before it is used, through handles opened
// component by component without following a symlink: $XDG_RUNTIME_DIR
// and /run/user/EUID must belong to the effective user and be writable by
// nobody else, and so must (or to root) every directory above them, so
// nobody else can swap any part of the path afterwards. A base that fails
// is skipped: a root process that inherited a user's XDG_RUNTIME_DIR
// (sudo -E) falls back to /run/user/0, else to a private kmsfs-0 under
// the temp directory. The runtime directory itself, once made, must be a
// directory of mode 0700 owned by the effective user: one that is not
// (a trap in a shared /tmp) is an error, never used.
func RuntimeDir() (string, error) {
	spots := runtimeSpots(os.Getenv("XDG_RUNTIME_DIR"), os.Geteuid(), "/run/user", os.TempDir(), "/tmp")
	return runtimeDirIn(spots, os.Geteuid())
}

// runtimeDirIn is RuntimeDir over spots, for the effective user euid.
func runtimeDirIn(spots []runtimeSpot, euid int) (string, error) {
	var skipped []string
	for _, sp := range spots {
		basefd, err := openTrustedDir(sp.base, euid, sp.owned)
		if err != nil {
			skipped = append(skipped, err.Error())
			continue
		}
		dir := filepath.Join(sp.base, sp.name)
		err = privateDirAt(basefd, sp.name, euid)
		unix.Close(basefd)
		if err != nil {
			return "", fmt.Errorf("runtime directory %s: %w", dir, err)
		}
		return dir, nil
	}
	return "", fmt.Errorf("no usable runtime directory for uid %d (%s): set XDG_RUNTIME_DIR to a directory of mode 0700 that uid owns", euid, strings.Join(skipped, "; "))
}

// openTrustedDir opens the absolute directory path component by
// component from "/" without following a symlink (O_PATH|O_NOFOLLOW) and
// checks each with fstat: every component must belong to euid or root
// and be writable by nobody else, unless it is sticky (then nobody else
// can rename what it holds); with owned, path itself must belong to euid
// and be writable by nobody else. It returns an O_PATH handle of path.
func openTrustedDir(path string, euid int, owned bool) (int, error) {
	if !filepath.IsAbs(path) {
		return -1, fmt.Errorf("%s is not an absolute path", path)
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	comps := strings.Split(strings.Trim(filepath.Clean(path), "/"), "/")
	if len(comps) == 1 && comps[0] == "" {
		comps = nil
	}
	at := "/"
	for i := 0; i <= len(comps); i++ { // "/" itself, then one round per component
		if i > 0 {
			next, err := OpenDirAt(fd, comps[i-1])
			unix.Close(fd)
			if err != nil {
				return -1, fmt.Errorf("%s: %w (a symlink is not followed)", filepath.Join(at, comps[i-1]), err)
			}
			fd, at = next, filepath.Join(at, comps[i-1])
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w", at, err)
		}
		last := i == len(comps)
		switch {
		case last && owned && (int(st.Uid) != euid || st.Mode&0o022 != 0):
			unix.Close(fd)
			return -1, fmt.Errorf("%s is owned by uid %d with mode %04o, want uid %d and writable by nobody else", at, st.Uid, st.Mode&0o7777, euid)
		case int(st.Uid) != euid && st.Uid != 0:
			unix.Close(fd)
			return -1, fmt.Errorf("%s is owned by uid %d, not by uid %d or root", at, st.Uid, euid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			unix.Close(fd)
			return -1, fmt.Errorf("%s has mode %04o: writable by others and not sticky", at, st.Mode&0o7777)
		}
	}
	return fd, nil
}

// privateDirAt makes name in basefd a directory of mode 0700 unless it
// exists, then checks through a handle opened without following a
// symlink that it is a directory owned by euid that nobody else may use.
func privateDirAt(basefd int, name string, euid int) error {
	if err := unix.Mkdirat(basefd, name, 0o700); err != nil && err != unix.EEXIST {
		return fmt.Errorf("create: %w", err)
	}
	fd, err := OpenDirAt(basefd, name)
	if err != nil {
		return fmt.Errorf("open: %w (not a directory, or a symlink): remove it", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if int(st.Uid) != euid || st.Mode&0o077 != 0 {
		return fmt.Errorf("owned by uid %d with mode %04o, not a directory of mode 0700 owned by uid %d: remove it", st.Uid, st.Mode&0o7777, euid)
	}
	return nil
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

// WriteMountRecord writes r atomically (atomicfile: temp file, fsync,
// rename, fsync of the directory) to RecordPath(runtimeDir, r.Mountpoint),
// mode 0600.
func WriteMountRecord(runtimeDir string, r MountRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode mount record: %w", err)
	}
	path := RecordPath(runtimeDir, r.Mountpoint)
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600, atomicfile.TempPrefix(".record-")); err != nil {
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
