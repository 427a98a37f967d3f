package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spf13/pflag"
)

func TestFuseConfAllowsOther(t *testing.T) {
	tests := []struct {
		name, conf string
		want       bool
	}{
		{"debian default", "# mount_max = 1000\n#user_allow_other\n", false},
		{"enabled", "# comment\nuser_allow_other\n", true},
		{"enabled with spaces", "  user_allow_other  \n", true},
		{"empty", "", false},
		{"other option", "mount_max = 10\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "fuse.conf")
			if err := os.WriteFile(p, []byte(tt.conf), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := fuseConfAllowsOther(p); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	if fuseConfAllowsOther(filepath.Join(t.TempDir(), "missing")) {
		t.Error("missing fuse.conf: got true, want false")
	}
}

// parseMountFlags parses args as the mount command's flags (its own and
// the global ones) and returns the flag set and the positional arguments.
func parseMountFlags(t *testing.T, args []string) (*pflag.FlagSet, []string) {
	t.Helper()
	root := newRootCmd(io.Discard, io.Discard)
	mount, _, err := root.Find([]string{"mount"})
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.ParseFlags(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return mount.Flags(), mount.Flags().Args()
}

// flagTestValue is a value for a flag that differs from its default, by
// the flag's type; ok false for a type the test does not know yet.
func flagTestValue(f *pflag.Flag) (v string, ok bool) {
	switch f.Value.Type() {
	case "bool":
		if f.DefValue == "true" {
			return "false", true
		}
		return "true", true
	case "int":
		return "7", true
	case "string":
		return "/set by the user=" + f.Name, true
	case "size":
		return "5M", true
	case "stringSlice", "stringArray":
		return "a", true
	}
	return "", false
}

// TestMountChildArgs: every flag of the mount command, its own and the
// global ones, set on the command line, reaches the background mount
// process (childArgs, parsed back as the child parses it) with the
// user's value; only the flags launch sets itself, resolves, or drops
// for a stated reason differ, and those as expected.
func TestMountChildArgs(t *testing.T) {
	target := mountTarget{
		cipherDir:  "/srv/cipher dir",
		mountpoint: "/mnt/plain",
		spec: providerSpec{
			keyringPath: "/home/u/.config/kmsfs/keyring.json",
			aws:         awsFlags{region: "eu-west-3", endpoint: "http://127.0.0.1:4599", profile: "ops"},
		},
	}
	resolved := childResolved(target)
	all, _ := parseMountFlags(t, nil)
	var names []string
	all.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	// The global flags are in the set (cobra merges them at parse).
	for _, g := range []string{"keyring", "passphrase-file", "aws-region", "audit-keep", "audit-max-size"} {
		if all.Lookup(g) == nil {
			t.Fatalf("global flag --%s missing from the mount command's flag set", g)
		}
	}
	// Every special case names a real flag.
	for _, m := range []map[string]string{childSets, childDrops, resolved} {
		for n := range m {
			if all.Lookup(n) == nil {
				t.Errorf("childArgs names --%s, which kmsfs mount does not have", n)
			}
		}
	}

	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			v, ok := flagTestValue(all.Lookup(name))
			if !ok {
				t.Fatalf("--%s is of type %s, which this test has no value for: add one", name, all.Lookup(name).Value.Type())
			}
			parent, _ := parseMountFlags(t, []string{"--" + name + "=" + v, "/c", "/m"})
			argv := childArgs(parent, target)
			if argv[0] != "mount" {
				t.Fatalf("child argv %q: want the mount command first", argv)
			}
			child, pos := parseMountFlags(t, argv[1:])
			if want := []string{target.cipherDir, target.mountpoint}; !slices.Equal(pos, want) {
				t.Errorf("child arguments: got %q, want %q", pos, want)
			}
			got := child.Lookup(name)
			switch {
			case childSets[name] != "":
				if got.Value.String() != childSets[name] {
					t.Errorf("child --%s: got %q, want %q (set by launch)", name, got.Value.String(), childSets[name])
				}
			case childDrops[name] != "":
				if got.Changed {
					t.Errorf("child --%s: got %q, want it not passed (%s)", name, got.Value.String(), childDrops[name])
				}
			case resolved[name] != "":
				if got.Value.String() != resolved[name] {
					t.Errorf("child --%s: got %q, want the resolved %q", name, got.Value.String(), resolved[name])
				}
			default:
				if want := parent.Lookup(name).Value.String(); !got.Changed || got.Value.String() != want {
					t.Errorf("child --%s: got %q (set: %v), want %q", name, got.Value.String(), got.Changed, want)
				}
			}
			// What launch sets always wins over the user's value.
			for n, want := range childSets {
				if g := child.Lookup(n).Value.String(); g != want {
					t.Errorf("child --%s: got %q, want %q", n, g, want)
				}
			}
		})
	}
}

// TestMountChildArgsUnset: with no flag given, the child gets the flags
// launch sets and the resolved values, nothing else, and an empty
// resolved value is not passed.
func TestMountChildArgsUnset(t *testing.T) {
	parent, _ := parseMountFlags(t, []string{"/c", "/m"})
	tests := []struct {
		name string
		spec providerSpec
		want []string
	}{
		{"local", providerSpec{keyringPath: "/k.json"},
			[]string{"mount", "--foreground=true", "--passphrase-fd=3", "--ready-fd=4", "--keyring=/k.json", "--", "/c", "/m"}},
		{"aws", providerSpec{aws: awsFlags{region: "us-east-1"}},
			[]string{"mount", "--foreground=true", "--passphrase-fd=3", "--ready-fd=4", "--aws-region=us-east-1", "--", "/c", "/m"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := childArgs(parent, mountTarget{cipherDir: "/c", mountpoint: "/m", spec: tt.spec})
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
