package crypto

// A content chunk (C+28 bytes when full; the last chunk may be shorter):
//
//	0     12   nonce, random, fresh on every write of the chunk
//	12    m    AES-256-GCM ciphertext of m plain bytes (1 <= m <= C)
//	12+m  16   GCM tag
//
// The key is the file's 32-byte DEK. The AAD (25 bytes) binds the chunk to
// its file, position and end of file:
//
//	0   16  file ID
//	16  8   chunk index (big-endian)
//	24  1   1 if this is the file's last chunk, else 0
//
// Hole rule: a non-last chunk whose C+28 bytes are all zero reads as C zero
// bytes. The last chunk is never a hole.
//
// A user xattr value is sealed as nonce(12) | ciphertext | tag(16) under the
// same DEK with AAD "xattr" | file ID | name.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"unsafe"
)

const (
	NonceSize     = 12
	TagSize       = 16
	ChunkOverhead = NonceSize + TagSize // 28
	DEKSize       = 32

	chunkAADSize     = FileIDSize + 8 + 1 // 25
	chunkAADIndexOff = FileIDSize
	chunkAADLastOff  = FileIDSize + 8
	xattrAADPrefix   = "xattr"
)

// ContentCipher seals and opens the chunks and xattr values of one file. It
// is safe for concurrent use.
type ContentCipher struct {
	// aead holds the only copy of the file's key that the cipher keeps:
	// the AES-256 key schedule (whose first two round keys are the DEK
	// itself) and the GHASH table, in the Go heap. A cleanup zeroes it
	// once the ContentCipher is unreachable (NewContentCipher), so every
	// method that calls it keeps c alive to the end of the call.
	aead   cipher.AEAD
	id     FileID
	layout Layout
	rand   io.Reader
	// randMu serializes reads of an injected reader that may not be safe for
	// concurrent use; crypto/rand.Reader is, and skips it.
	randMu *sync.Mutex
}

// chunkAADPool holds *[chunkAADSize]byte: an AAD array on the stack would
// escape through the cipher.AEAD interface call and cost an allocation per
// chunk. One pool serves every cipher (each use rewrites the whole AAD): a
// pool inside a ContentCipher would keep it reachable, from sync.Pool's
// list of pools, one garbage collection longer than its last use.
var chunkAADPool = sync.Pool{New: func() any { return new([chunkAADSize]byte) }}

// NewContentCipher keys AES-256-GCM with dek (32 bytes) for file id. The DEK
// is not retained: the caller may zero it on return. Its one expansion, the
// AEAD's key schedule and GHASH table in the Go heap, is zeroed by a cleanup
// in the garbage collector's first cycle after the ContentCipher becomes
// unreachable (NewAESGCM, WipeAEAD). r supplies nonces (crypto/rand.Reader
// when nil); it need not be safe for concurrent use, as reads from any
// reader but crypto/rand.Reader are serialized.
func NewContentCipher(dek []byte, id FileID, l Layout, r io.Reader) (*ContentCipher, error) {
	if len(dek) != DEKSize {
		return nil, fmt.Errorf("content cipher %s: DEK of %d bytes, want %d: %w", id, len(dek), DEKSize, ErrBadSize)
	}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("content cipher %s: %w", id, err)
	}
	aead, err := NewAESGCM(dek)
	if err != nil {
		return nil, fmt.Errorf("content cipher %s: %w", id, err)
	}
	c := &ContentCipher{aead: aead, id: id, layout: l, rand: r}
	// The AEAD is reachable only through c: once c is not, nothing can
	// use it, and the cleanup (which holds it until it has run) zeroes it.
	runtime.AddCleanup(c, wipeContentAEAD, aead)
	if r == nil {
		c.rand = rand.Reader
	} else if r != rand.Reader {
		c.randMu = new(sync.Mutex)
	}
	return c, nil
}

// FileID returns the file ID bound into every chunk.
func (c *ContentCipher) FileID() FileID { return c.id }

