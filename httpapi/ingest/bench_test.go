package ingest_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/ingest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/repo"
)

// BenchmarkIngest is the receiving side of a push alone: a chunk stream of a 32 MiB float16
// session (1024 chunks of 32 KiB, as `driftstore bench push` sends) read from memory, every
// chunk verified and committed into a fresh data directory that syncs as a daemon's does (the
// -nosync variants skip the syncs). MB/s of stored bytes, as the push benchmark reports; with
// 1 and 2 workers, to show how verification spreads over the cores.
func BenchmarkIngest(b *testing.B) {
	const chunkSize, n = 32 << 10, 1024
	r := rand.New(rand.NewPCG(99, 7))
	var body bytes.Buffer
	w := wire.NewChunkStreamWriter(&body)
	var stored int64
	data := make([]byte, chunkSize)
	for range n {
		for j := 0; j+1 < len(data); j += 2 {
			data[j] = byte(r.IntN(256))
			data[j+1] = byte(0x38 + r.IntN(8))
		}
		codec, s := cas.Encode(nil, data, cas.HintFloat16)
		stored += int64(len(s))
		if _, err := w.WriteChunk(wire.StoredChunk{Digest: cas.Sum(data), Codec: codec, Size: chunkSize, Stored: s}); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	lim := wire.StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 2 << 20}
	for _, sync := range []bool{true, false} {
		for _, workers := range []int{1, 2} {
			name := "workers-" + strconv.Itoa(workers)
			if !sync {
				name += "-nosync"
			}
			b.Run(name, func(b *testing.B) {
				var total time.Duration
				for i := range b.N {
					rp, err := repo.Open(filepath.Join(b.TempDir(), strconv.Itoa(i)), repo.Options{NoSync: !sync})
					if err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					in := ingest.New(context.Background(), rp.Index(), ingest.Config{Workers: workers})
					rerr := in.ReadStream(wire.NewChunkStreamReader(bytes.NewReader(body.Bytes()), lim))
					res, err := in.Close()
					total += time.Since(start)
					if err != nil || rerr != nil || res.Stored != n {
						b.Fatalf("%+v %v %v", res, err, rerr)
					}
					if err := rp.Close(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(stored)*float64(b.N)/1e6/total.Seconds(), "MB/s")
			})
		}
	}
}
