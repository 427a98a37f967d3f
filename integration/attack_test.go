package integration

// attack_test.go: an attacker with write access to the cipher directory
// (but no key) flips bits, moves, duplicates, cuts and appends chunks,
// swaps whole files and header slots, rolls files back, and edits the
// header index. Each case is read back through a fresh mount and checked
// against what docs/threat-model.md promises: EIO (or a refused open) or
// a clear fsck finding, never bytes the file did not hold at that place.
// The undetectable cases (whole-file rollback, whole-file swap between
// names, cutting all content, replay of one chunk's older version) are
// tested to behave exactly as documented. Every case runs on both kinds of
// filesystem, names encrypted and plaintext names; the attacks on the
// names themselves are in names_attack_test.go.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/keymgr"
)

const (
	atkChunk   = 4096
	atkCChunk  = atkChunk + 28
	atkHead    = 32 + 2*512
	atkSize    = 4*atkChunk + 1000 // 5 chunks, the last partial
	atkNChunks = 5
)

func atkOff(k int) int64 { return atkHead + int64(k)*atkCChunk }

// atkEnv is the shared state of the attack cases.
type atkEnv struct {
	t       *testing.T
	f       *fixture
	content map[string][]byte // plain content as written
	older   map[string][]byte // content of the older copy (rollback cases)
	oldCopy map[string][]byte // cipher bytes of the older copy
	paths   map[string]string // plain name -> cipher path (kmsfs path)
}

// cipher is the cipher file of plain name, found once with kmsfs path.
func (a *atkEnv) cipher(name string) string {
	a.t.Helper()
	if p, ok := a.paths[name]; ok {
		return p
	}
	p := a.f.cipherPath(name)
	a.paths[name] = p
	return p
}

func (a *atkEnv) plain(name string) string { return filepath.Join(a.f.mnt, name) }

func (a *atkEnv) read(name string) []byte {
	a.t.Helper()
	b, err := os.ReadFile(a.cipher(name))
	if err != nil {
		a.t.Fatal(err)
	}
	return b
}

func (a *atkEnv) write(name string, b []byte) {
	a.t.Helper()
	if err := os.WriteFile(a.cipher(name), b, 0o644); err != nil {
		a.t.Fatal(err)
	}
}

func (a *atkEnv) id(name string) crypto.FileID {
	a.t.Helper()
	s, err := fileIDOf(a.cipher(name))
	if err != nil {
		a.t.Fatal(err)
	}
	id, err := crypto.ParseFileID(s)
	if err != nil {
		a.t.Fatal(err)
	}
	return id
}

// withIndex opens the (unmounted) header index read-write.
func (a *atkEnv) withIndex(fn func(ix *keymgr.Index)) {
	a.t.Helper()
	ix, err := keymgr.OpenIndex(filepath.Join(a.f.cipher, ".kmsfs", "index"), keymgr.IndexOptions{})
	if err != nil {
		a.t.Fatalf("open index: %v", err)
	}
	defer ix.Close()
	fn(ix)
}

// chunkRead is what reading plain chunk k gave.
type chunkRead struct {
	data []byte
	eio  bool
	err  error
}

// readChunks opens name on the mount and preads it chunk by chunk.
func (a *atkEnv) readChunks(name string) (size int64, chunks []chunkRead, openErr error) {
	fh, err := os.Open(a.plain(name))
	if err != nil {
		return 0, nil, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return 0, nil, err
	}
	for k := int64(0); k*atkChunk < fi.Size(); k++ {
		b := make([]byte, atkChunk)
		n, err := fh.ReadAt(b, k*atkChunk)
		c := chunkRead{data: b[:n]}
		switch {
		case errors.Is(err, syscall.EIO):
			c.eio = true
		case err != nil && !errors.Is(err, io.EOF):
			c.err = err
		}
		chunks = append(chunks, c)
	}
	return fi.Size(), chunks, nil
}

