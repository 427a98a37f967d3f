package cipherdir

import (
	"bytes"
	"testing"
)

// FuzzParseConfig: Parse never panics, and whatever it accepts validates and
// survives a Marshal/Parse round trip unchanged.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConf))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"format":1,"features":{"x":true}}`))
	f.Add([]byte(`[1,2]`))
	f.Add([]byte(`{"format":1} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config Validate refuses: %v", err)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled config: %v", err)
		}
		out2, _ := c2.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\n%s", out, out2)
		}
	})
}
