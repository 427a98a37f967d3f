package cipherfile

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"

	"github.com/kmsfs/kmsfs/crypto"
)

// cipherBatchMax bounds the cipher bytes read or written by one pread or
// pwrite, and so the buffer a call holds: 4 MiB is 1017 chunks of 4 KiB, so
// a 1 MiB FUSE write (the largest MaxWrite) is one pwrite.
const cipherBatchMax = 4 << 20

// File is the plaintext view of one cipher file's content. It wraps an
// open *os.File (not owned: the caller closes it, and it must not be
// O_APPEND) and the file's content cipher.
//
// The plain size is never stored: every call derives it from fstat of the
// cipher file, so a File holds no state to go stale and several Files (or
// the offline tools) may use the same cipher file in turn.
//
// Concurrency: ReadAt and PlainSize may run concurrently with each other;
// WriteAt, Truncate and Sync need the caller to exclude every other call on
// the same cipher file (the FUSE layer's per-inode RWMutex).
type File struct {
	fd *os.File
	c  *crypto.ContentCipher
	l  crypto.Layout
	id crypto.FileID // names the file in errors (never its path)

	chunkShift       uint8
	plainChunkSize   int64 // C
	cipherChunkSize  int64 // C + 28
	plainSizeMax     int64 // largest plain size whose cipher size fits an int64
	batchChunks      int64 // chunks per pread/pwrite, >= 1
	cipherContentOff int64 // ContentOffset
}

// New returns the content view of f, whose preamble must carry c's layout
// (crypto.ErrLayoutMismatch) and file ID (ErrFileIDMismatch).
func New(f *os.File, c *crypto.ContentCipher) (*File, error) {
	p, err := ReadPreamble(f)
	if err != nil {
		return nil, err
	}
	return Open(f, c, p)
}

// Open is New for a caller that has already read f's preamble p (or has
// just written it): it checks p against c the same way and reads nothing,
// so opening a file costs one pread of its preamble, not two.
func Open(f *os.File, c *crypto.ContentCipher, p crypto.Preamble) (*File, error) {
	cf, err := open(f, c, p)
	if err != nil {
		return nil, fmt.Errorf("open content of %s: %w", p.FileID, err)
	}
	return cf, nil
}

// open is Open with errors that do not name the file.
func open(f *os.File, c *crypto.ContentCipher, p crypto.Preamble) (*File, error) {
	l := c.Layout()
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if got := p.Layout(); got != l {
		return nil, fmt.Errorf("chunk/slot shift %d/%d, want %d/%d: %w",
			got.ChunkShift, got.SlotShift, l.ChunkShift, l.SlotShift, crypto.ErrLayoutMismatch)
	}
	if p.FileID != c.FileID() {
		return nil, fmt.Errorf("content cipher is for %s: %w", c.FileID(), ErrFileIDMismatch)
	}
	k := l.CipherChunkSize()
	return &File{
		fd:               f,
		c:                c,
		l:                l,
		id:               p.FileID,
		chunkShift:       l.ChunkShift,
		plainChunkSize:   l.ChunkSize(),
		cipherChunkSize:  k,
		plainSizeMax:     (math.MaxInt64 - l.ContentOffset()) / k * l.ChunkSize(),
		batchChunks:      max(1, cipherBatchMax/k),
		cipherContentOff: l.ContentOffset(),
	}, nil
}

// FileID is the file's ID, from its preamble.
func (f *File) FileID() crypto.FileID { return f.id }

// Cipher is the content cipher f seals and opens chunks with (and the
// file's extended attributes are sealed under).
func (f *File) Cipher() *crypto.ContentCipher { return f.c }

