// Package benchstore measures the storage core end to end: ingest (chunk, hash, compress, store,
// record, commit) and read-back (read, decompress, verify, write) through package repo, next to
// the limits of each stage measured in the same run, and the deduplication of a growing KV-cache
// series. `driftstore bench storage` prints its results; repo's go-test benchmarks reuse its data.
//
// Throughputs are in MB/s (10^6 bytes per second) of uncompressed input. Every measurement is
// the best of a few repetitions, because the machines are shared and noisy.
package benchstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest/half"
	"github.com/driftstore/driftstore/chunker"
	"github.com/driftstore/driftstore/repo"
)

// Config says what to measure. The zero value is completed by defaults.
type Config struct {
	Size    int64  // bytes per ingest/read-back case; default 256 MiB
	Workers []int  // worker counts; default 1 and 2
	Dir     string // where temporary data directories go; default os.TempDir()
	Dedup   bool   // also run the growing-KV dedup series (1 GiB in per variant)
	Sync    bool   // fsync chunks and index commits during ingest (the default for users)
	// Log, when set, receives one line per finished measurement.
	Log io.Writer
}

// Stage is the throughput of one pipeline stage alone, over 64 KiB pieces.
type Stage struct {
	Name    string  `json:"name"`
	Data    string  `json:"data"`
	Workers int     `json:"workers"`
	MBps    float64 `json:"mb_per_s"`
	Ratio   float64 `json:"ratio,omitempty"` // input ÷ output, for encoders
}

// Pipeline is one end-to-end measurement through repo.
type Pipeline struct {
	Op          string  `json:"op"` // "ingest" or "read-back"
	Data        string  `json:"data"`
	Workers     int     `json:"workers"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mb_per_s"`
	StoredBytes int64   `json:"stored_bytes"`
	Ratio       float64 `json:"ratio"` // bytes ÷ stored bytes
}

// DedupRow is one variant of the growing-KV series.
type DedupRow struct {
	Chunker      string  `json:"chunker"`
	Positions    int     `json:"positions_per_snapshot"`
	Snapshots    int     `json:"snapshots"`
	InputBytes   int64   `json:"input_bytes"`
	StoredBytes  int64   `json:"stored_bytes"`
	UniqueChunks int     `json:"unique_chunks"`
	Ratio        float64 `json:"ratio"` // input ÷ stored
}

// Result is everything one Run measured.
type Result struct {
	GoMaxProcs int        `json:"gomaxprocs"`
	CPUs       int        `json:"cpus"`
	Sync       bool       `json:"sync"`
	Stages     []Stage    `json:"stages"`
	Pipelines  []Pipeline `json:"pipelines"`
	Dedup      []DedupRow `json:"dedup,omitempty"`
}

// KV geometry of the dedup series (the numbers).
const (
	KVLayers    = 16
	KVHeads     = 8
	KVPositions = 4096
	KVHeadDim   = 64
	// KVStreamBytes is one layer/K-or-V/head stream: positions × head dim × 2 bytes.
	KVStreamBytes = KVPositions * KVHeadDim * 2
	// KVRegionBytes is the whole preallocated region: 16 layers × K/V × 8 heads streams.
	KVRegionBytes = KVLayers * 2 * KVHeads * KVStreamBytes
)

// KVFloat16 fills dst (even length) with KV-cache-like float16 values: normally distributed,
// with a per-channel scale (a few outlier channels), as keys and values of a transformer look.
// Deterministic for a seed.
func KVFloat16(dst []byte, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x6b76))
	var scale [KVHeadDim]float64
	for i := range scale {
		scale[i] = 0.3 * math.Exp(0.6*rng.NormFloat64())
	}
	for i := 0; i+1 < len(dst); i += 2 {
		v := half.FromFloat32(float32(rng.NormFloat64() * scale[(i/2)%KVHeadDim]))
		dst[i], dst[i+1] = byte(v), byte(v>>8)
	}
}

// Random fills dst with incompressible pseudo-random bytes, deterministic for a seed.
func Random(dst []byte, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x72616e64))
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			dst[i+k] = byte(v >> (8 * k))
		}
	}
	for ; i < len(dst); i++ {
		dst[i] = byte(rng.Uint32())
	}
}

func (c *Config) defaults() {
	if c.Size <= 0 {
		c.Size = 256 << 20
	}
	if len(c.Workers) == 0 {
		c.Workers = []int{1, 2}
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
}

func (c *Config) logf(format string, a ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", a...)
	}
}

