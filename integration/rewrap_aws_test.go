package integration

// rewrap_aws_test.go: rewrap on the aws provider through the binary,
// against local-kms (localkms_test.go; same build tag while that helper is
// in development).

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestRewrapAWS: rewrap on the aws provider (local-kms): a rewrap epoch
// in the key-version field, kept in kmsfs.conf, resumed when a run is
// interrupted, and a migration to another key.
func TestRewrapAWS(t *testing.T) {
	f, _ := newAWSFixture(t)
	f.mount()
	sums := writeFiles(t, f.mnt, 30)
	f.unmount()
	keyA, keyB := lkKeyARN(lkKeyA), lkKeyARN(lkKeyB)
	wantKeys(t, "at creation", f.status(), map[string]int{keyA + "@0": 30})

	out := f.kmsfs("rewrap", f.cipher)
	if _, rewrapped, _, _ := rewrapCounts(t, out); rewrapped != 30+namesKeyHeads || !strings.Contains(out, "rewrap epoch 1") {
		t.Errorf("aws rewrap: %q, want %d rewrapped to epoch 1 (30 files, the names key's heads)", out, 30+namesKeyHeads)
	}
	c := readConf(t, f.cipher)
	if c["rewrap_epoch"] != float64(1) || c["rewrap_pending"] != nil {
		t.Errorf("kmsfs.conf after the rewrap: epoch %v pending %v, want 1, absent", c["rewrap_epoch"], c["rewrap_pending"])
	}
	wantKeys(t, "after rewrap", f.status(), map[string]int{keyA + "@1": 30})

	// An interrupted epoch: pending in kmsfs.conf; the next run resumes
	// it (same epoch) instead of starting another.
	c["rewrap_epoch"], c["rewrap_pending"] = 2, true
	writeConf(t, f.cipher, c)
	f.mount()
	more := writeFiles(t, filepath.Join(f.mnt, "more"), 4) // new files carry epoch 2: current
	out = f.kmsfs("rewrap", f.cipher)
	if files, rewrapped, current, _ := rewrapCounts(t, out); files != 34+namesKeyHeads || rewrapped != 30+namesKeyHeads || current != 4 || !strings.Contains(out, "epoch 2") {
		t.Errorf("resumed aws rewrap through the mount: %q, want %d rewrapped, 4 current at epoch 2", out, 30+namesKeyHeads)
	}
	readAll(t, "after the aws rewrap", f.mnt, sums)
	f.unmount()
	if c := readConf(t, f.cipher); c["rewrap_epoch"] != float64(2) || c["rewrap_pending"] != nil {
		t.Errorf("kmsfs.conf after the resumed rewrap: %v", c)
	}

	out = f.kmsfs("rewrap", "--to", lkAliasB, f.cipher)
	if _, rewrapped, _, _ := rewrapCounts(t, out); rewrapped != 34+namesKeyHeads {
		t.Errorf("aws migration: %q, want %d rewrapped", out, 34+namesKeyHeads)
	}
	s := f.status()
	if s.KeyARN != keyB || s.Key != lkAliasB {
		t.Errorf("kmsfs.conf after aws migration: %s (%s)", s.Key, s.KeyARN)
	}
	wantKeys(t, "after aws migration", s, map[string]int{keyB + "@2": 34})
	f.mount()
	readAll(t, "after aws migration", f.mnt, sums)
	readAll(t, "after aws migration", filepath.Join(f.mnt, "more"), more)
	f.unmount()
}