// expect describes what a case may read: per chunk, the bytes of one of
// the allowed contents at that place, or EIO where eio allows it.
type expect struct {
	exact    []byte       // non-nil: the whole file reads exactly this
	eio      map[int]bool // chunks that must fail with EIO
	otherOK  bool         // chunks not in eio must equal content
	maybeEIO map[int]bool // chunks that may fail with EIO or read right
	zeros    map[int]bool // chunks that may read as a hole (zeros) past the written content
	openFail bool         // the open itself must fail (EIO or EACCES)
	empty    bool         // reads as an empty file
	nchunks  int          // chunks the file must read as (0: atkNChunks); eio, otherOK cases
}

type attackCase struct {
	name   string
	files  []string // files it needs: name "<case>-0", "<case>-1", ...
	tamper func(a *atkEnv, names []string)
	want   func(a *atkEnv, names []string) expect
	fsck   string // a substring fsck must print for names[0] ("" = none required)
	// log: a regexp one mount.log line naming names[0] (its cipher
	// file's inode or its file ID) must match ("" = none required). Every
	// chunk that must read EIO needs its own "chunk failed
	// authentication" line besides.
	log      string
	detected string // how it is detected, or "not detected: <why>" / "harmless: <why>"
}

// undetected: the case claims the mount and fsck see nothing.
func (c attackCase) undetected() bool {
	return strings.HasPrefix(c.detected, "not detected") || strings.HasPrefix(c.detected, "harmless")
}

func TestAttacks(t *testing.T) {
	eachNameKind(t, testAttacks)
}