// Run measures everything cfg asks for.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	res := &Result{GoMaxProcs: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(), Sync: cfg.Sync}
	datasets := []struct {
		name string
		hint cas.Hint
		buf  []byte
	}{
		{"f16-kv", cas.HintFloat16, make([]byte, cfg.Size)},
		{"random", cas.HintNone, make([]byte, cfg.Size)},
	}
	KVFloat16(datasets[0].buf, 1)
	Random(datasets[1].buf, 2)

	for _, ds := range datasets {
		for _, w := range cfg.Workers {
			sts, err := stages(ds.buf, ds.hint, w, cfg.Dir)
			if err != nil {
				return nil, err
			}
			for _, st := range sts {
				st.Data = ds.name
				res.Stages = append(res.Stages, st)
				cfg.logf("stage %-14s %-7s %d workers: %8.0f MB/s", st.Name, st.Data, st.Workers, st.MBps)
			}
		}
	}
	for _, ds := range datasets {
		for _, w := range cfg.Workers {
			ps, err := pipeline(ctx, cfg, ds.name, ds.buf, ds.hint, w)
			if err != nil {
				return nil, err
			}
			for _, p := range ps {
				cfg.logf("%-9s %-7s %d workers: %8.0f MB/s (ratio %.3f)", p.Op, p.Data, p.Workers, p.MBps, p.Ratio)
			}
			res.Pipelines = append(res.Pipelines, ps...)
		}
	}
	if cfg.Dedup {
		rows, err := DedupSeries(ctx, cfg.Dir, cfg.Log)
		if err != nil {
			return nil, err
		}
		res.Dedup = rows
	}
	return res, nil
}

// pieceSize is the granularity of stage measurements: the default chunk size.
const pieceSize = 64 << 10

// parallel runs fn over the 64 KiB pieces of buf with w workers, best of three passes, and
// returns MB/s of buf's bytes.
func parallel(buf []byte, w int, fn func(worker, i int, piece []byte)) float64 {
	n := (len(buf) + pieceSize - 1) / pieceSize
	best := math.MaxFloat64
	for rep := 0; rep < 3; rep++ {
		var wg sync.WaitGroup
		start := time.Now()
		for k := 0; k < w; k++ {
			wg.Go(func() {
				for i := k; i < n; i += w {
					fn(k, i, buf[i*pieceSize:min((i+1)*pieceSize, len(buf))])
				}
			})
		}
		wg.Wait()
		best = min(best, time.Since(start).Seconds())
	}
	return float64(len(buf)) / best / 1e6
}

var (
	zstdOnce sync.Once
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
)

// stages measures each stage alone on buf with w workers. The file-write stage creates, writes
// and closes one file per 64 KiB piece (no fsync) in a temporary directory under tmp: the floor
// of a store that keeps a file per chunk on that file system.
func stages(buf []byte, hint cas.Hint, w int, tmp string) ([]Stage, error) {
	zstdOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil)
		zdec, _ = zstd.NewReader(nil)
	})
	sub := buf[:min(len(buf), 64<<20)]
	dsts := make([][]byte, w)
	for i := range dsts {
		dsts[i] = make([]byte, 0, 2*pieceSize)
	}
	var out []Stage
	add := func(name string, mbps, ratio float64) {
		out = append(out, Stage{Name: name, Workers: w, MBps: mbps, Ratio: ratio})
	}
	add("memmove", parallel(sub, w, func(k, i int, p []byte) { dsts[k] = append(dsts[k][:0], p...) }), 0)
	add("blake3", parallel(sub, w, func(k, i int, p []byte) { blake3.Sum256(p) }), 0)

	// zstd at default settings, and the store's codec choice; keep the encoded pieces to decode.
	n := (len(sub) + pieceSize - 1) / pieceSize
	zframes := make([][]byte, n)
	stored := make([][]byte, n)
	codecs := make([]cas.Codec, n)
	var zsize, csize int64
	add("zstd-enc", parallel(sub, w, func(k, i int, p []byte) {
		zframes[i] = zenc.EncodeAll(p, zframes[i][:0])
	}), 0)
	for _, f := range zframes {
		zsize += int64(len(f))
	}
	out[len(out)-1].Ratio = float64(len(sub)) / float64(zsize)
	add("zstd-dec", parallel(sub, w, func(k, i int, p []byte) {
		dsts[k], _ = zdec.DecodeAll(zframes[i], dsts[k][:0])
	}), 0)
	add("codec-enc", parallel(sub, w, func(k, i int, p []byte) {
		codecs[i], stored[i] = cas.Encode(stored[i][:0], p, hint)
	}), 0)
	for _, s := range stored {
		csize += int64(len(s))
	}
	out[len(out)-1].Ratio = float64(len(sub)) / float64(csize)
	add("codec-dec", parallel(sub, w, func(k, i int, p []byte) {
		dsts[k], _ = cas.Decode(dsts[k], codecs[i], stored[i], len(p))
	}), 0)
	add("codec-dec+b3", parallel(sub, w, func(k, i int, p []byte) {
		dsts[k], _ = cas.Decode(dsts[k], codecs[i], stored[i], len(p))
		blake3.Sum256(dsts[k])
	}), 0)
	fdir, err := os.MkdirTemp(tmp, "driftstore-bench-files-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(fdir)
	var ferr error
	var ferrOnce sync.Once
	var seq atomic.Int64 // every file a new name, as chunks are
	add("file-write", parallel(sub[:min(len(sub), 16<<20)], w, func(k, i int, p []byte) {
		err := os.WriteFile(filepath.Join(fdir, strconv.FormatInt(seq.Add(1), 10)), p, 0o644)
		if err != nil {
			ferrOnce.Do(func() { ferr = err })
		}
	}), 0)
	return out, ferr
}

