package cipherdir

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/crypto"
)

const testFSID = "4f0c1e8a9b2d4c6e8f1a3b5c7d9e0f12"

// testTree is a cipher tree built offline the way the mount builds it:
// every entry made through Resolve and PrepareEntry, every directory given
// its ID.
type testTree struct {
	t    *testing.T
	dir  string
	tree *Tree
}

func testNameCipher(t *testing.T) *crypto.NameCipher {
	t.Helper()
	key := make([]byte, crypto.NamesKeySize)
	for i := range key {
		key[i] = byte(i)
	}
	nc, err := crypto.NewNameCipher(key, testFSID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Zero)
	return nc
}

func newTestTree(t *testing.T, encrypted bool) *testTree {
	t.Helper()
	dir := t.TempDir()
	var nc *crypto.NameCipher
	if encrypted {
		nc = testNameCipher(t)
	}
	tree, err := OpenTree(dir, nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tree.Close() })
	if _, err := tree.NewDirID(tree.Root()); err != nil {
		t.Fatal(err)
	}
	return &testTree{t: t, dir: dir, tree: tree}
}

// each runs fn on a tree of each kind.
func eachTree(t *testing.T, fn func(t *testing.T, tt *testTree)) {
	t.Run("encrypted", func(t *testing.T) { fn(t, newTestTree(t, true)) })
	t.Run("plaintext", func(t *testing.T) { fn(t, newTestTree(t, false)) })
}

func (tt *testTree) locate(p string) *Location {
	tt.t.Helper()
	loc, err := tt.tree.Resolve(p)
	if err != nil {
		tt.t.Fatalf("Resolve(%.60q): %v", p, err)
	}
	if err := tt.tree.PrepareEntry(loc.Parent, loc.Entry, loc.Encoded); err != nil {
		tt.t.Fatal(err)
	}
	return loc
}

