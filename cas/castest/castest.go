// Package castest is the conformance suite for cas.Store implementations, and deterministic
// test data (random bytes, float16 KV-cache-like bytes) for tests and benchmarks of every layer.
//
// Run it from a backend's tests:
//
//	func TestConformance(t *testing.T) {
//		castest.Run(t, func(t *testing.T) cas.Store { return newMyStore(t) })
//	}
//
// newStore must return an empty store each call; the suite calls it once per subtest (and
// twice in subtests that copy between stores). Subtests run sequentially; each store is used
// by many goroutines in the concurrency subtests.
package castest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

type sample struct {
	name string
	data []byte
	hint cas.Hint
}

func samples() []sample {
	text := bytes.Repeat([]byte("driftstore keeps, moves and resumes inference state. "), 4000)
	return []sample{
		{"empty", []byte{}, cas.HintNone},
		{"one-byte", []byte{42}, cas.HintNone},
		{"small-random", Random(100, 1), cas.HintNone},
		{"random-64KiB", Random(64<<10, 2), cas.HintNone},
		{"random-1MiB", Random(1<<20, 3), cas.HintNone},
		{"text-200KiB", text, cas.HintNone},
		{"zeros-1MiB", make([]byte, 1<<20), cas.HintNone},
		{"f16-kv-256KiB", KVFloat16(256<<10, 4), cas.HintFloat16},
		{"f16-kv-odd", KVFloat16(100_001, 5), cas.HintFloat16},
		{"f16-one-byte", []byte{7}, cas.HintFloat16},
		{"f16-zeros", make([]byte, 64<<10), cas.HintFloat16},
		{"f16-random", Random(64<<10, 6), cas.HintFloat16},
		{"f16-kv-without-hint", KVFloat16(64<<10, 7), cas.HintNone},
	}
}

// Run runs the conformance suite against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) cas.Store) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newStore(t)) })
	t.Run("CodecChoice", func(t *testing.T) { testCodecChoice(t, newStore(t)) })
	t.Run("IdempotentPut", func(t *testing.T) { testIdempotent(t, newStore(t)) })
	t.Run("ConcurrentSamePut", func(t *testing.T) { testConcurrentSame(t, newStore(t)) })
	t.Run("ConcurrentMixed", func(t *testing.T) { testConcurrentMixed(t, newStore(t)) })
	t.Run("GetIntoDst", func(t *testing.T) { testGetIntoDst(t, newStore(t)) })
	t.Run("NotFound", func(t *testing.T) { testNotFound(t, newStore(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, newStore(t)) })
	t.Run("Walk", func(t *testing.T) { testWalk(t, newStore(t)) })
	t.Run("ContextCanceled", func(t *testing.T) { testCanceled(t, newStore(t)) })
	t.Run("TooLarge", func(t *testing.T) { testTooLarge(t, newStore(t)) })
	t.Run("Stored", func(t *testing.T) { testStored(t, newStore(t), newStore(t)) })
	t.Run("PutAllGetAll", func(t *testing.T) { testPutAllGetAll(t, newStore(t)) })
	t.Run("SmallCompressible", func(t *testing.T) { testSmallCompressible(t, newStore(t)) })
	t.Run("Batch", func(t *testing.T) { testBatch(t, newStore(t)) })
	t.Run("BatchDiscard", func(t *testing.T) { testBatchDiscard(t, newStore(t)) })
	t.Run("BatchStored", func(t *testing.T) { testBatchStored(t, newStore(t), newStore(t)) })
	t.Run("PutStoredAll", func(t *testing.T) { testPutStoredAll(t, newStore(t)) })
}

var bg = context.Background()

// CheckInfo fails t unless info describes data.
func CheckInfo(t testing.TB, info cas.Info, data []byte) {
	t.Helper()
	if info.Digest != cas.Sum(data) {
		t.Fatalf("Info.Digest %s, want %s", info.Digest, cas.Sum(data))
	}
	if info.Size != int64(len(data)) {
		t.Fatalf("chunk %s: Info.Size %d, want %d", info.Digest, info.Size, len(data))
	}
	if !info.Codec.Valid() {
		t.Fatalf("chunk %s: invalid codec %d", info.Digest, info.Codec)
	}
	if info.Codec == cas.CodecRaw && info.StoredSize != info.Size {
		t.Fatalf("chunk %s: raw with StoredSize %d, Size %d", info.Digest, info.StoredSize, info.Size)
	}
	if info.Codec != cas.CodecRaw && float64(info.StoredSize) > float64(info.Size)*(1-cas.MinSavings) {
		t.Fatalf("chunk %s: %s saves too little: %d of %d bytes", info.Digest, info.Codec, info.StoredSize, info.Size)
	}
	if info.ModTime.IsZero() {
		t.Fatalf("chunk %s: zero ModTime", info.Digest)
	}
}

