// Package benchstore measures the storage core end to end: ingest (chunk, hash, compress, store,
// record, commit) and read-back (read, decompress, verify, write) through package repo, in
// whatever chunk store repo.Open makes for a new data directory, next to the limits of each
// stage measured in the same run, and the deduplication of a growing KV-cache series.
// `driftstore bench storage` prints its results; repo's go-test benchmarks reuse its data.
//
// Ingest runs three cases: float16 KV-like data without a hint (the default codec choice: plain
// zstd at its fast defaults, which stores such data raw), the same data with the float16 hint
// (the byte-plane codec), and random data. Each runs in every directory of Config.Dirs (by
// default the system temp directory and, where it exists, the tmpfs /dev/shm), so disk and
// memory-backed file systems show side by side.
//
// Throughputs are in MB/s (10^6 bytes per second) of uncompressed input. Every measurement is
// the best of a few repetitions, because the machines are shared and noisy. Next to each
// pipeline the table gives the CPU cores it kept busy (process CPU time ÷ wall time) and a
// CPU-bound estimate from the stage limits: the per-byte CPU cost of its stages summed, spread
// over min(workers+1, GOMAXPROCS) cores, and never above the single-goroutine chunker for
// ingest.
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
	"sync"
	"sync/atomic"
	"syscall"
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
	Size    int64 // bytes per ingest/read-back case; default 256 MiB
	Workers []int // worker counts; default 1 and 2
	// Dirs are where temporary data directories go, each measured in turn; default
	// os.TempDir() and, when it exists and differs, /dev/shm (tmpfs on Linux). The dedup series
	// runs in the first.
	Dirs  []string
	Dedup bool // also run the growing-KV dedup series (1 GiB in per variant)
	Sync  bool // fsync chunks and index commits during ingest (the default for users)
	// Log, when set, receives one line per finished measurement.
	Log io.Writer
}

// Stage is the throughput of one pipeline stage alone, over 64 KiB pieces (the chunker: over
// the whole buffer, one goroutine per worker on its own share).
type Stage struct {
	Name    string  `json:"name"`
	Data    string  `json:"data"`
	Hint    string  `json:"hint,omitempty"`  // for the store's codec: the hint it was given
	Where   string  `json:"where,omitempty"` // for file stages: the directory
	Workers int     `json:"workers"`
	MBps    float64 `json:"mb_per_s"`
	Ratio   float64 `json:"ratio,omitempty"` // input ÷ output, for encoders
}

// Pipeline is one end-to-end measurement through repo.
type Pipeline struct {
	Op          string  `json:"op"` // "ingest" or "read-back"
	Data        string  `json:"data"`
	Hint        string  `json:"hint"`  // "none" (the default codec choice) or "float16"
	Where       string  `json:"where"` // the directory the data directory was made in
	Workers     int     `json:"workers"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mb_per_s"`
	StoredBytes int64   `json:"stored_bytes"`
	Ratio       float64 `json:"ratio"` // bytes ÷ stored bytes
	// Cores is process CPU time ÷ wall time during the measurement: near GOMAXPROCS means
	// CPU-bound.
	Cores float64 `json:"cores"`
	// MBPerCPUSecond is bytes ÷ process CPU time (user and system): the cost per byte, which
	// other load on a shared machine disturbs less than the wall-clock rate.
	MBPerCPUSecond float64 `json:"mb_per_cpu_s"`
	// EstimateMBps is the CPU-bound estimate from the stage limits (see the package doc); 0
	// when a stage it needs was not measured.
	EstimateMBps float64 `json:"estimate_mb_per_s,omitempty"`
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
	if len(c.Dirs) == 0 {
		c.Dirs = DefaultDirs()
	}
}