func testAttacks(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k, "--chunk-size", fmt.Sprint(atkChunk))
	// Tampered chunks, headers and index entries are logged at warning
	// level by design.
	f.allowLog = regexp.MustCompile(`chunk failed authentication|cannot open file key|cipher file does not open|unexpected error`)
	a := &atkEnv{t: t, f: f, content: map[string][]byte{}, older: map[string][]byte{}, oldCopy: map[string][]byte{}, paths: map[string]string{}}

	flip := func(off func(a *atkEnv, n string) int64) func(a *atkEnv, names []string) {
		return func(a *atkEnv, names []string) {
			b := a.read(names[0])
			b[off(a, names[0])] ^= 0x40
			a.write(names[0], b)
		}
	}
	eioAt := func(ks ...int) func(a *atkEnv, names []string) expect {
		return func(a *atkEnv, names []string) expect {
			m := map[int]bool{}
			for _, k := range ks {
				m[k] = true
			}
			return expect{eio: m, otherOK: true}
		}
	}
	exactly := func(pick func(a *atkEnv, names []string) []byte) func(a *atkEnv, names []string) expect {
		return func(a *atkEnv, names []string) expect { return expect{exact: pick(a, names)} }
	}
	own := func(a *atkEnv, names []string) []byte { return a.content[names[0]] }
	openFails := func(a *atkEnv, names []string) expect { return expect{openFail: true} }
	// chunks: the file is cut or grown to n chunks.
	chunks := func(n int, w func(a *atkEnv, names []string) expect) func(a *atkEnv, names []string) expect {
		return func(a *atkEnv, names []string) expect {
			e := w(a, names)
			e.nchunks = n
			return e
		}
	}
	const (
		logHeal       = `msg="healed header index entry from the file's header mirror"`
		logNoSlot     = `msg="cannot open file key" .*no valid header slot`
		logKMSRefuses = `msg="cannot open file key" .*wrapped key does not match its key or encryption context`
	)
	one := []string{"x"}
	two := []string{"x", "y"}

	cases := []attackCase{
		{name: "flip-nonce", files: one, tamper: flip(func(*atkEnv, string) int64 { return atkOff(2) + 3 }),
			want: eioAt(2), detected: "GCM tag (the nonce is an input)"},
		{name: "flip-ciphertext", files: one, tamper: flip(func(*atkEnv, string) int64 { return atkOff(1) + 12 + 2000 }),
			want: eioAt(1), detected: "GCM tag"},
		{name: "flip-tag", files: one, tamper: flip(func(*atkEnv, string) int64 { return atkOff(3) + atkCChunk - 1 }),
			want: eioAt(3), detected: "GCM tag"},
		{name: "flip-last-chunk", files: one, tamper: flip(func(*atkEnv, string) int64 { return atkOff(4) + 500 }),
			want: eioAt(4), detected: "GCM tag"},
		{name: "flip-file-id", files: one, tamper: flip(func(*atkEnv, string) int64 { return 8 + 5 }),
			want: openFails, fsck: "no valid header slot", log: logNoSlot, detected: "header slots name another file ID; the EDK's encryption context and every chunk's AAD bind the ID"},
		{name: "flip-magic", files: one, tamper: flip(func(*atkEnv, string) int64 { return 1 }),
			want: openFails, fsck: "invalid preamble", detected: "preamble check"},
		{name: "swap-chunks", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			c1 := append([]byte(nil), b[atkOff(1):atkOff(2)]...)
			copy(b[atkOff(1):], b[atkOff(2):atkOff(3)])
			copy(b[atkOff(2):], c1)
			a.write(n[0], b)
		}, want: eioAt(1, 2), detected: "chunk index in the AAD"},
		{name: "duplicate-chunk", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			copy(b[atkOff(2):atkOff(3)], b[atkOff(1):atkOff(2)])
			a.write(n[0], b)
		}, want: eioAt(2), detected: "chunk index in the AAD"},
		{name: "chunk-from-other-file", files: two, tamper: func(a *atkEnv, n []string) {
			b, o := a.read(n[0]), a.read(n[1])
			copy(b[atkOff(1):atkOff(2)], o[atkOff(1):atkOff(2)])
			a.write(n[0], b)
		}, want: eioAt(1), detected: "file ID in the AAD, and another DEK"},
		{name: "truncate-mid-chunk", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			a.write(n[0], b[:len(b)-100])
		}, want: eioAt(4), detected: "GCM tag of the cut chunk"},
		{name: "truncate-at-boundary", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.read(n[0])[:atkOff(3)])
		}, want: chunks(3, eioAt(2)), detected: "last-chunk flag in the AAD"},
		{name: "truncate-into-chunk-overhead", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.read(n[0])[:atkOff(4)+10]) // 10 bytes of chunk 4: shorter than nonce+tag
		}, want: func(*atkEnv, []string) expect {
			// The 10 stray bytes count in the plain size, so a read
			// reaches the cut chunk 4 and fails; chunks 0-3 are intact.
			return expect{eio: map[int]bool{4: true}, otherOK: true}
		}, fsck: "not a whole number of chunks",
			detected: "EIO for the cut chunk, and an fsck finding"},
		{name: "truncate-into-header", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.read(n[0])[:700])
		}, want: func(*atkEnv, []string) expect { return expect{empty: true} },
			fsck: "not a whole number of chunks", detected: "fsck (the file reads as empty: content gone, no wrong bytes)"},
		{name: "truncate-all-content", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.read(n[0])[:atkHead])
		}, want: func(*atkEnv, []string) expect { return expect{empty: true} },
			detected: "not detected: an empty file is a valid state of every file; detecting it needs state outside the file"},
		{name: "append-garbage-short", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], append(a.read(n[0]), bytes.Repeat([]byte{0xaa}, 10)...))
		}, want: eioAt(4), detected: "GCM tag of the (now longer) last chunk"},
		{name: "append-fake-chunk", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], append(a.read(n[0]), randBytes(a.t, atkCChunk)...))
		}, want: chunks(6, eioAt(4, 5)), detected: "GCM tag; the old last chunk is short and flagged last"},
		{name: "append-copy-of-last-chunk", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			a.write(n[0], append(b, b[atkOff(4):]...))
		}, want: eioAt(4), detected: "GCM tag: the doubled partial chunk reads as one longer chunk"},
		{name: "append-zero-chunks", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			a.write(n[0], append(b, make([]byte, 2*atkCChunk)...))
		}, want: func(*atkEnv, []string) expect {
			return expect{eio: map[int]bool{4: true, 6: true}, zeros: map[int]bool{5: true}, otherOK: true, nchunks: 7}
		}, detected: "the last chunk is never a hole, the old last chunk is short: EIO; the zero chunk between reads as a hole (zeros, never data)"},
		{name: "swap-whole-files", files: two, tamper: func(a *atkEnv, n []string) {
			x, y := a.read(n[0]), a.read(n[1])
			a.write(n[0], y)
			a.write(n[1], x)
		}, want: exactly(func(a *atkEnv, n []string) []byte { return a.content[n[1]] }),
			detected: "not detected: a name is not bound to the content of its entry (an encrypted name only to its directory, docs/format.md \"What leaks\"); each file reads whole, never a mix"},
		{name: "copy-file-over-other", files: two, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.read(n[1]))
		}, want: exactly(func(a *atkEnv, n []string) []byte { return a.content[n[1]] }),
			fsck: "a copied cipher file", detected: "fsck notes two cipher files with one file ID"},
		{name: "swap-header-slots", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			s0 := append([]byte(nil), b[32:32+512]...)
			copy(b[32:], b[32+512:32+1024])
			copy(b[32+512:], s0)
			a.write(n[0], b)
		}, want: exactly(own), detected: "harmless: either slot carries the file's own header (CRC, file ID, generation)"},
		{name: "header-slot-from-other-file", files: two, tamper: func(a *atkEnv, n []string) {
			b, o := a.read(n[0]), a.read(n[1])
			copy(b[32:32+512], o[32:32+512])
			a.write(n[0], b)
		}, want: exactly(own), fsck: "no valid header slot", detected: "the slot names another file ID: fsck finding; the index still holds the right header"},
		{name: "header-slot-from-other-file-no-index", files: two, tamper: func(a *atkEnv, n []string) {
			b, o := a.read(n[0]), a.read(n[1])
			copy(b[32:32+512], o[32:32+512])
			a.write(n[0], b)
			a.withIndex(func(ix *keymgr.Index) { must(a.t, ix.Delete(a.id(n[0]))) })
		}, want: openFails, fsck: "the index has no copy either", log: logNoSlot, detected: "no valid header anywhere: open fails (EIO)"},
		{name: "whole-head-from-other-file", files: two, tamper: func(a *atkEnv, n []string) {
			b, o := a.read(n[0]), a.read(n[1])
			copy(b[:atkHead], o[:atkHead])
			a.write(n[0], b)
		}, want: eioAt(0, 1, 2, 3, 4), fsck: "a copied cipher file",
			detected: "the other file's DEK and ID do not open these chunks (AAD, GCM tag)"},
		{name: "edk-edited-in-slot", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			h, err := crypto.DecodeSlot(b[32:32+512], a.id(n[0]))
			must(a.t, err)
			h.Keys[0].EDK[40] ^= 1
			s, err := crypto.EncodeSlot(h, 512)
			must(a.t, err)
			copy(b[32:], s)
			a.write(n[0], b)
		}, want: exactly(own), fsck: "index entry differs from the header mirror",
			detected: "fsck finding; the index copy still unwraps"},
		{name: "edk-edited-in-slot-no-index", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			h, err := crypto.DecodeSlot(b[32:32+512], a.id(n[0]))
			must(a.t, err)
			h.Keys[0].EDK[40] ^= 1
			s, err := crypto.EncodeSlot(h, 512)
			must(a.t, err)
			copy(b[32:], s)
			a.write(n[0], b)
			a.withIndex(func(ix *keymgr.Index) { must(a.t, ix.Delete(a.id(n[0]))) })
		}, want: openFails, fsck: "no index entry", log: logKMSRefuses, detected: "the KMS refuses the edited EDK (its AEAD tag): open fails"},
		{name: "index-entry-edited-edk", files: one, tamper: func(a *atkEnv, n []string) {
			a.withIndex(func(ix *keymgr.Index) {
				h, err := ix.Get(a.id(n[0]))
				must(a.t, err)
				h.Keys[0].EDK[50] ^= 1
				must(a.t, ix.Put(h))
			})
		}, want: exactly(own), fsck: "index entry differs from the header mirror", log: logHeal,
			detected: "the edited EDK does not unwrap; the mount falls back to the header mirror and heals the index"},
		{name: "index-entry-of-other-file", files: two, tamper: func(a *atkEnv, n []string) {
			a.withIndex(func(ix *keymgr.Index) {
				h, err := ix.Get(a.id(n[1]))
				must(a.t, err)
				h.FileID = a.id(n[0])
				must(a.t, ix.Put(h))
			})
		}, want: exactly(own), fsck: "index entry differs from the header mirror", log: logHeal,
			detected: "the other file's EDK is bound to its own file ID (encryption context): mirror fallback"},
		{name: "index-entry-deleted", files: one, tamper: func(a *atkEnv, n []string) {
			a.withIndex(func(ix *keymgr.Index) { must(a.t, ix.Delete(a.id(n[0]))) })
		}, want: exactly(own), fsck: "no index entry", log: logHeal, detected: "harmless: the mirror is read and the index healed"},
		{name: "rollback-whole-file", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.oldCopy[n[0]])
		}, want: exactly(func(a *atkEnv, n []string) []byte { return a.older[n[0]] }),
			detected: "not detected by design: the older copy is a valid state of the same file (same ID, same DEK); it reads as the old content exactly, never a mix"},
		{name: "rollback-one-chunk", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			copy(b[atkOff(1):atkOff(2)], a.oldCopy[n[0]][atkOff(1):atkOff(2)])
			a.write(n[0], b)
		}, want: exactly(func(a *atkEnv, n []string) []byte {
			w := append([]byte(nil), a.content[n[0]]...)
			copy(w[atkChunk:2*atkChunk], a.older[n[0]][atkChunk:2*atkChunk])
			return w
		}), detected: "not detected: a chunk's AAD binds file, index and last flag, not a version; that chunk reads as the bytes it held before (as in gocryptfs)"},
		{name: "zero-middle-chunk", files: one, tamper: func(a *atkEnv, n []string) {
			b := a.read(n[0])
			clear(b[atkOff(2):atkOff(3)])
			a.write(n[0], b)
		}, want: exactly(func(a *atkEnv, n []string) []byte {
			w := append([]byte(nil), a.content[n[0]]...)
			clear(w[2*atkChunk : 3*atkChunk])
			return w
		}), detected: "not detected: an all-zero non-final chunk is a hole (sparse files), as in gocryptfs"},
		{name: "from-other-filesystem", files: one, tamper: func(a *atkEnv, n []string) {
			a.write(n[0], a.oldCopy["foreign"])
		}, want: openFails, log: logKMSRefuses, detected: "the EDK's encryption context names another filesystem ID: the KMS refuses it"},
	}

	// Write every case's files, plus an older version of the rollback
	// cases, and a file of another filesystem.
	f.mount()
	names := map[string][]string{}
	for _, c := range cases {
		for i := range c.files {
			n := fmt.Sprintf("%s-%d", c.name, i)
			names[c.name] = append(names[c.name], n)
			if strings.HasPrefix(c.name, "rollback") {
				a.older[n] = randBytes(t, atkSize)
				must(t, os.WriteFile(a.plain(n), a.older[n], 0o644))
			} else {
				a.content[n] = randBytes(t, atkSize)
				must(t, os.WriteFile(a.plain(n), a.content[n], 0o644))
			}
		}
	}
	f.unmount()
	for n := range a.older {
		a.oldCopy[n] = a.read(n)
	}
	f.mount()
	for n := range a.older {
		a.content[n] = randBytes(t, atkSize)
		fh, err := os.OpenFile(a.plain(n), os.O_WRONLY, 0) // in place: same file ID and DEK
		must(t, err)
		_, err = fh.WriteAt(a.content[n], 0)
		must(t, err)
		must(t, fh.Close())
	}
	f.unmount()
	other := f.sibling(filepath.Join(f.dir, "other-cipher"), filepath.Join(f.dir, "other-mnt"))
	must(t, os.Mkdir(other.mnt, 0o755))
	other.initKind(k, "--chunk-size", fmt.Sprint(atkChunk))
	other.mount()
	must(t, os.WriteFile(filepath.Join(other.mnt, "foreign"), randBytes(t, atkSize), 0o644))
	other.unmount()
	foreign, err := os.ReadFile(other.cipherPath("foreign"))
	must(t, err)
	if len(foreign) <= atkHead {
		t.Fatalf("the other filesystem's cipher file: %d bytes, want a head and content (more than %d)", len(foreign), atkHead)
	}
	a.oldCopy["foreign"] = foreign

	// Each tampered file is named in mount.log by its cipher file's
	// inode (os.WriteFile keeps it) and, for the key manager, by the file
	// ID its preamble holds after the tamper.
	type logName struct {
		ino uint64
		id  string
	}
	logNames := map[string]logName{}
	for _, c := range cases {
		c.tamper(a, names[c.name])
		n := names[c.name][0]
		fi, err := os.Stat(a.cipher(n))
		must(t, err)
		id, _ := fileIDOf(a.cipher(n)) // "" for a flipped magic
		logNames[c.name] = logName{ino: fi.Sys().(*syscall.Stat_t).Ino, id: id}
	}

	// fsck (no repair) reports what it can see.
	fsckOut, _, code := f.run("fsck", f.cipher)
	if code != 1 {
		t.Errorf("fsck of the tampered cipher dir: exit %d, want 1 (findings)", code)
	}
	f.mount()
	var table []string
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := names[c.name]
			want := c.want(a, n)
			size, chunks, openErr := a.readChunks(n[0])
			switch {
			case want.openFail:
				if openErr == nil {
					t.Errorf("open succeeded (size %d, %d chunks); want it refused with EIO or EACCES", size, len(chunks))
				} else if !errors.Is(openErr, syscall.EIO) && !errors.Is(openErr, syscall.EACCES) {
					t.Errorf("open: %v, want EIO or EACCES", openErr)
				}
			case openErr != nil:
				t.Fatalf("open: %v, want it to open", openErr)
			case want.empty:
				if size != 0 || len(chunks) != 0 {
					t.Errorf("size %d, %d chunks; want an empty file", size, len(chunks))
				}
			case want.exact != nil:
				var got []byte
				for k, ch := range chunks {
					if ch.eio || ch.err != nil {
						t.Errorf("chunk %d: EIO %v, err %v; want the bytes", k, ch.eio, ch.err)
					}
					got = append(got, ch.data...)
				}
				if !bytes.Equal(got, want.exact) {
					t.Errorf("read %d bytes, want exactly %d expected bytes (first difference at %d)", len(got), len(want.exact), firstDiff(got, want.exact))
				}
			default:
				content := a.content[n[0]]
				wantChunks := atkNChunks
				if want.nchunks != 0 {
					wantChunks = want.nchunks
				}
				if len(chunks) != wantChunks {
					t.Errorf("size %d: %d chunks, want %d", size, len(chunks), wantChunks)
				}
				for k, ch := range chunks {
					switch {
					case want.eio[k]:
						if !ch.eio {
							t.Errorf("chunk %d: read %d bytes (err %v), want EIO", k, len(ch.data), ch.err)
						}
					case ch.eio && want.maybeEIO[k]:
					case ch.eio || ch.err != nil:
						t.Errorf("chunk %d: EIO %v, err %v; want its bytes", k, ch.eio, ch.err)
					case want.zeros[k]:
						if len(ch.data) != atkChunk || !bytes.Equal(ch.data, make([]byte, atkChunk)) {
							t.Errorf("chunk %d: %d bytes, want a hole (%d zero bytes)", k, len(ch.data), atkChunk)
						}
					case int64(k)*atkChunk+int64(len(ch.data)) > int64(len(content)) ||
						!bytes.Equal(ch.data, content[k*atkChunk:k*atkChunk+len(ch.data)]):
						t.Errorf("chunk %d: WRONG BYTES (%d bytes not as written)", k, len(ch.data))
					}
				}
				for k := range want.eio {
					if k >= len(chunks) {
						t.Errorf("chunk %d: not in the file (size %d), want it to read as EIO", k, size)
					}
				}
			}
			if c.fsck != "" {
				// fsck names the file by its cipher path (with plaintext
				// names the same as the plain one), perhaps by both.
				rel := strings.TrimPrefix(a.cipher(n[0]), f.cipher+"/")
				found := false
				for _, l := range strings.Split(fsckOut, "\n") {
					if (strings.Contains(l, rel) || strings.Contains(l, n[0])) && strings.Contains(l, c.fsck) {
						found = true
					}
				}
				if !found {
					t.Errorf("fsck printed no line about %s (%s) containing %q; fsck output:\n%s", n[0], rel, c.fsck, fsckOut)
				}
			} else if c.undetected() {
				rel := strings.TrimPrefix(a.cipher(n[0]), f.cipher+"/")
				for _, l := range strings.Split(fsckOut, "\n") {
					if strings.Contains(l, rel) || strings.Contains(l, n[0]) {
						t.Errorf("fsck reports a case documented as %q: %s", c.detected, l)
					}
				}
			}
		})
		table = append(table, fmt.Sprintf("%-38s %s", c.name, c.detected))
	}
	f.unmount()

	// The mount log says what detected each case, naming the file (and
	// the chunk); a case documented as undetected or harmless leaves no
	// warning about its file.
	mountLog := strings.Split(f.mountLog(), "\n")
	linesAbout := func(ln logName) []string {
		re := regexp.MustCompile(fmt.Sprintf(`\binode=%d\b`, ln.ino))
		var out []string
		for _, l := range mountLog {
			if re.MatchString(l) || (ln.id != "" && strings.Contains(l, "file_id="+ln.id)) {
				out = append(out, l)
			}
		}
		return out
	}
	for _, c := range cases {
		t.Run("log/"+c.name, func(t *testing.T) {
			n := names[c.name]
			lines := linesAbout(logNames[c.name])
			has := func(pattern string) bool {
				re := regexp.MustCompile(pattern)
				for _, l := range lines {
					if re.MatchString(l) {
						return true
					}
				}
				return false
			}
			if c.log != "" && !has(c.log) {
				t.Errorf("mount.log has no line about %s (%+v) matching %q; its lines about it:\n%s", n[0], logNames[c.name], c.log, strings.Join(lines, "\n"))
			}
			for k := range c.want(a, n).eio {
				if !has(fmt.Sprintf(`level=WARN msg="chunk failed authentication" .*\bchunk=%d .*message authentication failed`, k)) {
					t.Errorf("mount.log has no authentication failure of chunk %d of %s; its lines about it:\n%s", k, n[0], strings.Join(lines, "\n"))
				}
			}
			if c.undetected() {
				for _, l := range lines {
					if badLogRE.MatchString(l) {
						t.Errorf("mount.log warns about a case documented as %q: %s", c.detected, l)
					}
				}
			}
		})
	}
	t.Logf("attack cases and how each is met:\n%s", strings.Join(table, "\n"))
}