// geom is what fstat says about the content.
type geom struct {
	cipherSize int64
	// plainSize counts the plain bytes of the chunks that can be valid;
	// with a bad tail, those of the whole chunks before it.
	plainSize int64
	// chunks counts the cipher chunks including a bad tail: chunk
	// chunks-1 is the one opened and sealed with the last flag.
	chunks int64
	// badTail: the content ends in 1..28 bytes, a chunk cut shorter than
	// any sealed chunk can be. It reads as ErrAuth, chunk chunks-1.
	badTail bool
}

func (f *File) geometry() (geom, error) {
	// A bare fstat: every read and write starts here, and os.File.Stat
	// allocates.
	fd := int(f.fd.Fd())
	if fd < 0 {
		return geom{}, os.ErrClosed
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return geom{}, fmt.Errorf("fstat: %w", err)
	}
	g := geom{cipherSize: st.Size}
	var sizeErr error
	g.plainSize, sizeErr = f.l.PlainSize(g.cipherSize)
	g.chunks = f.l.ChunkCount(g.plainSize)
	if sizeErr != nil {
		if !errors.Is(sizeErr, crypto.ErrBadSize) {
			return geom{}, sizeErr
		}
		// Below ContentOffset (a head never finished) there is no
		// content at all: the file reads as empty.
		// Otherwise the size counts the tail's stray bytes, so chunks
		// already includes the cut chunk.
		if g.cipherSize > f.cipherContentOff {
			g.badTail = true
		}
	}
	return g, nil
}

func (f *File) tailError(g geom) error {
	cipherTail := g.cipherSize - f.l.CipherChunkOffset(g.chunks-1)
	return &ChunkError{Index: g.chunks - 1, Err: fmt.Errorf("cut to %d cipher bytes, shorter than any chunk: %w", cipherTail, crypto.ErrAuth)}
}

// PlainSize is the plain size of the content, from fstat. When the cipher
// size maps to no plain size (a tail of 1..28 bytes, or a file shorter than
// its head) the error wraps crypto.ErrBadSize and the size returned is
// still the best answer (crypto.Layout.PlainSize): for a cut tail, the
// plain bytes of the whole chunks plus the tail's stray bytes, what stat
// reports for it (format.md, Sizes), so reading the tail gives ErrAuth.
func (f *File) PlainSize() (int64, error) {
	fi, err := f.fd.Stat()
	if err != nil {
		return 0, fmt.Errorf("plain size of %s: %w", f.id, ioErr(err))
	}
	plainSize, err := f.l.PlainSize(fi.Size())
	if err != nil {
		return plainSize, fmt.Errorf("plain size of %s: %w", f.id, err)
	}
	return plainSize, nil
}

// Sync flushes the cipher file to stable storage (fsync).
func (f *File) Sync() error {
	if err := f.fd.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.id, ioErr(err))
	}
	return nil
}

// ReadAt reads len(p) plain bytes at plainOff, with the semantics of
// os.File.ReadAt: n < len(p) only with an error, io.EOF when the content
// ends first. The chunks covering the range are read with one pread per
// cipherBatchMax bytes and opened straight into p where a whole chunk is
// wanted. A chunk that fails to open stops the read: n counts the bytes
// before it and the error wraps a *ChunkError naming it (errors.As) and
// crypto.ErrAuth (errors.Is); p beyond n is then undefined. Errors name the
// file by its ID, never its path. Holes read as zeros. A
// content that ends in a bad tail reads up to the tail, then ErrAuth for it.
// Safe for concurrent use (with other ReadAt and PlainSize calls).
func (f *File) ReadAt(p []byte, plainOff int64) (int, error) {
	if plainOff < 0 {
		return 0, fmt.Errorf("read %s at %d: %w", f.id, plainOff, ErrNegativeOffset)
	}
	if len(p) == 0 {
		return 0, nil
	}
	g, err := f.geometry()
	if err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", f.id, plainOff, err)
	}
	if plainOff >= g.plainSize {
		if g.badTail {
			return 0, fmt.Errorf("read %s at %d: %w", f.id, plainOff, f.tailError(g))
		}
		return 0, io.EOF
	}
	plainEnd := plainOff + min(int64(len(p)), g.plainSize-plainOff)
	n := 0
	for plainPos := plainOff; plainPos < plainEnd; {
		first := plainPos >> f.chunkShift
		last := min((plainEnd-1)>>f.chunkShift, first+f.batchChunks-1)
		plainStop := min((last+1)<<f.chunkShift, plainEnd)
		got, err := f.readChunks(p[plainPos-plainOff:plainStop-plainOff], plainPos, first, last, g)
		n += got
		if err != nil {
			return n, fmt.Errorf("read %s at %d: %w", f.id, plainOff, err)
		}
		plainPos = plainStop
	}
	if n < len(p) {
		if g.badTail {
			return n, fmt.Errorf("read %s at %d: %w", f.id, plainOff, f.tailError(g))
		}
		return n, io.EOF
	}
	return n, nil
}