func sameInfo(t testing.TB, a, b cas.Info) {
	t.Helper()
	if a.Digest != b.Digest || a.Size != b.Size || a.StoredSize != b.StoredSize || a.Codec != b.Codec {
		t.Fatalf("Info differs: %+v vs %+v", a, b)
	}
}

func testRoundTrip(t *testing.T, s cas.Store) {
	for _, sm := range samples() {
		info, err := s.Put(bg, sm.data, sm.hint)
		if err != nil {
			t.Fatalf("%s: Put: %v", sm.name, err)
		}
		CheckInfo(t, info, sm.data)
		if ok, err := s.Has(bg, info.Digest); !ok || err != nil {
			t.Fatalf("%s: Has = %v, %v", sm.name, ok, err)
		}
		st, err := s.Stat(bg, info.Digest)
		if err != nil {
			t.Fatalf("%s: Stat: %v", sm.name, err)
		}
		sameInfo(t, info, st)
		got, err := s.Get(bg, info.Digest, nil)
		if err != nil {
			t.Fatalf("%s: Get: %v", sm.name, err)
		}
		if !bytes.Equal(got, sm.data) {
			t.Fatalf("%s: Get returned other bytes", sm.name)
		}
		// A destination with stale bytes and too little room.
		small := bytes.Repeat([]byte{0xee}, len(sm.data)/2)
		got, err = s.Get(bg, info.Digest, small)
		if err != nil || !bytes.Equal(got, sm.data) {
			t.Fatalf("%s: Get into a short buffer: %v", sm.name, err)
		}
		t.Logf("%-20s %8d bytes -> %8d %s", sm.name, info.Size, info.StoredSize, info.Codec)
	}
}

func testCodecChoice(t *testing.T, s cas.Store) {
	want := map[string]cas.Codec{
		"empty":         cas.CodecRaw,
		"random-1MiB":   cas.CodecRaw,
		"text-200KiB":   cas.CodecZstd,
		"zeros-1MiB":    cas.CodecZstd,
		"f16-kv-odd":    cas.CodecF16Planes,
		"f16-kv-256KiB": cas.CodecF16Planes,
		"f16-zeros":     cas.CodecF16Planes,
		"f16-random":    cas.CodecRaw,
		"f16-one-byte":  cas.CodecRaw,
	}
	for _, sm := range samples() {
		w, ok := want[sm.name]
		if !ok {
			continue
		}
		info, err := s.Put(bg, sm.data, sm.hint)
		if err != nil {
			t.Fatal(err)
		}
		if info.Codec != w {
			t.Errorf("%s: codec %s, want %s", sm.name, info.Codec, w)
		}
	}
}

func testIdempotent(t *testing.T, s cas.Store) {
	data := KVFloat16(128<<10, 8)
	a, err := s.Put(bg, data, cas.HintFloat16)
	if err != nil {
		t.Fatal(err)
	}
	for _, hint := range []cas.Hint{cas.HintFloat16, cas.HintNone} {
		b, err := s.Put(bg, bytes.Clone(data), hint)
		if err != nil {
			t.Fatal(err)
		}
		sameInfo(t, a, b) // the first stored form stays, whatever the hint now
	}
	if n := count(t, s); n != 1 {
		t.Fatalf("%d chunks after putting one three times", n)
	}
}

