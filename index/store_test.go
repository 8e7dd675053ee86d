package index

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
)

// testStore is a minimal in-memory cas.Store for this package's tests, used until cas.NewMemory
// lands. It keeps chunks raw and verifies on Get like every store must.
type testStore struct {
	mu     sync.Mutex // guards chunks
	chunks map[cas.Digest]*testChunk
	now    func() time.Time
}

type testChunk struct {
	data []byte
	mod  time.Time
}

func newTestStore() *testStore {
	return &testStore{chunks: map[cas.Digest]*testChunk{}, now: time.Now}
}

func (s *testStore) info(d cas.Digest, c *testChunk) cas.Info {
	return cas.Info{Digest: d, Size: int64(len(c.data)), StoredSize: int64(len(c.data)), Codec: cas.CodecRaw, ModTime: c.mod}
}

func (s *testStore) Has(ctx context.Context, d cas.Digest) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.chunks[d]
	return ok, nil
}

func (s *testStore) Stat(ctx context.Context, d cas.Digest) (cas.Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.chunks[d]
	if !ok {
		return cas.Info{}, fmt.Errorf("%w: %s", cas.ErrNotFound, d)
	}
	return s.info(d, c), nil
}

func (s *testStore) Get(ctx context.Context, d cas.Digest, dst []byte) ([]byte, error) {
	s.mu.Lock()
	c, ok := s.chunks[d]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", cas.ErrNotFound, d)
	}
	out := append(dst[:0], c.data...)
	if cas.Sum(out) != d {
		return nil, &cas.CorruptError{Digest: d, Reason: "content does not match digest"}
	}
	return out, nil
}

func (s *testStore) Put(ctx context.Context, data []byte, hint cas.Hint) (cas.Info, error) {
	d := cas.Sum(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.chunks[d]
	if !ok {
		c = &testChunk{data: append([]byte(nil), data...), mod: s.now()}
		s.chunks[d] = c
	}
	return s.info(d, c), nil
}

func (s *testStore) Delete(ctx context.Context, d cas.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.chunks, d)
	return nil
}

func (s *testStore) Walk(ctx context.Context, fn func(cas.Info) error) error {
	s.mu.Lock()
	var infos []cas.Info
	for d, c := range s.chunks {
		infos = append(infos, s.info(d, c))
	}
	s.mu.Unlock()
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// corrupt flips a byte of a stored chunk.
func (s *testStore) corrupt(t *testing.T, d cas.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.chunks[d]
	if !ok {
		t.Fatalf("corrupt: no chunk %s", d)
	}
	c.data[0] ^= 0xff
}

var _ cas.Store = (*testStore)(nil)
