package fs

import "testing"

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"6.18.0-1-amd64", true},
		{"6.10.0", true},
		{"6.9.12", false},
		{"5.15.0-105-generic", false},
		{"7.0", true},
		{"garbage", false},
	} {
		if got := kernelAtLeast(c.release, 6, 10); got != c.want {
			t.Errorf("kernelAtLeast(%q, 6, 10) = %v, want %v", c.release, got, c.want)
		}
	}
}
