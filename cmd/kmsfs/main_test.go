package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPassphraseSourceOrder(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pass")
	if err := os.WriteFile(file, []byte("from-file\nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	crlf := filepath.Join(dir, "crlf")
	if err := os.WriteFile(crlf, []byte("dos\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(v string, set bool) func(string) (string, bool) {
		return func(name string) (string, bool) {
			if name != envPassphrase {
				return "", false
			}
			return v, set
		}
	}
	prompts := func(answers ...string) (func(string) ([]byte, error), *int) {
		n := 0
		return func(string) ([]byte, error) {
			if n >= len(answers) {
				return nil, errors.New("no more answers")
			}
			n++
			return []byte(answers[n-1]), nil
		}, &n
	}
	tests := []struct {
		name     string
		file     string
		env      func(string) (string, bool)
		terminal bool
		answers  []string
		confirm  bool
		want     string
		wantErr  string
		prompts  int
	}{
		{name: "file wins over env", file: file, env: env("from-env", true), want: "from-file"},
		{name: "file first line, CRLF", file: crlf, env: env("", false), want: "dos"},
		{name: "env when no file", env: env("from-env", true), terminal: true, want: "from-env"},
		{name: "env wins over terminal", env: env("from-env", true), terminal: true, answers: []string{"typed"}, want: "from-env"},
		{name: "terminal prompt", env: env("", false), terminal: true, answers: []string{"typed"}, want: "typed", prompts: 1},
		{name: "terminal confirm", env: env("", false), terminal: true, answers: []string{"typed", "typed"}, confirm: true, want: "typed", prompts: 2},
		{name: "terminal confirm differs", env: env("", false), terminal: true, answers: []string{"typed", "other"}, confirm: true, wantErr: "differ", prompts: 2},
		{name: "no terminal, nothing set", env: env("", false), wantErr: "no passphrase"},
		{name: "empty env", env: env("", true), wantErr: "empty passphrase"},
		{name: "empty file", file: empty, env: env("x", true), wantErr: "empty passphrase"},
		{name: "missing file", file: filepath.Join(dir, "nope"), env: env("x", true), wantErr: "--passphrase-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prompt, n := prompts(tt.answers...)
			s := passSource{file: tt.file, fd: -1, lookup: tt.env, terminal: func() bool { return tt.terminal }, prompt: prompt}
			got, err := s.get("/k/keyring.json", tt.confirm)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("got error %v, want nil", err)
			} else if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if *n != tt.prompts {
				t.Errorf("prompts: got %d, want %d", *n, tt.prompts)
			}
		})
	}
}

func TestPassphrasePipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("piped\nnot a newline-terminated secret"))
	w.Close()
	s := passSource{fd: int(r.Fd()), file: "/ignored", lookup: func(string) (string, bool) { return "env", true }}
	got, err := s.get("/k", false)
	if err != nil {
		t.Fatal(err)
	}
	// The pipe carries the passphrase verbatim: newlines are part of it.
	if want := "piped\nnot a newline-terminated secret"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestChunkShift(t *testing.T) {
	tests := []struct {
		size    int64
		want    uint8
		wantErr bool
	}{
		{4096, 12, false}, {8192, 13, false}, {1 << 20, 20, false},
		{2048, 0, true}, {4095, 0, true}, {5000, 0, true}, {2 << 20, 0, true}, {0, 0, true}, {-4096, 0, true},
	}
	for _, tt := range tests {
		got, err := chunkShift(tt.size)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("chunkShift(%d): got %d, %v, want %d, error %v", tt.size, got, err, tt.want, tt.wantErr)
		}
		var ue usageError
		if err != nil && !errors.As(err, &ue) {
			t.Errorf("chunkShift(%d): got %T, want a usage error", tt.size, err)
		}
	}
}

func TestCheckNewCipherDir(t *testing.T) {
	base := t.TempDir()
	mk := func(name string, files ...string) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(p, f), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	tests := []struct {
		name        string
		dir         string
		wantExisted bool
		wantErr     string
	}{
		{"new", filepath.Join(base, "new"), false, ""},
		{"empty", mk("empty"), true, ""},
		{"not empty", mk("full", "x"), true, "is not empty"},
		{"already", mk("already", "kmsfs.conf"), true, "is already a kmsfs cipher directory"},
		{"a file", file, true, "is not a directory"},
		{"no parent", filepath.Join(base, "a", "b"), false, "parent directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			existed, err := checkNewCipherDir(tt.dir)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got error %v, want %q", err, tt.wantErr)
			}
			if err == nil && existed != tt.wantExisted {
				t.Errorf("existed: got %v, want %v", existed, tt.wantExisted)
			}
		})
	}
}

