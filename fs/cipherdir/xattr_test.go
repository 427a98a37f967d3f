package cipherdir

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestXattrReads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := unix.Fsetxattr(fd, "user.probe", []byte{1}, 0); errors.Is(err, unix.ENOTSUP) {
		t.Skipf("%s has no user extended attributes", filepath.Dir(path))
	}
	values := map[string][]byte{
		"user.empty": {},
		"user.small": []byte("v"),
		"user.large": bytes.Repeat([]byte{0xa5}, 3000),
	}
	for name, v := range values {
		if err := unix.Fsetxattr(fd, name, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Fremovexattr(fd, "user.probe"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		want []byte
		err  error
	}{
		{"user.empty", []byte{}, nil},
		{"user.small", []byte("v"), nil},
		{"user.large", values["user.large"], nil},
		{"user.missing", nil, unix.ENODATA},
	}
	for _, tc := range cases {
		got, err := GetXattrFd(fd, tc.name)
		if !errors.Is(err, tc.err) || !bytes.Equal(got, tc.want) {
			t.Errorf("GetXattrFd(%s): got %q, %v; want %q, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	want := []string{"user.empty", "user.large", "user.small"}
	for what, list := range map[string]func() ([]string, error){
		"ListXattrFd":   func() ([]string, error) { return ListXattrFd(fd) },
		"ListXattrPath": func() ([]string, error) { return ListXattrPath(ProcPath(fd)) },
	} {
		got, err := list()
		slices.Sort(got)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: got %q, %v; want %q, nil", what, got, err, want)
		}
	}
}

func TestReadGrowingRetries(t *testing.T) {
	// A value that grows between the size query and the read is read
	// again; one that never stops growing ends in ERANGE, not a loop.
	cases := []struct {
		name  string
		start string // the value at the first size query
		grows int    // reads that find it grown by a byte since their query
		want  string
		err   error
	}{
		{name: "stable", start: "abc", want: "abc"},
		{name: "grew once", start: "abc", grows: 1, want: "abcx"},
		{name: "grew from empty", start: "", grows: 1, want: "x"},
		{name: "grew twice", start: "ab", grows: 2, want: "abxx"},
		{name: "keeps growing", start: "abc", grows: xattrTries, err: unix.ERANGE},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			value := []byte(tc.start)
			reads := 0
			got, err := readGrowing(func(buf []byte) (int, error) {
				if buf == nil {
					return len(value), nil
				}
				if reads++; reads <= tc.grows {
					value = append(value, 'x')
				}
				switch {
				case len(buf) == 0:
					return len(value), nil // an empty buffer is a size query to the kernel
				case len(buf) < len(value):
					return 0, unix.ERANGE
				}
				return copy(buf, value), nil
			})
			if !errors.Is(err, tc.err) || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
			if tc.err == nil && reads != tc.grows+1 {
				t.Errorf("reads: got %d, want %d", reads, tc.grows+1)
			}
		})
	}
}
