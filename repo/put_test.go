package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/chunker"
)

// choppyReader returns its data in reads of random sizes, now and then 0 bytes with no error.
type choppyReader struct {
	data []byte
	rng  *rand.Rand
}

func (c *choppyReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	if c.rng.IntN(10) == 0 {
		return 0, nil
	}
	n := min(len(p), len(c.data), 1+c.rng.IntN(70_000))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// ingest cuts exactly the chunks chunker.Stream cuts, whatever the reads return, across
// segment boundaries, for FastCDC (published and aligned cuts) and fixed chunking.
func TestIngestMatchesStream(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	small := chunker.Params{Min: 1024, Avg: 4096, Max: 16384, Normalization: 1}
	aligned := chunker.DefaultParams()
	aligned.Align = 2
	specs := []ChunkerSpec{{}, {Method: ChunkFastCDC, Params: small}, {Method: ChunkFastCDC, Params: aligned}, {Method: ChunkFixed, Size: 5000}, {Method: ChunkFixed, Size: 1 << 20}}
	for si, spec := range specs {
		spec, err := spec.normalize()
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{0, 1, 16383, 3*segmentSize + 12345} {
			data := randBytes(uint64(size)+7, size)
			// What the Stream cuts, read whole.
			var st *chunker.Stream
			if spec.Method == ChunkFixed {
				st, err = chunker.NewFixedStream(bytes.NewReader(data), spec.Size)
			} else {
				st, err = chunker.NewStream(bytes.NewReader(data), spec.Params)
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []cas.Digest
			var lens []int64
			for {
				ch, err := st.Next()
				if err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				want, lens = append(want, cas.Sum(ch.Data)), append(lens, int64(len(ch.Data)))
			}
			for _, workers := range []int{1, 3} {
				batch := cas.NewBatch(r.local)
				var progressed int64
				rd := &choppyReader{data: data, rng: rand.New(rand.NewPCG(uint64(si), uint64(size)))}
				refs, infos, n, err := r.ingest(ctx, batch, rd, spec, cas.HintNone, workers, func(k int64) { progressed += k })
				batch.Discard()
				if err != nil {
					t.Fatalf("%v size %d: %v", spec, size, err)
				}
				if n != int64(size) || progressed != n || len(infos) != len(refs) {
					t.Fatalf("%v size %d: read %d, progress %d, %d infos for %d refs", spec, size, n, progressed, len(infos), len(refs))
				}
				if len(refs) != len(want) {
					t.Fatalf("%v size %d workers %d: %d chunks, the stream cuts %d", spec, size, workers, len(refs), len(want))
				}
				for i, ref := range refs {
					if ref.Digest != want[i] || ref.Length != lens[i] {
						t.Fatalf("%v size %d workers %d: chunk %d differs from the stream's", spec, size, workers, i)
					}
				}
			}
		}
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// A read error ends the ingest with that error (wrapped), also after whole segments went
// through; a reader that keeps returning nothing is stuck, not an endless loop.
func TestIngestReadErrors(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	spec, _ := ChunkerSpec{}.normalize()
	boom := errors.New("boom")
	for _, rd := range []io.Reader{
		&failingReader{data: randBytes(1, 2*segmentSize+100), err: boom},
		&failingReader{err: boom},
	} {
		batch := cas.NewBatch(r.local)
		_, _, _, err := r.ingest(ctx, batch, rd, spec, cas.HintNone, 2, nil)
		batch.Discard()
		if !errors.Is(err, boom) {
			t.Fatalf("ingest: %v, want boom", err)
		}
	}
	batch := cas.NewBatch(r.local)
	defer batch.Discard()
	stuck := &failingReader{err: nil}
	if _, _, _, err := r.ingest(ctx, batch, stuck, spec, cas.HintNone, 2, nil); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("stuck reader: %v, want io.ErrNoProgress", err)
	}
	// A cancelled context stops the reader and the workers.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	batch2 := cas.NewBatch(r.local)
	defer batch2.Discard()
	if _, _, _, err := r.ingest(cctx, batch2, bytes.NewReader(randBytes(2, 4*segmentSize)), spec, cas.HintNone, 2, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