// readChunks fills dst, the plain bytes [plainOff, plainOff+len(dst)) lying
// in chunks first..last, from one pread of those chunks.
func (f *File) readChunks(dst []byte, plainOff, first, last int64, g geom) (int, error) {
	plainEnd := plainOff + int64(len(dst))
	cipherOff := f.l.CipherChunkOffset(first)
	cipherEnd := min(f.l.CipherChunkOffset(last+1), g.cipherSize)
	bp := getBuf(int(cipherEnd - cipherOff))
	defer putBuf(bp)
	got, err := f.fd.ReadAt(*bp, cipherOff)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("chunks %d..%d: %w", first, last, ioErr(err))
	}
	// got is short only if the file shrank since fstat; the chunk cut
	// then fails to open like any other.
	buf := (*bp)[:got]
	k := int(f.cipherChunkSize)
	// open opens chunks [j0, j1) of the batch; the first that fails
	// stops it, with the bytes of dst before that chunk.
	open := func(j0, j1 int) (int, error) {
		var scratch *[]byte // for chunks wanted in part
		defer func() {
			if scratch != nil {
				putBuf(scratch)
			}
		}()
		for j := j0; j < j1; j++ {
			index := first + int64(j)
			sealed := buf[min(j*k, len(buf)):min((j+1)*k, len(buf))]
			isLast := index == g.chunks-1
			plainChunkOff := index << f.chunkShift
			plainChunkLen := min(f.plainChunkSize, g.plainSize-plainChunkOff)
			plainFrom, plainTo := max(plainOff, plainChunkOff), min(plainEnd, plainChunkOff+plainChunkLen)
			out := dst[plainFrom-plainOff : plainTo-plainOff]
			done := int(plainFrom - plainOff) // bytes of dst before this chunk
			if plainFrom == plainChunkOff && plainTo == plainChunkOff+plainChunkLen {
				// The whole chunk is wanted: open it in place. The cap keeps
				// a chunk longer than expected from spilling past it (it is
				// then reallocated and refused below).
				plain, err := f.c.OpenChunk(out[:0:len(out)], index, isLast, sealed)
				if err != nil {
					return done, &ChunkError{Index: index, Err: err}
				}
				if len(plain) != len(out) {
					return done, f.lengthError(index, len(plain), plainChunkLen)
				}
				continue
			}
			if scratch == nil {
				scratch = getBuf(int(f.plainChunkSize))
			}
			plain, err := f.c.OpenChunk((*scratch)[:0], index, isLast, sealed)
			if err != nil {
				return done, &ChunkError{Index: index, Err: err}
			}
			if int64(len(plain)) != plainChunkLen {
				return done, f.lengthError(index, len(plain), plainChunkLen)
			}
			copy(out, plain[plainFrom-plainChunkOff:])
		}
		return len(dst), nil
	}
	return parallelChunks(int(last-first)+1, int(f.chunkShift), open)
}

