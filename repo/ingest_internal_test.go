package repo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/chunker"
)

// Put through a pack store, whose batches keep raw chunks in the reader's segments until their
// run is written (cas.Retainer), reads back exactly what went in: with raw and compressible
// chunks mixed, chunks small enough that a run gathers hundreds of them, several workers, and
// segments so few that the reader keeps running out of them (the retained chunks must then be
// flushed for the ingest to go on at all).
func TestPutRetainedRoundTrip(t *testing.T) {
	r, _ := openTest(t)
	if _, ok := cas.NewBatch(r.local).(cas.Retainer); !ok {
		t.Fatalf("the store of a new data directory (%T) does not retain chunks: this test would test nothing", r.local)
	}
	ctx := context.Background()
	data := randBytes(11, 5*segmentSize+4321)
	clear(data[segmentSize : segmentSize+300<<10]) // compressible: stored as zstd, not retained
	copy(data[3*segmentSize:], bytes.Repeat([]byte("driftstore "), 20000))
	small := chunker.Params{Min: 256, Avg: 1024, Max: 4096}
	specs := []ChunkerSpec{{}, {Method: ChunkFastCDC, Params: small}, {Method: ChunkFixed, Size: 5000}}
	saved := extraSegments
	defer func() { extraSegments = saved }()
	for _, extra := range []int{1, saved} {
		extraSegments = extra
		for si, spec := range specs {
			for _, workers := range []int{1, 3} {
				name := fmt.Sprintf("extra segments %d, spec %d, %d workers", extra, si, workers)
				// A new input each time, so that every chunk is written (not found present).
				in := bytes.Clone(data)
				rng := rand.New(rand.NewPCG(uint64(extra), uint64(si*10+workers)))
				for i := 0; i < len(in); i += 4096 {
					in[i] = byte(rng.Uint32())
				}
				var rd io.Reader = &choppyReader{data: in, rng: rng}
				if workers == 3 {
					rd = bytes.NewReader(in) // cut in place (inMemory)
				}
				res, err := r.PutReader(ctx, "in", rd, PutOptions{Chunker: spec, Workers: workers})
				if err != nil {
					t.Fatalf("%s: put: %v", name, err)
				}
				var out bytes.Buffer
				if _, err := r.Get(ctx, res.ID, &out, GetOptions{Workers: 2}); err != nil {
					t.Fatalf("%s: get: %v", name, err)
				}
				if !bytes.Equal(out.Bytes(), in) {
					t.Fatalf("%s: read back %d bytes that differ from the %d put", name, out.Len(), len(in))
				}
				// The bytes of the input are not read again once Put returns.
				clear(in)
				out.Reset()
				if _, err := r.Get(ctx, res.ID, &out, GetOptions{}); err != nil {
					t.Fatalf("%s: get after the input was overwritten: %v", name, err)
				}
			}
		}
	}
}

// piecewise is an in-memory reader whose WriteTo passes its bytes in several Writes of random
// sizes (as the readers inMemory takes might, unlike bytes.Reader's single Write), through a
// scratch buffer that it overwrites after each Write, as io.Copy's buffer is reused: a Write
// that kept using its argument after returning would store garbage.
type piecewise struct {
	data    []byte
	rng     *rand.Rand
	scratch []byte
}

func (p *piecewise) Read(b []byte) (int, error) { panic("piecewise: Read: ingest should use WriteTo") }

func (p *piecewise) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for len(p.data) > 0 {
		k := min(len(p.data), 1+p.rng.IntN(3*segmentSize/2))
		if cap(p.scratch) < k {
			p.scratch = make([]byte, k)
		}
		piece := p.scratch[:k]
		copy(piece, p.data)
		m, err := w.Write(piece)
		for i := range piece {
			piece[i] = 0xee
		}
		n += int64(m)
		if err != nil {
			return n, err
		}
		p.data = p.data[k:]
	}
	return n, nil
}

func (p *piecewise) inMemoryBytes() {}

