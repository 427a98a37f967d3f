package crypto

import (
	"errors"
	"fmt"
	"testing"
)

func allLayouts() []Layout {
	var ls []Layout
	for cs := uint8(MinChunkShift); cs <= MaxChunkShift; cs++ {
		for ss := uint8(MinSlotShift); ss <= MaxSlotShift; ss++ {
			ls = append(ls, Layout{ChunkShift: cs, SlotShift: ss})
		}
	}
	return ls
}

func TestLayoutValidate(t *testing.T) {
	tests := []struct {
		name string
		l    Layout
		ok   bool
	}{
		{"default", DefaultLayout(), true},
		{"min", Layout{12, 9}, true},
		{"max", Layout{20, 13}, true},
		{"chunk too small", Layout{11, 9}, false},
		{"chunk too large", Layout{21, 9}, false},
		{"slot too small", Layout{12, 8}, false},
		{"slot too large", Layout{12, 14}, false},
		{"zero", Layout{}, false},
		{"huge", Layout{255, 255}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.l.Validate()
			if got := err == nil; got != tt.ok {
				t.Fatalf("Validate(%+v) = %v, want ok %v", tt.l, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrBadLayout) {
				t.Errorf("got %v, want ErrBadLayout", err)
			}
			if !tt.ok {
				if _, err := tt.l.PlainSize(5000); !errors.Is(err, ErrBadLayout) {
					t.Errorf("PlainSize on invalid layout: got %v, want ErrBadLayout", err)
				}
			}
		})
	}
}

