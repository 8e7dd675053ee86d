package cas

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Memory is an in-memory Store for tests of higher layers. It keeps each chunk in the stored
// form the codecs choose (so Stat, StoredSize and GetStored behave as on disk), copies data on
// Put, and verifies every Get against the digest. Its batches (NewBatch) keep their chunks aside
// until Commit, as a Local's do. Safe for concurrent use.
type Memory struct {
	mu     sync.RWMutex // guards chunks
	chunks map[Digest]*memChunk
}

// memChunk is immutable once in the map, except mod, which is guarded by Memory.mu.
type memChunk struct {
	codec  Codec
	size   int
	stored []byte
	mod    time.Time
}

var (
	_ Store          = (*Memory)(nil)
	_ StoredReader   = (*Memory)(nil)
	_ StoredWriter   = (*Memory)(nil)
	_ Batcher        = (*Memory)(nil)
	_ StoredAppender = (*Memory)(nil)
)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{chunks: map[Digest]*memChunk{}} }

func (m *Memory) info(d Digest, c *memChunk) Info {
	return Info{Digest: d, Size: int64(c.size), StoredSize: int64(len(c.stored)), Codec: c.codec, ModTime: c.mod}
}

func (m *Memory) lookup(d Digest) (*memChunk, Info, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c, ok := m.chunks[d]
	if !ok {
		return nil, Info{}, false
	}
	return c, m.info(d, c), true
}

// Has reports whether d is present.
func (m *Memory) Has(ctx context.Context, d Digest) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	_, _, ok := m.lookup(d)
	return ok, nil
}

// Stat describes a present chunk.
func (m *Memory) Stat(ctx context.Context, d Digest) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	_, info, ok := m.lookup(d)
	if !ok {
		return Info{}, fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}
	return info, nil
}

// Get decodes and verifies d into dst (see Store.Get).
func (m *Memory) Get(ctx context.Context, d Digest, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst[:0], err
	}
	c, _, ok := m.lookup(d)
	if !ok {
		return dst[:0], fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}
	out, err := Decode(dst, c.codec, c.stored, c.size)
	if err != nil {
		return out[:0], &CorruptError{Digest: d, Reason: err.Error()}
	}
	if got := Sum(out); got != d {
		return out[:0], &CorruptError{Digest: d, Reason: fmt.Sprintf("content hashes to %s", got)}
	}
	return out, nil
}

// Put stores a copy of data in its chosen stored form (see Store.Put).
func (m *Memory) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if len(data) > MaxChunkSize {
		return Info{}, fmt.Errorf("put: %d bytes: %w (limit %d)", len(data), ErrTooLarge, MaxChunkSize)
	}
	d := Sum(data)
	if info, ok := m.touch(d); ok {
		return info, nil
	}
	codec, stored, err := encodeVerified(nil, data, hint)
	if err != nil {
		return Info{}, fmt.Errorf("put %s: %w", d, err)
	}
	if codec == CodecRaw {
		stored = append(stored, data...)
	}
	return m.insert(d, &memChunk{codec: codec, size: len(data), stored: stored}), nil
}

// PutStored stores a copy of stored after verifying it (see StoredWriter).
func (m *Memory) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if info, ok := m.touch(d); ok {
		return info, nil
	}
	size, err := verifyStored(d, codec, stored)
	if err != nil {
		return Info{}, err
	}
	return m.insert(d, &memChunk{codec: codec, size: size, stored: append([]byte(nil), stored...)}), nil
}

// touch returns the Info of a present chunk, refreshing its ModTime as Local does.
func (m *Memory) touch(d Digest) (Info, bool) {
	c, info, ok := m.lookup(d)
	if !ok {
		return Info{}, false
	}
	if now := time.Now(); now.Sub(info.ModTime) > TouchInterval {
		m.mu.Lock()
		c.mod = now
		info = m.info(d, c)
		m.mu.Unlock()
	}
	return info, true
}

// insert adds c unless a concurrent Put got there first, and returns the stored chunk's Info.
func (m *Memory) insert(d Digest, c *memChunk) Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.chunks[d]; ok {
		return m.info(d, old)
	}
	c.mod = time.Now()
	m.chunks[d] = c
	return m.info(d, c)
}