// DefaultDirs returns os.TempDir() and, when it is a directory other than that, /dev/shm.
func DefaultDirs() []string {
	dirs := []string{os.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() && filepath.Clean(dirs[0]) != "/dev/shm" {
		dirs = append(dirs, "/dev/shm")
	}
	return dirs
}

// dataset is one buffer of generated input.
type dataset struct {
	name string
	buf  []byte
}

// ingestCase is one (data, hint) pair the pipelines run.
type ingestCase struct {
	data *dataset
	hint cas.Hint
}

func hintName(h cas.Hint) string {
	switch h {
	case cas.HintNone:
		return "none"
	case cas.HintFloat16:
		return "float16"
	case cas.HintFloat32:
		return "float32"
	}
	return fmt.Sprintf("hint(%d)", h)
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
	kv := &dataset{"f16-kv", make([]byte, cfg.Size)}
	rnd := &dataset{"random", make([]byte, cfg.Size)}
	KVFloat16(kv.buf, 1)
	Random(rnd.buf, 2)
	cases := []ingestCase{{kv, cas.HintNone}, {kv, cas.HintFloat16}, {rnd, cas.HintNone}}
	add := func(sts []Stage) {
		for _, st := range sts {
			res.Stages = append(res.Stages, st)
			where := st.Hint
			if st.Where != "" {
				where = st.Where
			}
			cfg.logf("stage %-16s %-7s %-9s %d workers: %8.0f MB/s", st.Name, st.Data, where, st.Workers, st.MBps)
		}
	}
	for _, w := range cfg.Workers {
		for _, ds := range []*dataset{kv, rnd} {
			add(dataStages(ds, w))
		}
		for _, c := range cases {
			add(codecStages(c, w))
		}
		for _, dir := range cfg.Dirs {
			sts, err := fileStages(kv.buf, w, dir)
			if err != nil {
				return nil, err
			}
			add(sts)
		}
	}
	for _, dir := range cfg.Dirs {
		for _, c := range cases {
			for _, w := range cfg.Workers {
				ps, err := pipeline(ctx, cfg, dir, c, w)
				if err != nil {
					return nil, err
				}
				for _, p := range ps {
					p.EstimateMBps = res.estimate(p)
					cfg.logf("%-9s %-7s %-7s %-9s %d workers: %8.0f MB/s (ratio %.3f, %.2f cores, estimate %.0f)", p.Op, p.Data, p.Hint, p.Where, p.Workers, p.MBps, p.Ratio, p.Cores, p.EstimateMBps)
					res.Pipelines = append(res.Pipelines, p)
				}
			}
		}
	}
	if cfg.Dedup {
		rows, err := DedupSeries(ctx, cfg.Dirs[0], cfg.Log)
		if err != nil {
			return nil, err
		}
		res.Dedup = rows
	}
	return res, nil
}

// stage returns the MB/s of the named stage, or 0 when it was not measured. Stages measured
// once for any hint or directory match whatever hint or where is asked.
func (res *Result) stage(name, data, hint, where string, workers int) float64 {
	for _, s := range res.Stages {
		if s.Name == name && (s.Data == data || s.Data == "any") && s.Workers == workers &&
			(s.Hint == "" || s.Hint == hint) && (s.Where == "" || s.Where == where) {
			return s.MBps
		}
	}
	return 0
}

// estimate is the CPU-bound estimate for p from the stage limits (see the package doc).
// Ingest: chunker, a copy out of the stream, BLAKE3, the codec with Put's verification and an
// append to a file, per byte. Read-back: a read from a file and decode+BLAKE3 (for raw chunks,
// BLAKE3 alone). Costs are those of one goroutine.
func (res *Result) estimate(p Pipeline) float64 {
	one := func(name string) float64 { return res.stage(name, p.Data, p.Hint, p.Where, 1) }
	var stages []float64
	cores := float64(min(p.Workers+1, res.GoMaxProcs))
	switch p.Op {
	case "ingest":
		stages = []float64{one("fastcdc"), one("memmove"), one("blake3"), one("codec-enc+verify"), one("file-append")}
	case "read-back":
		dec := one("codec-dec+b3")
		if p.Ratio < 1.0001 { // raw chunks: nothing to decode
			dec = one("blake3")
		}
		stages = []float64{one("file-read"), dec}
	}
	var nsPerByte float64
	for _, mbps := range stages {
		if mbps <= 0 {
			return 0
		}
		nsPerByte += 1e3 / mbps
	}
	est := cores * 1e3 / nsPerByte
	if p.Op == "ingest" {
		est = min(est, one("fastcdc")) // one goroutine cuts every chunk
	}
	return est
}

// pieceSize is the granularity of stage measurements: the default chunk size.
const pieceSize = 64 << 10

// parallel runs fn over the 64 KiB pieces of buf with w workers, best of three passes, and
// returns MB/s of buf's bytes.
func parallel(buf []byte, w int, fn func(worker, i int, piece []byte)) float64 {
	return bestOf(3, len(buf), func() { pass(buf, w, fn) })
}

// pass runs fn once over the 64 KiB pieces of buf with w workers, worker k taking pieces
// k, k+w, k+2w, ….
func pass(buf []byte, w int, fn func(worker, i int, piece []byte)) {
	n := (len(buf) + pieceSize - 1) / pieceSize
	var wg sync.WaitGroup
	for k := 0; k < w; k++ {
		wg.Go(func() {
			for i := k; i < n; i += w {
				fn(k, i, buf[i*pieceSize:min((i+1)*pieceSize, len(buf))])
			}
		})
	}
	wg.Wait()
}

var (
	zstdOnce sync.Once
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
)

// stageBytes is how much of a dataset the stages run over.
const stageBytes = 64 << 20

// dataStages measures the stages that depend only on the bytes: memmove, the FastCDC chunker
// (default parameters; each worker cuts its own share of the buffer, as independent streams),
// BLAKE3, and zstd at its default settings.
func dataStages(ds *dataset, w int) []Stage {
	zstdOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil)
		zdec, _ = zstd.NewReader(nil)
	})
	sub := ds.buf[:min(len(ds.buf), stageBytes)]
	dsts := make([][]byte, w)
	for i := range dsts {
		dsts[i] = make([]byte, 0, 2*pieceSize)
	}
	var out []Stage
	add := func(name string, mbps, ratio float64) {
		out = append(out, Stage{Name: name, Data: ds.name, Workers: w, MBps: mbps, Ratio: ratio})
	}
	add("memmove", parallel(sub, w, func(k, i int, p []byte) { dsts[k] = append(dsts[k][:0], p...) }), 0)
	cdc, err := chunker.NewFastCDC(chunker.DefaultParams())
	if err != nil {
		panic(err) // the default parameters are valid
	}
	add("fastcdc", bestOf(3, len(sub), func() {
		var wg sync.WaitGroup
		share := len(sub) / w
		for k := 0; k < w; k++ {
			wg.Go(func() {
				for range cdc.Chunks(sub[k*share : (k+1)*share]) {
				}
			})
		}
		wg.Wait()
	}), 0)
	add("blake3", parallel(sub, w, func(k, i int, p []byte) { blake3.Sum256(p) }), 0)
	n := (len(sub) + pieceSize - 1) / pieceSize
	zframes := make([][]byte, n)
	var zsize int64
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
	return out
}

