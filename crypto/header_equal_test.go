package crypto

import "testing"

func TestHeaderEqual(t *testing.T) {
	base := func() Header {
		return Header{
			FileID:     FileID{1, 2, 3},
			Generation: 7,
			Keys: []WrappedKey{
				{KeyARN: "arn:a", KeyVersion: 2, EDK: []byte{1, 2, 3}},
				{KeyARN: "arn:b", KeyVersion: 1, EDK: []byte{4, 5}},
			},
		}
	}
	tests := []struct {
		name   string
		change func(h *Header)
		want   bool
	}{
		{"same", func(h *Header) {}, true},
		{"EDK copied, not shared", func(h *Header) { h.Keys[0].EDK = append([]byte(nil), h.Keys[0].EDK...) }, true},
		{"file ID", func(h *Header) { h.FileID[15] ^= 1 }, false},
		{"generation", func(h *Header) { h.Generation++ }, false},
		{"key dropped", func(h *Header) { h.Keys = h.Keys[:1] }, false},
		{"key added", func(h *Header) { h.Keys = append(h.Keys, WrappedKey{KeyARN: "arn:c", EDK: []byte{9}}) }, false},
		{"keys reordered", func(h *Header) { h.Keys[0], h.Keys[1] = h.Keys[1], h.Keys[0] }, false},
		{"key ARN", func(h *Header) { h.Keys[1].KeyARN = "arn:c" }, false},
		{"key version", func(h *Header) { h.Keys[0].KeyVersion++ }, false},
		{"EDK byte", func(h *Header) { h.Keys[1].EDK = []byte{4, 6} }, false},
		{"EDK length", func(h *Header) { h.Keys[1].EDK = []byte{4, 5, 0} }, false},
		{"no keys", func(h *Header) { h.Keys = nil }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base(), base()
			tc.change(&b)
			if got := a.Equal(b); got != tc.want {
				t.Errorf("a.Equal(b): got %v, want %v", got, tc.want)
			}
			if got := b.Equal(a); got != tc.want {
				t.Errorf("b.Equal(a): got %v, want %v", got, tc.want)
			}
		})
	}
}