// GetStored returns a copy of d's stored form (see StoredReader).
func (m *Memory) GetStored(ctx context.Context, d Digest) (Codec, []byte, error) {
	return m.AppendStored(ctx, d, nil)
}

// AppendStored copies d's stored form into dst[:0] (see StoredAppender).
func (m *Memory) AppendStored(ctx context.Context, d Digest, dst []byte) (Codec, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, dst[:0], err
	}
	c, _, ok := m.lookup(d)
	if !ok {
		return 0, dst[:0], fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}
	return c.codec, append(dst[:0], c.stored...), nil
}

// Delete removes d; an absent chunk is not an error.
func (m *Memory) Delete(ctx context.Context, d Digest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.chunks, d)
	m.mu.Unlock()
	return nil
}

// Walk calls fn for every chunk present when Walk started, in no particular order. fn runs
// without the store's lock held and may call the store.
func (m *Memory) Walk(ctx context.Context, fn func(Info) error) error {
	m.mu.RLock()
	infos := make([]Info, 0, len(m.chunks))
	for d, c := range m.chunks {
		infos = append(infos, m.info(d, c))
	}
	m.mu.RUnlock()
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Len returns the number of chunks stored.
func (m *Memory) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.chunks)
}

// NewBatch returns a batch whose chunks are encoded (or, for PutStored, verified) and copied
// at Put but kept aside, invisible to the store, until Commit inserts them all; Discard drops
// them. See Batch.
func (m *Memory) NewBatch() Batch {
	return &memBatch{m: m, pending: map[Digest]*memChunk{}}
}

type memBatch struct {
	m       *Memory
	mu      sync.Mutex // guards the fields below
	pending map[Digest]*memChunk
	closed  bool
}

func (b *memBatch) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if len(data) > MaxChunkSize {
		return Info{}, fmt.Errorf("put: %d bytes: %w (limit %d)", len(data), ErrTooLarge, MaxChunkSize)
	}
	d := Sum(data)
	if info, done, err := b.lookup(d); done {
		return info, err
	}
	codec, stored, err := encodeVerified(nil, data, hint)
	if err != nil {
		return Info{}, fmt.Errorf("put %s: %w", d, err)
	}
	if codec == CodecRaw {
		stored = append(stored, data...)
	}
	return b.add(d, &memChunk{codec: codec, size: len(data), stored: stored})
}

func (b *memBatch) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if info, done, err := b.lookup(d); done {
		return info, err
	}
	size, err := verifyStored(d, codec, stored)
	if err != nil {
		return Info{}, err
	}
	return b.add(d, &memChunk{codec: codec, size: size, stored: append([]byte(nil), stored...)})
}

// lookup answers a Put of d that needs no work: the batch is closed, or d is in the store or
// already in the batch.
func (b *memBatch) lookup(d Digest) (Info, bool, error) {
	b.mu.Lock()
	closed, c := b.closed, b.pending[d]
	b.mu.Unlock()
	switch {
	case closed:
		return Info{}, true, fmt.Errorf("put %s: %w", d, ErrBatchClosed)
	case c != nil:
		return b.m.info(d, c), true, nil
	}
	if info, ok := b.m.touch(d); ok {
		return info, true, nil
	}
	return Info{}, false, nil
}

// add keeps c for Commit unless the batch has d already, and returns d's Info.
func (b *memBatch) add(d Digest, c *memChunk) (Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Info{}, fmt.Errorf("put %s: %w", d, ErrBatchClosed)
	}
	if old, ok := b.pending[d]; ok {
		return b.m.info(d, old), nil
	}
	c.mod = time.Now()
	b.pending[d] = c
	return b.m.info(d, c), nil
}

func (b *memBatch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fmt.Errorf("commit: %w", ErrBatchClosed)
	}
	b.closed = true
	pending := b.pending
	b.pending = nil
	if err := ctx.Err(); err != nil {
		return err
	}
	for d, c := range pending {
		b.m.insert(d, c)
	}
	return nil
}

func (b *memBatch) Discard() {
	b.mu.Lock()
	b.closed = true
	b.pending = nil
	b.mu.Unlock()
}
