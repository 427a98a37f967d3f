package crypto

import (
	"bytes"
	"reflect"
	"runtime"
	"testing"
	"time"
	"unsafe"
)

// stateBytes is the memory of the value an AEAD points to (its key schedule
// and GHASH table), read in place.
func stateBytes(t *testing.T, a any) []byte {
	t.Helper()
	v := reflect.ValueOf(a)
	if v.Kind() != reflect.Pointer {
		t.Fatalf("AEAD of type %T: want a pointer", a)
	}
	return unsafe.Slice((*byte)(v.UnsafePointer()), v.Type().Elem().Size())
}

func testKey() []byte {
	k := make([]byte, DEKSize)
	for i := range k {
		k[i] = byte(0xa0 + i)
	}
	return k
}

// The standard library's AES-GCM keeps the key in its schedule (the first
// two AES-256 round keys are the key): WipeAEAD must find a layout it can
// zero, and zero it. A Go release that changes the layout fails here.
func TestWipeAEAD(t *testing.T) {
	key := testKey()
	a, err := NewAESGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	mem := stateBytes(t, a)
	if !bytes.Contains(mem, key) {
		t.Fatalf("the AEAD's state (%T, %d bytes) does not hold the key: the test no longer sees the schedule", a, len(mem))
	}
	if !WipeAEAD(a) {
		t.Fatalf("WipeAEAD(%T) = false, want true: the standard library's layout holds pointers now", a)
	}
	if !allZero(mem) {
		t.Errorf("after WipeAEAD, state has non-zero bytes")
	}
}

func TestWipeStateRefusesPointers(t *testing.T) {
	type withPointer struct {
		n int
		p *int
	}
	x := 7
	v := &withPointer{n: 1, p: &x}
	if wipeState(v) {
		t.Errorf("wipeState(struct with a pointer) = true, want false")
	}
	if v.n != 1 || v.p != &x {
		t.Errorf("wipeState changed a struct with a pointer: %+v", *v)
	}
	if wipeState(nil) || wipeState(3) {
		t.Errorf("wipeState of a non-pointer = true, want false")
	}
}

// A ContentCipher's key schedule is zeroed by the garbage collector's
// cleanup once the cipher is unreachable.
func TestContentCipherWipedWhenUnreachable(t *testing.T) {
	key := testKey()
	c, err := NewContentCipher(key, FileID{1}, DefaultLayout(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := c.aead // kept alive by the test, so its memory stays readable
	mem := stateBytes(t, a)
	if !bytes.Contains(mem, key) {
		t.Fatalf("the cipher's state does not hold the key")
	}
	c = nil
	deadline := time.Now().Add(10 * time.Second)
	for !allZero(mem) {
		if time.Now().After(deadline) {
			t.Fatalf("the key schedule of an unreachable ContentCipher is not zeroed after 10 s of GCs")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(a)
}
