package fs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestConcurrent runs writers and readers on one file (disjoint regions,
// checked page by page) and on separate files (checked against a model),
// for a bounded time; run it under -race.
func TestConcurrent(t *testing.T) {
	e := newTestFS(t)
	const (
		regions    = 4
		regionSize = 64 << 10
		page       = 4096
		duration   = 1500 * time.Millisecond
	)
	shared := e.p("shared")
	if err := os.WriteFile(shared, make([]byte, regions*regionSize), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for i := 0; i < regions; i++ {
		wg.Add(2)
		go func(i int) { // writer of region i
			defer wg.Done()
			f, err := os.OpenFile(shared, os.O_RDWR, 0)
			if err != nil {
				report(err)
				return
			}
			defer f.Close()
			for iter := 0; time.Now().Before(deadline); iter++ {
				fill := bytes.Repeat([]byte{byte(i*16 + iter%16 + 1)}, regionSize)
				if _, err := f.WriteAt(fill, int64(i*regionSize)); err != nil {
					report(fmt.Errorf("writer %d: %w", i, err))
					return
				}
			}
		}(i)
		go func(i int) { // reader of region i, and stat
			defer wg.Done()
			// O_DIRECT: the reads reach the filesystem, which serialises
			// them against writes; through the page cache, Linux may tear
			// a page between a concurrent read and write on any filesystem.
			f, err := os.OpenFile(shared, os.O_RDONLY|syscall.O_DIRECT, 0)
			if err != nil {
				report(err)
				return
			}
			defer f.Close()
			buf := make([]byte, regionSize)
			for time.Now().Before(deadline) {
				if _, err := f.ReadAt(buf, int64(i*regionSize)); err != nil {
					report(fmt.Errorf("reader %d: %w", i, err))
					return
				}
				for p := 0; p < regionSize; p += page {
					pg := buf[p : p+page]
					if v := pg[0]; (v != 0 && int(v-1)/16 != i) || bytes.Count(pg, pg[:1]) != page {
						report(fmt.Errorf("reader %d: torn or foreign page at %d", i, p))
						return
					}
				}
				fi, err := os.Stat(shared)
				if err != nil || fi.Size() != regions*regionSize {
					report(fmt.Errorf("stat: %v, size %d", err, fi.Size()))
					return
				}
			}
		}(i)
	}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) { // own file, random writes and truncates against a model
			defer wg.Done()
			name := e.p(fmt.Sprintf("own%d", i))
			f, err := os.Create(name)
			if err != nil {
				report(err)
				return
			}
			defer f.Close()
			rng := rand.New(rand.NewSource(int64(i)))
			var model []byte
			for time.Now().Before(deadline) {
				switch rng.Intn(4) {
				case 0:
					size := rng.Intn(3 * page)
					if err := f.Truncate(int64(size)); err != nil {
						report(err)
						return
					}
					if size < len(model) {
						model = model[:size]
					} else {
						model = append(model, make([]byte, size-len(model))...)
					}
				default:
					off := rng.Intn(5 * page)
					data := pattern(rng.Intn(2*page)+1, byte(rng.Intn(256)))
					if _, err := f.WriteAt(data, int64(off)); err != nil {
						report(err)
						return
					}
					if end := off + len(data); end > len(model) {
						model = append(model, make([]byte, end-len(model))...)
					}
					copy(model[off:], data)
				}
				got := make([]byte, len(model)+10)
				n, _ := f.ReadAt(got, 0)
				if !bytes.Equal(got[:n], model) {
					report(fmt.Errorf("file %d: content differs from model (%d vs %d bytes)", i, n, len(model)))
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestConcurrentRenames races renames with writes and reads, under -race:
// each of several files is written through its own open fd (page-aligned
// pages of one byte value naming the file) while other goroutines move it
// between directories, rename its directory, and read it by whatever path
// it has now (O_DIRECT, so every read reaches the filesystem). A path read
// either misses (ENOENT: the file moved) or sees only that file's pages,
// whole; at the end every file, found wherever it went, holds exactly what
// its writer wrote. A last pair replaces a file by rename while it is open
// and written: the open fd keeps its own content.
func TestConcurrentRenames(t *testing.T) {
	e := newTestFS(t)
	const (
		files    = 4
		pages    = 16
		page     = 4096
		duration = 1500 * time.Millisecond
	)
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(e.p(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	name := func(i int) string { return fmt.Sprintf("f%d", i) }
	// where[i] is file i's directory: "", "a" or "b"; dirA is what "a" is
	// called now ("a" or "c").
	var mu sync.Mutex
	where := make([]string, files)
	dirA := "a"
	pathOf := func(i int) string {
		mu.Lock()
		defer mu.Unlock()
		d := where[i]
		if d == "a" {
			d = dirA
		}
		return e.p(filepath.Join(d, name(i)))
	}
	models := make([][]byte, files)
	for i := 0; i < files; i++ {
		models[i] = bytes.Repeat([]byte{byte(i<<4 | 1)}, pages*page)
		if err := os.WriteFile(pathOf(i), models[i], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for i := 0; i < files; i++ {
		fh, err := os.OpenFile(pathOf(i), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(3)
		go func(i int) { // writer, through its fd
			defer wg.Done()
			defer fh.Close()
			rng := rand.New(rand.NewSource(int64(i)))
			for time.Now().Before(deadline) {
				pg := rng.Intn(pages)
				v := byte(i<<4 | (1 + rng.Intn(15)))
				fill := bytes.Repeat([]byte{v}, page)
				if _, err := fh.WriteAt(fill, int64(pg*page)); err != nil {
					report(fmt.Errorf("writer %d: %w", i, err))
					return
				}
				copy(models[i][pg*page:], fill)
			}
		}(i)
		go func(i int) { // mover: root -> a -> b -> root
			defer wg.Done()
			next := map[string]string{"": "a", "a": "b", "b": ""}
			for time.Now().Before(deadline) {
				mu.Lock()
				from := where[i]
				to := next[from]
				fd, td := from, to
				if fd == "a" {
					fd = dirA
				}
				if td == "a" {
					td = dirA
				}
				err := os.Rename(e.p(filepath.Join(fd, name(i))), e.p(filepath.Join(td, name(i))))
				if err == nil {
					where[i] = to
				}
				mu.Unlock()
				if err != nil {
					report(fmt.Errorf("mover %d: %w", i, err))
					return
				}
				time.Sleep(time.Millisecond)
			}
		}(i)
		go func(i int) { // reader by path
			defer wg.Done()
			buf := make([]byte, pages*page)
			for time.Now().Before(deadline) {
				f, err := os.OpenFile(pathOf(i), os.O_RDONLY|syscall.O_DIRECT, 0)
				if errors.Is(err, os.ErrNotExist) {
					continue // moved between the lookup and the open
				}
				if err != nil {
					report(fmt.Errorf("reader %d: open: %w", i, err))
					return
				}
				n, err := f.ReadAt(buf, 0)
				f.Close()
				if err != nil && !errors.Is(err, io.EOF) {
					report(fmt.Errorf("reader %d: %w", i, err))
					return
				}
				if n != pages*page {
					report(fmt.Errorf("reader %d: %d bytes, want %d", i, n, pages*page))
					return
				}
				for p := 0; p < n; p += page {
					pg := buf[p : p+page]
					if int(pg[0]>>4) != i || bytes.Count(pg, pg[:1]) != page {
						report(fmt.Errorf("reader %d: page %d is torn or another file's (first byte %#x)", i, p/page, pg[0]))
						return
					}
				}
			}
		}(i)
	}
	wg.Add(1)
	go func() { // renames directory a back and forth under the movers
		defer wg.Done()
		for time.Now().Before(deadline) {
			mu.Lock()
			to := map[string]string{"a": "c", "c": "a"}[dirA]
			err := os.Rename(e.p(dirA), e.p(to))
			if err == nil {
				dirA = to
			}
			mu.Unlock()
			if err != nil {
				report(fmt.Errorf("dir renamer: %w", err))
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	wg.Add(2)
	replaced := make(chan struct{})
	go func() { // replaces r by rename while the other goroutine has it open
		defer wg.Done()
		defer close(replaced)
		for k := 0; time.Now().Before(deadline); k++ {
			tmp := e.p("r.tmp")
			if err := os.WriteFile(tmp, pattern(3*page+k%page, byte(k)), 0o644); err != nil {
				report(fmt.Errorf("replacer: %w", err))
				return
			}
			if err := os.Rename(tmp, e.p("r")); err != nil {
				report(fmt.Errorf("replacer: %w", err))
				return
			}
		}
	}()
	go func() { // writes its own r through an fd; rename-overs must not touch it
		defer wg.Done()
		for k := 0; ; k++ {
			select {
			case <-replaced:
				return
			default:
			}
			f, err := os.OpenFile(e.p("r"), os.O_RDWR, 0)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				report(fmt.Errorf("r writer: %w", err))
				return
			}
			mine := pattern(2*page+100, byte(k+100))
			if _, err := f.WriteAt(mine, 0); err != nil {
				report(fmt.Errorf("r writer: write: %w", err))
				f.Close()
				return
			}
			got := make([]byte, len(mine))
			if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, mine) {
				report(fmt.Errorf("r writer: read back through the fd: %v (equal %v)", err, bytes.Equal(got, mine)))
				f.Close()
				return
			}
			f.Close()
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 0; i < files; i++ {
		got, err := os.ReadFile(pathOf(i))
		if err != nil || !bytes.Equal(got, models[i]) {
			t.Errorf("file %d at %s after the race: %d bytes, %v; want its writer's %d bytes", i, pathOf(i), len(got), err, len(models[i]))
		}
	}
}