// codecStages measures the store's codec choice for c's hint: encoding with the check a store's
// Put makes (a non-raw stored form is decoded and compared with the chunk), and decoding
// followed by the BLAKE3 check every read makes.
func codecStages(c ingestCase, w int) []Stage {
	sub := c.data.buf[:min(len(c.data.buf), stageBytes)]
	n := (len(sub) + pieceSize - 1) / pieceSize
	stored := make([][]byte, n)
	codecs := make([]cas.Codec, n)
	dsts := make([][]byte, w)
	for i := range dsts {
		dsts[i] = make([]byte, 0, 2*pieceSize)
	}
	var failed atomic.Bool
	enc := parallel(sub, w, func(k, i int, p []byte) {
		codecs[i], stored[i] = cas.Encode(stored[i][:0], p, c.hint)
		if codecs[i] != cas.CodecRaw {
			var err error
			dsts[k], err = cas.Decode(dsts[k], codecs[i], stored[i], len(p))
			if err != nil || !bytes.Equal(dsts[k], p) {
				failed.Store(true)
			}
		}
	})
	if failed.Load() {
		panic("benchstore: a stored form does not decode to its chunk") // a codec bug
	}
	var csize int64
	for _, s := range stored {
		csize += int64(len(s))
	}
	dec := parallel(sub, w, func(k, i int, p []byte) {
		dsts[k], _ = cas.Decode(dsts[k], codecs[i], stored[i], len(p))
		blake3.Sum256(dsts[k])
	})
	h := hintName(c.hint)
	return []Stage{
		{Name: "codec-enc+verify", Data: c.data.name, Hint: h, Workers: w, MBps: enc, Ratio: float64(len(sub)) / float64(csize)},
		{Name: "codec-dec+b3", Data: c.data.name, Hint: h, Workers: w, MBps: dec},
	}
}