// TestAttackCorruptIndex scribbles over the badger index files: fsck says
// the index does not open, a mount moves it aside and every file still
// reads exactly (from its header mirror), and fsck --repair rebuilds it.
func TestAttackCorruptIndex(t *testing.T) {
	eachNameKind(t, testAttackCorruptIndex)
}

func testAttackCorruptIndex(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k)
	f.allowLog = regexp.MustCompile(`header index corrupt: moved aside`)
	f.mount()
	content := map[string][]byte{}
	for i := 0; i < 20; i++ {
		n := fmt.Sprintf("f%02d", i)
		content[n] = randBytes(t, i*1500)
		must(t, os.WriteFile(filepath.Join(f.mnt, n), content[n], 0o644))
	}
	f.unmount()
	ixDir := filepath.Join(f.cipher, ".kmsfs", "index")
	ents, err := os.ReadDir(ixDir)
	must(t, err)
	for _, e := range ents {
		p := filepath.Join(ixDir, e.Name())
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			must(t, os.WriteFile(p, bytes.Repeat([]byte("garbage!"), int(fi.Size()/8)+1), 0o600))
		}
	}
	out, _, code := f.run("fsck", f.cipher)
	if code != 1 || !strings.Contains(out, "does not open") {
		t.Errorf("fsck of a scribbled index: exit %d, output %q; want 1 and 'does not open'", code, out)
	}
	f.mount()
	for n, want := range content {
		got, err := os.ReadFile(filepath.Join(f.mnt, n))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %s with a scribbled index: %d bytes, %v; want %d bytes", n, len(got), err, len(want))
		}
	}
	f.unmount()
	if !strings.Contains(f.mountLog(), "header index corrupt: moved aside") {
		t.Errorf("mount.log does not say the corrupt index was moved aside")
	}
	f.kmsfs("fsck", "--repair", f.cipher)
	f.kmsfs("fsck", f.cipher)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestAttackKeysOutOfDumps: the mount process's locked key memory (the
