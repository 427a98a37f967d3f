package integration

// hostile_test.go: every command given nonsense: missing paths, regular
// files where directories belong, empty and garbage files where a
// kmsfs.conf or a keyring belongs, wrong key references, bad flags. Each
// must answer with one line on stderr starting "kmsfs: ", exit non-zero,
// and change nothing: the cipher directory, the keyring and the bad
// inputs themselves are snapshotted before and after.
//
// Besides the table, a sweep runs every subcommand the binary lists in
// its help (so commands added later are covered too) with a missing path,
// a regular file, an empty directory and a garbage cipher directory.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestHostileCLI(t *testing.T) {
	f := newFixture(t)
	f.init()
	f.mount()
	must(t, os.WriteFile(filepath.Join(f.mnt, "file"), []byte("content"), 0o644))
	f.unmount()

	bad := filepath.Join(f.dir, "bad")
	must(t, os.Mkdir(bad, 0o755))
	p := func(n string) string { return filepath.Join(bad, n) }
	missing := p("missing/parent/x")
	regular := p("regular")
	must(t, os.WriteFile(regular, []byte("just a file\n"), 0o644))
	empty := p("empty")
	must(t, os.WriteFile(empty, nil, 0o600))
	emptyDir := p("empty-dir")
	must(t, os.Mkdir(emptyDir, 0o755))
	garbage := p("garbage")
	must(t, os.WriteFile(garbage, bytes.Repeat([]byte{0xff, 0x00, '{'}, 100), 0o600))
	// Cipher dirs whose kmsfs.conf is empty, garbage, valid JSON of the
	// wrong shape, or of a newer format.
	confDirs := map[string]string{
		"conf-empty":   "",
		"conf-garbage": "\x00\xff{{{",
		"conf-array":   "[1,2,3]",
		"conf-future":  `{"format":99,"filesystem_id":"00112233445566778899aabbccddeeff","provider":"local","key":"alias/x","key_arn":"arn:kmsfs:local:00:key/x","chunk_shift":12,"slot_shift":9,"features":{}}`,
		"conf-feature": `{"format":1,"filesystem_id":"00112233445566778899aabbccddeeff","provider":"local","key":"alias/x","key_arn":"arn:kmsfs:local:00:key/x","chunk_shift":12,"slot_shift":9,"features":{"time_travel":true}}`,
		"conf-shift":   `{"format":1,"filesystem_id":"00112233445566778899aabbccddeeff","provider":"local","key":"alias/x","key_arn":"arn:kmsfs:local:00:key/x","chunk_shift":40,"slot_shift":9,"features":{}}`,
	}
	for d, conf := range confDirs {
		must(t, os.MkdirAll(p(d), 0o700))
		must(t, os.WriteFile(filepath.Join(p(d), "kmsfs.conf"), []byte(conf), 0o600))
	}
	// A cipher dir whose index is a regular file.
	ixFile := p("index-is-file")
	must(t, os.MkdirAll(ixFile, 0o700))
	b, err := os.ReadFile(filepath.Join(f.cipher, "kmsfs.conf"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(ixFile, "kmsfs.conf"), b, 0o600))
	must(t, os.MkdirAll(filepath.Join(ixFile, ".kmsfs"), 0o700))
	must(t, os.WriteFile(filepath.Join(ixFile, ".kmsfs", "index"), []byte("not badger"), 0o600))
	keyringDir := p("keyring-dir")
	must(t, os.Mkdir(keyringDir, 0o700))
	keyringJSON := p("keyring-wrong.json")
	must(t, os.WriteFile(keyringJSON, []byte(`{"format":"kmsfs-keyring/1","kdf":"argon2id","salt":"AAAA","time":1,"memory_kib":8,"threads":1,"nonce":"AAAA","sealed":"AAAA"}`), 0o600))
	wrongPass := p("wrong-pass")
	must(t, os.WriteFile(wrongPass, []byte("not the passphrase\n"), 0o600))
	newDir := p("new-cipher") // must still not exist afterwards
	mnt := f.mnt

	type tc struct {
		name string
		args []string
		env  []string
	}
	cases := []tc{
		// init
		{"init under a missing parent", []string{"init", missing}, nil},
		{"init on a regular file", []string{"init", regular}, nil},
		{"init on a non-empty dir", []string{"init", bad}, nil},
		{"init an existing cipher dir", []string{"init", f.cipher}, nil},
		{"init with an unknown key alias", []string{"init", "--key", "alias/no-such-key", newDir}, nil},
		{"init with a garbage key ref", []string{"init", "--key", "\x01garbage/../", newDir}, nil},
		{"init with a key ARN of another keyring", []string{"init", "--key", "arn:kmsfs:local:00000000000000000000000000000000:key/00000000-0000-0000-0000-000000000000", newDir}, nil},
		{"init with a bad chunk size", []string{"init", "--chunk-size", "1000", newDir}, nil},
		{"init with a huge chunk size", []string{"init", "--chunk-size", "99999999999999999999", newDir}, nil},
		{"init with an unknown kms", []string{"init", "--kms", "nonsense", newDir}, nil},
		{"init with an empty keyring file", []string{"init", "--keyring", empty, newDir}, nil},
		{"init with a garbage keyring file", []string{"init", "--keyring", garbage, newDir}, nil},
		{"init with a keyring that is a directory", []string{"init", "--keyring", keyringDir, newDir}, nil},
		{"init with a wrong passphrase", []string{"init", "--passphrase-file", wrongPass, newDir}, nil},
		{"init with an empty passphrase file", []string{"init", "--passphrase-file", empty, newDir}, nil},
		{"init with a missing passphrase file", []string{"init", "--passphrase-file", missing, newDir}, nil},
		// mount
		{"mount a missing cipher dir", []string{"mount", missing, mnt}, nil},
		{"mount a regular file", []string{"mount", regular, mnt}, nil},
		{"mount an empty dir", []string{"mount", emptyDir, mnt}, nil},
		{"mount on a missing mount point", []string{"mount", f.cipher, missing}, nil},
		{"mount on a regular file", []string{"mount", f.cipher, regular}, nil},
		{"mount on itself", []string{"mount", f.cipher, f.cipher}, nil},
		{"mount inside the cipher dir", []string{"mount", f.cipher, filepath.Join(f.cipher, ".kmsfs")}, nil},
		{"mount with an empty keyring", []string{"mount", "--keyring", empty, f.cipher, mnt}, nil},
		{"mount with a garbage keyring", []string{"mount", "--keyring", garbage, f.cipher, mnt}, nil},
		{"mount with a wrong-shaped keyring", []string{"mount", "--keyring", keyringJSON, f.cipher, mnt}, nil},
		{"mount with a keyring dir", []string{"mount", "--keyring", keyringDir, f.cipher, mnt}, nil},
		{"mount with a wrong passphrase", []string{"mount", "--passphrase-file", wrongPass, f.cipher, mnt}, nil},
		{"mount with an empty passphrase file", []string{"mount", "--passphrase-file", empty, f.cipher, mnt}, nil},
		{"mount with a passphrase from env that is wrong", []string{"mount", f.cipher, mnt}, []string{"KMSFS_PASSPHRASE=wrong"}},
		{"mount with too many args", []string{"mount", f.cipher, mnt, mnt}, nil},
		{"mount with an unknown flag", []string{"mount", "--no-such-flag", f.cipher, mnt}, nil},
		{"mount an index that is a file", []string{"mount", ixFile, mnt}, nil},
		// unmount
		{"unmount a missing path", []string{"unmount", missing}, nil},
		{"unmount a regular file", []string{"unmount", regular}, nil},
		{"unmount an unmounted dir", []string{"unmount", mnt}, nil},
		{"unmount /", []string{"unmount", "/"}, nil},
		// status, fsck
		{"status of a regular file", []string{"status", regular}, nil},
		{"status of an empty dir", []string{"status", emptyDir}, nil},
		{"fsck of an index that is a file", []string{"fsck", ixFile}, nil},
		{"fsck of a regular file", []string{"fsck", regular}, nil},
		{"fsck of an empty dir", []string{"fsck", emptyDir}, nil},
		{"fsck with no argument", []string{"fsck"}, nil},
		// keys
		{"keys rotate an unknown alias", []string{"keys", "rotate", "alias/no-such-key"}, nil},
		{"keys disable a garbage ref", []string{"keys", "disable", "not a key"}, nil},
		{"keys enable another keyring's ARN", []string{"keys", "enable", "arn:kmsfs:local:00000000000000000000000000000000:key/00000000-0000-0000-0000-000000000000"}, nil},
		{"keys alias to an unknown key", []string{"keys", "alias", "alias/new", "alias/no-such-key"}, nil},
		{"keys alias with an empty name", []string{"keys", "alias", "", "alias/kmsfs/default"}, nil},
		{"keys list with an empty keyring", []string{"keys", "list", "--keyring", empty}, nil},
		{"keys list with a garbage keyring", []string{"keys", "list", "--keyring", garbage}, nil},
		{"keys list with a wrong passphrase", []string{"keys", "list", "--passphrase-file", wrongPass}, nil},
		{"keys rotate with a keyring dir", []string{"keys", "rotate", "alias/kmsfs/default", "--keyring", keyringDir}, nil},
		{"keys with an unknown subcommand", []string{"keys", "explode"}, nil},
		{"an unknown command", []string{"frobnicate"}, nil},
	}
	for d := range confDirs {
		cases = append(cases,
			tc{"mount " + d, []string{"mount", p(d), mnt}, nil},
			tc{"status " + d, []string{"status", p(d)}, nil},
			tc{"fsck " + d, []string{"fsck", "--repair", p(d)}, nil})
	}

	// The sweep: every listed subcommand, with nonsense in every position.
	help := f.kmsfs("--help")
	var cmds []string
	inList := false
	for _, l := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(l, "Available Commands:"):
			inList = true
		case inList && strings.TrimSpace(l) == "":
			inList = false
		case inList:
			if name := strings.Fields(l)[0]; name != "help" {
				cmds = append(cmds, name)
			}
		}
	}
	if len(cmds) < 6 {
		t.Fatalf("kmsfs --help lists %d commands (%v), want at least 6", len(cmds), cmds)
	}
	for _, c := range cmds {
		for _, arg := range []string{missing, regular, emptyDir, p("conf-garbage"), empty} {
			if c == "init" && arg == emptyDir {
				continue // a valid target
			}
			// A second argument too, for commands that take two.
			cases = append(cases,
				tc{fmt.Sprintf("sweep %s %s", c, filepath.Base(arg)), []string{c, arg}, nil},
				tc{fmt.Sprintf("sweep %s %s %s", c, filepath.Base(arg), filepath.Base(missing)), []string{c, arg, missing}, nil})
		}
	}

	// What must not change: every entry (type, mode, size, content,
	// mtime) under the cipher dir, the bad inputs and the mount point,
	// and the keyring's bytes. A failed mount may leave its reason in
	// .kmsfs/mount.log and its KMS calls in .kmsfs/audit.log: logs of
	// the attempt, not changes (reported below when it happens).
	trees := func() map[string]treeEntry {
		m := map[string]treeEntry{}
		for _, d := range []string{f.cipher, bad, f.mnt} {
			for k, v := range scanTree(t, d) {
				if strings.HasSuffix(k, ".kmsfs/mount.log") || strings.HasSuffix(k, ".kmsfs/audit.log") {
					continue
				}
				m[d+"/"+k] = v
			}
		}
		kr, err := os.ReadFile(f.keyring)
		must(t, err)
		m["keyring"] = treeEntry{sum: sha256.Sum256(kr)}
		return m
	}
	snap := func() string {
		var b strings.Builder
		m := trees()
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s %+v\n", k, m[k])
		}
		return b.String()
	}
	logs := func() string { return fmt.Sprint(scanTree(t, bad)) }
	before, beforeTrees := snap(), trees()
	oneLine := regexp.MustCompile(`^kmsfs: [^\n]+\n$`)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			logsBefore := logs()
			var r cmdResult
			if len(c.env) == 0 {
				r = f.exec(nil, kmsfsBin, c.args...)
			} else {
				cmd, cancel := f.command(kmsfsBin, c.args...)
				cmd.Env = append(cmd.Env, c.env...)
				var out, errb bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &errb
				err := cmd.Run()
				cancel()
				r = cmdResult{stdout: out.String(), stderr: errb.String()}
				if cmd.ProcessState != nil {
					r.code = cmd.ProcessState.ExitCode()
				}
				_ = err
			}
			if isMounted(mnt) {
				t.Errorf("kmsfs %q mounted %s", c.args, mnt)
				forceUnmountPath(f, mnt)
			}
			if r.code == 0 {
				t.Errorf("kmsfs %q: exit 0, want non-zero\nstdout: %s", c.args, r.stdout)
			}
			if !oneLine.MatchString(r.stderr) {
				t.Errorf("kmsfs %q: stderr %q, want exactly one line starting \"kmsfs: \"", c.args, r.stderr)
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("kmsfs %q: crashed: %s", c.args, r.stderr)
			}
			defer func() {
				if logs() != logsBefore {
					t.Logf("kmsfs %q left logs of the failed attempt (mount.log/audit.log)", c.args)
				}
			}()
			if after := snap(); after != before {
				t.Errorf("kmsfs %q changed the cipher directory, the keyring or its inputs (or a directory's mtime)", c.args)
				afterTrees := trees()
				compareTrees(t, beforeTrees, afterTrees, time.Nanosecond)
				before, beforeTrees = after, afterTrees
			}
		})
	}
	if _, err := os.Stat(newDir); err == nil {
		t.Errorf("%s exists after the failed inits", newDir)
	}
	// The cipher directory is still whole.
	f.mount()
	if got, err := os.ReadFile(filepath.Join(f.mnt, "file")); err != nil || string(got) != "content" {
		t.Errorf("read after the hostile commands: %q, %v", got, err)
	}
	f.unmount()
}