func count(t testing.TB, s cas.Store) int {
	t.Helper()
	n := 0
	if err := s.Walk(bg, func(cas.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func testConcurrentSame(t *testing.T, s cas.Store) {
	data := KVFloat16(1<<20, 9)
	const n = 32
	infos := make([]cas.Info, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			infos[i], errs[i] = s.Put(bg, data, cas.HintFloat16)
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Put %d: %v", i, errs[i])
		}
		sameInfo(t, infos[0], infos[i])
	}
	if c := count(t, s); c != 1 {
		t.Fatalf("%d chunks after concurrent Puts of one", c)
	}
	got, err := s.Get(bg, cas.Sum(data), nil)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get after concurrent Puts: %v", err)
	}
}

func testConcurrentMixed(t *testing.T, s cas.Store) {
	// Puts, Gets, Stats and Deletes of overlapping chunks from many goroutines: every call
	// either succeeds with correct bytes or reports ErrNotFound (for a chunk deleted meanwhile).
	chunks := make([][]byte, 16)
	for i := range chunks {
		chunks[i] = KVFloat16(16<<10+i, uint64(100+i))
	}
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, 32<<10)
			for i := range 64 {
				c := chunks[(w*7+i)%len(chunks)]
				d := cas.Sum(c)
				switch i % 4 {
				case 0, 1:
					if _, err := s.Put(bg, c, cas.HintFloat16); err != nil {
						errc <- err
						return
					}
				case 2:
					got, err := s.Get(bg, d, buf)
					if err != nil && !errors.Is(err, cas.ErrNotFound) {
						errc <- err
						return
					}
					if err == nil && !bytes.Equal(got, c) {
						errc <- fmt.Errorf("chunk %s: wrong bytes under concurrency", d)
						return
					}
				case 3:
					if w%4 == 0 {
						if err := s.Delete(bg, d); err != nil {
							errc <- err
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	// Whatever survived is intact.
	err := s.Walk(bg, func(info cas.Info) error {
		_, err := s.Get(bg, info.Digest, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testGetIntoDst(t *testing.T, s cas.Store) {
	for _, sm := range []sample{
		{"raw", Random(1<<20, 10), cas.HintNone},
		{"zstd", bytes.Repeat([]byte("abcdefghij"), 100_000), cas.HintNone},
		{"f16planes", KVFloat16(1<<20, 11), cas.HintFloat16},
	} {
		info, err := s.Put(bg, sm.data, sm.hint)
		if err != nil {
			t.Fatal(err)
		}
		for _, spare := range []int{0, 4096} {
			dst := make([]byte, len(sm.data), len(sm.data)+spare)
			got, err := s.Get(bg, info.Digest, dst)
			if err != nil {
				t.Fatalf("%s: %v", sm.name, err)
			}
			if len(got) != len(sm.data) || &got[0] != &dst[0] {
				t.Fatalf("%s (%s): Get did not decode into dst", sm.name, info.Codec)
			}
			if !bytes.Equal(got, sm.data) {
				t.Fatalf("%s: wrong bytes", sm.name)
			}
		}
		// No chunk-sized allocations: measure the bytes allocated by Gets into an exact dst. A
		// garbage collection may empty a store's buffer pools once in a while, so the bound is a
		// quarter of the chunk per call on average, far below one chunk-sized buffer per call.
		dst := make([]byte, len(sm.data))
		for range 3 { // warm pools
			if _, err := s.Get(bg, info.Digest, dst); err != nil {
				t.Fatal(err)
			}
		}
		const runs = 20
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			if _, err := s.Get(bg, info.Digest, dst); err != nil {
				t.Fatal(err)
			}
		}
		runtime.ReadMemStats(&after)
		perGet := (after.TotalAlloc - before.TotalAlloc) / runs
		if perGet > uint64(len(sm.data))/4 && !raceEnabled {
			t.Errorf("%s (%s): Get into an exact-size dst allocates %d bytes per call for a %d-byte chunk",
				sm.name, info.Codec, perGet, len(sm.data))
		}
	}
}

func testNotFound(t *testing.T, s cas.Store) {
	d := cas.Sum([]byte("never stored"))
	if ok, err := s.Has(bg, d); ok || err != nil {
		t.Fatalf("Has = %v, %v", ok, err)
	}
	if _, err := s.Stat(bg, d); !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("Stat: %v, want ErrNotFound", err)
	}
	_, err := s.Get(bg, d, nil)
	if !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("Get: %v, want ErrNotFound", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte(d.String())) {
		t.Fatalf("Get error %q does not name the chunk", err)
	}
	if err := s.Delete(bg, d); err != nil {
		t.Fatalf("Delete of an absent chunk: %v", err)
	}
	if sr, ok := s.(cas.StoredReader); ok {
		if _, _, err := sr.GetStored(bg, d); !errors.Is(err, cas.ErrNotFound) {
			t.Fatalf("GetStored: %v, want ErrNotFound", err)
		}
	}
}

func testDelete(t *testing.T, s cas.Store) {
	a, b := Random(1000, 12), Random(1000, 13)
	ia, _ := s.Put(bg, a, cas.HintNone)
	ib, _ := s.Put(bg, b, cas.HintNone)
	if err := s.Delete(bg, ia.Digest); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Has(bg, ia.Digest); ok {
		t.Fatal("deleted chunk still present")
	}
	if _, err := s.Get(bg, ia.Digest, nil); !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("Get of a deleted chunk: %v", err)
	}
	if got, err := s.Get(bg, ib.Digest, nil); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("other chunk after Delete: %v", err)
	}
	if c := count(t, s); c != 1 {
		t.Fatalf("Walk sees %d chunks, want 1", c)
	}
	// Put after Delete stores it again.
	if _, err := s.Put(bg, a, cas.HintNone); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(bg, ia.Digest, nil); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("re-put chunk: %v", err)
	}
}

func testWalk(t *testing.T, s cas.Store) {
	if c := count(t, s); c != 0 {
		t.Fatalf("new store has %d chunks", c)
	}
	want := map[cas.Digest]cas.Info{}
	for i := range 300 { // spread over many shards
		data := Random(50+i, uint64(1000+i))
		info, err := s.Put(bg, data, cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		want[info.Digest] = info
	}
	seen := map[cas.Digest]bool{}
	err := s.Walk(bg, func(info cas.Info) error {
		w, ok := want[info.Digest]
		if !ok {
			return fmt.Errorf("Walk reports unknown chunk %s", info.Digest)
		}
		if seen[info.Digest] {
			return fmt.Errorf("Walk reports %s twice", info.Digest)
		}
		seen[info.Digest] = true
		sameInfo(t, w, info)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(want) {
		t.Fatalf("Walk saw %d of %d chunks", len(seen), len(want))
	}
	stop := errors.New("stop")
	n := 0
	err = s.Walk(bg, func(cas.Info) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Walk with failing fn: %v after %d calls", err, n)
	}
}

func testCanceled(t *testing.T, s cas.Store) {
	ctx, cancel := context.WithCancel(bg)
	present := Random(4096, 14)
	info, err := s.Put(bg, present, cas.HintNone)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	data := Random(4096, 15)
	if _, err := s.Put(ctx, data, cas.HintNone); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put: %v, want context.Canceled", err)
	}
	if ok, _ := s.Has(bg, cas.Sum(data)); ok {
		t.Fatal("canceled Put stored the chunk")
	}
	if _, err := s.Get(ctx, info.Digest, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get: %v", err)
	}
	if _, err := s.Has(ctx, info.Digest); !errors.Is(err, context.Canceled) {
		t.Fatalf("Has: %v", err)
	}
	if _, err := s.Stat(ctx, info.Digest); !errors.Is(err, context.Canceled) {
		t.Fatalf("Stat: %v", err)
	}
	if err := s.Delete(ctx, info.Digest); !errors.Is(err, context.Canceled) {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Walk(ctx, func(cas.Info) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Walk: %v", err)
	}
	if _, err := cas.PutAll(ctx, s, 2, [][]byte{data}, cas.HintNone); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutAll: %v", err)
	}
	if ok, _ := s.Has(bg, info.Digest); !ok {
		t.Fatal("canceled Delete removed the chunk")
	}
}

func testTooLarge(t *testing.T, s cas.Store) {
	big := make([]byte, cas.MaxChunkSize+1)
	if _, err := s.Put(bg, big, cas.HintNone); !errors.Is(err, cas.ErrTooLarge) {
		t.Fatalf("Put of %d bytes: %v, want ErrTooLarge", len(big), err)
	}
}

func testStored(t *testing.T, src, dst cas.Store) {
	var ids []cas.Digest
	for _, sm := range samples() {
		info, err := src.Put(bg, sm.data, sm.hint)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.Digest)
	}
	for _, d := range ids {
		codec, stored, err := cas.ReadStored(bg, src, d, cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		srcInfo, _ := src.Stat(bg, d)
		if _, isSR := src.(cas.StoredReader); isSR && (codec != srcInfo.Codec || int64(len(stored)) != srcInfo.StoredSize) {
			t.Fatalf("%s: GetStored gave %s/%d bytes, Stat says %s/%d", d, codec, len(stored), srcInfo.Codec, srcInfo.StoredSize)
		}
		// AppendStored gives the same, into the caller's buffer when it is large enough.
		buf := make([]byte, 3, len(stored)+10)
		c2, got, err := cas.AppendStored(bg, src, d, buf, cas.HintNone)
		if err != nil || c2 != codec || !bytes.Equal(got, stored) {
			t.Fatalf("%s: AppendStored gave %s/%d bytes (%v), ReadStored %s/%d", d, c2, len(got), err, codec, len(stored))
		}
		if _, isSA := src.(cas.StoredAppender); isSA && len(got) > 0 && &got[0] != &buf[:1][0] {
			t.Fatalf("%s: AppendStored did not use the caller's buffer", d)
		}
		if len(stored) > 8 {
			// Tampered stored forms are refused, and nothing is stored.
			bad := bytes.Clone(stored)
			bad[len(bad)/2] ^= 0x40
			_, err := cas.WriteStored(bg, dst, d, codec, bad, cas.HintNone)
			var ce *cas.CorruptError
			if !errors.As(err, &ce) || ce.Digest != d {
				t.Fatalf("%s: tampered stored form: %v, want a CorruptError naming it", d, err)
			}
			if ok, _ := dst.Has(bg, d); ok {
				t.Fatalf("%s: tampered stored form was stored", d)
			}
		}
		// Under another digest: refused.
		other := cas.Sum([]byte("other"))
		if _, err := cas.WriteStored(bg, dst, other, codec, stored, cas.HintNone); !errors.Is(err, cas.ErrCorrupt) {
			t.Fatalf("stored form under a wrong digest: %v", err)
		}
		info, err := cas.Copy(bg, dst, src, d, cas.HintNone)
		if err != nil {
			t.Fatalf("Copy %s: %v", d, err)
		}
		if _, both := dst.(cas.StoredWriter); both {
			if _, sr := src.(cas.StoredReader); sr {
				sameInfo(t, srcInfo, info) // moved as stored
			}
		}
		got, err = dst.Get(bg, d, nil)
		if err != nil || cas.Sum(got) != d {
			t.Fatalf("copied chunk %s: %v", d, err)
		}
	}
	if _, err := cas.WriteStored(bg, dst, cas.Sum([]byte("x")), cas.Codec(99), []byte("x"), cas.HintNone); !errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("unknown codec: %v", err)
	}
}

func testPutAllGetAll(t *testing.T, s cas.Store) {
	var chunks [][]byte
	var whole []byte
	for i := range 64 {
		c := KVFloat16(4096+64*i, uint64(200+i))
		if i%5 == 0 {
			c = Random(3000+i, uint64(300+i))
		}
		chunks = append(chunks, c)
		whole = append(whole, c...)
	}
	infos, err := cas.PutAll(bg, s, 4, chunks, cas.HintFloat16)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != len(chunks) {
		t.Fatalf("%d infos for %d chunks", len(infos), len(chunks))
	}
	out := make([]byte, len(whole))
	var reqs []cas.GetRequest
	off := 0
	for i, c := range chunks {
		CheckInfo(t, infos[i], c)
		reqs = append(reqs, cas.GetRequest{Digest: infos[i].Digest, Dst: out[off : off+len(c)]})
		off += len(c)
	}
	if err := cas.GetAll(bg, s, 3, reqs); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, whole) {
		t.Fatal("GetAll did not reassemble the chunks in place")
	}
	// A destination of the wrong size fails with ErrSizeMismatch and leaves the next range alone.
	guard := bytes.Repeat([]byte{0x5a}, 64)
	buf := append(make([]byte, len(chunks[1])-1), guard...)
	bad := []cas.GetRequest{{Digest: infos[1].Digest, Dst: buf[:len(chunks[1])-1]}}
	if err := cas.GetAll(bg, s, 2, bad); !errors.Is(err, cas.ErrSizeMismatch) {
		t.Fatalf("short destination: %v, want ErrSizeMismatch", err)
	}
	if !bytes.Equal(buf[len(chunks[1])-1:], guard) {
		t.Fatal("GetAll wrote past its destination")
	}
	// A missing chunk stops GetAll with ErrNotFound.
	missing := append(reqs[:3:3], cas.GetRequest{Digest: cas.Sum([]byte("nope")), Dst: make([]byte, 4)})
	if err := cas.GetAll(bg, s, 2, missing); !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("missing chunk: %v", err)
	}
	if err := cas.GetAll(bg, s, 2, nil); err != nil {
		t.Fatalf("no requests: %v", err)
	}
}

// testBatch puts every sample through one batch from several goroutines, each sample twice
// and one chunk already present, then checks that after Commit every chunk reads back and its
// Info is as a Put would give. A closed batch refuses Puts.
func testBatch(t *testing.T, s cas.Store) {
	smp := samples()
	pre := smp[3]
	if _, err := s.Put(bg, pre.data, pre.hint); err != nil {
		t.Fatal(err)
	}
	b := cas.NewBatch(s)
	defer b.Discard()
	infos := make([]cas.Info, 2*len(smp))
	var wg sync.WaitGroup
	errs := make(chan error, len(infos))
	for i := range infos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sm := smp[i%len(smp)]
			info, err := b.Put(bg, sm.data, sm.hint)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", sm.name, err)
				return
			}
			infos[i] = info
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := b.Commit(bg); err != nil {
		t.Fatal(err)
	}
	for i, info := range infos {
		sm := smp[i%len(smp)]
		CheckInfo(t, info, sm.data)
		got, err := s.Get(bg, info.Digest, nil)
		if err != nil {
			t.Fatalf("%s after Commit: %v", sm.name, err)
		}
		if !bytes.Equal(got, sm.data) {
			t.Fatalf("%s after Commit: content differs", sm.name)
		}
		st, err := s.Stat(bg, info.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if st.Codec != info.Codec || st.StoredSize != info.StoredSize || st.Size != info.Size {
			t.Fatalf("%s: batch Info %+v, Stat after Commit %+v", sm.name, info, st)
		}
	}
	if n := count(t, s); n != len(smp) {
		t.Fatalf("%d chunks after a batch of %d distinct samples", n, len(smp))
	}
	if _, err := b.Put(bg, []byte("after commit"), cas.HintNone); !errors.Is(err, cas.ErrBatchClosed) {
		t.Fatalf("Put after Commit: %v, want ErrBatchClosed", err)
	}
	if err := b.Commit(bg); !errors.Is(err, cas.ErrBatchClosed) {
		t.Fatalf("second Commit: %v, want ErrBatchClosed", err)
	}
	// PutBatch, where offered, stores a list the same way.
	if bp, ok := s.(cas.BatchPutter); ok {
		chunks := [][]byte{Random(5000, 77), KVFloat16(8192, 78), Random(5000, 77)}
		infos, err := bp.PutBatch(bg, chunks, cas.HintFloat16)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range chunks {
			CheckInfo(t, infos[i], c)
			if got, err := s.Get(bg, infos[i].Digest, nil); err != nil || !bytes.Equal(got, c) {
				t.Fatalf("PutBatch chunk %d: %v", i, err)
			}
		}
	}
}

// testBatchDiscard: chunks of a discarded batch are not in a batching store, and a plain Put of
// one of them, waiting on the batch if it must, stores it once the batch is gone.
func testBatchDiscard(t *testing.T, s cas.Store) {
	data := KVFloat16(64<<10, 91)
	b := cas.NewBatch(s)
	info, err := b.Put(bg, data, cas.HintFloat16)
	if err != nil {
		t.Fatal(err)
	}
	_, batching := s.(cas.Batcher)
	done := make(chan error, 1)
	if batching {
		go func() { // a plain Put of the same chunk while the batch is open
			_, err := s.Put(bg, data, cas.HintFloat16)
			done <- err
		}()
	}
	b.Discard()
	b.Discard() // idempotent
	if batching {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(bg, info.Digest); err != nil {
			t.Fatal(err)
		}
	} else if err := s.Delete(bg, info.Digest); err != nil {
		t.Fatal(err)
	}
	b2 := cas.NewBatch(s)
	other := Random(10000, 92)
	in2, err := b2.Put(bg, other, cas.HintNone)
	if err != nil {
		t.Fatal(err)
	}
	b2.Discard()
	if batching {
		if ok, err := s.Has(bg, in2.Digest); err != nil || ok {
			t.Fatalf("chunk of a discarded batch: present %v, %v", ok, err)
		}
		if n := count(t, s); n != 0 {
			t.Fatalf("%d chunks after discarded batches", n)
		}
	}
	if err := b2.Commit(bg); !errors.Is(err, cas.ErrBatchClosed) {
		t.Fatalf("Commit after Discard: %v, want ErrBatchClosed", err)
	}
}

// testSmallCompressible: compressible chunks of every small size round-trip with every hint.
// zstd leaves the content size out of the frames of small inputs, so a codec that relies on
// the frame header alone refuses its own output (a regression once seen below 256 bytes).
func testSmallCompressible(t *testing.T, s cas.Store) {
	ctx := context.Background()
	for _, hint := range []cas.Hint{cas.HintNone, cas.HintFloat16, cas.HintFloat32} {
		for n := 1; n <= 600; n += 5 {
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(i / 7 % 3) // runs: compressible
			}
			data[0] = byte(hint)
			info, err := s.Put(ctx, data, hint)
			if err != nil {
				t.Fatalf("Put %d bytes (hint %d): %v", n, hint, err)
			}
			got, err := s.Get(ctx, info.Digest, nil)
			if err != nil {
				t.Fatalf("Get %d bytes (hint %d, codec %v): %v", n, hint, info.Codec, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("Get %d bytes (hint %d): content differs", n, hint)
			}
			// The stored form must stand on its own: a receiver decodes it without knowing
			// the size (replication moves chunks as stored).
			codec, stored, err := cas.ReadStored(ctx, s, info.Digest, hint)
			if err != nil {
				t.Fatalf("ReadStored %d bytes (hint %d): %v", n, hint, err)
			}
			if _, err := cas.WriteStored(ctx, cas.NewMemory(), info.Digest, codec, stored, hint); err != nil {
				t.Fatalf("WriteStored %d bytes (hint %d, codec %v): %v", n, hint, codec, err)
			}
		}
	}
}

// storedForms puts every sample into src and returns their stored forms as src hands them out.
func storedForms(t *testing.T, src cas.Store) []cas.StoredChunk {
	t.Helper()
	var out []cas.StoredChunk
	for _, sm := range samples() {
		info, err := src.Put(bg, sm.data, sm.hint)
		if err != nil {
			t.Fatal(err)
		}
		codec, stored, err := cas.ReadStored(bg, src, info.Digest, sm.hint)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cas.StoredChunk{Digest: info.Digest, Codec: codec, Stored: stored})
	}
	return out
}

// testBatchStored moves every sample's stored form into dst through one batch's PutStored,
// from several goroutines, each twice, with one chunk already present, tampered forms and a
// form under a wrong digest mixed in: the tampered ones are refused with a *CorruptError naming
// the chunk; in a batching store nothing is visible before Commit; after Commit every good
// chunk reads back with the stored form unchanged and no refused one is present.
func testBatchStored(t *testing.T, src, dst cas.Store) {
	forms := storedForms(t, src)
	pre := forms[4]
	if _, err := cas.WriteStored(bg, dst, pre.Digest, pre.Codec, pre.Stored, cas.HintNone); err != nil {
		t.Fatal(err)
	}
	// Tampered forms of chunks that are put nowhere else in the batch.
	var bad []cas.StoredChunk
	for i, sm := range []cas.StoredChunk{
		{Codec: cas.CodecRaw, Stored: Random(5000, 501)},
		{Codec: cas.CodecF16Planes, Stored: nil},
	} {
		data := sm.Stored
		if data == nil {
			data = KVFloat16(64<<10, 502)
			var codec cas.Codec
			codec, sm.Stored = cas.Encode(nil, data, cas.HintFloat16)
			if codec != cas.CodecF16Planes {
				t.Fatalf("test data took codec %s", codec)
			}
		}
		sm.Digest = cas.Sum(data)
		sm.Stored = bytes.Clone(sm.Stored)
		sm.Stored[len(sm.Stored)/2+i] ^= 0x20
		bad = append(bad, sm)
	}
	b := cas.NewBatch(dst)
	defer b.Discard()
	infos := make([]cas.Info, 2*len(forms))
	var wg sync.WaitGroup
	errs := make(chan error, len(infos)+len(bad)+1)
	for i := range infos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := forms[i%len(forms)]
			info, err := b.PutStored(bg, f.Digest, f.Codec, f.Stored)
			if err != nil {
				errs <- fmt.Errorf("chunk %d: %w", i, err)
				return
			}
			infos[i] = info
		}()
	}
	for _, f := range bad {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.PutStored(bg, f.Digest, f.Codec, f.Stored)
			var ce *cas.CorruptError
			if !errors.As(err, &ce) || ce.Digest != f.Digest {
				errs <- fmt.Errorf("tampered %s form: %v, want a CorruptError naming it", f.Codec, err)
			}
		}()
	}
	wg.Add(1)
	go func() { // a good form under another digest
		defer wg.Done()
		f := forms[5]
		if _, err := b.PutStored(bg, cas.Sum([]byte("not this")), f.Codec, f.Stored); !errors.Is(err, cas.ErrCorrupt) {
			errs <- fmt.Errorf("stored form under a wrong digest: %v", err)
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, err := b.PutStored(bg, pre.Digest, cas.Codec(99), []byte("x")); err != nil {
		t.Fatalf("a present chunk costs a stat and is not verified: %v", err)
	}
	if _, batching := dst.(cas.Batcher); batching {
		for i, f := range forms {
			if ok, err := dst.Has(bg, f.Digest); err != nil || ok != (i == 4) {
				t.Fatalf("chunk %d before Commit: present %v (%v)", i, ok, err)
			}
		}
	}
	if err := b.Commit(bg); err != nil {
		t.Fatal(err)
	}
	_, movesStored := dst.(cas.StoredWriter)
	for i, info := range infos {
		f := forms[i%len(forms)]
		got, err := dst.Get(bg, f.Digest, nil)
		if err != nil || cas.Sum(got) != f.Digest {
			t.Fatalf("chunk %d after Commit: %v", i%len(forms), err)
		}
		CheckInfo(t, info, got)
		st, err := dst.Stat(bg, f.Digest)
		if err != nil {
			t.Fatal(err)
		}
		sameInfo(t, info, st)
		if movesStored {
			codec, stored, err := cas.ReadStored(bg, dst, f.Digest, cas.HintNone)
			if err != nil || codec != f.Codec || !bytes.Equal(stored, f.Stored) {
				t.Fatalf("chunk %d: stored form changed on the way (%s → %s, %v)", i%len(forms), f.Codec, codec, err)
			}
		}
	}
	for _, f := range bad {
		if ok, _ := dst.Has(bg, f.Digest); ok {
			t.Fatalf("tampered %s form was stored", f.Codec)
		}
	}
	if n := count(t, dst); n != len(forms) {
		t.Fatalf("%d chunks after a batch of %d distinct good forms", n, len(forms))
	}
	if _, err := b.PutStored(bg, forms[0].Digest, forms[0].Codec, forms[0].Stored); !errors.Is(err, cas.ErrBatchClosed) {
		t.Fatalf("PutStored after Commit: %v, want ErrBatchClosed", err)
	}
	// A discarded batch's stored chunks are not in a batching store.
	fresh := KVFloat16(32<<10, 503)
	codec, stored := cas.Encode(nil, fresh, cas.HintFloat16)
	b2 := cas.NewBatch(dst)
	if _, err := b2.PutStored(bg, cas.Sum(fresh), codec, stored); err != nil {
		t.Fatal(err)
	}
	b2.Discard()
	if _, batching := dst.(cas.Batcher); batching {
		if ok, _ := dst.Has(bg, cas.Sum(fresh)); ok {
			t.Fatal("chunk of a discarded batch is present")
		}
	}
}

// testPutStoredAll: a list with a tampered form in the middle stores and commits every other
// chunk, reports the tampered one's error (naming its index and digest) and leaves it out.
func testPutStoredAll(t *testing.T, s cas.Store) {
	forms := storedForms(t, cas.NewMemory())
	k := 7
	bad := forms[k]
	bad.Stored = bytes.Clone(bad.Stored)
	bad.Stored[len(bad.Stored)/2] ^= 1
	list := append(append(append([]cas.StoredChunk{}, forms[:k]...), bad), forms[k+1:]...)
	infos, err := cas.PutStoredAll(bg, s, 3, list)
	var ce *cas.CorruptError
	if !errors.As(err, &ce) || ce.Digest != bad.Digest || !strings.Contains(err.Error(), fmt.Sprintf("chunk %d", k)) {
		t.Fatalf("PutStoredAll with a tampered chunk %d: %v", k, err)
	}
	if len(infos) != len(list) {
		t.Fatalf("%d infos for %d chunks", len(infos), len(list))
	}
	for i, f := range list {
		if i == k {
			if infos[i] != (cas.Info{}) {
				t.Fatalf("tampered chunk has Info %+v", infos[i])
			}
			if ok, _ := s.Has(bg, f.Digest); ok {
				t.Fatal("tampered chunk was stored")
			}
			continue
		}
		got, err := s.Get(bg, f.Digest, nil)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		CheckInfo(t, infos[i], got)
	}
	// All good: nil error; again: all present, nothing new.
	infos, err = cas.PutStoredAll(bg, s, 2, forms)
	if err != nil || len(infos) != len(forms) {
		t.Fatalf("PutStoredAll of good forms: %d infos, %v", len(infos), err)
	}
	if n := count(t, s); n != len(forms) {
		t.Fatalf("%d chunks, want %d", n, len(forms))
	}
	if infos, err := cas.PutStoredAll(bg, s, 2, nil); err != nil || len(infos) != 0 {
		t.Fatalf("no chunks: %v %v", infos, err)
	}
}
