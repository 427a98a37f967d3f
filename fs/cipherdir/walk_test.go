package cipherdir

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
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

// TestWalkFilesEncryptedNames: with encrypted names the walk passes over
// kmsfs.dirid in every directory, the long names' side files and
// left-over temporary files, and keeps the long-name entries.
func TestWalkFilesEncryptedNames(t *testing.T) {
	tt := newTestTree(t, true)
	tt.mkdir("d")
	want := []string{
		tt.mkfile("a", "a"),
		tt.mkfile("d/"+long, "long"),
		tt.mkfile("d/b", "b"),
	}
	tt.mkfile("d/"+strings.Repeat("M", 200), "")
	// A crash's leftovers: a temporary file and an orphan side file.
	if err := os.WriteFile(filepath.Join(tt.dir, "d.tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	orphan := crypto.LongName(strings.Repeat("x", 300)) + crypto.LongNameSuffix
	if err := os.WriteFile(filepath.Join(tt.dir, want[2][:strings.IndexByte(want[2], '/')], orphan), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tt.dir, ConfName), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	var rels []string
	err := WalkFiles(tt.dir, func(path, rel string, d os.DirEntry) error {
		if path != filepath.Join(tt.dir, rel) || d.Name() != filepath.Base(rel) || d.IsDir() {
			t.Errorf("path %s, rel %s, entry %s: do not match", path, rel, d.Name())
		}
		if fi, err := d.Info(); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("Info of %s: %v, %v", rel, fi, err)
		}
		rels = append(rels, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The 200-byte name is a long name too: 4 files in all.
	if len(rels) != 4 {
		t.Fatalf("WalkFiles: got %d files %q, want 4", len(rels), rels)
	}
	for _, w := range want {
		if !slices.Contains(rels, w) {
			t.Errorf("WalkFiles: %s missing from %q", w, rels)
		}
	}
	for _, r := range rels {
		if base := filepath.Base(r); base != "a" && strings.Contains(base, ".") && !crypto.IsLongName(base) {
			t.Errorf("WalkFiles listed kmsfs's own %s", r)
		}
	}
}

func TestHasEncryptedNames(t *testing.T) {
	cipherFile := make([]byte, 1056)
	tests := []struct {
		name  string
		files map[string][]byte
		want  bool
	}{
		{"empty", nil, false},
		{"dirid", map[string][]byte{DirIDName: make([]byte, 16)}, true},
		// A plaintext-names file of that name from before it was reserved.
		{"a cipher file called kmsfs.dirid", map[string][]byte{DirIDName: cipherFile}, false},
		{"damaged dirid only", map[string][]byte{DirIDName: make([]byte, 15)}, false},
		{"names head", map[string][]byte{NamesName: namesHead(t)}, true},
		{"names head copy", map[string][]byte{".kmsfs/names": namesHead(t)}, true},
		{"a cipher file called kmsfs.names", map[string][]byte{NamesName: cipherFile}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for p, b := range tc.files {
				full := filepath.Join(dir, p)
				os.MkdirAll(filepath.Dir(full), 0o700)
				if err := os.WriteFile(full, b, 0o444); err != nil {
					t.Fatal(err)
				}
			}
			fd, err := OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if got := HasEncryptedNames(fd); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// namesHead is the start of a names-key head: a preamble of the all-zero
// file ID.
func namesHead(t *testing.T) []byte {
	t.Helper()
	l := Config{ChunkShift: 12, SlotShift: 9}.Layout()
	return append(crypto.NewPreamble(l, crypto.NamesKeyID).Marshal(), make([]byte, 1024)...)
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
