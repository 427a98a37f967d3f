package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needProgram skips t when name is not installed.
func needProgram(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

// TestPrograms runs real programs on one mount: git, tar, gcc and
// sqlite3, each a subtest that skips when its program is missing. The
// programs run in child processes of the test, never of the mount.
func TestPrograms(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.mount()
	// git must not read the user's or the system's configuration.
	f.env = append(f.env, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=kmsfs it", "GIT_AUTHOR_EMAIL=it@kmsfs.invalid",
		"GIT_COMMITTER_NAME=kmsfs it", "GIT_COMMITTER_EMAIL=it@kmsfs.invalid",
		"LC_ALL=C")

	t.Run("git", func(t *testing.T) {
		f := f.withT(t)
		git := needProgram(t, "git")
		repo := filepath.Join(f.mnt, "repo")
		f.execOK(nil, git, "init", "-q", "-b", "main", repo)
		files := map[string][]byte{
			"README":        []byte("kmsfs integration repository\n"),
			"src/main.c":    []byte("int main(void) { return 0; }\n"),
			"data/blob.bin": randBytes(t, 200000),
		}
		for name, b := range files {
			p := filepath.Join(repo, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		f.execOK(nil, git, "-C", repo, "add", "-A")
		f.execOK(nil, git, "-C", repo, "commit", "-q", "-m", "first commit")
		if err := os.WriteFile(filepath.Join(repo, "README"), []byte("kmsfs integration repository, edited\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		f.execOK(nil, git, "-C", repo, "commit", "-q", "-a", "-m", "second commit")
		f.execOK(nil, git, "-C", repo, "gc", "-q") // packs objects: mmap and rename on the mount
		f.execOK(nil, git, "-C", repo, "fsck", "--full", "--strict")
		log := f.execOK(nil, git, "-C", repo, "log", "--format=%s")
		if got, want := strings.TrimSpace(log), "second commit\nfirst commit"; got != want {
			t.Errorf("git log: got %q, want %q", got, want)
		}
		if st := f.execOK(nil, git, "-C", repo, "status", "--porcelain"); st != "" {
			t.Errorf("git status after commit: got %q, want a clean tree", st)
		}
		// A clone off the mount has the same content.
		clone := filepath.Join(f.dir, "clone")
		f.execOK(nil, git, "clone", "-q", repo, clone)
		for name, want := range files {
			if name == "README" {
				want = []byte("kmsfs integration repository, edited\n")
			}
			got, err := os.ReadFile(filepath.Join(clone, name))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("clone %s: got %d bytes, %v; want %d bytes", name, len(got), err, len(want))
			}
		}
	})

	t.Run("tar", func(t *testing.T) {
		f := f.withT(t)
		tarBin := needProgram(t, "tar")
		src := filepath.Join(f.dir, "tar-src")
		for i := 0; i < 50; i++ {
			p := filepath.Join(src, fmt.Sprintf("d%d", i%5), fmt.Sprintf("f%02d", i))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, randBytes(t, i*997), os.FileMode(0o600|0o044*(i%2))); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("d0/f00", filepath.Join(src, "link")); err != nil {
			t.Fatal(err)
		}
		archive := filepath.Join(f.mnt, "tree.tar")
		f.execOK(nil, tarBin, "-cf", archive, "-C", src, ".")
		// Unpack onto the mount too, then back off it.
		onMount := filepath.Join(f.mnt, "tar-out")
		if err := os.Mkdir(onMount, 0o755); err != nil {
			t.Fatal(err)
		}
		f.execOK(nil, tarBin, "-xf", archive, "-C", onMount)
		out := filepath.Join(f.dir, "tar-out")
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		f.execOK(nil, tarBin, "-xf", archive, "-C", out)
		want := scanTree(t, src)
		compareTrees(t, want, scanTree(t, out), time.Second)
		compareTrees(t, want, scanTree(t, onMount), time.Second)
	})

	t.Run("gcc", func(t *testing.T) {
		f := f.withT(t)
		gcc := needProgram(t, "gcc")
		dir := filepath.Join(f.mnt, "cc")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		src := `#include <stdio.h>
int main(int argc, char **argv) {
	unsigned long s = 0;
	for (int i = 1; i <= 1000; i++) s += (unsigned long)i * i;
	printf("kmsfs-gcc %d %lu\n", argc, s);
	return 0;
}
`
		if err := os.WriteFile(filepath.Join(dir, "hello.c"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "hello")
		f.execOK(nil, gcc, "-O2", "-o", bin, filepath.Join(dir, "hello.c"))
		// Run the binary living on the mount from the test process (not
		// from the mount process, which would deadlock).
		out := f.execOK(nil, bin, "x")
		if got, want := out, "kmsfs-gcc 2 333833500\n"; got != want {
			t.Errorf("compiled program output: got %q, want %q", got, want)
		}
		fi, err := os.Stat(bin)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o100 == 0 {
			t.Errorf("gcc output mode: got %v, want executable", fi.Mode())
		}
	})

	t.Run("sqlite3", func(t *testing.T) {
		f := f.withT(t)
		sqlite := needProgram(t, "sqlite3")
		for _, mode := range []string{"delete", "wal"} {
			t.Run(mode, func(t *testing.T) {
				f := f.withT(t)
				db := filepath.Join(f.mnt, "db-"+mode+".sqlite")
				var sql strings.Builder
				fmt.Fprintf(&sql, "PRAGMA journal_mode=%s;\n", mode)
				sql.WriteString("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB);\n")
				sql.WriteString("CREATE INDEX t_name ON t(name);\n")
				sql.WriteString("BEGIN;\n")
				for i := 1; i <= 1000; i++ {
					fmt.Fprintf(&sql, "INSERT INTO t (id, name, payload) VALUES (%d, 'row-%04d', randomblob(%d));\n", i, i, 50+i%300)
				}
				sql.WriteString("COMMIT;\nPRAGMA integrity_check;\nSELECT count(*), sum(id) FROM t;\n")
				out := f.execOK(strings.NewReader(sql.String()), sqlite, "-batch", db)
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) < 3 || lines[len(lines)-2] != "ok" || lines[len(lines)-1] != "1000|500500" {
					t.Errorf("sqlite3: got %q, want integrity_check ok and 1000|500500", out)
				}
				// An update in a rolled-back transaction leaves nothing.
				out = f.execOK(strings.NewReader("BEGIN; DELETE FROM t; ROLLBACK; SELECT count(*) FROM t;\n"), sqlite, "-batch", db)
				if got := strings.TrimSpace(out); got != "1000" {
					t.Errorf("sqlite3 after rollback: got %q, want 1000", got)
				}
			})
		}
	})

	t.Run("shell", func(t *testing.T) {
		f := f.withT(t)
		// The same POSIX operations by coreutils on the mount and on a
		// plain directory give the same trees.
		for _, p := range []string{"sh", "seq", "dd", "truncate", "ln", "mv", "mkfifo", "touch"} {
			needProgram(t, p)
		}
		script := `set -e
cd "$1"
mkdir -p a/b c
printf 'hello\n' > a/f1
seq 1 20000 > a/b/seq.txt
cp a/b/seq.txt c/copy.txt
ln a/f1 a/hard
echo appended >> a/hard
mv a/b/seq.txt c/moved.txt
printf 'XYZ' | dd of=c/copy.txt bs=1 seek=5000 conv=notrunc status=none
truncate -s 10000 c/copy.txt
truncate -s 70000 c/moved.txt
truncate -s 4096 c/moved.txt
truncate -s 9000 c/moved.txt
ln -s ../a/f1 c/sym
chmod 0600 a/f1
printf 'victim' > c/victim
mv -f c/copy.txt c/victim
rmdir a/b
mkfifo c/fifo
dd if=/dev/zero of=c/zeros bs=4096 count=3 status=none
dd if=c/moved.txt of=c/zeros bs=100 count=7 seek=40 conv=notrunc status=none
: > c/emptied; printf 'gone' >> c/emptied; : > c/emptied
touch -d '2020-01-02 03:04:05.123456789' c/moved.txt
`
		plainDir := filepath.Join(f.dir, "shell-plain")
		mountDir := filepath.Join(f.mnt, "shell")
		for _, d := range []string{plainDir, mountDir} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			f.execOK(nil, "sh", "-c", script, "sh", d)
		}
		compareTrees(t, scanTree(t, plainDir), scanTree(t, mountDir), 0)
		for _, p := range []string{"a/f1", "a/hard"} {
			fi, err := os.Stat(filepath.Join(mountDir, p))
			if err != nil {
				t.Fatal(err)
			}
			if n := fi.Sys().(*syscall.Stat_t).Nlink; n != 2 {
				t.Errorf("%s: nlink got %d, want 2", p, n)
			}
		}
		fi, err := os.Stat(filepath.Join(mountDir, "c/moved.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.ModTime().UTC(), time.Date(2020, 1, 2, 3, 4, 5, 123456789, time.Local).UTC(); !got.Equal(want) {
			t.Errorf("touch -d: mtime got %v, want %v", got, want)
		}
	})

	// Remount: everything written above reads back.
	f.unmount()
	f.mount()

	t.Run("after remount", func(t *testing.T) {
		f := f.withT(t)
		if _, err := exec.LookPath("sqlite3"); err == nil {
			for _, mode := range []string{"delete", "wal"} {
				db := filepath.Join(f.mnt, "db-"+mode+".sqlite")
				out := f.execOK(strings.NewReader("PRAGMA integrity_check;\nSELECT count(*) FROM t;\nSELECT name FROM t WHERE id = 777;\n"), "sqlite3", "-batch", db)
				if got, want := strings.TrimSpace(out), "ok\n1000\nrow-0777"; got != want {
					t.Errorf("sqlite3 %s after remount: got %q, want %q", mode, got, want)
				}
			}
		}
		if _, err := exec.LookPath("git"); err == nil {
			repo := filepath.Join(f.mnt, "repo")
			f.execOK(nil, "git", "-C", repo, "fsck", "--full", "--strict")
			if n := strings.TrimSpace(f.execOK(nil, "git", "-C", repo, "rev-list", "--count", "HEAD")); n != "2" {
				t.Errorf("git rev-list --count after remount: got %s, want 2", n)
			}
		}
		if _, err := os.Stat(filepath.Join(f.mnt, "cc", "hello")); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
			defer cancel()
			out, err := exec.CommandContext(ctx, filepath.Join(f.mnt, "cc", "hello")).Output()
			if err != nil || string(out) != "kmsfs-gcc 1 333833500\n" {
				t.Errorf("compiled program after remount: got %q, %v", out, err)
			}
		}
	})
	start := time.Now()
	f.unmount()
	t.Logf("unmount: %s", time.Since(start).Round(time.Millisecond))
}