// Layout returns the file's layout.
func (c *ContentCipher) Layout() Layout { return c.layout }

func (c *ContentCipher) chunkAAD(index int64, last bool) *[chunkAADSize]byte {
	aad := chunkAADPool.Get().(*[chunkAADSize]byte)
	copy(aad[:], c.id[:])
	binary.BigEndian.PutUint64(aad[chunkAADIndexOff:], uint64(index))
	aad[chunkAADLastOff] = 0
	if last {
		aad[chunkAADLastOff] = 1
	}
	return aad
}

func (c *ContentCipher) readNonce(nonce []byte) error {
	if c.randMu != nil {
		c.randMu.Lock()
		defer c.randMu.Unlock()
	}
	_, err := io.ReadFull(c.rand, nonce)
	return err
}

// SealChunk appends nonce | ciphertext | tag of chunk index to dst, with a
// fresh nonce. last marks the file's last chunk, which holds 1..C plain
// bytes; every other chunk holds exactly C. plain must not overlap dst's
// spare capacity. A bad length is ErrBadSize.
func (c *ContentCipher) SealChunk(dst []byte, index int64, last bool, plain []byte) ([]byte, error) {
	if !validChunkLen(int64(len(plain)), last, c.layout.ChunkSize()) {
		return dst, fmt.Errorf("seal chunk %d (last %t): %d plain bytes, want %s: %w", index, last, len(plain), chunkLenRange(last, c.layout.ChunkSize()), ErrBadSize)
	}
	if index < 0 {
		return dst, fmt.Errorf("seal chunk %d: negative index: %w", index, ErrBadSize)
	}
	n := len(dst)
	out := slices.Grow(dst, len(plain)+ChunkOverhead)[:n+NonceSize]
	nonce := out[n:]
	if err := c.readNonce(nonce); err != nil {
		return dst, fmt.Errorf("seal chunk %d: nonce: %w", index, err)
	}
	aad := c.chunkAAD(index, last)
	out = c.aead.Seal(out, nonce, plain, aad[:])
	chunkAADPool.Put(aad)
	runtime.KeepAlive(c) // its cleanup zeroes c.aead
	return out, nil
}

// OpenChunk authenticates sealed as chunk index and appends its plain bytes
// to dst. A non-last chunk of C+28 zero bytes is a hole and appends C zero
// bytes. Any other failure, a length that chunk cannot have included, is
// ErrAuth, and dst is returned unchanged.
func (c *ContentCipher) OpenChunk(dst []byte, index int64, last bool, sealed []byte) ([]byte, error) {
	if !validChunkLen(int64(len(sealed))-ChunkOverhead, last, c.layout.ChunkSize()) || index < 0 {
		return dst, fmt.Errorf("open chunk %d (last %t): %d cipher bytes, want %s plus %d: %w", index, last, len(sealed), chunkLenRange(last, c.layout.ChunkSize()), ChunkOverhead, ErrAuth)
	}
	// A random nonce is zero with probability 2^-96: only then scan for a hole.
	if !last && allZero(sealed[:NonceSize]) && IsHole(sealed, c.layout) {
		return append(dst, make([]byte, c.layout.ChunkSize())...), nil
	}
	aad := c.chunkAAD(index, last)
	out, err := c.aead.Open(dst, sealed[:NonceSize], sealed[NonceSize:], aad[:])
	chunkAADPool.Put(aad)
	runtime.KeepAlive(c) // its cleanup zeroes c.aead
	if err != nil {
		return dst, fmt.Errorf("open chunk %d (last %t): %w", index, last, ErrAuth)
	}
	return out, nil
}

// validChunkLen: only the last chunk may be short (1..C plain bytes); every
// other chunk holds exactly C.
func validChunkLen(plainLen int64, last bool, chunkSize int64) bool {
	if last {
		return plainLen >= 1 && plainLen <= chunkSize
	}
	return plainLen == chunkSize
}