func (tt *testTree) mkdir(p string) string {
	tt.t.Helper()
	loc := tt.locate(p)
	defer loc.Close()
	if err := unix.Mkdirat(loc.Parent, loc.Entry, 0o755); err != nil {
		tt.t.Fatal(err)
	}
	fd, err := OpenDirAt(loc.Parent, loc.Entry)
	if err != nil {
		tt.t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := tt.tree.NewDirID(fd); err != nil {
		tt.t.Fatal(err)
	}
	return loc.Cipher
}

func (tt *testTree) mkfile(p, data string) string {
	tt.t.Helper()
	loc := tt.locate(p)
	defer loc.Close()
	if err := WriteNewFileAt(loc.Parent, loc.Entry, 0o644, []byte(data)); err != nil {
		tt.t.Fatal(err)
	}
	return loc.Cipher
}

func (tt *testTree) symlink(p, target string) string {
	tt.t.Helper()
	loc := tt.locate(p)
	defer loc.Close()
	stored, err := tt.tree.EncryptTarget([]byte(target))
	if err != nil {
		tt.t.Fatal(err)
	}
	if err := unix.Symlinkat(string(stored), loc.Parent, loc.Entry); err != nil {
		tt.t.Fatal(err)
	}
	return loc.Cipher
}

// walk collects the plain paths of a Walk and what went to onErr.
func (tt *testTree) walk(start string) (plains []string, errs []*WalkError) {
	tt.t.Helper()
	err := tt.tree.Walk(start, func(e WalkEntry) error {
		plains = append(plains, e.Plain)
		return nil
	}, func(e *WalkError) error {
		errs = append(errs, e)
		return nil
	})
	if err != nil {
		tt.t.Fatalf("Walk(%q): %v", start, err)
	}
	return plains, errs
}

// long is a plain name whose encoding needs the long-name scheme.
var long = strings.Repeat("L", 170)

func TestTreeResolveWalkPlainPath(t *testing.T) {
	eachTree(t, func(t *testing.T, tt *testTree) {
		tt.mkdir("docs")
		tt.mkfile("docs/a.txt", "a")
		tt.mkfile("docs/"+long, "long")
		tt.mkdir("docs/sub")
		tt.mkfile("docs/sub/kmsfs.conf", "a plain file may be called that below the root")
		tt.symlink("docs/link", "a.txt")
		tt.mkfile("z", "z")

		plains, errs := tt.walk("")
		want := []string{"", "docs", "docs/" + long, "docs/a.txt", "docs/link", "docs/sub", "docs/sub/kmsfs.conf", "z"}
		if !reflect.DeepEqual(plains, want) || len(errs) != 0 {
			t.Errorf("Walk: got %q, errors %v; want %q", plains, errs, want)
		}
		if plains, _ := tt.walk("docs/sub"); !reflect.DeepEqual(plains, []string{"docs/sub", "docs/sub/kmsfs.conf"}) {
			t.Errorf("Walk(docs/sub): got %q", plains)
		}

		tests := []struct {
			name, plain string
			wantErr     string
		}{
			{name: "file", plain: "docs/a.txt"},
			{name: "long name", plain: "docs/" + long},
			{name: "leading slash and dots", plain: "/docs/./sub/kmsfs.conf"},
			{name: "missing last", plain: "docs/new"},
			{name: "missing middle", plain: "nope/x", wantErr: "no such file or directory"},
			{name: "through a file", plain: "z/x", wantErr: "not a directory"},
			{name: "through a symlink", plain: "docs/link/x", wantErr: "not a directory"},
			{name: "dot-dot", plain: "docs/../z", wantErr: "leaves the filesystem"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				loc, err := tt.tree.Resolve(tc.plain)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("Resolve(%q): got %v, want an error containing %q", tc.plain, err, tc.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatalf("Resolve(%q): %v", tc.plain, err)
				}
				defer loc.Close()
				if !tt.tree.Encrypted() && loc.Cipher != strings.TrimPrefix(strings.ReplaceAll(tc.plain, "/./", "/"), "/") {
					t.Errorf("plaintext Cipher: got %q, want the plain path", loc.Cipher)
				}
				back, err := tt.tree.PlainPath(loc.Cipher)
				if want := strings.TrimPrefix(strings.ReplaceAll(tc.plain, "/./", "/"), "/"); err != nil || back != want {
					t.Errorf("PlainPath(%q): got %q, %v; want %q", loc.Cipher, back, err, want)
				}
			})
		}

		// PlainName of every entry of docs: own entries flagged, names mapped.
		loc, err := tt.tree.Resolve("docs")
		if err != nil {
			t.Fatal(err)
		}
		defer loc.Close()
		fd, err := OpenDirAt(loc.Parent, loc.Entry)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		id, err := tt.tree.ReadDirID(fd)
		if err != nil {
			t.Fatal(err)
		}
		ents, err := ReadDirNames(fd)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		own := 0
		for _, e := range ents {
			name, isOwn, err := tt.tree.PlainName(fd, id, e.Name, false)
			if err != nil {
				t.Errorf("PlainName(%s): %v", e.Name, err)
			}
			if isOwn {
				own++
				continue
			}
			got = append(got, name)
		}
		sortItems(got, func(s string) string { return s })
		if want := []string{long, "a.txt", "link", "sub"}; !reflect.DeepEqual(got, want) {
			t.Errorf("PlainName of docs' entries: got %q, want %q", got, want)
		}
		// Encrypted: kmsfs.dirid and the long name's side file.
		if wantOwn := map[bool]int{true: 2, false: 0}[tt.tree.Encrypted()]; own != wantOwn {
			t.Errorf("own entries in docs: got %d, want %d", own, wantOwn)
		}
		if _, err := tt.tree.PlainPath("kmsfs.conf"); !errors.Is(err, ErrOwnEntry) {
			t.Errorf("PlainPath(kmsfs.conf): got %v, want ErrOwnEntry", err)
		}
	})
}