func TestParseMountinfo(t *testing.T) {
	const info = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
42 22 0:39 / /tmp/a\040b rw,nosuid,nodev,relatime shared:2 master:1 - fuse.kmsfs kmsfs:/tmp/c rw,user_id=0
43 22 0:40 / /mnt/x rw - tmpfs tmpfs rw
44 43 0:41 / /mnt/x rw - fuse.kmsfs kmsfs:/c2 rw
short line
`
	got, err := parseMountinfo(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("entries: got %d, want 4", len(got))
	}
	tests := []struct {
		path   string
		found  bool
		fstype string
		source string
	}{
		{"/tmp/a b", true, "fuse.kmsfs", "kmsfs:/tmp/c"},
		{"/", true, "ext4", "/dev/sda1"},
		{"/mnt/x", true, "fuse.kmsfs", "kmsfs:/c2"}, // the topmost of two
		{"/tmp/a\\040b", false, "", ""},
		{"/nope", false, "", ""},
	}
	for _, tt := range tests {
		e, ok := findMount(got, tt.path)
		if ok != tt.found || e.fstype != tt.fstype || e.source != tt.source {
			t.Errorf("findMount(%q): got %+v, %v, want %s %s %v", tt.path, e, ok, tt.fstype, tt.source, tt.found)
		}
	}
}

func TestCheckMountpoint(t *testing.T) {
	base := t.TempDir()
	cipher := filepath.Join(base, "cipher")
	os.Mkdir(cipher, 0o700)
	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o700)
	full := filepath.Join(base, "full")
	os.Mkdir(full, 0o700)
	os.WriteFile(filepath.Join(full, "x"), nil, 0o600)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	inside := filepath.Join(cipher, "sub")
	os.Mkdir(inside, 0o700)
	mounted := filepath.Join(base, "mounted")
	os.Mkdir(mounted, 0o700)
	mounts := []mountEntry{{mountpoint: mounted, fstype: "fuse.kmsfs"}}

	tests := []struct {
		name    string
		mnt     string
		wantErr string
	}{
		{"empty dir", empty, ""},
		{"missing", filepath.Join(base, "missing"), "does not exist"},
		{"a file", file, "is not a directory"},
		{"not empty", full, "is not empty"},
		{"busy", mounted, "is busy: already mounted; kmsfs unmount it first"},
		{"inside cipher dir", inside, "overlaps the cipher directory"},
		{"the cipher dir", cipher, "overlaps the cipher directory"},
		{"above the cipher dir", base, "overlaps the cipher directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkMountpoint(tt.mnt, cipher, mounts)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestWithin(t *testing.T) {
	tests := []struct {
		path, dir string
		want      bool
	}{
		{"/a/b", "/a", true}, {"/a", "/a", true}, {"/ab", "/a", false}, {"/a", "/a/b", false}, {"/x/..y", "/x", true},
	}
	for _, tt := range tests {
		if got := within(tt.path, tt.dir); got != tt.want {
			t.Errorf("within(%q, %q): got %v, want %v", tt.path, tt.dir, got, tt.want)
		}
	}
}

func TestExitCodes(t *testing.T) {
	base := t.TempDir()
	t.Setenv(envKeyring, filepath.Join(base, "keyring.json"))
	t.Setenv(envPassphrase, "pw")
	tests := []struct {
		name    string
		args    []string
		want    int
		wantMsg string
	}{
		{"help", []string{"--help"}, exitOK, ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{"unknown flag", []string{"status", "--frob", "x"}, exitUsage, "unknown flag"},
		{"missing arg", []string{"mount", "x"}, exitUsage, "takes 2 argument(s)"},
		{"bad chunk size", []string{"init", "--chunk-size", "100", filepath.Join(base, "c")}, exitUsage, "--chunk-size 100"},
		{"aws without key", []string{"init", "--kms", "aws", filepath.Join(base, "c")}, exitUsage, "--kms aws needs --key"},
		{"not a cipher dir", []string{"status", base}, exitFail, "is not a kmsfs cipher directory: run kmsfs init"},
		{"missing keyring", []string{"keys", "list"}, exitFail, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			got := run(tt.args, &out, &errb)
			if got != tt.want {
				t.Fatalf("exit: got %d, want %d (stderr %q)", got, tt.want, errb.String())
			}
			if !strings.Contains(errb.String(), tt.wantMsg) {
				t.Errorf("stderr: got %q, want it to contain %q", errb.String(), tt.wantMsg)
			}
			if tt.want != exitOK && strings.Count(errb.String(), "\n") != 1 {
				t.Errorf("stderr: got %q, want one line", errb.String())
			}
		})
	}
	if _, err := os.Stat(filepath.Join(base, "c")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed init left %s behind (%v)", filepath.Join(base, "c"), err)
	}
	if _, err := os.Stat(filepath.Join(base, "keyring.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed commands created the keyring (%v)", err)
	}
}

func TestAliasName(t *testing.T) {
	for in, want := range map[string]string{"x": "alias/x", "alias/x": "alias/x", "team/db": "alias/team/db"} {
		if got := aliasName(in); got != want {
			t.Errorf("aliasName(%q): got %q, want %q", in, got, want)
		}
	}
}

func TestWithoutEnv(t *testing.T) {
	got := withoutEnv([]string{"A=1", "KMSFS_PASSPHRASE=s", "KMSFS_PASSPHRASE_X=2", "B=2"}, envPassphrase)
	if want := "A=1 KMSFS_PASSPHRASE_X=2 B=2"; strings.Join(got, " ") != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