// fileStages measures writing 64 KiB pieces at increasing offsets of a new file (no fsync: the
// floor of a store that appends chunks to pack files, including the file system's page
// allocation) and reading them back, in dir. Each repetition writes a fresh file.
func fileStages(buf []byte, w int, dir string) ([]Stage, error) {
	sub := buf[:min(len(buf), stageBytes)]
	var ferr error
	var once sync.Once
	fail := func(err error) { once.Do(func() { ferr = err }) }
	var f *os.File
	wr := bestOf(3, len(sub), func() {
		if f != nil {
			f.Close()
			os.Remove(f.Name())
		}
		var err error
		if f, err = os.CreateTemp(dir, "driftstore-bench-append-"); err != nil {
			fail(err)
			return
		}
		pass(sub, w, func(k, i int, p []byte) {
			if _, err := f.WriteAt(p, int64(i)*pieceSize); err != nil {
				fail(err)
			}
		})
	})
	if ferr != nil {
		return nil, ferr
	}
	defer os.Remove(f.Name())
	defer f.Close()
	dsts := make([][]byte, w)
	for i := range dsts {
		dsts[i] = make([]byte, pieceSize)
	}
	rd := parallel(sub, w, func(k, i int, p []byte) {
		if _, err := f.ReadAt(dsts[k][:len(p)], int64(i)*pieceSize); err != nil {
			fail(err)
		}
	})
	return []Stage{
		{Name: "file-append", Data: "any", Where: dir, Workers: w, MBps: wr},
		{Name: "file-read", Data: "any", Where: dir, Workers: w, MBps: rd},
	}, ferr
}

// bestOf runs fn reps times and returns MB/s of n bytes for the fastest run.
func bestOf(reps, n int, fn func()) float64 {
	best := math.MaxFloat64
	for range reps {
		start := time.Now()
		fn()
		best = min(best, time.Since(start).Seconds())
	}
	return float64(n) / best / 1e6
}