func TestLayoutDefaultSizes(t *testing.T) {
	l := DefaultLayout()
	for _, tt := range []struct {
		name      string
		got, want int64
	}{
		{"ChunkSize", l.ChunkSize(), 4096},
		{"CipherChunkSize", l.CipherChunkSize(), 4124},
		{"SlotSize", l.SlotSize(), 512},
		{"SlotOffset(0)", l.SlotOffset(0), 32},
		{"SlotOffset(1)", l.SlotOffset(1), 544},
		{"ContentOffset", l.ContentOffset(), 1056},
		{"CipherChunkOffset(0)", l.CipherChunkOffset(0), 1056},
		{"CipherChunkOffset(1)", l.CipherChunkOffset(1), 1056 + 4124},
		{"CipherChunkOffset(3)", l.CipherChunkOffset(3), 1056 + 3*4124},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestLayoutPlainSizes(t *testing.T) {
	const C = 4096
	l := DefaultLayout()
	tests := []struct {
		name                  string
		plainSize             int64
		cipherSize            int64
		chunks                int64
		lastChunkIndexOfBytes int64 // ChunkIndex(plainSize-1), -1 when empty
	}{
		{"0", 0, 1056, 0, -1},
		{"1", 1, 1056 + 28 + 1, 1, 0},
		{"C-1", C - 1, 1056 + 28 + C - 1, 1, 0},
		{"C", C, 1056 + 28 + C, 1, 0},
		{"C+1", C + 1, 1056 + 2*28 + C + 1, 2, 1},
		{"2C", 2 * C, 1056 + 2*28 + 2*C, 2, 1},
		{"2C+1", 2*C + 1, 1056 + 3*28 + 2*C + 1, 3, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := l.CipherSize(tt.plainSize); got != tt.cipherSize {
				t.Errorf("CipherSize(%d): got %d, want %d", tt.plainSize, got, tt.cipherSize)
			}
			got, err := l.PlainSize(tt.cipherSize)
			if err != nil || got != tt.plainSize {
				t.Errorf("PlainSize(%d): got %d, %v, want %d, nil", tt.cipherSize, got, err, tt.plainSize)
			}
			if got := l.ChunkCount(tt.plainSize); got != tt.chunks {
				t.Errorf("ChunkCount(%d): got %d, want %d", tt.plainSize, got, tt.chunks)
			}
			if tt.plainSize > 0 {
				if got := l.ChunkIndex(tt.plainSize - 1); got != tt.lastChunkIndexOfBytes {
					t.Errorf("ChunkIndex(%d): got %d, want %d", tt.plainSize-1, got, tt.lastChunkIndexOfBytes)
				}
			}
		})
	}
}

func TestLayoutChunkIndex(t *testing.T) {
	const C = 4096
	l := DefaultLayout()
	for _, tt := range []struct{ off, want int64 }{
		{0, 0}, {1, 0}, {C - 1, 0}, {C, 1}, {C + 1, 1}, {2*C - 1, 1}, {2 * C, 2}, {1 << 40, 1 << 28},
	} {
		if got := l.ChunkIndex(tt.off); got != tt.want {
			t.Errorf("ChunkIndex(%d): got %d, want %d", tt.off, got, tt.want)
		}
	}
}

func TestLayoutPlainSizeInvalid(t *testing.T) {
	const C = 4096
	l := DefaultLayout()
	// Remainders 1..28 after whole chunks: a chunk cannot be that short.
	for _, whole := range []int64{0, 1, 5} {
		for r := int64(1); r <= ChunkOverhead; r++ {
			name := fmt.Sprintf("%d chunks + %d", whole, r)
			cipherSize := l.ContentOffset() + whole*(C+ChunkOverhead) + r
			got, err := l.PlainSize(cipherSize)
			if !errors.Is(err, ErrBadSize) {
				t.Errorf("%s: PlainSize(%d) error %v, want ErrBadSize", name, cipherSize, err)
			}
			// The stray bytes count, so reads reach the cut chunk.
			if want := whole*C + r; got != want {
				t.Errorf("%s: PlainSize(%d): got %d, want %d", name, cipherSize, got, want)
			}
		}
		// r = 29 is the smallest valid last chunk: 1 plain byte.
		cipherSize := l.ContentOffset() + whole*(C+ChunkOverhead) + ChunkOverhead + 1
		if got, err := l.PlainSize(cipherSize); err != nil || got != whole*C+1 {
			t.Errorf("PlainSize(%d): got %d, %v, want %d, nil", cipherSize, got, err, whole*C+1)
		}
	}
	// Below the content offset: not a finished cipher file.
	for _, cipherSize := range []int64{-1, 0, 1, 31, 32, 543, 544, 1055} {
		got, err := l.PlainSize(cipherSize)
		if !errors.Is(err, ErrBadSize) || got != 0 {
			t.Errorf("PlainSize(%d): got %d, %v, want 0, ErrBadSize", cipherSize, got, err)
		}
	}
}

func TestLayoutRoundTrip(t *testing.T) {
	for _, l := range allLayouts() {
		C := l.ChunkSize()
		sizes := []int64{0, 1, 2, 27, 28, 29, C - 29, C - 28, C - 1, C, C + 1, 2*C - 1, 2 * C, 2*C + 1, 7*C + 1234%C, 1 << 30, 1<<40 + 3}
		for i := int64(0); i < 300; i++ {
			sizes = append(sizes, i*i*97+i)
		}
		for _, p := range sizes {
			c := l.CipherSize(p)
			got, err := l.PlainSize(c)
			if err != nil || got != p {
				t.Fatalf("layout %+v: PlainSize(CipherSize(%d)=%d): got %d, %v, want %d, nil", l, p, c, got, err, p)
			}
			if want := l.ContentOffset() + l.ChunkCount(p)*ChunkOverhead + p; c != want {
				t.Fatalf("layout %+v: CipherSize(%d): got %d, want %d", l, p, c, want)
			}
			if p > 0 {
				// The last chunk starts where the formula says and ends the file.
				last := l.ChunkCount(p) - 1
				lastPlain := p - last*C
				if got := l.CipherChunkOffset(last) + ChunkOverhead + lastPlain; got != c {
					t.Fatalf("layout %+v size %d: end of last chunk %d, want %d", l, p, got, c)
				}
			}
		}
	}
}
