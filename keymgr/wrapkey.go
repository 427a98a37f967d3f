package keymgr

// wrapkey.go: the key new files are wrapped under, and the DEK pool that
// holds keys generated under it. A rewrap (rewrap.go) or a rotation
// changes it while the Manager serves creates.

import (
	"context"
	"errors"
	"fmt"
)

// WrapKey returns the key ARN and epoch new files are wrapped under.
func (m *Manager) WrapKey() (string, uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keyARN, m.epoch
}

// SetWrapKey makes new files wrap under keyARN, stamping epoch where the
// provider shows no key version. The DEK pool is replaced by a fresh one
// (its waiting keys are zeroed), so it also serves after a rotation of the
// same key: keys generated before it would carry the old version.
func (m *Manager) SetWrapKey(keyARN string, epoch uint32) error {
	if keyARN == "" {
		return errors.New("set wrap key: key ARN is empty")
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("set wrap key: %w", errManagerClosed)
	}
	old := m.pool
	o := old.o
	o.KeyARN = keyARN
	pool, err := newDEKPool(o)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("set wrap key %s: %w", keyARN, err)
	}
	if m.started {
		pool.start(m.startCtx)
	}
	m.pool, m.keyARN, m.epoch = pool, keyARN, epoch
	m.mu.Unlock()
	if err := old.close(); err != nil {
		m.log.Warn("close replaced DEK pool", "err", err)
	}
	m.log.Info("new files now wrap under", "key_arn", keyARN, "epoch", epoch)
	return nil
}

func (m *Manager) currentPool() *dekPool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pool
}

// takeKey takes a key from the current pool, stamping the epoch into a key
// without a version. A pool replaced under the call is retried.
func (m *Manager) takeKey(ctx context.Context, dek []byte) (pooledKey, error) {
	for try := 0; ; try++ {
		m.mu.Lock()
		p, epoch := m.pool, m.epoch
		m.mu.Unlock()
		k, err := p.take(ctx, dek)
		if err != nil {
			if try < 3 && m.currentPool() != p {
				continue
			}
			return k, err
		}
		if k.KeyVersion == 0 {
			k.KeyVersion = epoch
		}
		return k, nil
	}
}
