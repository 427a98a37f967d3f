package integration

// memory_test.go: where a file's DEK lives in the mount process, read from
// outside through /proc/PID/smaps and /proc/PID/mem as root (the claim of
// docs/threat-model.md, "Keys in memory").

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/keymgr"
)

// TestMemoryKeys: with files open and their keys cached, every copy of a
// DEK, or of the round keys of its AES-256 schedule, in the mount process
// lies in locked memory (the whole process is locked, as status says);
// once the files are closed and deleted (their keys dropped from the
// cache), no copy is left anywhere in the process, within the garbage
// collector's forced period (2 minutes).
//
// Both ways a key reaches the cache are covered: a file created by this
// mount (the DEK pool) and a file made by an earlier mount (an unwrap by
// the provider). The DEKs are recovered independently: the test opens the
// keyring itself and unwraps each file's EDK from its header mirror.
func TestMemoryKeys(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reads another process's memory and expects a root mount's mlockall: run as root")
	}
	f := newFixture(t)
	f.init()

	// An earlier mount makes "old", so this mount must unwrap its key.
	f.mount()
	oldPlain := bytes.Repeat([]byte("old content "), 20000)
	if err := os.WriteFile(filepath.Join(f.mnt, "old"), oldPlain, 0o600); err != nil {
		t.Fatal(err)
	}
	f.unmount()

	pid := f.mount()
	if pid <= 0 {
		t.Fatal("no pid for the mount process")
	}
	oldF, err := os.Open(filepath.Join(f.mnt, "old"))
	if err != nil {
		t.Fatal(err)
	}
	defer oldF.Close()
	got := make([]byte, len(oldPlain))
	if _, err := oldF.ReadAt(got, 0); err != nil || !bytes.Equal(got, oldPlain) {
		t.Fatalf("read old: %v (equal %t)", err, bytes.Equal(got, oldPlain))
	}
	newF, err := os.OpenFile(filepath.Join(f.mnt, "new"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer newF.Close()
	if _, err := newF.Write(bytes.Repeat([]byte("new content "), 20000)); err != nil {
		t.Fatal(err)
	}
	if err := newF.Sync(); err != nil {
		t.Fatal(err)
	}

	st := memStatus(t, f)
	if !st.ProcessLocked {
		t.Fatalf("kmsfs status: process_locked false for a root mount, want true (mlockall)")
	}
	if st.CacheEntries < 2 {
		t.Fatalf("kmsfs status: %d cached keys, want both files' (2 or more)", st.CacheEntries)
	}
	if kb := procStatusKB(t, pid, "VmLck"); kb < 4096 {
		t.Errorf("VmLck of the mount process: %d kB, want the whole process locked (4096 kB or more)", kb)
	}

	var pats []memPattern
	for _, name := range []string{"old", "new"} {
		dek := fileDEK(t, f, name)
		pats = append(pats, keyPatterns(name, dek)...)
		crypto.Zero(dek)
	}

	// Open and cached: found, and only in locked pages.
	hits := scanProcess(t, pid, pats)
	counts := map[string]int{}
	for _, h := range hits {
		counts[h.pattern]++
		if !h.m.locked {
			t.Errorf("%s at %#x in a mapping that is not locked: %s", h.pattern, h.addr, h.m)
		}
	}
	t.Logf("copies while open and cached: %v", counts)
	for _, name := range []string{"old", "new"} {
		// The cache slot and the open file's key schedule.
		if n := counts[name+" DEK[0:16]"]; n < 2 {
			t.Errorf("%s DEK[0:16] found %d times while cached and open, want at least 2 (cache slot, key schedule): the scan sees nothing", name, n)
		}
		if n := counts[name+" round key 2"]; n < 1 {
			t.Errorf("%s round key 2 found %d times while open, want the key schedule's", name, n)
		}
	}

	// Evicted: close both files and delete them (their keys leave the
	// cache, zeroed); the content ciphers become garbage and their
	// schedules are zeroed by the next collection.
	oldF.Close()
	newF.Close()
	for _, name := range []string{"old", "new"} {
		if err := os.Remove(filepath.Join(f.mnt, name)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	deadline := start.Add(200 * time.Second) // the runtime forces a GC every 2 minutes
	for {
		hits = scanProcess(t, pid, pats)
		if len(hits) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, h := range hits {
				t.Errorf("%s still at %#x %s after the file was closed and deleted (%s)", h.pattern, h.addr, time.Since(start).Round(time.Second), h.m)
			}
			break
		}
		time.Sleep(5 * time.Second)
	}
	t.Logf("no copy left %s after close and delete", time.Since(start).Round(time.Second))
	if n := memStatus(t, f).CacheEntries; n != 0 {
		t.Errorf("kmsfs status: %d cached keys after both files were deleted, want 0", n)
	}
	f.unmount()
}

// memKeyStores is the part of `kmsfs status --json` this test reads.
type memKeyStores struct {
	CacheEntries  int  `json:"cache_entries"`
	ProcessLocked bool `json:"process_locked"`
}

func memStatus(t *testing.T, f *fixture) memKeyStores {
	t.Helper()
	out := f.kmsfs("status", "--json", f.cipher)
	var s struct {
		KeyStores *memKeyStores `json:"key_stores"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("kmsfs status --json: %v\n%s", err, out)
	}
	if s.KeyStores == nil {
		t.Fatalf("kmsfs status --json: no key_stores while mounted\n%s", out)
	}
	return *s.KeyStores
}

// fileDEK unwraps the DEK of plain file name from its cipher file's header
// mirror, with the fixture's keyring opened by the test itself.
func fileDEK(t *testing.T, f *fixture, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(f.cipherPath(name))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < crypto.PreambleSize {
		t.Fatalf("cipher file of %s: %d bytes", name, len(b))
	}
	pre, err := crypto.ParsePreamble(b[:crypto.PreambleSize])
	if err != nil {
		t.Fatal(err)
	}
	l := pre.Layout()
	slot := func(i int) []byte { return b[l.SlotOffset(i) : l.SlotOffset(i)+l.SlotSize()] }
	h, _, err := crypto.PickSlot(slot(0), slot(1), pre.FileID)
	if err != nil {
		t.Fatalf("header of %s: %v", name, err)
	}
	kr, err := keymgr.OpenKeyring(f.keyring, []byte(f.passphrase), keymgr.KeyringOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Close()
	fsID := f.status().FilesystemID
	dek, err := keymgr.NewLocalProvider(kr).Decrypt(context.Background(), h.Keys[0].KeyARN, h.Keys[0].EDK, keymgr.FileContext(fsID, h.FileID))
	if err != nil {
		t.Fatalf("unwrap the DEK of %s: %v", name, err)
	}
	if len(dek) != crypto.DEKSize {
		t.Fatalf("DEK of %s: %d bytes", name, len(dek))
	}
	return dek
}

// memPattern is 16 bytes to look for in the mount process.
type memPattern struct {
	name  string
	bytes []byte
}

// keyPatterns are the 16-byte pieces of dek's AES-256 expansion that any
// copy of the key or its schedule holds: the key's two halves (round keys
// 0 and 1, and the last round key of the decryption schedule), round keys
// 2 and 3 (the schedule past the key) and the last round key (the first
// of the decryption schedule); each as bytes and as little-endian words,
// for an implementation that stores the schedule as uint32.
func keyPatterns(file string, dek []byte) []memPattern {
	w := expandAES256(dek)
	var out []memPattern
	for _, rk := range []struct {
		name string
		word int
	}{{"DEK[0:16]", 0}, {"DEK[16:32]", 4}, {"round key 2", 8}, {"round key 3", 12}, {"round key 14", 56}} {
		var be, le [16]byte
		for i := range 4 {
			binary.BigEndian.PutUint32(be[4*i:], w[rk.word+i])
			binary.LittleEndian.PutUint32(le[4*i:], w[rk.word+i])
		}
		out = append(out,
			memPattern{file + " " + rk.name, be[:]},
			memPattern{file + " " + rk.name + " (words)", le[:]})
	}
	return out
}

// expandAES256 is the AES-256 key expansion of FIPS-197 (60 words).
func expandAES256(key []byte) [60]uint32 {
	sbox := aesSbox()
	sub := func(x uint32) uint32 {
		return uint32(sbox[x>>24])<<24 | uint32(sbox[x>>16&0xff])<<16 | uint32(sbox[x>>8&0xff])<<8 | uint32(sbox[x&0xff])
	}
	var w [60]uint32
	for i := range 8 {
		w[i] = binary.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := 8; i < 60; i++ {
		tmp := w[i-1]
		switch i % 8 {
		case 0:
			tmp = sub(tmp<<8|tmp>>24) ^ rcon<<24
			rcon <<= 1
		case 4:
			tmp = sub(tmp)
		}
		w[i] = w[i-8] ^ tmp
	}
	return w
}

// aesSbox computes the AES S-box (multiplicative inverse in GF(2^8), then
// the affine map).
func aesSbox() [256]byte {
	var s [256]byte
	rotl := func(x byte, n uint) byte { return x<<n | x>>(8-n) }
	p, q := byte(1), byte(1)
	for {
		// p *= 3
		hi := p & 0x80
		p ^= p << 1
		if hi != 0 {
			p ^= 0x1b
		}
		// q /= 3
		q ^= q << 1
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		s[p] = q ^ rotl(q, 1) ^ rotl(q, 2) ^ rotl(q, 3) ^ rotl(q, 4) ^ 0x63
		if p == 1 {
			break
		}
	}
	s[0] = 0x63
	return s
}

// The expansion the patterns come from matches FIPS-197 appendix C.3.
func TestMemoryKeyExpansion(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	w := expandAES256(key)
	for _, c := range []struct {
		word int
		want string
	}{{8, "a573c29fa176c498a97fce93a572c09c"}, {56, "24fc79ccbf0979e9371ac23c6d68de36"}} {
		var b [16]byte
		for i := range 4 {
			binary.BigEndian.PutUint32(b[4*i:], w[c.word+i])
		}
		if got := hex.EncodeToString(b[:]); got != c.want {
			t.Errorf("round key at word %d: got %s, want %s", c.word, got, c.want)
		}
	}
}

// memMapping is one line of /proc/PID/smaps with its lock state.
type memMapping struct {
	start, end uint64
	perms      string
	name       string
	flags      string // VmFlags
	locked     bool   // VmFlags has "lo" (VM_LOCKED)
}

func (m memMapping) String() string {
	return fmt.Sprintf("%x-%x %s %q VmFlags: %s", m.start, m.end, m.perms, m.name, m.flags)
}

// readSmaps parses /proc/PID/smaps.
func readSmaps(t *testing.T, pid int) []memMapping {
	t.Helper()
	fh, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var maps []memMapping
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "VmFlags:"); ok && len(maps) > 0 {
			m := &maps[len(maps)-1]
			m.flags = strings.TrimSpace(rest)
			for _, fl := range strings.Fields(rest) {
				if fl == "lo" {
					m.locked = true
				}
			}
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok || len(fields) < 5 {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		m := memMapping{start: start, end: end, perms: fields[1]}
		if len(fields) > 5 {
			m.name = strings.Join(fields[5:], " ")
		}
		maps = append(maps, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(maps) == 0 {
		t.Fatalf("/proc/%d/smaps: no mapping", pid)
	}
	return maps
}

// memHit is one place a pattern was found.
type memHit struct {
	pattern string
	addr    uint64
	m       memMapping
}

// scanProcess reads every readable mapping of pid through /proc/PID/mem
// and returns where each pattern occurs.
func scanProcess(t *testing.T, pid int, pats []memPattern) []memHit {
	t.Helper()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	const chunk = 1 << 20
	const overlap = 15 // patterns are 16 bytes
	buf := make([]byte, chunk+overlap)
	var hits []memHit
	scanned := uint64(0)
	for _, m := range readSmaps(t, pid) {
		if !strings.HasPrefix(m.perms, "r") || m.start >= 1<<63 || m.name == "[vvar]" || m.name == "[vvar_vclock]" || m.name == "[vsyscall]" {
			continue
		}
		for off := m.start; off < m.end; off += chunk {
			n := min(uint64(chunk+overlap), m.end-off)
			b := buf[:n]
			if _, err := mem.ReadAt(b, int64(off)); err != nil {
				// A page that cannot be read (a file mapping past its
				// end): read the rest of the chunk page by page.
				b = readPages(mem, off, b)
			}
			for _, p := range pats {
				for i, base := 0, 0; ; {
					i = bytes.Index(b[base:], p.bytes)
					if i < 0 {
						break
					}
					hits = append(hits, memHit{pattern: p.name, addr: off + uint64(base+i), m: m})
					base += i + 1
				}
			}
			scanned += min(uint64(chunk), n)
		}
	}
	if scanned == 0 {
		t.Fatalf("read nothing of process %d's memory", pid)
	}
	// A hit inside the overlap is found twice: once per chunk.
	seen := map[string]bool{}
	out := hits[:0]
	for _, h := range hits {
		k := fmt.Sprintf("%s@%x", h.pattern, h.addr)
		if !seen[k] {
			seen[k] = true
			out = append(out, h)
		}
	}
	return out
}

// readPages reads b at off page by page, leaving unreadable pages zero.
func readPages(mem *os.File, off uint64, b []byte) []byte {
	page := syscall.Getpagesize()
	clear(b)
	for p := 0; p < len(b); p += page {
		end := min(p+page, len(b))
		_, _ = mem.ReadAt(b[p:end], int64(off)+int64(p))
	}
	return b
}