// DEK cache and pool slabs, VmFlags "lo") is excluded from core dumps
// (VmFlags "dd", MADV_DONTDUMP) in every locked region; core dumps are
// off (RLIMIT_CORE 0, TestMountProcessHardening) and the process is not
// dumpable (TestUnprivilegedUser "not dumpable"); dropped keys are zeroed
// (keymgr TestCacheZeroing, TestPoolTakeZeroesItsSlot, TestCacheClose).
func TestAttackKeysOutOfDumps(t *testing.T) {
	eachNameKind(t, testAttackKeysOutOfDumps)
}

func testAttackKeysOutOfDumps(t *testing.T, k nameKind) {
	f := newFixture(t)
	f.initKind(k)
	pid := f.mount()
	if pid == 0 || !isOurMountProcess(pid) {
		t.Fatalf("mount pid %d is not a kmsfs process", pid)
	}
	for i := 0; i < 20; i++ {
		must(t, os.WriteFile(filepath.Join(f.mnt, fmt.Sprintf("k%d", i)), randBytes(t, 100), 0o600))
	}
	// With the whole process locked (mlockall, cmd/kmsfs/memlock.go) every
	// region is "lo": then only the key slabs must be "dd".
	wholeLocked := memStatus(t, f).ProcessLocked
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	must(t, err)
	var region string
	locked, lockedNoDump := 0, 0
	for _, l := range strings.Split(string(b), "\n") {
		fl := strings.Fields(l)
		if len(fl) >= 5 && strings.Contains(fl[0], "-") && !strings.HasSuffix(fl[0], ":") {
			region = l
			continue
		}
		if flags, ok := strings.CutPrefix(l, "VmFlags:"); ok {
			set := map[string]bool{}
			for _, fl := range strings.Fields(flags) {
				set[fl] = true
			}
			if set["lo"] {
				locked++
				if !set["dd"] {
					lockedNoDump++
					if !wholeLocked {
						t.Errorf("locked region without MADV_DONTDUMP: %s (VmFlags:%s)", region, flags)
					}
				}
			}
		}
	}
	if locked == lockedNoDump {
		t.Errorf("mount process %d has no locked region excluded from core dumps (VmFlags lo and dd): where are its keys?", pid)
	}
	t.Logf("mount process %d: %d locked regions, all excluded from core dumps: %v", pid, locked, lockedNoDump == 0)
	f.unmount()
}

