package main

// path.go: `kmsfs path [--decrypt] CIPHERDIR PATH`, the map between plain
// paths and cipher paths (what a backup holds), mounted or not.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
)

func newPathCmd(g *globals) *cobra.Command {
	decrypt := false
	cmd := &cobra.Command{
		Use:   "path [--decrypt] CIPHERDIR PATH",
		Short: "map a plain path to its cipher path, or back with --decrypt",
		Long: `path prints where the plain path PATH (relative to the mount root, e.g.
docs/a.txt) is stored: CIPHERDIR joined with its cipher path. PATH need
not exist, only the directories above it: a file deleted since the last
backup maps to the cipher path the backup holds it under (as long as its
directory has not been deleted or moved). This is how one file is
restored from a backup of the cipher directory: see docs/backup.md.

With --decrypt, PATH is a cipher path (absolute under CIPHERDIR, or
relative to it) and path prints the plain path it stores, relative to the
mount root ("." for the root). An encrypted name may begin with "-": put
"--" before the arguments (kmsfs path --decrypt -- CIPHERDIR PATH) so it is
not read as a flag.

With plaintext names both map a path to itself. Works whether or not
CIPHERDIR is mounted; with encrypted names the names key is unwrapped
through the KMS, as for kmsfs cat.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPath(cmd.Context(), g, args[0], args[1], decrypt, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&decrypt, "decrypt", false, "PATH is a cipher path: print its plain path")
	return cmd
}

func runPath(ctx context.Context, g *globals, dirArg, pathArg string, decrypt bool, out, errw io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	o, err := openOfflineTree(ctx, g, dirArg, errw)
	if err != nil {
		return err
	}
	defer o.Close()
	if !decrypt {
		p, err := cleanPlain(pathArg)
		if err != nil {
			return err
		}
		loc, err := o.tree.Resolve(p)
		if err != nil {
			return o.treeError(err)
		}
		defer loc.Close()
		if _, err := loc.Lstat(); errors.Is(err, unix.ENOENT) {
			fmt.Fprintf(errw, "kmsfs: note: %s does not exist in %s now; a backup may hold it under this path\n", p, o.ks.dir)
		}
		fmt.Fprintln(out, filepath.Join(o.ks.dir, filepath.FromSlash(loc.Cipher)))
		return nil
	}
	rel, err := cipherRel(o.ks.dir, dirArg, pathArg)
	if err != nil {
		return err
	}
	plain, err := o.tree.PlainPath(rel)
	if err != nil {
		var we *cipherdir.WalkError
		if errors.As(err, &we) {
			return errors.New(nameProblem(o.ks.dir, we))
		}
		return err
	}
	fmt.Fprintln(out, plainLabel(plain))
	return nil
}

// cipherRel turns CIPHERPATH (p) into a '/'-separated path relative to the
// cipher directory dir (canonical; dirArg is how the user spelt it): an
// absolute path must lie under either spelling, a relative one is taken
// relative to the cipher directory.
func cipherRel(dir, dirArg, p string) (string, error) {
	if !filepath.IsAbs(p) {
		c := filepath.Clean(p)
		if c == ".." || len(c) > 2 && c[:3] == "../" {
			return "", usagef("cipher path %s leaves the cipher directory: give a path under %s, or relative to it", p, dir)
		}
		return filepath.ToSlash(c), nil
	}
	c := filepath.Clean(p)
	bases := []string{dir}
	if a, err := filepath.Abs(dirArg); err == nil && a != dir {
		bases = append(bases, a)
	}
	for _, base := range bases {
		if within(c, base) {
			rel, err := filepath.Rel(base, c)
			if err == nil {
				return filepath.ToSlash(rel), nil
			}
		}
	}
	return "", usagef("%s is not under the cipher directory %s: give a path under it, or relative to it", p, dir)
}
