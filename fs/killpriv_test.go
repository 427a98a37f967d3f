package fs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKillPrivMode pins keptSetID to the kernel's rules
// (setattr_should_drop_suidgid, setattr_should_drop_sgid).
func TestKillPrivMode(t *testing.T) {
	member := &requester{uid: 1000, gid: 1000, loaded: true}
	other := &requester{uid: 1000, gid: 2000, loaded: true}
	tests := []struct {
		name   string
		mode   uint32
		q      *requester
		fsetid bool
		want   uint32
	}{
		{"plain file", 0o644, member, false, 0o644},
		{"setuid", 0o4755, member, false, 0o755},
		{"setuid, privileged", 0o4755, member, true, 0o755},
		{"setgid group-executable", 0o2775, member, false, 0o775},
		{"setgid group-executable, privileged", 0o2775, member, true, 0o775},
		{"setgid, member", 0o2664, member, false, 0o2664},
		{"setgid, not a member", 0o2664, other, false, 0o664},
		{"setgid, not a member, privileged", 0o2664, other, true, 0o2664},
		{"setgid, caller unknown", 0o2664, nil, false, 0o664},
		{"both, member", 0o6754, member, false, 0o754},
		{"sticky kept", 0o5755, member, false, 0o1755},
		{"file type bits dropped", syscall.S_IFREG | 0o4700, member, false, 0o700},
	}
	for _, tc := range tests {
		if got := keptSetID(tc.mode, 1000, tc.q, tc.fsetid); got != tc.want {
			t.Errorf("%s: keptSetID(%#o): got %#o, want %#o", tc.name, tc.mode, got, tc.want)
		}
	}
}

// TestKillPriv: a write, truncate, open(O_TRUNC) or chown through the
// mount clears set-ID bits exactly as the same call on the local disk
// (ext4 under the test's temporary directory) does: the mount asks for
// CAP_HANDLE_KILLPRIV_V2, so the kernel leaves the clearing to kmsfs.
// Each case runs on a plain file and on a file of the mount, and both
// must end with the mode the case wants.
func TestKillPriv(t *testing.T) {
	e := newTestFS(t)
	mountAllowOther(t, e)
	plain := t.TempDir()
	searchable(t, plain)
	owner := caller{uid: 1000, gid: 1000, groups: []uint32{1000}}
	outsider := caller{uid: 1000, gid: 1000} // owns the file, not in its group 3000
	root := caller{}                         // the test itself: root with CAP_FSETID
	write := func(p string) error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte("more")); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	ftruncate := func(p string) error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if err := f.Truncate(2); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	tests := []struct {
		name     string
		uid, gid int
		mode     uint32
		as       caller
		op       func(p string) error
		want     uint32
	}{
		{"write by owner, setuid", 1000, 1000, 0o4755, owner, write, 0o755},
		{"write by owner, setuid and setgid", 1000, 1000, 0o6755, owner, write, 0o755},
		{"write by owner, setgid group-executable", 1000, 1000, 0o2775, owner, write, 0o775},
		{"write by member, setgid", 1000, 1000, 0o2664, owner, write, 0o2664},
		{"write by non-member, setgid", 1000, 3000, 0o2664, outsider, write, 0o664},
		{"write by owner, no set-ID bits", 1000, 1000, 0o644, owner, write, 0o644},
		{"write by root keeps", 1000, 1000, 0o6755, root, write, 0o6755},
		{"ftruncate by owner", 1000, 1000, 0o4755, owner, ftruncate, 0o755},
		{"truncate by owner", 1000, 1000, 0o4755, owner, func(p string) error { return unix.Truncate(p, 1) }, 0o755},
		{"truncate by root keeps", 1000, 1000, 0o4755, root, func(p string) error { return unix.Truncate(p, 1) }, 0o4755},
		{"open O_TRUNC by owner", 1000, 1000, 0o4755, owner, func(p string) error {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
			if err == nil {
				err = f.Close()
			}
			return err
		}, 0o755},
		{"chown by root", 1000, 1000, 0o6755, root, func(p string) error { return os.Chown(p, 2000, 2000) }, 0o755},
		{"chown by root, setgid not group-executable", 1000, 1000, 0o2644, root, func(p string) error { return os.Chown(p, 2000, 2000) }, 0o2644},
		{"chgrp by owner", 1000, 1000, 0o4755, owner, func(p string) error { return os.Chown(p, -1, 1000) }, 0o755},
	}
	for i, tc := range tests {
		for _, dir := range []string{plain, e.mnt} {
			p := filepath.Join(dir, "f"+string(rune('a'+i)))
			if err := os.WriteFile(p, []byte("content"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(p, tc.uid, tc.gid); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, os.FileMode(tc.mode&0o777)|unixModeBits(tc.mode)); err != nil {
				t.Fatal(err)
			}
			var err error
			if tc.as.uid == 0 {
				err = tc.op(p)
			} else {
				err = asCaller(t, tc.as, func() error { return tc.op(p) })
			}
			if err != nil {
				t.Errorf("%s in %s: %v", tc.name, dir, err)
				continue
			}
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			if got := st.Mode & 0o7777; got != tc.want {
				where := "the mount"
				if dir == plain {
					where = "the local disk"
				}
				t.Errorf("%s on %s: mode got %#o, want %#o", tc.name, where, got, tc.want)
			}
		}
	}
}

// unixModeBits turns the set-ID and sticky bits of mode into os.FileMode.
func unixModeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}
