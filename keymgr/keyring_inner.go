package keymgr

// keyring_inner.go: the keyring's sealed inner JSON (never on disk in
// clear; keyring_envelope.go seals it) and the names it holds:
//
//	{"id":"<32 hex: keyring id>",
//	 "keys":[{"id":"<8-4-4-4-12 hex>","description":"..","created":RFC3339,
//	          "enabled":true,"pending_deletion":RFC3339 (optional),
//	          "versions":[{"version":1,"created":RFC3339,"material":B64(32 bytes)}]}],
//	 "aliases":{"alias/name":"<key id>"}}
//
// It is parsed from and built in locked memory: key material goes from
// the JSON into the keyring's LockedSlab, never through a growing heap
// buffer.

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	cmkSize       = 32
	keyIDSize     = 16
	keyringIDSize = 16

	maxDescriptionLen = 8192
	maxAliasLen       = 256
	maxKeyVersions    = 1 << 20
)

// innerKeyring is the sealed part of the keyring file.
type innerKeyring struct {
	ID      string            `json:"id"`
	Keys    []innerKey        `json:"keys"`
	Aliases map[string]string `json:"aliases"`
}

type innerKey struct {
	ID              string         `json:"id"`
	Description     string         `json:"description"`
	Created         time.Time      `json:"created"`
	Enabled         bool           `json:"enabled"`
	PendingDeletion *time.Time     `json:"pending_deletion,omitempty"`
	Versions        []innerVersion `json:"versions"`
}

type innerVersion struct {
	Version  uint32      `json:"version"`
	Created  time.Time   `json:"created"`
	Material keyMaterial `json:"material"`
}

// keyMaterial decodes base64 key material into its own small allocation,
// so that growing the Versions slice while decoding moves a pointer, not
// the key; wipe clears it once it is copied into locked memory.
type keyMaterial struct{ p *[cmkSize]byte }

func (m *keyMaterial) UnmarshalJSON(data []byte) error {
	// 32 bytes are 44 base64 characters ending in a single '='.
	if len(data) != 46 || data[0] != '"' || data[45] != '"' {
		return errors.New("key material is not 32 bytes of base64")
	}
	var tmp [cmkSize + 1]byte
	defer clear(tmp[:])
	n, err := base64.StdEncoding.Strict().Decode(tmp[:], data[1:45])
	if err != nil || n != cmkSize {
		return errors.New("key material is not 32 bytes of base64")
	}
	if m.p == nil {
		m.p = new([cmkSize]byte)
	}
	copy(m.p[:], tmp[:cmkSize])
	return nil
}

func (in *innerKeyring) wipe() {
	for i := range in.Keys {
		for j := range in.Keys[i].Versions {
			if p := in.Keys[i].Versions[j].Material.p; p != nil {
				clear(p[:])
			}
		}
	}
}

// parseInner parses and checks the decrypted inner JSON. Errors wrap
// ErrKeyringCorrupt. The caller wipes the result (also on error, when it is
// not nil). Fuzzed by FuzzOpenKeyringJSON.
func parseInner(plain []byte) (*innerKeyring, error) {
	in := new(innerKeyring)
	dec := json.NewDecoder(bytes.NewReader(plain))
	dec.DisallowUnknownFields()
	if err := dec.Decode(in); err != nil {
		return in, fmt.Errorf("%w: sealed content: %v: restore it from a backup", ErrKeyringCorrupt, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return in, fmt.Errorf("%w: sealed content: data after the JSON object: restore it from a backup", ErrKeyringCorrupt)
	}
	if err := in.check(); err != nil {
		return in, fmt.Errorf("%w: sealed content: %v: restore it from a backup", ErrKeyringCorrupt, err)
	}
	return in, nil
}

func (in *innerKeyring) check() error {
	if len(in.ID) != 2*keyringIDSize || strings.ToLower(in.ID) != in.ID {
		return fmt.Errorf("keyring id %q is not 32 lowercase hex digits", in.ID)
	}
	if _, err := hex.DecodeString(in.ID); err != nil {
		return fmt.Errorf("keyring id %q is not 32 lowercase hex digits", in.ID)
	}
	seen := make(map[[keyIDSize]byte]bool, len(in.Keys))
	total := 0
	for i, ik := range in.Keys {
		id, err := parseKeyID(ik.ID)
		if err != nil {
			return fmt.Errorf("key %d: %v", i, err)
		}
		if seen[id] {
			return fmt.Errorf("key %s appears twice", ik.ID)
		}
		seen[id] = true
		if len(ik.Description) > maxDescriptionLen {
			return fmt.Errorf("key %s: description longer than %d bytes", ik.ID, maxDescriptionLen)
		}
		if len(ik.Versions) == 0 {
			return fmt.Errorf("key %s has no versions", ik.ID)
		}
		total += len(ik.Versions)
		if total > maxKeyVersions {
			return fmt.Errorf("more than %d key versions", maxKeyVersions)
		}
		for j, iv := range ik.Versions {
			if iv.Version != uint32(j+1) {
				return fmt.Errorf("key %s: version %d at position %d, want %d", ik.ID, iv.Version, j, j+1)
			}
			if iv.Material.p == nil {
				return fmt.Errorf("key %s version %d has no material", ik.ID, iv.Version)
			}
		}
	}
	for name, target := range in.Aliases {
		if err := checkAliasName(name); err != nil {
			return err
		}
		id, err := parseKeyID(target)
		if err != nil {
			return fmt.Errorf("alias %s: %v", name, err)
		}
		if !seen[id] {
			return fmt.Errorf("alias %s names key %s, which is not in the keyring", name, target)
		}
	}
	return nil
}

// install replaces the keyring's keys with those of in, in a new slab.
func (k *Keyring) install(in *innerKeyring, kek []byte) error {
	n := 1
	for _, ik := range in.Keys {
		n += len(ik.Versions)
	}
	slab, err := NewLockedSlab(max(128, n+n/2), 32)
	if err != nil {
		return err
	}
	copy(slab.Slot(0), kek)
	used := 1
	keys := make([]*cmk, 0, len(in.Keys))
	byID := make(map[[keyIDSize]byte]*cmk, len(in.Keys))
	for _, ik := range in.Keys {
		id, _ := parseKeyID(ik.ID) // checked by parseInner
		c := &cmk{id: id, description: ik.Description, created: ik.Created, enabled: ik.Enabled, pendingDeletion: ik.PendingDeletion}
		for _, iv := range ik.Versions {
			copy(slab.Slot(used), iv.Material.p[:])
			c.versions = append(c.versions, cmkVersion{created: iv.Created, slot: used})
			used++
		}
		keys = append(keys, c)
		byID[id] = c
	}
	aliases := make(map[string]*cmk, len(in.Aliases))
	for name, target := range in.Aliases {
		id, _ := parseKeyID(target)
		aliases[name] = byID[id]
	}
	if k.slab != nil {
		_ = k.slab.Close()
	}
	k.slab, k.used, k.keys, k.byID, k.aliases = slab, used, keys, byID, aliases
	k.id = in.ID
	return nil
}

// parseKeyID accepts 32 hex digits or the 8-4-4-4-12 form, any case.
func parseKeyID(s string) ([keyIDSize]byte, error) {
	var id [keyIDSize]byte
	h := s
	if len(s) == 36 {
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return id, fmt.Errorf("%q is not a key ID (32 hex digits or 8-4-4-4-12)", s)
		}
		h = s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	}
	if len(h) != 2*keyIDSize {
		return id, fmt.Errorf("%q is not a key ID (32 hex digits or 8-4-4-4-12)", s)
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, fmt.Errorf("%q is not a key ID (32 hex digits or 8-4-4-4-12)", s)
	}
	return id, nil
}