// TestTreeDeeperThanPathMax: a tree whose cipher paths are longer than
// PATH_MAX resolves, walks and maps back.
func TestTreeDeeperThanPathMax(t *testing.T) {
	eachTree(t, func(t *testing.T, tt *testTree) {
		// 150-byte names encode to 235 characters (stored as themselves).
		name := strings.Repeat("d", 150)
		var parts []string
		for len(strings.Join(parts, "/")) <= 2*unix.PathMax {
			parts = append(parts, name)
			tt.mkdir(strings.Join(parts, "/"))
		}
		deep := strings.Join(append(parts, "leaf"), "/")
		cipher := tt.mkfile(deep, "leaf")
		if len(cipher) <= unix.PathMax {
			t.Fatalf("cipher path of %d bytes: want more than PATH_MAX", len(cipher))
		}
		if _, err := os.Lstat(filepath.Join(tt.dir, cipher)); err == nil {
			t.Fatalf("a path of %d bytes resolved by path: the test proves nothing", len(cipher))
		}
		loc, err := tt.tree.Resolve(deep)
		if err != nil {
			t.Fatal(err)
		}
		st, err := loc.Lstat()
		loc.Close()
		if err != nil || st.Size != 4 {
			t.Errorf("Lstat of the deep leaf: size %d, %v", st.Size, err)
		}
		plains, errs := tt.walk("")
		if len(errs) != 0 || plains[len(plains)-1] != deep {
			t.Errorf("Walk: last %.40q (of %d), errors %v; want the deep leaf", plains[len(plains)-1], len(plains), errs)
		}
		if back, err := tt.tree.PlainPath(cipher); err != nil || back != deep {
			t.Errorf("PlainPath of the deep leaf: %d bytes, %v", len(back), err)
		}
		var files []string
		if err := tt.tree.WalkCipherFiles(func(d *CipherDir, e CipherEntry) error {
			files = append(files, d.Path(e.Name))
			return nil
		}); err != nil || len(files) != 1 || files[0] != cipher {
			t.Errorf("WalkCipherFiles: %d files, %v; want the deep leaf", len(files), err)
		}
	})
}

// TestTreeSymlinkNotFollowed: a symlink planted in the cipher directory
// where a directory is expected is refused by Resolve and not entered by
// the walks.
func TestTreeSymlinkNotFollowed(t *testing.T) {
	eachTree(t, func(t *testing.T, tt *testTree) {
		c := tt.mkdir("a")
		tt.mkfile("a/secret", "s")
		// b is a symlink, in the cipher directory, to the cipher a.
		loc := tt.locate("b")
		if err := unix.Symlinkat(filepath.Join(tt.dir, c), loc.Parent, loc.Entry); err != nil {
			t.Fatal(err)
		}
		loc.Close()
		if _, err := tt.tree.Resolve("b/secret"); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("Resolve through a symlink: got %v, want refused", err)
		}
		plains, _ := tt.walk("")
		if want := []string{"", "a", "a/secret", "b"}; !reflect.DeepEqual(plains, want) {
			t.Errorf("Walk: got %q, want %q (b not entered)", plains, want)
		}
		n := 0
		if err := tt.tree.WalkCipherFiles(func(*CipherDir, CipherEntry) error { n++; return nil }); err != nil || n != 1 {
			t.Errorf("WalkCipherFiles: %d files, %v; want 1", n, err)
		}
	})
}

