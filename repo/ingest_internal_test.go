package repo

import (
	"bytes"
	"context"
	"fmt"
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
				res, err := r.PutReader(ctx, "in", &choppyReader{data: in, rng: rng}, PutOptions{Chunker: spec, Workers: workers})
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