// pipeline ingests buf into a fresh data directory with w workers, then reads it back.
func pipeline(ctx context.Context, cfg Config, name string, buf []byte, hint cas.Hint, w int) ([]Pipeline, error) {
	var out []Pipeline
	best := Pipeline{Seconds: math.MaxFloat64}
	var keep *repo.Repo
	var id repo.PutResult
	for rep := 0; rep < 2; rep++ {
		dir, err := os.MkdirTemp(cfg.Dir, "driftstore-bench-")
		if err != nil {
			return nil, err
		}
		r, err := repo.Open(filepath.Join(dir, "data"), repo.Options{NoSync: !cfg.Sync, Workers: w})
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		start := time.Now()
		res, err := r.PutReader(ctx, name, bytes.NewReader(buf), repo.PutOptions{Hint: hint, Workers: w})
		el := time.Since(start).Seconds()
		if err != nil {
			r.Close()
			os.RemoveAll(dir)
			return nil, err
		}
		if el < best.Seconds {
			best = Pipeline{Op: "ingest", Data: name, Workers: w, Bytes: res.BytesIn, Seconds: el,
				MBps: float64(res.BytesIn) / el / 1e6, StoredBytes: res.StoredBytes, Ratio: float64(res.BytesIn) / float64(res.StoredBytes)}
		}
		if keep == nil {
			keep, id = r, res
			defer func(r *repo.Repo, dir string) { r.Close(); os.RemoveAll(dir) }(r, dir)
		} else {
			r.Close()
			os.RemoveAll(dir)
		}
	}
	out = append(out, best)
	rb := Pipeline{Op: "read-back", Data: name, Workers: w, Seconds: math.MaxFloat64, StoredBytes: id.StoredBytes}
	for rep := 0; rep < 3; rep++ {
		start := time.Now()
		n, err := keep.Get(ctx, id.ID, io.Discard, repo.GetOptions{Workers: w})
		el := time.Since(start).Seconds()
		if err != nil {
			return nil, err
		}
		if el < rb.Seconds {
			rb.Bytes, rb.Seconds, rb.MBps = n, el, float64(n)/el/1e6
			rb.Ratio = float64(n) / float64(id.StoredBytes)
		}
	}
	return append(out, rb), nil
}

