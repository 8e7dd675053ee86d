package cas

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// releaseCounter counts the releases of each retained chunk.
type releaseCounter struct {
	mu sync.Mutex
	n  map[int]int
}

func (c *releaseCounter) release(i int) func() {
	return func() {
		c.mu.Lock()
		c.n[i]++
		c.mu.Unlock()
	}
}

func (c *releaseCounter) count(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[i]
}

func openRetainPack(t *testing.T) (*Pack, Retainer) {
	t.Helper()
	p, err := OpenPack(t.TempDir(), PackOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	r, ok := p.NewBatch().(Retainer)
	if !ok {
		t.Fatal("a pack batch is not a Retainer")
	}
	return p, r
}

// A pack batch keeps raw chunks where the caller holds them until their run is written, then
// releases each exactly once; what it wrote reads back even after the caller reuses its
// memory; chunks it does not keep (compressed, present, repeated, large) are released before
// PutRetained returns.
func TestPackPutRetained(t *testing.T) {
	ctx := context.Background()
	p, r := openRetainPack(t)
	b := r.(Batch)
	c := &releaseCounter{n: map[int]int{}}
	var chunks [][]byte
	for i := range 40 {
		data := testBytes(48<<10, byte(i))
		chunks = append(chunks, data)
		if _, err := r.PutRetained(ctx, data, HintNone, c.release(i)); err != nil {
			t.Fatal(err)
		}
		if i == 0 && c.count(0) != 0 {
			t.Fatal("a raw chunk in a run not yet full was released at once: nothing is retained")
		}
	}
	// 40 × 48 KiB: two runs of 1 MiB were written when they filled; the rest waits.
	released := 0
	for i := range chunks {
		released += c.count(i)
	}
	if released == 0 || released == len(chunks) {
		t.Fatalf("%d of %d chunks released before Flush, want some (full runs written) and not all", released, len(chunks))
	}
	zeros := make([]byte, 64<<10) // compressible: stored as zstd, nothing kept
	big := testBytes(600<<10, 99) // a record of coalesceMax or more is written alone
	for i, data := range [][]byte{zeros, big, chunks[3]} {
		k := 100 + i
		if _, err := r.PutRetained(ctx, data, HintNone, c.release(k)); err != nil {
			t.Fatal(err)
		}
		if c.count(k) != 1 {
			t.Fatalf("chunk %d not kept by the batch was released %d times when PutRetained returned", k, c.count(k))
		}
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range chunks {
		if c.count(i) != 1 {
			t.Fatalf("chunk %d released %d times after Flush", i, c.count(i))
		}
		clear(chunks[i]) // the batch must not read it any more
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range chunks {
		want := testBytes(48<<10, byte(i))
		got, err := p.Get(ctx, Sum(want), nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("chunk %d: read back wrong (%v)", i, err)
		}
	}
	for i := range chunks {
		if c.count(i) != 1 {
			t.Fatalf("chunk %d released %d times after Commit", i, c.count(i))
		}
	}
}

// Discard releases what the run kept, unwritten, and leaves nothing visible.
func TestPackPutRetainedDiscard(t *testing.T) {
	ctx := context.Background()
	p, r := openRetainPack(t)
	c := &releaseCounter{n: map[int]int{}}
	data := testBytes(32<<10, 7)
	if _, err := r.PutRetained(ctx, data, HintNone, c.release(0)); err != nil {
		t.Fatal(err)
	}
	r.(Batch).Discard()
	if c.count(0) != 1 {
		t.Fatalf("released %d times after Discard", c.count(0))
	}
	if _, err := p.Stat(ctx, Sum(data)); err == nil {
		t.Fatal("a discarded chunk is visible")
	}
}

// Runs of many small records take more buffers than one pwritev(2) accepts; concurrent
// PutRetained and Flush calls each write what they take.
func TestPackPutRetainedManyRecords(t *testing.T) {
	ctx := context.Background()
	p, r := openRetainPack(t)
	c := &releaseCounter{n: map[int]int{}}
	const n, size = 30000, 100 // a 1 MiB run holds about 7000 of them: 14000 buffers
	src := testBytes(n*size, 3)
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				if _, err := r.PutRetained(ctx, src[i*size:(i+1)*size], HintNone, c.release(i)); err != nil {
					failed.Store(err)
					return
				}
				if i%5000 == w {
					if err := r.Flush(); err != nil {
						failed.Store(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		t.Fatal(err)
	}
	if err := r.(Batch).Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if c.count(i) != 1 {
			t.Fatalf("chunk %d released %d times", i, c.count(i))
		}
		want := src[i*size : (i+1)*size]
		got, err := p.Get(ctx, Sum(want), nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatal(fmt.Errorf("chunk %d: read back wrong (%v)", i, err))
		}
	}
}

// TestPackPutStoredRetained: stored forms given with release are written from the caller's
// memory and released exactly once, only after they are written (each release clears the
// memory); a bad one is refused and released at once.
func TestPackPutStoredRetained(t *testing.T) {
	ctx := context.Background()
	p, r := openRetainPack(t)
	b := r.(Batch)
	c := &releaseCounter{n: map[int]int{}}
	var chunks [][]byte
	var stored [][]byte
	for i := range 40 {
		data := testBytes(48<<10, byte(i))
		codec, st := Encode(nil, data, HintNone)
		chunks, stored = append(chunks, data), append(stored, st)
		// The release hands the memory back, which is reused at once: a release before the
		// record is written would store the cleared bytes.
		count := c.release(i)
		if _, err := r.PutStoredRetained(ctx, Sum(data), codec, st, func() { count(); clear(st) }); err != nil {
			t.Fatal(err)
		}
	}
	bad := bytes.Clone(stored[0])
	bad[len(bad)/2] ^= 1
	if _, err := r.PutStoredRetained(ctx, Sum([]byte("other")), CodecRaw, bad, c.release(99)); err == nil {
		t.Fatal("a stored form of other content was accepted")
	}
	if c.count(99) != 1 {
		t.Fatalf("refused chunk released %d times", c.count(99))
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range stored {
		if n := c.count(i); n != 1 {
			t.Fatalf("chunk %d released %d times", i, n)
		}
	}
	for i, data := range chunks {
		got, err := p.Get(ctx, Sum(data), nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
}
