package cipherdir

import (
	"os"
	"testing"
)

// FuzzReadMountRecord: a mount record is read back from the runtime
// directory by unmount and status; whatever bytes the file holds, reading
// it returns a record or an error, never a panic.
func FuzzReadMountRecord(f *testing.F) {
	f.Add([]byte(`{"pid":123,"cipherdir":"/c","mountpoint":"/m"}` + "\n"))
	f.Add([]byte(`{"pid":-1}`))
	f.Add([]byte(`{"pid":1e99}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(RecordPath(dir, "/m"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := ReadMountRecord(dir, "/m")
		if err != nil {
			return
		}
		_ = r
	})
}
