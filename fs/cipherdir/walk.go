package cipherdir

import (
	"fmt"
	"io/fs"
	"path/filepath"
)

// WalkFiles calls fn for every regular file of the cipher tree below dir
// (the cipher files), in lexical order, skipping kmsfs.conf and .kmsfs in
// the root. path is the file's full path, rel its path relative to dir.
// Directories, symlinks and special files are not cipher files and are
// passed over. It stops at fn's first error and returns it; an entry that
// cannot be read stops the walk with an error naming it.
func WalkFiles(dir string, fn func(path, rel string, d fs.DirEntry) error) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walk %s: %w", path, err)
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return fmt.Errorf("walk %s: %w", path, err)
		}
		if IsMeta(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return fn(path, rel, d)
	})
}

// ListFiles returns the full paths of every cipher file below dir, in
// WalkFiles order.
func ListFiles(dir string) ([]string, error) {
	var out []string
	err := WalkFiles(dir, func(path, _ string, _ fs.DirEntry) error {
		out = append(out, path)
		return nil
	})
	return out, err
}