// perCPU is n bytes over cpu seconds in MB, 0 when no CPU time was measured (JSON has no
// infinity).
func perCPU(n int64, cpu float64) float64 {
	if cpu <= 0 {
		return 0
	}
	return float64(n) / cpu / 1e6
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pipeline ingests c's data into a fresh data directory under dir with w workers, best of two,
// then reads it back, best of three.
func pipeline(ctx context.Context, cfg Config, dir string, c ingestCase, w int) ([]Pipeline, error) {
	buf := c.data.buf
	base := Pipeline{Data: c.data.name, Hint: hintName(c.hint), Where: dir, Workers: w}
	best := base
	best.Op, best.Seconds = "ingest", math.MaxFloat64
	var keep *repo.Repo
	var id repo.PutResult
	for rep := 0; rep < 2; rep++ {
		tmp, err := os.MkdirTemp(dir, "driftstore-bench-")
		if err != nil {
			return nil, err
		}
		r, err := repo.Open(filepath.Join(tmp, "data"), repo.Options{NoSync: !cfg.Sync, Workers: w})
		if err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
		cpu0, start := cpuTime(), time.Now()
		res, err := r.PutReader(ctx, c.data.name, bytes.NewReader(buf), repo.PutOptions{Hint: c.hint, Workers: w})
		el, cpu := time.Since(start).Seconds(), (cpuTime() - cpu0).Seconds()
		if err != nil {
			r.Close()
			os.RemoveAll(tmp)
			return nil, err
		}
		if el < best.Seconds {
			best.Bytes, best.Seconds, best.MBps = res.BytesIn, el, float64(res.BytesIn)/el/1e6
			best.StoredBytes, best.Ratio = res.StoredBytes, float64(res.BytesIn)/float64(res.StoredBytes)
			best.Cores, best.MBPerCPUSecond = cpu/el, perCPU(res.BytesIn, cpu)
		}
		if keep == nil {
			keep, id = r, res
			defer func(r *repo.Repo, dir string) { r.Close(); os.RemoveAll(dir) }(r, tmp)
		} else {
			r.Close()
			os.RemoveAll(tmp)
		}
	}
	rb := base
	rb.Op, rb.Seconds, rb.StoredBytes = "read-back", math.MaxFloat64, id.StoredBytes
	for rep := 0; rep < 3; rep++ {
		cpu0, start := cpuTime(), time.Now()
		n, err := keep.Get(ctx, id.ID, io.Discard, repo.GetOptions{Workers: w})
		el, cpu := time.Since(start).Seconds(), (cpuTime() - cpu0).Seconds()
		if err != nil {
			return nil, err
		}
		if el < rb.Seconds {
			rb.Bytes, rb.Seconds, rb.MBps = n, el, float64(n)/el/1e6
			rb.Ratio, rb.Cores, rb.MBPerCPUSecond = float64(n)/float64(id.StoredBytes), cpu/el, perCPU(n, cpu)
		}
	}
	return []Pipeline{best, rb}, nil
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
	fmt.Fprintf(w, "%-16s %-7s %-12s %7s %10s %7s\n", "stage", "data", "hint/where", "workers", "MB/s", "ratio")
	for _, s := range res.Stages {
		ratio := ""
		if s.Ratio > 0 {
			ratio = fmt.Sprintf("%.3f", s.Ratio)
		}
		where := s.Hint
		if s.Where != "" {
			where = s.Where
		}
		fmt.Fprintf(w, "%-16s %-7s %-12s %7d %10.0f %7s\n", s.Name, s.Data, where, s.Workers, s.MBps, ratio)
	}
	fmt.Fprintf(w, "\n%-10s %-7s %-8s %-12s %7s %8s %7s %6s %9s %9s %6s\n", "pipeline", "data", "hint", "where", "workers", "MB/s", "ratio", "cores", "MB/cpu-s", "estimate", "MiB")
	for _, p := range res.Pipelines {
		fmt.Fprintf(w, "%-10s %-7s %-8s %-12s %7d %8.0f %7.3f %6.2f %9.0f %9.0f %6d\n", p.Op, p.Data, p.Hint, p.Where, p.Workers, p.MBps, p.Ratio, p.Cores, p.MBPerCPUSecond, p.EstimateMBps, p.Bytes>>20)
	}
	fmt.Fprintf(w, "\ncores: process CPU time / wall time; MB/cpu-s: bytes / process CPU time; estimate: CPU-bound MB/s from the stage limits (stage costs per byte summed over min(workers+1, GOMAXPROCS) cores; ingest no faster than one fastcdc goroutine)\n")
	if len(res.Dedup) > 0 {
		fmt.Fprintf(w, "\ngrowing KV series: 8 snapshots of a %d MiB float16 region (16 layers x K/V x 8 heads x 4096 positions x 64 dims)\n", KVRegionBytes>>20)
		fmt.Fprintf(w, "%-26s %9s %10s %10s %8s %8s\n", "chunker", "pos/snap", "in MiB", "stored MiB", "chunks", "in/stored")
		for _, d := range res.Dedup {
			fmt.Fprintf(w, "%-26s %9d %10d %10.1f %8d %8.2fx\n", d.Chunker, d.Positions, d.InputBytes>>20, float64(d.StoredBytes)/(1<<20), d.UniqueChunks, d.Ratio)
		}
	}
}
