package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kmsfs/kmsfs/crypto"
	"golang.org/x/term"
)

// envPassphrase names the environment variable holding the passphrase.
const envPassphrase = "KMSFS_PASSPHRASE"

// maxPassphrase bounds what is read from a file or a pipe.
const maxPassphrase = 4096

// passSource finds the keyring passphrase. The order: an inherited pipe
// (the background mount child only), --passphrase-file, $KMSFS_PASSPHRASE,
// then a prompt when stdin is a terminal. An explicit flag wins over the
// environment, as everywhere on the command line.
type passSource struct {
	fixed    []byte                       // already read (the mount launcher)
	file     string                       // --passphrase-file
	fd       int                          // inherited pipe, -1 when none
	lookup   func(string) (string, bool)  // lookupEnv
	terminal func() bool                  // stdin is a terminal
	prompt   func(string) ([]byte, error) // reads one line without echo
	stderr   io.Writer                    // where prompts go
}

func newPassSource(g *globals) passSource {
	return passSource{
		file:   g.passphraseFile,
		fd:     -1,
		lookup: lookupEnv, // the environment, or what hardenProcess took out of it
		terminal: func() bool {
			return term.IsTerminal(int(os.Stdin.Fd()))
		},
		prompt: func(p string) ([]byte, error) {
			fmt.Fprint(os.Stderr, p)
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			fmt.Fprintln(os.Stderr)
			return b, err
		},
		stderr: os.Stderr,
	}
}

var errNoPassphrase = errors.New("no passphrase")

// get returns the passphrase for the keyring at path. confirm asks twice
// on a terminal (a new keyring). The caller zeroes the result.
func (s passSource) get(path string, confirm bool) ([]byte, error) {
	if s.fixed != nil {
		return append([]byte(nil), s.fixed...), nil
	}
	if s.fd >= 0 {
		f := os.NewFile(uintptr(s.fd), "passphrase-pipe")
		if f == nil {
			return nil, fmt.Errorf("passphrase pipe fd %d is not open", s.fd)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxPassphrase+1))
		if err != nil {
			return nil, fmt.Errorf("read passphrase pipe: %w", err)
		}
		return checkPassphrase(b, "the passphrase pipe")
	}
	if s.file != "" {
		f, err := os.Open(s.file)
		if err != nil {
			return nil, fmt.Errorf("read passphrase file: %w: check --passphrase-file", err)
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxPassphrase+1))
		if err != nil {
			return nil, fmt.Errorf("read passphrase file %s: %w", s.file, err)
		}
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			rest := b[i:]
			b = bytes.TrimSuffix(b[:i], []byte("\r"))
			crypto.Zero(rest)
		}
		return checkPassphrase(b, "passphrase file "+s.file)
	}
	if v, ok := s.lookup(envPassphrase); ok {
		return checkPassphrase([]byte(v), envPassphrase)
	}
	if !s.terminal() {
		return nil, fmt.Errorf("%w for keyring %s: set %s, use --passphrase-file, or run on a terminal", errNoPassphrase, path, envPassphrase)
	}
	if !confirm {
		b, err := s.prompt(fmt.Sprintf("Passphrase for keyring %s: ", path))
		if err != nil {
			return nil, fmt.Errorf("read passphrase: %w", err)
		}
		return checkPassphrase(b, "the prompt")
	}
	b, err := s.prompt(fmt.Sprintf("New passphrase for keyring %s: ", path))
	if err != nil {
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	if _, err := checkPassphrase(b, "the prompt"); err != nil {
		return nil, err
	}
	again, err := s.prompt("Repeat the passphrase: ")
	if err != nil {
		crypto.Zero(b)
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	defer crypto.Zero(again)
	if !bytes.Equal(b, again) {
		crypto.Zero(b)
		return nil, errors.New("the two passphrases differ: run the command again")
	}
	return b, nil
}

func checkPassphrase(b []byte, from string) ([]byte, error) {
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("empty passphrase from %s: give the keyring passphrase", from)
	case len(b) > maxPassphrase:
		crypto.Zero(b)
		return nil, fmt.Errorf("passphrase from %s is longer than %d bytes", from, maxPassphrase)
	}
	return b, nil
}
