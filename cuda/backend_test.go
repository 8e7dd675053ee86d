package cuda

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
)

func newCUDABackend(t testing.TB, kv KVPlacement) *Backend {
	t.Helper()
	return newCUDABackendOpts(t, BackendOptions{KV: kv})
}

func newCUDABackendOpts(t testing.TB, opts BackendOptions) *Backend {
	t.Helper()
	device(t) // skips without a GPU
	b, err := NewBackend(opts)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no CUDA driver: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// synthModel writes the synthetic preset model (seed 3) and returns its path. Under
// $DRIFTSTORE_CUDA_MODELS (set by scripts/gpu-check.sh) the file is kept and reused, named as
// the external tests name it (synthPath), so one run writes each 1B-shaped file once.
func synthModel(t testing.TB, preset string, typ gguf.Type) string {
	t.Helper()
	dir := os.Getenv("DRIFTSTORE_CUDA_MODELS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%s-s3.gguf", preset, typ))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	spec, err := gguf.Synth(preset, typ, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.WriteFile(path, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

var (
	cacheOnce sync.Once
	cacheDir  string
)

// moduleCache is a compiled-module cache shared by the tests of this binary (removed by
// TestMain), so each engine does not compile the guest again.
func moduleCache(t testing.TB) string {
	cacheOnce.Do(func() {
		d, err := os.MkdirTemp("", "cuda-modcache")
		if err == nil {
			cacheDir = d
		}
	})
	if cacheDir == "" {
		t.Fatal("no module cache directory")
	}
	return cacheDir
}

type runResult struct {
	logits []float32 // after the prompt
	tokens []int32   // greedy continuation
	kv     []byte    // the KV blocks in use, in order
	last   []float32 // logits after the continuation
}

func runModel(t testing.TB, b engine.Backend, path string, kv engine.KVType, prompt []int32, steps int, oneByOne bool) runResult {
	t.Helper()
	e, err := engine.New(engine.Options{Backend: b, CacheDir: moduleCache(t)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	in, err := m.NewInstance(engine.InstanceOptions{KVType: kv})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if oneByOne {
		for _, tok := range prompt {
			if err := in.Prefill([]int32{tok}); err != nil {
				t.Fatal(err)
			}
		}
	} else if err := in.Prefill(prompt); err != nil {
		t.Fatal(err)
	}
	var r runResult
	if r.logits, err = in.Logits(); err != nil {
		t.Fatal(err)
	}
	regs, err := in.KVRegions()
	if err != nil {
		t.Fatal(err)
	}
	mem := in.Memory()
	for _, g := range regs {
		r.kv = append(r.kv, mem[g.Offset:g.Offset+g.Length]...)
	}
	if steps > 0 {
		if r.tokens, err = in.Generate(steps, nil); err != nil {
			t.Fatal(err)
		}
		if r.last, err = in.Logits(); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func promptTokens(n, vocab int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32((i*7919 + 13) % vocab)
	}
	return p
}

// TestBackendMatchesCPU runs the tiny synthetic model through the engine on the CUDA backend
// (both KV placements) and on the CPU backend. Tolerance for the logits: the two differ only
// by float32 summation order (~1e-7 relative per op) until a K or V value lands on the
// other side of an F16 rounding boundary, which changes it by up to 2^-11 relative; through
// 6 layers that stays well under 1e-2 of the logits' largest magnitude, the bound used.
// On CUDA itself: bit-identical logits between runs, between the two placements, and
// between batched and token-by-token prefill (the same KV bytes): all with the own kernels
// (GEMMOwn); TestCUBLASModel checks the cuBLAS path.
func TestBackendMatchesCPU(t *testing.T) {
	own := &GEMMOptions{Mode: GEMMOwn} // batched = token-by-token holds on the own kernels only
	bd := newCUDABackendOpts(t, BackendOptions{KV: KVDevice, GEMM: own})
	bh := newCUDABackendOpts(t, BackendOptions{KV: KVHost, GEMM: own})
	be := newCUDABackendOpts(t, BackendOptions{KV: KVDevice, Eager: true, GEMM: own})
	bp := newCUDABackendOpts(t, BackendOptions{KV: KVDevice, GEMM: own, Profile: true})
	for _, typ := range []gguf.Type{gguf.TypeQ8_0, gguf.TypeF16} {
		path := synthModel(t, "tiny", typ)
		for _, kv := range []engine.KVType{engine.KVF16, engine.KVF32} {
			name := fmt.Sprintf("%v/%v", typ, kv)
			prompt := promptTokens(40, 32000)
			ref := runModel(t, engine.CPU(), path, kv, prompt, 16, false)
			g1 := runModel(t, bd, path, kv, prompt, 16, false)
			g2 := runModel(t, bd, path, kv, prompt, 16, false)
			gh := runModel(t, bh, path, kv, prompt, 16, false)
			g1b1 := runModel(t, bd, path, kv, prompt, 0, true)
			if i := bitsEqual(g1.logits, g2.logits); i >= 0 || bitsEqual(g1.last, g2.last) >= 0 {
				t.Fatalf("%s: CUDA runs differ", name)
			}
			if bitsEqual(g1.logits, gh.logits) >= 0 || bitsEqual(g1.last, gh.last) >= 0 || string(g1.kv) != string(gh.kv) {
				t.Fatalf("%s: KV on device and KV in host memory give different results", name)
			}
			if string(g1.kv) != string(g1b1.kv) || bitsEqual(g1.logits, g1b1.logits) >= 0 {
				t.Fatalf("%s: batched and token-by-token prefill differ on CUDA", name)
			}
			// Deferred ops replayed through CUDA graphs against every kernel launched at once.
			ge := runModel(t, be, path, kv, prompt, 16, false)
			if bitsEqual(g1.logits, ge.logits) >= 0 || bitsEqual(g1.last, ge.last) >= 0 || string(g1.kv) != string(ge.kv) {
				t.Fatalf("%s: eager launches and graph replays give different results", name)
			}
			// Profiled: the same results, and device intervals that fit in the host's.
			bp.ResetProfile()
			gp := runModel(t, bp, path, kv, prompt, 16, false)
			if bitsEqual(g1.logits, gp.logits) >= 0 || bitsEqual(g1.last, gp.last) >= 0 || string(g1.kv) != string(gp.kv) {
				t.Fatalf("%s: a profiled backend gives different results", name)
			}
			if p := bp.Profile(); p.Syncs < 16 || p.Kernels <= 0 || p.CopyBack <= 0 ||
				p.Kernels+p.CopyBack > p.Wall+time.Duration(p.Syncs)*10*time.Microsecond {
				t.Fatalf("%s: profile of a prefill and 16 steps: %+v", name, p)
			}
			var maxRef, maxDiff float64
			for i := range ref.logits {
				maxRef = max(maxRef, math.Abs(float64(ref.logits[i])))
				maxDiff = max(maxDiff, math.Abs(float64(ref.logits[i]-g1.logits[i])))
			}
			same := 0
			for i := range ref.tokens {
				if ref.tokens[i] == g1.tokens[i] {
					same++
				}
			}
			t.Logf("%s: max |cuda-cpu| logit = %.3g (max |logit| %.3g); greedy tokens equal %d/%d", name, maxDiff, maxRef, same, len(ref.tokens))
			if !(maxDiff <= 1e-2*maxRef) {
				t.Fatalf("%s: logits differ from the CPU backend by %g (max |logit| %g)", name, maxDiff, maxRef)
			}
		}
	}
}

// BenchmarkGenerate: prefill and decode of the Llama-3.2-1B-shaped synthetic model through the
// engine (guest + host ops, greedy sampling in the guest) on the CUDA backend, KV on the
// device (DRIFTSTORE_BENCH_KVHOST=1 adds the KV-in-host-memory placement). Prefill of 24, 128,
// 512 and 2048 tokens (batch 512, on a fresh instance after a warm-up one); decode of 64 tokens
// after 128 and 32 after 2048 tokens of context.
func BenchmarkGenerate(b *testing.B) {
	places := []KVPlacement{KVDevice}
	if os.Getenv("DRIFTSTORE_BENCH_KVHOST") == "1" {
		places = append(places, KVHost)
	}
	for _, kv := range places {
		be := newCUDABackend(b, kv)
		for _, typ := range []gguf.Type{gguf.TypeF16, gguf.TypeQ8_0} {
			path := synthModel(b, "llama-3.2-1b", typ)
			e, err := engine.New(engine.Options{Backend: be, CacheDir: moduleCache(b)})
			if err != nil {
				b.Fatal(err)
			}
			m, err := e.LoadModel(path)
			if err != nil {
				b.Fatal(err)
			}
			newIn := func() *engine.Instance {
				in, err := m.NewInstance(engine.InstanceOptions{Batch: 512})
				if err != nil {
					b.Fatal(err)
				}
				return in
			}
			warm := newIn()
			if err := warm.Prefill(promptTokens(600, 128256)); err != nil {
				b.Fatal(err)
			}
			if _, err := warm.Generate(4, nil); err != nil {
				b.Fatal(err)
			}
			warm.Close()
			for _, np := range []int{24, 128, 512, 2048} {
				b.Run(fmt.Sprintf("%v/kv%v/prefill%d", typ, kv, np), func(b *testing.B) {
					for i := 0; i < b.N; i++ {
						in := newIn()
						t0 := time.Now()
						if err := in.Prefill(promptTokens(np, 128256)); err != nil {
							b.Fatal(err)
						}
						d := time.Since(t0)
						b.ReportMetric(float64(np)/d.Seconds(), "prefill-tok/s")
						if np == 128 || np == 2048 {
							dec := 64
							if np == 2048 {
								dec = 32
							}
							t1 := time.Now()
							if _, err := in.Generate(dec, nil); err != nil {
								b.Fatal(err)
							}
							b.ReportMetric(float64(time.Since(t1).Microseconds())/float64(dec)/1000, "decode-ms/tok")
						}
						in.Close()
					}
				})
			}
			m.Close()
			e.Close()
		}
	}
}

// BenchmarkDecode: decode of the 1B-shaped F16 model (DRIFTSTORE_BENCH_TYPE=q8_0: Q8_0; KV
// on the device) after a 24-token prompt (DRIFTSTORE_BENCH_CONTEXT=N: an N-token prompt, for
// decode at long contexts), b.N tokens in one Generate call (run it with -test.benchtime
// 512x); reports ms/token. Made for profiles of the host side of a decode step
// (-test.cpuprofile, nsys) and A/B runs (scripts/gpu-check.sh ab).
func BenchmarkDecode(b *testing.B) {
	// DRIFTSTORE_BENCH_PROFILE=1: where a step's time goes (BackendOptions.Profile).
	profile := os.Getenv("DRIFTSTORE_BENCH_PROFILE") == "1"
	be := newCUDABackendOpts(b, BackendOptions{KV: KVDevice, Profile: profile})
	typ := gguf.TypeF16
	switch v := os.Getenv("DRIFTSTORE_BENCH_TYPE"); v {
	case "", "f16":
	case "q8_0":
		typ = gguf.TypeQ8_0
	default:
		b.Fatalf("DRIFTSTORE_BENCH_TYPE=%q: want f16 or q8_0", v)
	}
	np := 24
	if v := os.Getenv("DRIFTSTORE_BENCH_CONTEXT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 8000 {
			b.Fatalf("DRIFTSTORE_BENCH_CONTEXT=%q: want a prompt length of 1 to 8000 tokens", v)
		}
		np = n
	}
	path := synthModel(b, "llama-3.2-1b", typ)
	e, err := engine.New(engine.Options{Backend: be, CacheDir: moduleCache(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	m, err := e.LoadModel(path)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	in, err := m.NewInstance(engine.InstanceOptions{Batch: 512})
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	if err := in.Prefill(promptTokens(np, 128256)); err != nil {
		b.Fatal(err)
	}
	if _, err := in.Generate(8, nil); err != nil {
		b.Fatal(err)
	}
	be.ResetProfile()
	b.ResetTimer()
	t0 := time.Now()
	if _, err := in.Generate(b.N, nil); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(time.Since(t0).Microseconds())/float64(b.N)/1000, "ms/token")
	if profile {
		p := be.Profile()
		per := func(d time.Duration) float64 { return d.Seconds() * 1e3 / float64(b.N) }
		b.ReportMetric(per(p.Kernels), "kernels-ms/token")
		b.ReportMetric(per(p.CopyBack), "copyback-ms/token")
		b.ReportMetric(per(p.Wall-p.Kernels-p.CopyBack), "idle-ms/token")
		b.ReportMetric(float64(p.Syncs)/float64(b.N), "syncs/token")
	}
}

// BenchmarkPrefill: one prefill of 512 or 2048 tokens (batches of 512) of the 1B-shaped F16
// model on a fresh instance per iteration, KV on the device, the device's GEMM options (the
// environment's); reports tok/s. "alloc": the instance made for the context (its memory
// allocated and registered at creation, as llama.cpp allocates its KV cache with the context);
// "grow": memory grown and registered during the prefill (as TestGPUReport's prefill rows).
// Made for profiles of a prefill (-test.cpuprofile, ncu) too.
func BenchmarkPrefill(b *testing.B) {
	be := newCUDABackend(b, KVDevice)
	path := synthModel(b, "llama-3.2-1b", gguf.TypeF16)
	e, err := engine.New(engine.Options{Backend: be, CacheDir: moduleCache(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	m, err := e.LoadModel(path)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	prompt := promptTokens(2048, 128256)
	for _, c := range []struct {
		np   int
		grow bool
	}{{512, false}, {2048, false}, {512, true}, {2048, true}} {
		np, ctx, name := c.np, c.np, "alloc"
		if c.grow {
			ctx, name = 0, "grow"
		}
		b.Run(fmt.Sprintf("n%d/%s", np, name), func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				in, err := m.NewInstance(engine.InstanceOptions{Batch: 512, Context: ctx})
				if err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if err := in.Prefill(prompt[:np]); err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
				in.Close()
			}
			b.ReportMetric(float64(np*b.N)/total.Seconds(), "tok/s")
		})
	}
}