// DedupSeries runs the growing-KV series: eight snapshots of the preallocated float16 region
// (KVRegionBytes, one contiguous stream per layer/K-or-V/head), snapshot k holding the first
// (k+1)·P positions of every stream and zeros after, for P = 512 and 500, chunked with fixed
// 64 KiB chunks and with FastCDC defaults, cuts aligned to float16 values (what the hint picks)
// and not (the published boundaries). Each snapshot is put whole (one region) into a fresh
// data directory per variant; the ratio is input bytes ÷ stored bytes of all distinct chunks.
func DedupSeries(ctx context.Context, tmp string, log io.Writer) ([]DedupRow, error) {
	full := make([]byte, KVRegionBytes) // every position filled; snapshots copy a prefix per stream
	KVFloat16(full, 3)
	snap := make([]byte, KVRegionBytes)
	var rows []DedupRow
	aligned, unaligned := chunker.DefaultParams(), chunker.DefaultParams()
	aligned.Align, unaligned.Align = 2, 1 // what the float16 hint picks, and the published cuts
	specs := []repo.ChunkerSpec{
		{Method: repo.ChunkFixed, Size: chunker.DefaultBlockSize},
		{Method: repo.ChunkFastCDC, Params: aligned},
		{Method: repo.ChunkFastCDC, Params: unaligned},
	}
	for _, positions := range []int{512, 500} {
		for _, spec := range specs {
			dir, err := os.MkdirTemp(tmp, "driftstore-dedup-")
			if err != nil {
				return nil, err
			}
			r, err := repo.Open(filepath.Join(dir, "data"), repo.Options{NoSync: true})
			if err != nil {
				os.RemoveAll(dir)
				return nil, err
			}
			row := DedupRow{Positions: positions, Snapshots: 8}
			for k := 0; k < 8; k++ {
				filled := min((k+1)*positions, KVPositions) * KVHeadDim * 2
				clear(snap)
				for s := 0; s < KVRegionBytes; s += KVStreamBytes {
					copy(snap[s:s+filled], full[s:s+filled])
				}
				res, err := r.PutReader(ctx, "kv", bytes.NewReader(snap), repo.PutOptions{Chunker: spec, Hint: cas.HintFloat16, Kind: "checkpoint"})
				if err != nil {
					r.Close()
					os.RemoveAll(dir)
					return nil, err
				}
				row.InputBytes += res.BytesIn
				row.Chunker = specName(spec)
			}
			err = r.Store().Walk(ctx, func(in cas.Info) error {
				row.StoredBytes += in.StoredSize
				row.UniqueChunks++
				return nil
			})
			r.Close()
			os.RemoveAll(dir)
			if err != nil {
				return nil, err
			}
			row.Ratio = float64(row.InputBytes) / float64(row.StoredBytes)
			if log != nil {
				fmt.Fprintf(log, "dedup %-26s %d positions/snapshot: %.2fx\n", row.Chunker, positions, row.Ratio)
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

func specName(s repo.ChunkerSpec) string {
	if s.Method == repo.ChunkFixed {
		return fmt.Sprintf("fixed %d KiB", s.Size>>10)
	}
	name := fmt.Sprintf("fastcdc %d/%d/%d KiB", s.Params.Min>>10, s.Params.Avg>>10, s.Params.Max>>10)
	if s.Params.Align > 1 {
		name += fmt.Sprintf(" a%d", s.Params.Align)
	}
	return name
}

// WriteTable prints res for people.
func (res *Result) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "storage benchmark: GOMAXPROCS %d, %d CPUs, fsync %v; MB/s of uncompressed bytes, best of 3 (stages) / 2 (ingest) / 3 (read-back)\n\n", res.GoMaxProcs, res.CPUs, res.Sync)
	fmt.Fprintf(w, "%-14s %-7s %7s %10s %7s\n", "stage", "data", "workers", "MB/s", "ratio")
	for _, s := range res.Stages {
		ratio := ""
		if s.Ratio > 0 {
			ratio = fmt.Sprintf("%.3f", s.Ratio)
		}
		fmt.Fprintf(w, "%-14s %-7s %7d %10.0f %7s\n", s.Name, s.Data, s.Workers, s.MBps, ratio)
	}
	fmt.Fprintf(w, "\n%-14s %-7s %7s %10s %7s %10s\n", "pipeline", "data", "workers", "MB/s", "ratio", "MiB")
	for _, p := range res.Pipelines {
		fmt.Fprintf(w, "%-14s %-7s %7d %10.0f %7.3f %10d\n", p.Op, p.Data, p.Workers, p.MBps, p.Ratio, p.Bytes>>20)
	}
	if len(res.Dedup) > 0 {
		fmt.Fprintf(w, "\ngrowing KV series: 8 snapshots of a %d MiB float16 region (16 layers x K/V x 8 heads x 4096 positions x 64 dims)\n", KVRegionBytes>>20)
		fmt.Fprintf(w, "%-26s %9s %10s %10s %8s %8s\n", "chunker", "pos/snap", "in MiB", "stored MiB", "chunks", "in/stored")
		for _, d := range res.Dedup {
			fmt.Fprintf(w, "%-26s %9d %10d %10.1f %8d %8.2fx\n", d.Chunker, d.Positions, d.InputBytes>>20, float64(d.StoredBytes)/(1<<20), d.UniqueChunks, d.Ratio)
		}
	}
}