// formatKeyID gives the canonical 8-4-4-4-12 lowercase form.
func formatKeyID(id [keyIDSize]byte) string {
	h := hex.EncodeToString(id[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func checkAliasName(name string) error {
	rest, ok := strings.CutPrefix(name, "alias/")
	if !ok || rest == "" {
		return fmt.Errorf("alias %q must be alias/NAME", name)
	}
	if len(name) > maxAliasLen {
		return fmt.Errorf("alias %q is longer than %d bytes", name, maxAliasLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("alias %q is not UTF-8", name)
	}
	for _, r := range rest {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '/', r == '_', r == '-':
		default:
			return fmt.Errorf("alias %q may hold only letters, digits, '/', '_' and '-'", name)
		}
	}
	return nil
}

// appendInner appends the inner JSON. material gives the bytes of a slot;
// the caller sizes dst so that no append reallocates it (see marshalInner).
func (k *Keyring) appendInner(dst []byte, material func(slot int) []byte) []byte {
	str := func(dst []byte, s string) []byte {
		b, _ := json.Marshal(s) // a string always marshals
		return append(dst, b...)
	}
	tm := func(dst []byte, t time.Time) []byte {
		dst = append(dst, '"')
		dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
		return append(dst, '"')
	}
	dst = append(dst, `{"id":`...)
	dst = str(dst, k.id)
	dst = append(dst, `,"keys":[`...)
	for i, c := range k.keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = str(dst, formatKeyID(c.id))
		dst = append(dst, `,"description":`...)
		dst = str(dst, c.description)
		dst = append(dst, `,"created":`...)
		dst = tm(dst, c.created)
		dst = append(dst, `,"enabled":`...)
		if c.enabled {
			dst = append(dst, "true"...)
		} else {
			dst = append(dst, "false"...)
		}
		if c.pendingDeletion != nil {
			dst = append(dst, `,"pending_deletion":`...)
			dst = tm(dst, *c.pendingDeletion)
		}
		dst = append(dst, `,"versions":[`...)
		for j, v := range c.versions {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"version":`...)
			dst = fmt.Appendf(dst, "%d", j+1)
			dst = append(dst, `,"created":`...)
			dst = tm(dst, v.created)
			dst = append(dst, `,"material":"`...)
			dst = base64.StdEncoding.AppendEncode(dst, material(v.slot))
			dst = append(dst, `"}`...)
		}
		dst = append(dst, "]}"...)
	}
	dst = append(dst, `],"aliases":{`...)
	names := make([]string, 0, len(k.aliases))
	for name := range k.aliases {
		names = append(names, name)
	}
	sort.Strings(names)
	for i, name := range names {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = str(dst, name)
		dst = append(dst, ':')
		dst = str(dst, formatKeyID(k.aliases[name].id))
	}
	return append(dst, "}}"...)
}

// marshalInner builds the inner JSON in a new locked slab (slot 0): the
// caller closes the slab. A first pass with zero material measures it, so
// the real pass never reallocates and leaves no copy of a key on the heap.
func (k *Keyring) marshalInner() (*LockedSlab, []byte, error) {
	var zero [cmkSize]byte
	n := len(k.appendInner(nil, func(int) []byte { return zero[:] }))
	tmp, err := NewLockedSlab(1, n)
	if err != nil {
		return nil, nil, err
	}
	buf := tmp.Slot(0)
	out := k.appendInner(buf[:0], func(slot int) []byte { return k.slab.Slot(slot) })
	if len(out) != n || &out[0] != &buf[0] {
		_ = tmp.Close()
		panic("keymgr: keyring inner JSON changed size between passes")
	}
	return tmp, out, nil
}
