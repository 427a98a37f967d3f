package keymgr

// keyring_admin.go: key administration on an open keyring, as AWS KMS
// offers it: create a key, rotate it to a new version (old versions kept
// for Decrypt), enable and disable it, point aliases at it; and the
// lookups (Resolve, Keys) that name a key by ID, ARN or alias. Changes
// are in memory until Save (keyring_file.go).

import (
	"fmt"
	"sort"
	"strings"
)

// allocSlot returns a zeroed free slot of the slab, growing it if needed.
func (k *Keyring) allocSlot() (int, error) {
	if k.used == k.slab.Slots() {
		bigger, err := NewLockedSlab(2*k.slab.Slots(), 32)
		if err != nil {
			return 0, err
		}
		for i := range k.used {
			copy(bigger.Slot(i), k.slab.Slot(i))
		}
		_ = k.slab.Close()
		k.slab = bigger
	}
	k.used++
	return k.used - 1, nil
}

// newVersion adds a version with fresh material to c.
func (k *Keyring) newVersion(c *cmk) error {
	if len(c.versions) >= maxKeyVersions {
		return fmt.Errorf("key %s has %d versions, the most a key may have", formatKeyID(c.id), len(c.versions))
	}
	slot, err := k.allocSlot()
	if err != nil {
		return err
	}
	if err := k.readRand(k.slab.Slot(slot)); err != nil {
		k.slab.Clear(slot)
		k.used--
		return err
	}
	c.versions = append(c.versions, cmkVersion{created: k.now().UTC(), slot: slot})
	return nil
}

// CreateKey makes a new AES-256 key at version 1, enabled, optionally
// under alias (which must not exist yet). Call Save to keep it.
func (k *Keyring) CreateKey(description, alias string) (KeyMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return KeyMetadata{}, fmt.Errorf("create key: %w", errKeyringClosed)
	}
	if len(description) > maxDescriptionLen {
		return KeyMetadata{}, fmt.Errorf("create key: description longer than %d bytes: shorten it", maxDescriptionLen)
	}
	if alias != "" {
		if err := checkAliasName(alias); err != nil {
			return KeyMetadata{}, fmt.Errorf("create key: %w", err)
		}
		if old, ok := k.aliases[alias]; ok {
			return KeyMetadata{}, fmt.Errorf("create key: alias %s already names key %s: pick another alias, or re-point it with SetAlias", alias, formatKeyID(old.id))
		}
	}
	c := &cmk{description: description, created: k.now().UTC(), enabled: true}
	for {
		if err := k.readRand(c.id[:]); err != nil {
			return KeyMetadata{}, fmt.Errorf("create key: %w", err)
		}
		c.id[6] = c.id[6]&0x0f | 0x40 // a version-4 UUID, like AWS key IDs
		c.id[8] = c.id[8]&0x3f | 0x80
		if _, dup := k.byID[c.id]; !dup {
			break
		}
	}
	if err := k.newVersion(c); err != nil {
		return KeyMetadata{}, fmt.Errorf("create key: %w", err)
	}
	k.keys = append(k.keys, c)
	k.byID[c.id] = c
	if alias != "" {
		k.aliases[alias] = c
	}
	k.dirty = true
	return k.metadataLocked(c), nil
}

// Rotate adds version n+1 to the key: new wraps use it, old versions stay
// for Decrypt. Call Save to keep it.
func (k *Keyring) Rotate(ref string) (KeyMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("rotate: %w", err)
	}
	if c.pendingDeletion != nil {
		return KeyMetadata{}, fmt.Errorf("rotate key %s: %w: it is pending deletion", formatKeyID(c.id), ErrKeyInvalidState)
	}
	if err := k.newVersion(c); err != nil {
		return KeyMetadata{}, fmt.Errorf("rotate key %s: %w", formatKeyID(c.id), err)
	}
	k.dirty = true
	return k.metadataLocked(c), nil
}

// SetEnabled enables or disables a key. A disabled key neither wraps nor
// unwraps, as in AWS KMS. Call Save to keep it.
func (k *Keyring) SetEnabled(ref string, enabled bool) (KeyMetadata, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("set key state: %w", err)
	}
	if c.pendingDeletion != nil {
		return KeyMetadata{}, fmt.Errorf("set key state %s: %w: it is pending deletion", formatKeyID(c.id), ErrKeyInvalidState)
	}
	if c.enabled != enabled {
		c.enabled = enabled
		k.dirty = true
	}
	return k.metadataLocked(c), nil
}

