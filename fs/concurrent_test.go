package fs

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
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
