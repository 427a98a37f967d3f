package cipherdir

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestWalkFiles(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a", "b/c", "b/d/e", ".kmsfs/index/000001.vlog", ".kmsfs/audit.log", "kmsfs.conf", "x/kmsfs.conf", "x/.kmsfs"} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	var rels []string
	err := WalkFiles(dir, func(path, rel string, _ os.DirEntry) error {
		if path != filepath.Join(dir, rel) {
			t.Errorf("path %s, rel %s: do not match", path, rel)
		}
		rels = append(rels, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// kmsfs.conf and .kmsfs are skipped only in the root.
	want := []string{"a", "b/c", "b/d/e", "x/.kmsfs", "x/kmsfs.conf"}
	if !reflect.DeepEqual(rels, want) {
		t.Errorf("WalkFiles: got %v, want %v", rels, want)
	}
	paths, err := ListFiles(dir)
	if err != nil || len(paths) != len(want) || paths[0] != filepath.Join(dir, "a") {
		t.Errorf("ListFiles: got %v, %v", paths, err)
	}
	if err := WalkFiles(filepath.Join(dir, "nope"), func(string, string, os.DirEntry) error { return nil }); err == nil {
		t.Errorf("WalkFiles of a missing directory: no error")
	}
}

func TestControlPathAndFindMounts(t *testing.T) {
	rt := t.TempDir()
	mnt := "/mnt/plain"
	sock := ControlPath(rt, mnt)
	if filepath.Dir(sock) != rt || !strings.HasSuffix(sock, ".sock") ||
		strings.TrimSuffix(sock, ".sock") != strings.TrimSuffix(RecordPath(rt, mnt), ".json") {
		t.Errorf("ControlPath: got %s, want the record's name with .sock in %s", sock, rt)
	}
	recs := []MountRecord{
		{PID: os.Getpid(), CipherDir: "/c1", Mountpoint: "/m1", Control: "/s1"},
		{PID: os.Getpid(), CipherDir: "/c2", Mountpoint: "/m2"},
		{PID: 1 << 30, CipherDir: "/c1", Mountpoint: "/m3"}, // no such process: stale
	}
	for _, r := range recs {
		if err := WriteMountRecord(rt, r); err != nil {
			t.Fatal(err)
		}
	}
	got := FindMounts(rt, "/c1")
	if len(got) != 1 || got[0] != recs[0] {
		t.Errorf("FindMounts(/c1): got %+v, want %+v", got, recs[:1])
	}
	if got := FindMounts(rt, ""); len(got) != 2 {
		t.Errorf("FindMounts(all): got %+v, want the 2 live ones", got)
	}
}