// SetAlias points alias (alias/NAME) at the key ref names, creating the
// alias or re-pointing it. Call Save to keep it.
func (k *Keyring) SetAlias(alias, ref string) error {
	if err := checkAliasName(alias); err != nil {
		return fmt.Errorf("set alias: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return fmt.Errorf("set alias %s: %w", alias, err)
	}
	if k.aliases[alias] != c {
		k.aliases[alias] = c
		k.dirty = true
	}
	return nil
}

// Keys lists every key's metadata, in creation order.
func (k *Keyring) Keys() []KeyMetadata {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make([]KeyMetadata, 0, len(k.keys))
	for _, c := range k.keys {
		out = append(out, k.metadataLocked(c))
	}
	return out
}

// Resolve finds the key a reference names: key ID, key ARN, alias name
// (alias/NAME) or alias ARN. Errors wrap ErrKeyNotFound.
func (k *Keyring) Resolve(ref string) (KeyMetadata, error) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	c, err := k.resolveLocked(ref)
	if err != nil {
		return KeyMetadata{}, err
	}
	return k.metadataLocked(c), nil
}

func (k *Keyring) resolveLocked(ref string) (*cmk, error) {
	if k.closed {
		return nil, errKeyringClosed
	}
	if rest, ok := strings.CutPrefix(ref, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 4) // kmsfs, local, <keyring id>, <resource>
		if len(parts) != 4 || parts[0] != "kmsfs" || parts[1] != "local" {
			return nil, fmt.Errorf("key %s: %w: not an ARN of the local provider (arn:kmsfs:local:...): use the provider that owns it", ref, ErrKeyNotFound)
		}
		if parts[2] != k.id {
			return nil, fmt.Errorf("key %s: %w: it belongs to another keyring (%s), this is keyring %s: pass --keyring with the keyring that holds it", ref, ErrKeyNotFound, parts[2], k.id)
		}
		switch {
		case strings.HasPrefix(parts[3], "key/"):
			return k.byKeyID(ref, parts[3][len("key/"):])
		case strings.HasPrefix(parts[3], "alias/"):
			return k.byAlias(ref, parts[3])
		}
		return nil, fmt.Errorf("key %s: %w: the ARN names neither key/ID nor alias/NAME", ref, ErrKeyNotFound)
	}
	if strings.HasPrefix(ref, "alias/") {
		return k.byAlias(ref, ref)
	}
	return k.byKeyID(ref, ref)
}

func (k *Keyring) byKeyID(ref, s string) (*cmk, error) {
	id, err := parseKeyID(s)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w: not a key ID, key ARN, alias/NAME or alias ARN", ref, ErrKeyNotFound)
	}
	c, ok := k.byID[id]
	if !ok {
		return nil, fmt.Errorf("key %s: %w: no such key in keyring %s: `kmsfs keys list` shows its keys", ref, ErrKeyNotFound, k.id)
	}
	return c, nil
}

func (k *Keyring) byAlias(ref, name string) (*cmk, error) {
	c, ok := k.aliases[name]
	if !ok {
		return nil, fmt.Errorf("key %s: %w: no alias %s in keyring %s: `kmsfs keys list` shows its aliases", ref, ErrKeyNotFound, name, k.id)
	}
	return c, nil
}

func (k *Keyring) metadataLocked(c *cmk) KeyMetadata {
	md := KeyMetadata{
		KeyID:          formatKeyID(c.id),
		ARN:            k.keyARN(c),
		State:          KeyEnabled,
		Description:    c.description,
		CurrentVersion: uint32(len(c.versions)),
		Symmetric:      true,
		EncryptDecrypt: true,
	}
	switch {
	case c.pendingDeletion != nil:
		md.State = KeyPendingDeletion
	case !c.enabled:
		md.State = KeyDisabled
	}
	for name, a := range k.aliases {
		if a == c {
			md.Aliases = append(md.Aliases, name)
		}
	}
	sort.Strings(md.Aliases)
	return md
}