// lengthError: a chunk that opened to a length its cipher size did not
// promise (the file changed under us). Its bytes cannot be trusted in
// place, so it is an authentication failure.
func (f *File) lengthError(index int64, got int, want int64) error {
	return &ChunkError{Index: index, Err: fmt.Errorf("opened to %d plain bytes, want %d: %w", got, want, crypto.ErrAuth)}
}

// openChunk reads chunk index alone and appends its plaintext to dst.
func (f *File) openChunk(dst []byte, index int64, g geom) ([]byte, error) {
	cipherOff := f.l.CipherChunkOffset(index)
	cipherEnd := min(cipherOff+f.cipherChunkSize, g.cipherSize)
	bp := getBuf(int(max(0, cipherEnd-cipherOff)))
	defer putBuf(bp)
	got, err := f.fd.ReadAt(*bp, cipherOff)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("chunk %d: %w", index, ioErr(err))
	}
	plain, err := f.c.OpenChunk(dst, index, index == g.chunks-1, (*bp)[:got])
	if err != nil {
		return nil, &ChunkError{Index: index, Err: err}
	}
	return plain, nil
}

// WriteAt writes p at plain offset plainOff and returns len(p), or 0 and an
// error. Chunks the write covers whole are sealed straight from p; a chunk
// it covers in part is read, opened and merged (read-modify-write; plain
// bytes past the old end are zeros). A chunk that fails to open makes the
// write fail before anything is written.
//
// A write past the old last chunk L extends the file:
//   - the written chunks go out first, one pwrite per cipherBatchMax bytes
//     (a 1 MiB write of 4 KiB chunks is one pwrite), the new last chunk
//     sealed with the last flag;
//   - whole chunks strictly between L and the first written chunk are not
//     written: they are holes (zero cipher bytes, sparse on disk), and read
//     as zeros;
//   - then L is re-sealed without the last flag, zero-padded to a full
//     chunk if it was short.
//
// Crash window: between the pwrite of the new chunks and the re-seal of L,
// L is still sealed as last but no longer is, so it opens as neither: a
// reader (or the file after a crash there) gets ErrAuth (EIO) for chunk L,
// never wrong bytes. Writing L first would instead leave a file whose last
// chunk is sealed as non-last, the same EIO for a chunk the user did not
// write; this order keeps the new data.
func (f *File) WriteAt(p []byte, plainOff int64) (int, error) {
	if plainOff < 0 {
		return 0, fmt.Errorf("write %s at %d: %w", f.id, plainOff, ErrNegativeOffset)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if plainOff > f.plainSizeMax-int64(len(p)) {
		return 0, fmt.Errorf("write %s, %d bytes at %d: %w", f.id, len(p), plainOff, ErrFileTooLarge)
	}
	g, err := f.geometry()
	if err == nil {
		err = f.write(p, plainOff, g)
	}
	if err != nil {
		return 0, fmt.Errorf("write %s, %d bytes at %d: %w", f.id, len(p), plainOff, err)
	}
	return len(p), nil
}

func (f *File) write(p []byte, plainOff int64, g geom) error {
	c := f.plainChunkSize
	plainEnd := plainOff + int64(len(p))
	plainSizeNew := max(g.plainSize, plainEnd)
	// A bad tail stays the last chunk unless the write reaches past it.
	chunksNew := max(g.chunks, f.l.ChunkCount(plainEnd))
	first, last := plainOff>>f.chunkShift, (plainEnd-1)>>f.chunkShift
	plainLen := func(index int64) int64 { return min(c, plainSizeNew-index<<f.chunkShift) }

	// Gather every old plaintext needed before writing anything, so a
	// chunk that fails to open fails the write with the file unchanged.
	var head, tail *[]byte
	defer func() {
		for _, bp := range []*[]byte{head, tail} {
			if bp != nil {
				putBuf(bp)
			}
		}
	}()
	merge := func(index int64) (*[]byte, error) {
		plainChunkOff := index << f.chunkShift
		if plainOff <= plainChunkOff && plainEnd >= plainChunkOff+plainLen(index) {
			return nil, nil // covered whole: sealed straight from p
		}
		bp := getBuf(int(c))
		b := (*bp)[:plainLen(index)]
		plainOld := 0
		if index < g.chunks {
			old, err := f.openChunk((*bp)[:0], index, g)
			if err != nil {
				putBuf(bp)
				return nil, err
			}
			if len(old) > len(b) {
				putBuf(bp)
				return nil, f.lengthError(index, len(old), int64(len(b)))
			}
			plainOld = len(old)
		}
		clear(b[plainOld:])
		from := max(plainOff, plainChunkOff)
		copy(b[from-plainChunkOff:], p[from-plainOff:min(plainEnd, plainChunkOff+int64(len(b)))-plainOff])
		*bp = b
		return bp, nil
	}
	var err error
	if head, err = merge(first); err != nil {
		return err
	}
	if last != first {
		if tail, err = merge(last); err != nil {
			return err
		}
	}

	// The old last chunk, when the write ends past it and does not
	// rewrite it: re-sealed without the last flag, zero-padded to C.
	var resealed *[]byte
	oldLast := g.chunks - 1
	if g.chunks > 0 && chunksNew > g.chunks && oldLast < first {
		pbp := getBuf(int(c))
		old, err := f.openChunk((*pbp)[:0], oldLast, g)
		if err != nil {
			putBuf(pbp)
			return err
		}
		plain := (*pbp)[:c]
		clear(plain[len(old):])
		resealed = getBuf(int(f.cipherChunkSize))
		defer putBuf(resealed)
		sealed, err := f.c.SealChunk((*resealed)[:0], oldLast, false, plain)
		putBuf(pbp)
		if err != nil {
			return &ChunkError{Index: oldLast, Err: err}
		}
		*resealed = sealed // in place: the buffer holds a full chunk
	}

	// An extending write that rewrites the old last chunk (it starts
	// inside it) seals it as non-last. Should the write fail half-way (a
	// full disk), the file is cut back to its old size and that chunk's
	// old sealed bytes put back, so it opens as the last chunk again.
	var oldLastRaw *[]byte
	if g.chunks > 0 && chunksNew > g.chunks && first <= oldLast && !g.badTail {
		oldLastRaw = getBuf(int(f.cipherChunkSize))
		defer putBuf(oldLastRaw)
		cipherOff := f.l.CipherChunkOffset(oldLast)
		n, err := f.fd.ReadAt((*oldLastRaw)[:g.cipherSize-cipherOff], cipherOff)
		if err != nil {
			return &ChunkError{Index: oldLast, Err: ioErr(err)}
		}
		*oldLastRaw = (*oldLastRaw)[:n]
	}

	k := f.cipherChunkSize
	for b0 := first; b0 <= last; b0 += f.batchChunks {
		b1 := min(last, b0+f.batchChunks-1)
		obp := getBuf(int((b1-b0)*k + plainLen(b1) + crypto.ChunkOverhead))
		out := *obp
		seal := func(j0, j1 int) (int, error) {
			for index := b0 + int64(j0); index < b0+int64(j1); index++ {
				var plain []byte
				switch {
				case index == first && head != nil:
					plain = *head
				case index == last && tail != nil:
					plain = *tail
				default:
					from := index<<f.chunkShift - plainOff
					plain = p[from : from+plainLen(index)]
				}
				o := (index - b0) * k
				sealedLen := int64(len(plain)) + crypto.ChunkOverhead
				sealed, err := f.c.SealChunk(out[o:o:o+sealedLen], index, index == chunksNew-1, plain)
				if err != nil {
					return 0, &ChunkError{Index: index, Err: err}
				}
				if int64(len(sealed)) != sealedLen || &sealed[0] != &out[o] {
					panic(fmt.Sprintf("cipherfile: chunk %d sealed to %d bytes, not %d in place", index, len(sealed), sealedLen))
				}
			}
			return 0, nil
		}
		_, err := parallelChunks(int(b1-b0)+1, int(f.chunkShift), seal)
		if err == nil {
			if _, err = f.fd.WriteAt(out, f.l.CipherChunkOffset(b0)); err != nil {
				err = fmt.Errorf("chunks %d..%d: %w", b0, b1, ioErr(err))
			}
		}
		putBuf(obp)
		if err != nil {
			switch {
			case resealed != nil || g.chunks == 0:
				// Only new chunks went out: drop them; the old last
				// chunk is still sealed as last.
				_ = f.fd.Truncate(g.cipherSize)
			case oldLastRaw != nil:
				if terr := f.fd.Truncate(g.cipherSize); terr == nil {
					_, _ = f.fd.WriteAt(*oldLastRaw, f.l.CipherChunkOffset(oldLast))
				}
			}
			return err
		}
	}
	if resealed != nil {
		// See the crash window in WriteAt.
		if _, err := f.fd.WriteAt(*resealed, f.l.CipherChunkOffset(oldLast)); err != nil {
			return fmt.Errorf("re-seal chunk %d as non-last: %w", oldLast, ioErr(err))
		}
	}
	return nil
}

// Truncate sets the plain size.
//
// Shrinking reads and opens the chunk that becomes the last one, cuts the
// cipher file to CipherSize(plainSize), then writes that chunk re-sealed
// with the last flag and its new length. Crash window: between the
// ftruncate and the pwrite the new last chunk is sealed as non-last (or cut
// inside), so it reads as ErrAuth (EIO), never as wrong bytes. Truncating
// to 0 only cuts the file to its head. A shrink that also cuts a bad tail
// away repairs the file.
//
// Growing is the write of one zero byte at plainSize-1 (WriteAt: the old
// last chunk is re-sealed as non-last and zero-padded, the chunks between
// it and the new last chunk are holes, the new last chunk is written
// sealed, never a hole) and has WriteAt's crash window.
func (f *File) Truncate(plainSize int64) error {
	if plainSize < 0 {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, ErrNegativeOffset)
	}
	if plainSize > f.plainSizeMax {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, ErrFileTooLarge)
	}
	if plainSize == 0 {
		if err := f.fd.Truncate(f.cipherContentOff); err != nil {
			return fmt.Errorf("truncate %s to 0: %w", f.id, ioErr(err))
		}
		return nil
	}
	g, err := f.geometry()
	if err != nil {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, err)
	}
	cipherSize := f.l.CipherSize(plainSize)
	switch {
	case cipherSize == g.cipherSize:
		return nil
	case cipherSize > g.cipherSize:
		var zero [1]byte
		if err := f.write(zero[:], plainSize-1, g); err != nil {
			return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, err)
		}
		return nil
	}
	index := f.l.ChunkCount(plainSize) - 1
	plainLen := plainSize - index<<f.chunkShift
	pbp := getBuf(int(f.plainChunkSize))
	defer putBuf(pbp)
	plain, err := f.openChunk((*pbp)[:0], index, g)
	if err != nil {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, err)
	}
	if int64(len(plain)) < plainLen {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, f.lengthError(index, len(plain), plainLen))
	}
	sbp := getBuf(int(f.cipherChunkSize))
	defer putBuf(sbp)
	sealed, err := f.c.SealChunk((*sbp)[:0], index, true, plain[:plainLen])
	if err != nil {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, &ChunkError{Index: index, Err: err})
	}
	if err := f.fd.Truncate(cipherSize); err != nil {
		return fmt.Errorf("truncate %s to %d: %w", f.id, plainSize, ioErr(err))
	}
	if _, err := f.fd.WriteAt(sealed, f.l.CipherChunkOffset(index)); err != nil {
		return fmt.Errorf("truncate %s to %d: re-seal chunk %d as last: %w", f.id, plainSize, index, ioErr(err))
	}
	return nil
}