// TestTreeNamesThatDoNotMap: a name moved to another directory, a long
// name whose side file is gone or swapped with another's, a damaged
// directory ID: each goes to onErr with its cause; the rest walks.
func TestTreeNamesThatDoNotMap(t *testing.T) {
	tt := newTestTree(t, true)
	ca := tt.mkdir("a")
	cb := tt.mkdir("b")
	moved := tt.mkfile("a/moved", "m")
	tt.mkfile("a/stays", "s")
	long1 := tt.mkfile("b/"+long, "1")
	long2 := tt.mkfile("b/"+strings.Repeat("M", 170), "2")
	tt.mkfile("b/short", "x")
	cc := tt.mkdir("c")
	tt.mkfile("c/f", "f")

	// Move the cipher entry from a to b: it no longer decrypts.
	movedTo := cb + "/" + filepath.Base(moved)
	if err := os.Rename(filepath.Join(tt.dir, moved), filepath.Join(tt.dir, movedTo)); err != nil {
		t.Fatal(err)
	}
	// Swap the two long names' side files.
	s1, s2 := filepath.Join(tt.dir, long1+crypto.LongNameSuffix), filepath.Join(tt.dir, long2+crypto.LongNameSuffix)
	tmp := s1 + ".swap"
	for _, mv := range [][2]string{{s1, tmp}, {s2, s1}, {tmp, s2}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	// Damage c's ID (the xattr copy too, where there is one).
	cdir := filepath.Join(tt.dir, cc)
	os.Chmod(filepath.Join(cdir, DirIDName), 0o644)
	if err := os.WriteFile(filepath.Join(cdir, DirIDName), []byte("short"), 0o444); err != nil {
		t.Fatal(err)
	}
	unix.Removexattr(cdir, dirIDXattr)

	plains, errs := tt.walk("")
	if want := []string{"", "a", "a/stays", "b", "b/short", "c"}; !reflect.DeepEqual(plains, want) {
		t.Errorf("Walk: got %q, want %q", plains, want)
	}
	type got struct {
		cipher, plain string
		cause         error
	}
	want := map[string]got{
		movedTo: {movedTo, "b", crypto.ErrNameAuth},
		long1:   {long1, "b", ErrLongName},
		long2:   {long2, "b", ErrLongName},
		cc:      {cc, "c", ErrBadDirID},
	}
	if len(errs) != len(want) {
		t.Errorf("onErr: got %d errors (%v), want %d", len(errs), errs, len(want))
	}
	for _, e := range errs {
		w, ok := want[e.Cipher]
		if !ok {
			t.Errorf("onErr: unexpected %v", e)
			continue
		}
		if e.Plain != w.plain || !errors.Is(e, w.cause) {
			t.Errorf("onErr for %s: got plain %q, %v; want %q, %v", e.Cipher, e.Plain, e.Err, w.plain, w.cause)
		}
	}
	// Without onErr the first one stops the walk.
	if err := tt.tree.Walk("", func(WalkEntry) error { return nil }, nil); err == nil {
		t.Errorf("Walk with a nil onErr: got nil, want the first error")
	}
	// PlainPath says the same.
	var we *WalkError
	if _, err := tt.tree.PlainPath(movedTo); !errors.As(err, &we) || !errors.Is(err, crypto.ErrNameAuth) || we.Plain != "b" {
		t.Errorf("PlainPath of the moved name: got %v, want a WalkError in b wrapping ErrNameAuth", err)
	}
	if _, err := tt.tree.PlainPath(long1); !errors.Is(err, ErrLongName) {
		t.Errorf("PlainPath of a long name with a swapped side file: got %v, want ErrLongName", err)
	}
	if err := os.Remove(s1); err != nil {
		t.Fatal(err)
	}
	if _, err := tt.tree.PlainPath(long1); !errors.Is(err, ErrLongName) {
		t.Errorf("PlainPath of a long name without its side file: got %v, want ErrLongName", err)
	}
	if _, err := tt.tree.Resolve("c/f"); !errors.Is(err, ErrBadDirID) {
		t.Errorf("Resolve below a damaged ID: got %v, want ErrBadDirID", err)
	}

	// DirIDOf finds a's ID among candidates for the moved name.
	fa, err := OpenDirAt(tt.tree.Root(), ca)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fa)
	ida, err := tt.tree.ReadDirID(fa)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := OpenDirAt(tt.tree.Root(), cb)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fb)
	idb, _ := tt.tree.ReadDirID(fb)
	if got := tt.tree.DirIDOf(fb, []string{filepath.Base(moved)}, [][]byte{idb, ida}); !bytes.Equal(got, ida) {
		t.Errorf("DirIDOf the moved name: got %x, want a's ID %x", got, ida)
	}
	if got := tt.tree.DirIDOf(fb, []string{filepath.Base(moved), "short-but-not-a-name"}, [][]byte{ida}); got != nil {
		t.Errorf("DirIDOf names that do not all decrypt: got %x, want nil", got)
	}
}