func chunkLenRange(last bool, chunkSize int64) string {
	if last {
		return fmt.Sprintf("1..%d", chunkSize)
	}
	return fmt.Sprint(chunkSize)
}

// IsHole reports whether sealed is a full cipher chunk of all zero bytes,
// which reads as C zero bytes when it is not the file's last chunk.
func IsHole(sealed []byte, l Layout) bool {
	return int64(len(sealed)) == l.CipherChunkSize() && allZero(sealed)
}

func (c *ContentCipher) xattrAAD(name string) []byte {
	aad := make([]byte, 0, len(xattrAADPrefix)+FileIDSize+len(name))
	aad = append(aad, xattrAADPrefix...)
	aad = append(aad, c.id[:]...)
	return append(aad, name...)
}

// SealXattr seals the value of xattr name: nonce | ciphertext | tag.
func (c *ContentCipher) SealXattr(name string, value []byte) ([]byte, error) {
	out := make([]byte, NonceSize, NonceSize+len(value)+TagSize)
	if err := c.readNonce(out); err != nil {
		return nil, fmt.Errorf("seal xattr: nonce: %w", err)
	}
	out = c.aead.Seal(out, out[:NonceSize], value, c.xattrAAD(name))
	runtime.KeepAlive(c) // its cleanup zeroes c.aead
	return out, nil
}

// OpenXattr opens a value sealed by SealXattr for the same file and name.
// Failure is ErrAuth.
func (c *ContentCipher) OpenXattr(name string, sealed []byte) ([]byte, error) {
	if len(sealed) < ChunkOverhead {
		return nil, fmt.Errorf("open xattr: %d bytes, want at least %d: %w", len(sealed), ChunkOverhead, ErrAuth)
	}
	value, err := c.aead.Open(nil, sealed[:NonceSize], sealed[NonceSize:], c.xattrAAD(name))
	runtime.KeepAlive(c) // its cleanup zeroes c.aead
	if err != nil {
		return nil, fmt.Errorf("open xattr: %w", ErrAuth)
	}
	if value == nil {
		value = []byte{}
	}
	return value, nil
}

// Zero clears b. Use it on key material (DEKs, passphrase-derived keys) as
// soon as it is no longer needed.
func Zero(b []byte) { clear(b) }

// NewAESGCM keys AES-GCM (standard nonce and tag sizes) with key, leaving
// one expansion of it in memory: the AEAD's own state. The standard library
// expands the key into an AES block (the key schedule, in the Go heap) and
// the GCM copies that schedule into its own state; NewAESGCM zeroes the
// block at once instead of leaving it to the garbage collector, which never
// clears freed memory. The caller zeroes the AEAD with WipeAEAD when done
// with it; key itself is not retained.
func NewAESGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	wipeState(block) // the GCM holds its own copy of the schedule
	if err != nil {
		return nil, err
	}
	return aead, nil
}

// WipeAEAD zeroes the state of an AEAD made by NewAESGCM (its key schedule
// and GHASH table) and reports whether it could: the standard library's
// AES-GCM is a pointer to a struct of plain arrays and integers, which is
// checked here, so a future layout holding pointers is left alone (false)
// rather than corrupted. The AEAD must not be used afterwards.
func WipeAEAD(a cipher.AEAD) bool { return wipeState(a) }

// wipeContentAEAD is the cleanup of a ContentCipher.
func wipeContentAEAD(a cipher.AEAD) { wipeState(a) }

// wipeState zeroes the memory p points to when p is a non-nil pointer to a
// value that holds no pointers, and reports whether it did.
func wipeState(p any) bool {
	v := reflect.ValueOf(p)
	if v.Kind() != reflect.Pointer || v.IsNil() || !pointerFree(v.Type().Elem()) {
		return false
	}
	clear(unsafe.Slice((*byte)(v.UnsafePointer()), v.Type().Elem().Size()))
	return true
}

// pointerFree reports whether t holds only numbers and booleans: zeroing
// a value of t can break no pointer the garbage collector follows.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return t.Len() == 0 || pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}