// Inputs already in memory (bytes.Reader, bytes.Buffer, and a reader whose WriteTo writes in
// pieces) are cut in place, into the same chunks as the Stream cuts, and the Put reads back.
func TestIngestInMemoryMatchesStream(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	small := chunker.Params{Min: 1024, Avg: 4096, Max: 16384, Normalization: 1}
	specs := []ChunkerSpec{{}, {Method: ChunkFastCDC, Params: small}, {Method: ChunkFixed, Size: 5000}, {Method: ChunkFixed, Size: 1 << 20}}
	for si, spec := range specs {
		spec, err := spec.normalize()
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{0, 1, 16383, 3*segmentSize + 12345} {
			data := randBytes(uint64(size)+9, size)
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
			for {
				ch, err := st.Next()
				if err == io.EOF {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				want = append(want, cas.Sum(ch.Data))
			}
			for ri, mk := range []func() io.Reader{
				func() io.Reader { return bytes.NewReader(data) },
				func() io.Reader { return bytes.NewBuffer(bytes.Clone(data)) },
				func() io.Reader { return &piecewise{data: data, rng: rand.New(rand.NewPCG(uint64(si), uint64(size)))} },
			} {
				for _, workers := range []int{1, 3} {
					name := fmt.Sprintf("%v size %d reader %d workers %d", spec, size, ri, workers)
					rd := mk()
					if inMemory(rd) == nil {
						t.Fatalf("%s: not taken as in memory", name)
					}
					batch := cas.NewBatch(r.local)
					var progressed int64
					refs, _, n, err := r.ingest(ctx, batch, rd, spec, cas.HintNone, workers, func(k int64) { progressed += k })
					if err != nil {
						batch.Discard()
						t.Fatalf("%s: %v", name, err)
					}
					if n != int64(size) || progressed != n || len(refs) != len(want) {
						batch.Discard()
						t.Fatalf("%s: read %d, progress %d, %d chunks; want %d bytes in %d chunks", name, n, progressed, len(refs), size, len(want))
					}
					for i, ref := range refs {
						if ref.Digest != want[i] {
							batch.Discard()
							t.Fatalf("%s: chunk %d differs from the stream's", name, i)
						}
					}
					if err := batch.Commit(ctx); err != nil {
						t.Fatalf("%s: commit: %v", name, err)
					}
					for i, ref := range refs {
						if _, err := r.local.Get(ctx, ref.Digest, nil); err != nil {
							t.Fatalf("%s: chunk %d: %v", name, i, err)
						}
					}
				}
			}
		}
	}
}

// A store whose batches do not retain chunks (cas.Local) gets every chunk through Put, copied,
// from both the segment path and the in-memory path, and the chunks are the Stream's.
func TestIngestWithoutRetainer(t *testing.T) {
	r, _ := openTest(t)
	local, err := cas.OpenLocal(t.TempDir(), cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, ok := cas.NewBatch(local).(cas.Retainer); ok {
		t.Fatal("a Local batch retains chunks: this test would not test the copying path")
	}
	spec, err := ChunkerSpec{}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(21, 3*segmentSize+777)
	st, err := chunker.NewStream(bytes.NewReader(data), spec.Params)
	if err != nil {
		t.Fatal(err)
	}
	var want []cas.Digest
	for {
		ch, err := st.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		want = append(want, cas.Sum(ch.Data))
	}
	for i, rd := range []io.Reader{&choppyReader{data: data, rng: rand.New(rand.NewPCG(1, 2))}, bytes.NewReader(data)} {
		batch := cas.NewBatch(local)
		refs, _, _, err := r.ingest(ctx, batch, rd, spec, cas.HintNone, 2, nil)
		if err != nil {
			batch.Discard()
			t.Fatalf("reader %d: %v", i, err)
		}
		if err := batch.Commit(ctx); err != nil {
			t.Fatalf("reader %d: commit: %v", i, err)
		}
		if len(refs) != len(want) {
			t.Fatalf("reader %d: %d chunks, the stream cuts %d", i, len(refs), len(want))
		}
		for k, ref := range refs {
			if ref.Digest != want[k] {
				t.Fatalf("reader %d: chunk %d differs from the stream's", i, k)
			}
			if _, err := local.Get(ctx, ref.Digest, nil); err != nil {
				t.Fatalf("reader %d: chunk %d: %v", i, k, err)
			}
		}
	}
}
