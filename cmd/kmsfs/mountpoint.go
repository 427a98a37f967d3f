package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	mountpoint string
	fstype     string
	source     string
}

// fstypeKmsfs is the type a kmsfs mount has in /proc/self/mountinfo.
const fstypeKmsfs = "fuse.kmsfs"

// parseMountinfo reads the proc(5) mountinfo format:
// "id parent major:minor root mountpoint options [optional...] - fstype source superopts".
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		out = append(out, mountEntry{
			mountpoint: unescapeOctal(f[4]),
			fstype:     f[sep+1],
			source:     unescapeOctal(f[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeOctal undoes the kernel's \ooo escapes (space, tab, newline, backslash).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// findMount returns the last (topmost) mount at path.
func findMount(entries []mountEntry, path string) (mountEntry, bool) {
	var found mountEntry
	ok := false
	for _, e := range entries {
		if e.mountpoint == path {
			found, ok = e, true
		}
	}
	return found, ok
}

func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

// canonicalPath makes p absolute and resolves symlinks in its parent (the
// last element is kept, so a dead FUSE mount, whose stat fails, still maps
// to the path the kernel lists).
func canonicalPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("path %s: %w", p, err)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	}
	dir, base := filepath.Split(abs)
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		return filepath.Join(r, base), nil
	}
	return abs, nil
}

// isMountpoint reports whether path is the root of a mount: its device
// differs from its parent's, or mountinfo lists it (a bind mount of the
// same filesystem keeps the device).
func isMountpoint(path string, fi os.FileInfo, mounts []mountEntry) bool {
	if _, ok := findMount(mounts, path); ok {
		return true
	}
	if path == "/" {
		return true
	}
	pfi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return false
	}
	st, ok1 := fi.Sys().(*syscall.Stat_t)
	pst, ok2 := pfi.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && st.Dev != pst.Dev
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// checkMountpoint is everything mount checks about MOUNTPOINT before it
// touches anything: it exists, is a directory, is not mounted on, is empty,
// and is neither inside the cipher directory nor above it.
func checkMountpoint(mnt, cipherDir string, mounts []mountEntry) error {
	fi, err := os.Stat(mnt)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("mount point %s is busy: a mount whose process died; kmsfs unmount it first", mnt)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mount point %s does not exist: create it with mkdir -p %s", mnt, mnt)
	case err != nil:
		return fmt.Errorf("mount point %s: %w", mnt, err)
	case !fi.IsDir():
		return fmt.Errorf("mount point %s is not a directory: mount on an empty directory", mnt)
	}
	if within(mnt, cipherDir) || within(cipherDir, mnt) {
		return fmt.Errorf("mount point %s overlaps the cipher directory %s: choose a mount point outside it", mnt, cipherDir)
	}
	if isMountpoint(mnt, fi, mounts) {
		return fmt.Errorf("mount point %s is busy: already mounted; kmsfs unmount it first", mnt)
	}
	empty, err := isEmptyDir(mnt)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", mnt, err)
	}
	if !empty {
		return fmt.Errorf("mount point %s is not empty: mount on an empty directory", mnt)
	}
	return nil
}