// TestOwnEntry pins which entries are kmsfs's own.
func TestOwnEntry(t *testing.T) {
	longEntry := crypto.LongName(strings.Repeat("A", 300))
	tests := []struct {
		name        string
		isRoot, enc bool
		want        bool
	}{
		{"kmsfs.conf", true, false, true},
		{"kmsfs.conf", false, false, false},
		{"kmsfs.conf", false, true, true},
		{".kmsfs", true, true, true},
		{"kmsfs.names", true, false, true},
		{DirIDName, false, true, true},
		{DirIDName, false, false, false},
		{longEntry, false, true, false},
		{longEntry + crypto.LongNameSuffix, false, true, true},
		{longEntry + crypto.LongNameSuffix + ".tmp", false, true, true},
		{"r-zaKBfVGMnfFn6Uquvf_UJzm9ywvhGwL2B34bjrDDM", false, true, false},
		{"a.txt", false, false, false},
	}
	for _, tc := range tests {
		if got := OwnEntry(tc.name, tc.isRoot, tc.enc); got != tc.want {
			t.Errorf("OwnEntry(%.20q, root %v, encrypted %v): got %v, want %v", tc.name, tc.isRoot, tc.enc, got, tc.want)
		}
	}
}

func TestStatInfo(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("abc"), 0o640); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	fi := StatInfo("f", &st)
	ofi, _ := os.Lstat(p)
	if fi.Mode() != ofi.Mode() || fi.Size() != 3 || !fi.ModTime().Equal(ofi.ModTime()) || fi.IsDir() {
		t.Errorf("StatInfo: got %v %d %v, want %v 3 %v", fi.Mode(), fi.Size(), fi.ModTime(), ofi.Mode(), ofi.ModTime())
	}
	if _, ok := fi.Sys().(*unix.Stat_t); !ok {
		t.Errorf("StatInfo.Sys: got %T", fi.Sys())
	}
}

// TestOpenBeneath: a file below a path longer than PATH_MAX opens, and a
// symlink on the way or at the end is refused.
func TestOpenBeneath(t *testing.T) {
	dir := t.TempDir()
	rel := ""
	for len(rel) < 5000 {
		rel = filepath.Join(rel, strings.Repeat("d", 200))
		if err := mkdirBeneath(dir, rel); err != nil {
			t.Fatalf("mkdir %d bytes: %v", len(rel), err)
		}
	}
	root, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	dfd, err := OpenDirPath(root, rel)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteNewFileAt(dfd, "f", 0o644, []byte("deep")); err != nil {
		t.Fatal(err)
	}
	unix.Close(dfd)
	f, err := OpenBeneath(dir, filepath.Join(dir, rel, "f"), os.O_RDONLY)
	if err != nil {
		t.Fatalf("OpenBeneath a %d-byte path: %v", len(rel), err)
	}
	f.Close()

	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "f"), filepath.Join(dir, "flink")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"link/f", "flink"} {
		if f, err := OpenBeneath(dir, filepath.Join(dir, p), os.O_RDWR); err == nil {
			f.Close()
			t.Errorf("OpenBeneath %s: opened through a symlink", p)
		}
	}
	if _, err := OpenBeneath(dir, filepath.Join(dir, "../x"), os.O_RDONLY); err == nil {
		t.Errorf("OpenBeneath outside dir: got nil error")
	}
}

// mkdirBeneath makes rel's last component below dir, by handles.
func mkdirBeneath(dir, rel string) error {
	root, err := OpenRoot(dir)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	parent, name := filepath.Split(rel)
	pfd, err := OpenDirPath(root, parent)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return unix.Mkdirat(pfd, name, 0o755)
}