// TestAttackKeyringPermissions: the keyring is created 0600 in a 0700
// directory, and a keyring group- or world-readable is refused by every
// command that opens it, in one line naming the fix, without changing it.
func TestAttackKeyringPermissions(t *testing.T) {
	f := newFixture(t)
	f.init()
	for p, want := range map[string]os.FileMode{f.keyring: 0o600, filepath.Dir(f.keyring): 0o700} {
		fi, err := os.Stat(p)
		must(t, err)
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %o, want %o", p, got, want)
		}
	}
	orig, err := os.ReadFile(f.keyring)
	must(t, err)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		must(t, os.Chmod(f.keyring, mode))
		for _, args := range [][]string{{"keys", "list"}, {"mount", f.cipher, f.mnt}, {"keys", "rotate", "alias/kmsfs/default"}} {
			_, stderr, code := f.run(args...)
			if code == 0 {
				if isMounted(f.mnt) {
					forceUnmountPath(f, f.mnt)
				}
				t.Errorf("kmsfs %v with a keyring of mode %o: exit 0, want a refusal", args, mode)
				continue
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "kmsfs: ") || !strings.Contains(stderr, "chmod") {
				t.Errorf("kmsfs %v with a keyring of mode %o: stderr %q, want one kmsfs: line naming the fix (chmod)", args, mode, stderr)
			}
		}
		if b, _ := os.ReadFile(f.keyring); !bytes.Equal(b, orig) {
			t.Errorf("a refused command changed the keyring (mode %o)", mode)
		}
		if fi, _ := os.Stat(f.keyring); fi.Mode().Perm() != mode {
			t.Errorf("a refused command changed the keyring's mode to %o", fi.Mode().Perm())
		}
	}
	must(t, os.Chmod(f.keyring, 0o600))
	f.kmsfs("keys", "list")
}
