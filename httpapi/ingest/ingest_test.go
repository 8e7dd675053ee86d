package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/ingest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

func openRepo(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Open(t.TempDir(), repo.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// chunks returns n chunks in stored form (float16-like data, so most are plane-coded), of
// different sizes.
func chunks(seed uint64, n int) []wire.StoredChunk {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]wire.StoredChunk, n)
	for i := range out {
		data := make([]byte, 20000+2*r.IntN(20000))
		for j := 0; j+1 < len(data); j += 2 {
			data[j] = byte(r.IntN(256))
			data[j+1] = byte(0x38 + r.IntN(4))
		}
		codec, stored := cas.Encode(nil, data, cas.HintFloat16)
		out[i] = wire.StoredChunk{Digest: cas.Sum(data), Codec: codec, Size: int64(len(data)), Stored: stored}
	}
	return out
}

func stream(t *testing.T, cs []wire.StoredChunk) []byte {
	t.Helper()
	var b bytes.Buffer
	w := wire.NewChunkStreamWriter(&b)
	for _, c := range cs {
		if _, err := w.WriteChunk(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func recorded(t *testing.T, ix *index.Index, cs []wire.StoredChunk) []bool {
	t.Helper()
	out := make([]bool, len(cs))
	for i, c := range cs {
		_, err := ix.Chunk(c.Digest)
		out[i] = err == nil
		if err != nil && !errors.Is(err, index.ErrChunkNotRecorded) {
			t.Fatal(err)
		}
	}
	return out
}

// TestReadStream: a whole stream is verified, committed and recorded; the counts and the
// Committed callback agree; a second ingest of the same stream deduplicates everything.
func TestReadStream(t *testing.T) {
	r := openRepo(t)
	cs := chunks(1, 40)
	body := stream(t, cs)
	var mu sync.Mutex
	var calls, got int
	var raw, stored int64
	cfg := ingest.Config{Workers: 3, GroupChunks: 7, Committed: func(n int, rb, sb int64) {
		mu.Lock()
		calls, got, raw, stored = calls+1, got+n, raw+rb, stored+sb
		mu.Unlock()
	}}
	in := ingest.New(context.Background(), r.Index(), cfg)
	lim := wire.StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 2 << 20}
	if err := in.ReadStream(wire.NewChunkStreamReader(bytes.NewReader(body), lim)); err != nil {
		t.Fatal(err)
	}
	res, err := in.Close()
	if err != nil {
		t.Fatal(err)
	}
	var wantRaw, wantStored int64
	for _, c := range cs {
		wantRaw += c.Size
		wantStored += int64(len(c.Stored))
	}
	want := ingest.Result{Chunks: 40, Stored: 40, RawBytes: wantRaw, Bytes: wantStored}
	if res != want {
		t.Fatalf("result %+v, want %+v", res, want)
	}
	if calls != 6 || got != 40 || raw != wantRaw || stored != wantStored {
		t.Fatalf("Committed called %d times for %d chunks, %d raw, %d stored bytes", calls, got, raw, stored)
	}
	for i, ok := range recorded(t, r.Index(), cs) {
		if !ok {
			t.Fatalf("chunk %d not recorded", i)
		}
		b, err := r.Store().Get(context.Background(), cs[i].Digest, nil)
		if err != nil || int64(len(b)) != cs[i].Size {
			t.Fatalf("chunk %d: %d bytes, %v", i, len(b), err)
		}
	}
	in = ingest.New(context.Background(), r.Index(), cfg)
	if err := in.ReadStream(wire.NewChunkStreamReader(bytes.NewReader(body), lim)); err != nil {
		t.Fatal(err)
	}
	if res, err = in.Close(); err != nil || res.Deduped != 40 || res.Stored != 0 || res.Chunks != 40 {
		t.Fatalf("again: %+v %v", res, err)
	}
	fsck(t, r)
}

// TestFailureRule: a chunk that fails refuses itself; the rest of its group is committed, no
// later group is, reading stops at the next group boundary, and Close names the bad chunk.
func TestFailureRule(t *testing.T) {
	r := openRepo(t)
	cs := chunks(2, 30)
	bad := 12 // in the second group of 10
	cs[bad].Stored = bytes.Clone(cs[bad].Stored)
	cs[bad].Stored[len(cs[bad].Stored)/2] ^= 0x40
	in := ingest.New(context.Background(), r.Index(), ingest.Config{Workers: 2, GroupChunks: 10})
	var addErr error
	added := 0
	for _, c := range cs {
		if addErr = in.Add(c); addErr != nil {
			break
		}
		added++
	}
	res, err := in.Close()
	if !errors.Is(err, ingest.ErrMismatch) || !errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("Close: %v", err)
	}
	if addErr != nil && !errors.Is(addErr, ingest.ErrStopped) {
		t.Fatalf("Add: %v", addErr)
	}
	if added < 20 {
		t.Fatalf("Add refused chunk %d, inside the failing chunk's group", added)
	}
	if res.Chunks != 19 || res.Refused != 1 || res.Stored != 19 {
		t.Fatalf("result %+v", res)
	}
	for i, ok := range recorded(t, r.Index(), cs) {
		if want := i < 20 && i != bad; ok != want {
			t.Fatalf("chunk %d recorded %v, want %v", i, ok, want)
		}
		if has, _ := r.Store().Has(context.Background(), cs[i].Digest); has && i >= 20 || has && i == bad {
			t.Fatalf("chunk %d committed", i)
		}
	}
	fsck(t, r)
}

// TestFailureRuleCoalesced: the committer, held up inside its first Committed call while more
// groups queue behind it, takes the queued groups at once;
// the failure rule still holds: the group with the bad chunk is committed but for that chunk,
// no group after it is.
func TestFailureRuleCoalesced(t *testing.T) {
	r := openRepo(t)
	cs := chunks(5, 12)
	bad := 4 // in the third group of 2
	cs[bad].Stored = bytes.Clone(cs[bad].Stored)
	cs[bad].Stored[len(cs[bad].Stored)/2] ^= 0x40
	first, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	in := ingest.New(context.Background(), r.Index(), ingest.Config{Workers: 2, GroupChunks: 2, Committed: func(int, int64, int64) {
		once.Do(func() { close(first); <-release })
	}})
	var added atomic.Int32
	done := make(chan error, 1)
	go func() {
		for _, c := range cs {
			if err := in.Add(c); err != nil {
				done <- err
				return
			}
			added.Add(1)
		}
		done <- nil
	}()
	<-first
	// Groups 2 and 3 are queued once chunk 5 is in (the Add of chunk 6 may already refuse: a
	// worker has seen the bad chunk; else later groups queue too).
	for added.Load() < 6 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil && !errors.Is(err, ingest.ErrStopped) {
		t.Fatalf("Add: %v", err)
	}
	res, err := in.Close()
	if !errors.Is(err, ingest.ErrMismatch) {
		t.Fatalf("Close: %v", err)
	}
	if res.Chunks != 5 || res.Refused != 1 || res.Stored != 5 {
		t.Fatalf("result %+v", res)
	}
	for i, ok := range recorded(t, r.Index(), cs) {
		if want := i < 6 && i != bad; ok != want {
			t.Fatalf("chunk %d recorded %v, want %v", i, ok, want)
		}
		if has, _ := r.Store().Has(context.Background(), cs[i].Digest); has && (i >= 6 || i == bad) {
			t.Fatalf("chunk %d committed", i)
		}
	}
	fsck(t, r)
}

// TestDecodedAndLimits: chunks given decoded (Codec 0) are hashed and stored with the store's
// codec; a wrong declared size keeps the chunk but fails; an unknown codec is refused.
func TestDecodedAndLimits(t *testing.T) {
	r := openRepo(t)
	data := []byte("some decoded chunk bytes, some decoded chunk bytes")
	d := cas.Sum(data)
	in := ingest.New(context.Background(), r.Index(), ingest.Config{})
	if err := in.Add(wire.StoredChunk{Digest: d, Stored: data, Size: int64(len(data)) + 1}); err != nil {
		t.Fatal(err)
	}
	res, err := in.Close()
	if !errors.Is(err, wire.ErrMalformed) || res.Stored != 1 {
		t.Fatalf("wrong declared size: %+v %v", res, err)
	}
	if _, err := r.Index().Chunk(d); err != nil {
		t.Fatalf("a valid chunk with a wrong declared size is not recorded: %v", err)
	}
	other := cas.Sum([]byte("other"))
	for _, c := range []wire.StoredChunk{
		{Digest: other, Stored: data, Size: -1},             // decoded bytes under another digest
		{Digest: other, Codec: 200, Stored: data, Size: -1}, // unknown codec
	} {
		in := ingest.New(context.Background(), r.Index(), ingest.Config{})
		if err := in.Add(c); err != nil {
			t.Fatal(err)
		}
		res, err := in.Close()
		if err == nil || res.Chunks != 0 || !errors.Is(err, ingest.ErrMismatch) && !errors.Is(err, ingest.ErrUnsupportedCodec) {
			t.Fatalf("codec %d: %+v %v", c.Codec, res, err)
		}
	}
	if has, _ := r.Store().Has(context.Background(), other); has {
		t.Fatal("a refused chunk was stored")
	}
	fsck(t, r)
}

// TestCutStream: the chunks that arrived whole before a cut are stored; ReadStream reports the
// cut.
func TestCutStream(t *testing.T) {
	r := openRepo(t)
	cs := chunks(3, 6)
	body := stream(t, cs)
	cut := len(body) - len(cs[5].Stored)/2 - 3
	in := ingest.New(context.Background(), r.Index(), ingest.Config{GroupChunks: 4})
	err := in.ReadStream(wire.NewChunkStreamReader(bytes.NewReader(body[:cut]), wire.StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 2 << 20}))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadStream of a cut stream: %v", err)
	}
	if res, err := in.Close(); err != nil || res.Stored != 5 {
		t.Fatalf("Close: %+v %v", res, err)
	}
	fsck(t, r)
}

func fsck(t *testing.T, r *repo.Repo) {
	t.Helper()
	res, err := r.Fsck(context.Background(), index.FsckOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("fsck: %v", res.Problems)
	}
}

// TestInFlightBound: with room for one chunk in flight, Add waits for each chunk to be handled
// before taking the next, and everything is still stored.
func TestInFlightBound(t *testing.T) {
	r := openRepo(t)
	cs := chunks(4, 20)
	in := ingest.New(context.Background(), r.Index(), ingest.Config{Workers: 2, GroupChunks: 8, InFlightBytes: 1})
	for _, c := range cs {
		if err := in.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	res, err := in.Close()
	if err != nil || res.Stored != 20 {
		t.Fatalf("%+v %v", res, err)
	}
	for i, ok := range recorded(t, r.Index(), cs) {
		if !ok {
			t.Fatalf("chunk %d not recorded", i)
		}
	}
}
