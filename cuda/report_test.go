package cuda_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/cuda"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
)

// ReportEnv turns TestGPUReport on: it writes two Llama-3.2-1B-shaped models (≈ 2.5 and
// 1.3 GB; under $DRIFTSTORE_CUDA_MODELS when set, reused by later runs) and takes a minute or
// two on an H100. The value "restore" measures only the restore rows and their breakdown (no
// prefill/decode rows per GEMM variant; one warm-up instance instead).
const ReportEnv = "DRIFTSTORE_GPU_REPORT"

// reportCodecs are the KV codecs of the restore rows: each checkpoint is captured once per
// codec, into a store of its own (a chunk is kept in the form of its first Put, so one store
// would serve the second codec's checkpoint from the first's chunks).
var reportCodecs = []checkpoint.KVCodec{checkpoint.KVCodecFloat, checkpoint.KVCodecRaw}

// restoreVariant is one way of restoring in the restore rows: a KV codec's store, and whether
// the decode's workers are started per call (restore.IntoOptions.Spawn: how restores ran
// before the crew) instead of waking restore's parked crew.
type restoreVariant struct {
	codec  int // index in reportCodecs
	spawn  bool
	verify restore.Verify // how the restore checks chunks (the default: the pack store's seals)
}

// reportVariants: each codec with the crew, raw with goroutines spawned per call beside it, and
// raw checked by BLAKE3 (--verify full) instead of the seals.
var reportVariants = []restoreVariant{{0, false, restore.VerifySealed}, {1, false, restore.VerifySealed}, {1, true, restore.VerifySealed}, {1, false, restore.VerifyFull}}

// breakdownMin is the smallest context whose restore TestGPUReport breaks down (reads, BLAKE3,
// copies; workers).
const breakdownMin = 2048

// reportContexts are the contexts of the restore vs re-prefill rows (the 1B shape holds 8192).
var reportContexts = []int{24, 128, 512, 2048, 4096}

// report collects the lines of the tables TestGPUReport prints at the end.
type report struct{ lines []string }

func (r *report) add(format string, args ...any) {
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func msOf(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// TestGPUReport measures the Llama-3.2-1B-shaped synthetic model (F16 and Q8_0 weights, f16 KV
// cache on the device, prefill batch 512) on the CUDA backend through the whole stack (Wasm
// guest, host ops, greedy sampling in the guest), and prints tables (lines starting
// "report|"):
//
//   - prefill tok/s at 24, 128, 512, 2048 and 4096 tokens (best of 3; 2 at 4096), on a fresh
//     instance made before the clock starts, after a warm-up instance; the instance's memory
//     grows (and is registered) during the prefill, but in the rows "context allocated", where
//     it is made for the prompt and the decoded tokens, as llama.cpp makes its context;
//   - decode ms/token: 128 tokens after a 24-token prompt, and 64 tokens after 2048 tokens of
//     context, each the median of 3 instances' runs (one after each prefill repetition);
//   - restore vs re-prefill at 24…4096 tokens, for each KV codec (float: float16 byte planes
//     with Huffman, the default; raw: no hint, the blocks stored as they are): a full
//     checkpoint of a live instance (checkpoint.Capture into a durable cas.Pack and bbolt
//     index in a temporary directory per codec, chunks fsynced), then best of 3 (the codecs
//     alternating): restore.Into a fresh instance made for the context (KV memory allocated,
//     resident and registered at creation, not counted, as llama.cpp's context creation
//     allocates its KV cache) + the first token (sampled from the logits the checkpoint
//     carries: no forward pass) against Prefill of the same tokens + the first token into an
//     instance made the same way; the second token too (one forward pass each: after a
//     restore it also uploads the KV blocks from the registered linear memory into the device
//     mirror); the restored instance's second-step logits must equal the re-prefilled
//     instance's bit for bit (resume equivalence on one GPU), and the raw restore's those of
//     the float restore; the raw restore also with its decode's goroutines started per call
//     (restore.IntoOptions.Spawn, how restores ran before restore's crew);
//   - from 2048 tokens on, where a restore's time goes on this host (restoreBreakdown): the
//     KV chunks decoded into place by 1, 4, 8 and GOMAXPROCS workers, and the parts of that
//     work (pread, BLAKE3, memmove) timed alone on the same chunks and memory;
//   - the incremental checkpoint after 16 more tokens (Capture with the full checkpoint as
//     parent: only the blocks those tokens touched, plus the small state): the latency it adds
//     to a turn, with its phases; and beside it the same checkpoint taken as a snapshot
//     (checkpoint.TakeSnapshot, the turn's latency when the commit runs in the background:
//     serve --defer-checkpoints), committed afterwards: its manifest must equal Capture's (the
//     snapshot sees every KV byte the device wrote).
//
// Restores read chunks that were just written, so from the page cache: the local
// restore-after-suspend case, not a cold disk.
func TestGPUReport(t *testing.T) {
	gpu := openGPU(t)
	if os.Getenv(ReportEnv) == "" {
		t.Skipf("set %s=1 to run the 1B-shaped GPU report (writes ≈ 4 GB of model files, a minute or two on an H100)", ReportEnv)
	}
	info := gpu.Device().Info()
	gemmEnv := gpu.Device().GEMM()
	e := newEngine(t, gpu)
	var rep report
	rep.add("device: %s (sm_%d%d, %d SMs, %d MiB), driver API %d; GOMAXPROCS %d; graphs with PDL %v", info.Name, info.CC[0], info.CC[1], info.SMs, info.TotalMem>>20, info.DriverVersion, runtime.GOMAXPROCS(0), info.PDL)
	var perf, rest, breakdown []string
	restoreOnly := os.Getenv(ReportEnv) == "restore"
	// Printed even when a measurement fails half way (t.Fatal runs the deferred calls).
	defer func() {
		lib, lerr := cuda.CUBLASLibrary()
		rep.add("cuBLAS: %q (version %d; %v); GEMM options from the environment: %+v", lib, gpu.Device().CUBLASVersion(), lerr, gemmEnv)
		rep.add("")
		rep.add("| 1B shape, GEMM | prefill tok/s 24 / 128 / 512 / 2048 / 4096 | decode ms/token (128 tokens; 64 after 2048) |")
		rep.add("|---|---|---|")
		rep.lines = append(rep.lines, perf...)
		rep.add("")
		rep.add("| 1B shape | KV codec | context | KV MB | KV stored MB | full ckpt ms | new instance ms (not counted) | restore ms (prologue + decode + load) | TTFT restore | TTFT re-prefill | speedup | 2nd token: restore path | re-prefill path | incr ckpt 16 tok ms (prepare/store/commit; blocks) | turn latency of a deferred incr ckpt ms (snapshot) | same bits | decode workers (best restore) |")
		rep.add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
		rep.lines = append(rep.lines, rest...)
		rep.add("")
		rep.add("| where a restore's KV time goes (ms: best, range of 3; same chunks, same memory) | workers | restore.Decode, crew (KV chunks) | its workers (best) | Decode, goroutines spawned per call | pread only (raw: payload into place) | BLAKE3 only (in place) | memmove only | memmove + BLAKE3 per chunk | Decode (crew) GB/s |")
		rep.add("|---|---|---|---|---|---|---|---|---|---|")
		rep.lines = append(rep.lines, breakdown...)
		var b strings.Builder
		for _, l := range rep.lines {
			b.WriteString("report| " + l + "\n")
		}
		fmt.Print(b.String())
	}()
	for _, typ := range []gguf.Type{gguf.TypeF16, gguf.TypeQ8_0} {
		reportModel(t, e, gpu.Device(), "llama-3.2-1b", typ, reportContexts, restoreOnly, &perf, &rest, &breakdown)
	}
}

// reportModel measures one model on e (dev: its GPU); it appends the prefill/decode rows (one
// per GEMM variant: the own kernels, cuBLAS where it loads, for Q8_0 also cuBLAS from kept
// F16 copies; none when restoreOnly) to perf, each restore row to rest and the restore
// breakdowns to breakdown as soon as measured. The restore rows use the GEMM options the
// device opened with (the environment's). contexts must include 24 and 2048 for the decode
// figures.
func reportModel(t *testing.T, e *engine.Engine, dev *cuda.Device, preset string, typ gguf.Type, contexts []int, restoreOnly bool, perf, rest, breakdown *[]string) {
	ctx := context.Background()
	memInfo := dev.MemInfo
	gemmEnv := dev.GEMM()
	defer dev.SetGEMM(gemmEnv)
	t0 := time.Now()
	path := synthPath(t, preset, typ)
	t.Logf("%s: model file ready in %.1f s", typ, time.Since(t0).Seconds())
	free0, _, _ := memInfo()
	t1 := time.Now()
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	free1, _, _ := memInfo()
	t.Logf("%s: model loaded (weights uploaded) in %.2f s, %.0f MB of device memory", typ, time.Since(t1).Seconds(), float64(free0-free1)/1e6)
	vocab := m.Hyper().Vocab
	prompt := tokens(max(contexts[len(contexts)-1], 600), vocab, 11)
	// newInFor makes an instance for a context of n positions (engine.InstanceOptions.Context:
	// its KV memory allocated, resident and registered with the device at creation, as
	// llama.cpp allocates its KV cache when it makes a context); 0 for one that grows on demand.
	newInFor := func(n int) *engine.Instance {
		in, err := m.NewInstance(engine.InstanceOptions{Batch: 512, Context: n})
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	newIn := func() *engine.Instance { return newInFor(0) }
	type variant struct {
		name  string
		o     cuda.GEMMOptions
		alloc bool // instances made for the prompt and the decoded tokens (else grown on demand)
	}
	cublas := cuda.GEMMOptions{Mode: cuda.GEMMCUBLAS}
	variants := []variant{{name: "own", o: cuda.GEMMOptions{Mode: cuda.GEMMOwn}}, {name: "cublas", o: cublas}}
	if typ == gguf.TypeQ8_0 {
		q8copy := cublas
		q8copy.Q8Copy = true
		variants = append(variants, variant{name: "cublas, F16 copy", o: q8copy})
	} else {
		// The previous state for comparison: cuBLAS products, attention on ds_attn_mq.
		mq := cublas
		mq.AttnMinTokens = 1 << 30
		variants = append(variants, variant{name: "cublas, attn mq", o: mq})
	}
	// As llama.cpp measures prompt processing: on a context made beforehand, its KV memory
	// allocated and registered before the clock starts.
	variants = append(variants, variant{name: "cublas, context allocated", o: cublas, alloc: true})
	if restoreOnly {
		variants = nil
	}
	for _, v := range variants {
		if err := dev.SetGEMM(v.o); err != nil {
			t.Logf("%s: GEMM %s not measured: %v", typ, v.name, err)
			continue
		}
		mk := func(int) *engine.Instance { return newIn() }
		if v.alloc {
			mk = func(np int) *engine.Instance { return newInFor(np + decodeTokens) }
		}
		prefillDecode(t, mk, prompt, fmt.Sprintf("%s, %s", typ, v.name), contexts, perf)
	}
	if err := dev.SetGEMM(gemmEnv); err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("%s (%s)", typ, gemmEnv.Mode)
	// Under cuBLAS the KV bits depend on how the prompt was cut into batches: the restored
	// instance is compared with a twin fed the same batches as the captured one.
	sameCalls := gemmEnv.Mode != cuda.GEMMOwn
	twinLogits := func(n int) (int32, []float32) {
		in := newIn() // made as the captured instance was: the same buffers, the same calls
		defer in.Close()
		fed := 0
		for _, c := range contexts {
			if c > n {
				break
			}
			if err := in.Prefill(prompt[fed:c]); err != nil {
				t.Fatal(err)
			}
			fed = c
		}
		if _, err := in.Sample(); err != nil {
			t.Fatal(err)
		}
		tok, err := in.Step()
		if err != nil {
			t.Fatal(err)
		}
		return tok, logits(t, in)
	}
	if restoreOnly { // warm-up: kernels loaded, every code path once
		in := newIn()
		if err := in.Prefill(prompt[:600]); err != nil {
			t.Fatal(err)
		}
		if _, err := in.Generate(4, nil); err != nil {
			t.Fatal(err)
		}
		in.Close()
	}
	restoreRows(t, ctx, m, newIn, newInFor, prompt, label, contexts, sameCalls, twinLogits, rest, breakdown)
}

// decodeTokens is the most tokens prefillDecode decodes after a prompt.
const decodeTokens = 128

// prefillDecode measures prefill at each context (best of 3; 2 at 4096) on fresh instances
// (newIn(n) makes one for a prompt of n tokens) after a warm-up instance, and decode after 24
// and 2048 tokens; it appends a row to perf.
func prefillDecode(t *testing.T, newIn func(n int) *engine.Instance, prompt []int32, label string, contexts []int, perf *[]string) {
	{ // warm-up: kernels loaded, every code path once
		in := newIn(600)
		if err := in.Prefill(prompt[:600]); err != nil {
			t.Fatal(err)
		}
		if _, err := in.Generate(4, nil); err != nil {
			t.Fatal(err)
		}
		in.Close()
	}

	// Prefill and decode.
	prefill := map[int]time.Duration{}
	var dec128s, dec2048s []float64
	for _, np := range contexts {
		reps := 3
		if np >= 4096 {
			reps = 2
		}
		for rep := 0; rep < reps; rep++ {
			in := newIn(np)
			t0 := time.Now()
			if err := in.Prefill(prompt[:np]); err != nil {
				t.Fatal(err)
			}
			d := time.Since(t0)
			if old, ok := prefill[np]; !ok || d < old {
				prefill[np] = d
			}
			if np == 24 || np == 2048 {
				n := decodeTokens
				if np == 2048 {
					n = 64
				}
				t1 := time.Now()
				if _, err := in.Generate(n, nil); err != nil {
					t.Fatal(err)
				}
				per := msOf(time.Since(t1)) / float64(n)
				if np == 24 {
					dec128s = append(dec128s, per)
				} else {
					dec2048s = append(dec2048s, per)
				}
			}
			in.Close()
		}
	}
	var ps []string
	for _, np := range contexts {
		ps = append(ps, fmt.Sprintf("%.0f", float64(np)/prefill[np].Seconds()))
	}
	// Decode: the median of the instances' runs (one per prefill repetition): a single run
	// on these shared hosts is now and then 20-40% slow.
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	dec128, dec2048 := median(dec128s), median(dec2048s)
	*perf = append(*perf, fmt.Sprintf("| %s | %s | %.2f; %.2f |", label, strings.Join(ps, " / "), dec128, dec2048))
	t.Logf("%s: prefill tok/s %s; decode %.2f ms/token (128 tokens), %.2f after 2048", label, strings.Join(ps, " / "), dec128, dec2048)
}

// codecStore is one KV codec's durable pack store and index (see reportCodecs).
type codecStore struct {
	codec checkpoint.KVCodec
	store *cas.Pack
	ix    *index.Index
}

// restoreRows measures restore against re-prefill at each context, for each KV codec, and the
// incremental checkpoint after it (see TestGPUReport), appending a row to rest per context and
// codec, and from breakdownMin on a breakdown of the restore's KV time per codec to breakdown.
// sameCalls: the restored instance's bits are compared with twin(n) (an instance fed the same
// batches as the captured one), and a re-prefill's differing bits are no error.
func restoreRows(t *testing.T, ctx context.Context, m *engine.Model, newIn func() *engine.Instance, newInFor func(int) *engine.Instance,
	prompt []int32, typ string, contexts []int, sameCalls bool, twin func(n int) (int32, []float32), rest, breakdown *[]string) {
	// Restore vs re-prefill, incremental checkpoint.
	dir := t.TempDir()
	var stores []codecStore
	for _, c := range reportCodecs {
		store, err := cas.OpenPack(filepath.Join(dir, string(c), "packs"), cas.PackOptions{}) // what data directories use
		if err != nil {
			t.Fatal(err)
		}
		ix, err := index.Open(filepath.Join(dir, string(c), "index.db"), store, index.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer ix.Close()
		stores = append(stores, codecStore{codec: c, store: store, ix: ix})
	}
	live := newIn()
	defer func() { live.Close() }()
	fed := 0
	for _, n := range contexts {
		if err := live.Prefill(prompt[fed:n]); err != nil {
			t.Fatal(err)
		}
		fed = n
		type measured struct {
			full                  *checkpoint.Result
			restore, decode, load time.Duration
			ttft, second          time.Duration
			newInst               time.Duration
			workers               restore.Stats
			tok                   int32
			logits                []float32
			stored                int64
		}
		fulls := make([]*checkpoint.Result, len(stores))
		stored := make([]int64, len(stores))
		for k, cs := range stores {
			full, err := checkpoint.Capture(ctx, cs.ix, m, live, checkpoint.CaptureOptions{KVCodec: cs.codec})
			if err != nil {
				t.Fatal(err)
			}
			fulls[k] = full
			for _, l := range full.Checkpoint.KV {
				for _, ref := range l {
					info, err := cs.store.Stat(ctx, ref.Digest)
					if err != nil {
						t.Fatal(err)
					}
					stored[k] += info.StoredSize
				}
			}
		}
		ms := make([]measured, len(reportVariants))
		for k, v := range reportVariants {
			ms[k].full, ms[k].stored = fulls[v.codec], stored[v.codec]
		}
		// Restores of the variants alternate, so that drift on the machine touches them alike.
		for rep := 0; rep < 3; rep++ {
			for k, v := range reportVariants {
				cs := stores[v.codec]
				best := &ms[k]
				t0 := time.Now()
				in := newInFor(n)
				made := time.Since(t0)
				t1 := time.Now()
				rr, err := restore.IntoWith(ctx, cs.store, in, best.full.Checkpoint, restore.IntoOptions{Spawn: v.spawn, Verify: v.verify})
				if err != nil {
					t.Fatal(err)
				}
				dr := time.Since(t1)
				if _, err := in.Sample(); err != nil {
					t.Fatal(err)
				}
				ttft := time.Since(t1)
				tok, err := in.Step()
				if err != nil {
					t.Fatal(err)
				}
				second := time.Since(t1)
				if rep == 0 {
					best.tok, best.logits = tok, logits(t, in)
					best.restore, best.decode, best.load, best.ttft, best.second, best.newInst, best.workers = dr, rr.Decode, rr.Load, ttft, second, made, rr.Workers
				} else {
					if dr < best.restore {
						best.restore, best.decode, best.load, best.workers = dr, rr.Decode, rr.Load, rr.Workers
					}
					best.ttft, best.second, best.newInst = min(best.ttft, ttft), min(best.second, second), min(best.newInst, made)
				}
				in.Close()
			}
		}
		restoredTok, restoredLogits := ms[0].tok, ms[0].logits
		var pre struct{ ttft, second time.Duration }
		same := "yes"
		for rep := 0; rep < 3; rep++ {
			in := newInFor(n)
			t1 := time.Now()
			if err := in.Prefill(prompt[:n]); err != nil {
				t.Fatal(err)
			}
			if _, err := in.Sample(); err != nil {
				t.Fatal(err)
			}
			ttft := time.Since(t1)
			tok, err := in.Step()
			if err != nil {
				t.Fatal(err)
			}
			second := time.Since(t1)
			if rep == 0 {
				pre.ttft, pre.second = ttft, second
				if tok != restoredTok || bitsDiff(logits(t, in), restoredLogits) >= 0 {
					if !sameCalls {
						same = "NO"
						t.Errorf("%s, %d tokens: the restored instance's next token and logits differ from the re-prefilled one's (%d vs %d)", typ, n, restoredTok, tok)
					} else {
						same = "differs from one-call re-prefill"
					}
				}
			} else {
				pre.ttft, pre.second = min(pre.ttft, ttft), min(pre.second, second)
			}
			in.Close()
		}
		if sameCalls {
			if tok, l := twin(n); tok != restoredTok || bitsDiff(l, restoredLogits) >= 0 {
				same = "NO (same batches)"
				t.Errorf("%s, %d tokens: the restored instance's next token and logits differ from an instance fed the same batches (%d vs %d)", typ, n, restoredTok, tok)
			} else {
				same = "yes (same batches); " + same
			}
		}
		for k, v := range reportVariants {
			cs := stores[v.codec]
			best := &ms[k]
			cp := best.full.Checkpoint
			name := string(cs.codec)
			if v.spawn {
				name += ", spawned"
			}
			if v.verify == restore.VerifyFull {
				name += ", verify full (BLAKE3)"
			}
			sameK := same
			if k > 0 {
				// The same instance captured in another codec: the same manifest, the same bits.
				sameK = "= " + string(stores[0].codec) + " restore"
				if cp.ID != ms[0].full.Checkpoint.ID || best.tok != restoredTok || bitsDiff(best.logits, restoredLogits) >= 0 {
					sameK = "NO (vs " + string(stores[0].codec) + ")"
					t.Errorf("%s, %d tokens: the %s restore (checkpoint %s, token %d) differs from the %s restore (%s, %d)",
						typ, n, name, cp.ID, best.tok, stores[0].codec, ms[0].full.Checkpoint.ID, restoredTok)
				}
			}
			incrCell, snapCell := "(above)", "(above)"
			if v.spawn { // the incremental checkpoint does not depend on how the restore woke its workers
				w := best.workers
				row := fmt.Sprintf("| %s | %s | %d | %.1f | %.1f | %.1f | %.2f | %.2f (%.2f + %.2f + %.2f) | %.2f | %.2f | %.1f× | %.2f | %.2f | %s | %s | %s | %d of %d, %.1f cores busy, last started %.3f ms |",
					typ, name, n, float64(cp.KVBytes())/1e6, float64(best.stored)/1e6, msOf(best.full.Duration), msOf(best.newInst),
					msOf(best.restore), msOf(best.restore-best.decode-best.load), msOf(best.decode), msOf(best.load),
					msOf(best.ttft), msOf(pre.ttft), msOf(pre.ttft)/math.Max(msOf(best.ttft), 1e-3), msOf(best.second), msOf(pre.second),
					incrCell, snapCell, sameK, w.Active, w.Workers, w.Cores(), msOf(w.LastStart))
				*rest = append(*rest, row)
				t.Logf("%s, %s KV, %d tokens: TTFT restore %.2f ms (decode: %s) vs re-prefill %.2f ms", typ, name, n, msOf(best.ttft), best.workers, msOf(pre.ttft))
				continue
			}
			// Incremental: the checkpoint restored, 16 more tokens, a checkpoint with it as parent.
			in := newIn()
			if _, err := restore.Into(ctx, cs.store, in, cp, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := in.Generate(16, nil); err != nil {
				t.Fatal(err)
			}
			opts := checkpoint.CaptureOptions{Parent: cp, KVCodec: cs.codec}
			snap, err := checkpoint.TakeSnapshot(m, in, opts)
			if err != nil {
				t.Fatal(err)
			}
			incr, err := checkpoint.Capture(ctx, cs.ix, m, in, opts)
			if err != nil {
				t.Fatal(err)
			}
			in.Close()
			// The snapshot, committed after its instance is gone, names what Capture named.
			deferred, err := snap.Commit(ctx, cs.ix)
			if err != nil {
				t.Fatal(err)
			}
			if deferred.Checkpoint.ID != incr.Checkpoint.ID {
				sameK = "NO"
				t.Errorf("%s, %s, %d tokens: the snapshot's checkpoint %s differs from Capture's %s", typ, cs.codec, n, deferred.Checkpoint.ID, incr.Checkpoint.ID)
			}
			w := best.workers
			incrCell = fmt.Sprintf("%.2f (%.2f/%.2f/%.2f; %d)", msOf(incr.Duration), msOf(incr.Prepare), msOf(incr.Store), msOf(incr.Commit), incr.BlocksWritten)
			snapCell = fmt.Sprintf("%.3f", msOf(snap.Duration()))
			row := fmt.Sprintf("| %s | %s | %d | %.1f | %.1f | %.1f | %.2f | %.2f (%.2f + %.2f + %.2f) | %.2f | %.2f | %.1f× | %.2f | %.2f | %s | %s | %s | %d of %d, %.1f cores busy, last started %.3f ms |",
				typ, name, n, float64(cp.KVBytes())/1e6, float64(best.stored)/1e6, msOf(best.full.Duration), msOf(best.newInst),
				msOf(best.restore), msOf(best.restore-best.decode-best.load), msOf(best.decode), msOf(best.load),
				msOf(best.ttft), msOf(pre.ttft), msOf(pre.ttft)/math.Max(msOf(best.ttft), 1e-3), msOf(best.second), msOf(pre.second),
				incrCell, snapCell, sameK, w.Active, w.Workers, w.Cores(), msOf(w.LastStart))
			*rest = append(*rest, row)
			t.Logf("%s, %s KV, %d tokens: TTFT restore %.2f ms (new instance %.2f ms not counted; decode: %s) vs re-prefill %.2f ms; incremental checkpoint %.2f ms (deferred: %.3f ms in the turn)",
				typ, name, n, msOf(best.ttft), msOf(best.newInst), best.workers, msOf(pre.ttft), msOf(incr.Duration), msOf(snap.Duration()))
		}
		if n >= breakdownMin {
			for k, cs := range stores {
				*breakdown = append(*breakdown, restoreBreakdown(t, ctx, newInFor, cs, fulls[k].Checkpoint, typ)...)
			}
		}
	}
}

// restoreBreakdown times, on this host, the parts of restoring checkpoint cp's KV blocks from
// cs: its KV chunks decoded by restore.DecodeWith into the block regions of a fresh instance
// made for the context (the memory a restore writes: resident and registered with the GPU),
// with 1, 4, 8 and GOMAXPROCS workers, woken from restore's crew and, beside it, started per
// call (DecodeOptions.Spawn); and with the same workers and chunk order (a shared
// counter) the parts alone: for raw chunks the pread of each payload straight into its place
// (no hash), BLAKE3 of each chunk in place (checked against its digest), memmove from a heap
// copy into place, and memmove + BLAKE3 chunk by chunk (the floor: one copy and a hash of each
// chunk on the core that copied it). Each figure is the best of 3 with the range. It returns
// the table rows.
func restoreBreakdown(t *testing.T, ctx context.Context, newInFor func(int) *engine.Instance, cs codecStore, cp *checkpoint.Checkpoint, typ string) []string {
	n := cp.Position
	in := newInFor(n)
	defer in.Close()
	regions, err := in.AllocKV(n)
	if err != nil {
		t.Fatal(err)
	}
	mem := in.Memory()
	jobs := make([]restore.Job, 0, len(regions))
	var total int64
	for _, r := range regions {
		end := uint64(r.Offset) + uint64(r.Length)
		jobs = append(jobs, restore.Job{Digest: cp.KV[r.Layer][r.Block].Digest, Dst: mem[r.Offset:end:end], Layer: r.Layer, Block: r.Block})
		total += int64(r.Length)
	}
	// Where each raw payload lies, for the pread-only part; the bytes, for memmove.
	type loc struct {
		f   *os.File
		off int64
	}
	var locs []loc
	if cs.codec == checkpoint.KVCodecRaw {
		files := map[string]*os.File{}
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		for _, j := range jobs {
			path, off, length, err := cs.store.Locate(j.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if length != len(j.Dst) {
				t.Logf("breakdown %s %s %d: chunk %s is stored in %d bytes, not raw: no pread-only figure", typ, cs.codec, n, j.Digest, length)
				locs = nil
				break
			}
			f := files[path]
			if f == nil {
				if f, err = os.Open(path); err != nil {
					t.Fatal(err)
				}
				files[path] = f
			}
			locs = append(locs, loc{f, off})
		}
	}
	if err := restore.Decode(ctx, cs.store, jobs, 0); err != nil { // the bytes in place, to copy below
		t.Fatal(err)
	}
	src := make([][]byte, len(jobs))
	for i, j := range jobs {
		src[i] = slices.Clone(j.Dst)
	}
	var bad atomic.Int64
	par := func(workers int, fn func(i int)) time.Duration {
		t0 := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1) - 1)
					if i >= len(jobs) {
						return
					}
					fn(i)
				}
			})
		}
		wg.Wait()
		return time.Since(t0)
	}
	// best3 runs f three times: "best (lo-hi)" in ms, and the best.
	best3 := func(f func() time.Duration) (string, time.Duration) {
		var ds []time.Duration
		for range 3 {
			ds = append(ds, f())
		}
		lo, hi := slices.Min(ds), slices.Max(ds)
		return fmt.Sprintf("%.3f (%.3f-%.3f)", msOf(lo), msOf(lo), msOf(hi)), lo
	}
	var rows []string
	nproc := runtime.GOMAXPROCS(0)
	for _, workers := range []int{1, 4, 8, nproc} {
		if workers > nproc {
			continue
		}
		var bestStats restore.Stats
		dec, dbest := best3(func() time.Duration {
			t0 := time.Now()
			st, err := restore.DecodeStats(ctx, cs.store, jobs, workers)
			d := time.Since(t0)
			if err != nil {
				t.Fatal(err)
			}
			if bestStats.Wall == 0 || st.Wall < bestStats.Wall {
				bestStats = st
			}
			return d
		})
		spawned, _ := best3(func() time.Duration {
			t0 := time.Now()
			if _, err := restore.DecodeWith(ctx, cs.store, jobs, restore.DecodeOptions{Workers: workers, Spawn: true}); err != nil {
				t.Fatal(err)
			}
			return time.Since(t0)
		})
		pread := "–"
		if locs != nil {
			pread, _ = best3(func() time.Duration {
				return par(workers, func(i int) {
					if _, err := locs[i].f.ReadAt(jobs[i].Dst, locs[i].off); err != nil {
						bad.Add(1)
					}
				})
			})
		}
		hash, _ := best3(func() time.Duration {
			return par(workers, func(i int) {
				if cas.Sum(jobs[i].Dst) != jobs[i].Digest {
					bad.Add(1)
				}
			})
		})
		move, _ := best3(func() time.Duration {
			return par(workers, func(i int) { copy(jobs[i].Dst, src[i]) })
		})
		moveHash, _ := best3(func() time.Duration {
			return par(workers, func(i int) {
				copy(jobs[i].Dst, src[i])
				if cas.Sum(jobs[i].Dst) != jobs[i].Digest {
					bad.Add(1)
				}
			})
		})
		row := fmt.Sprintf("| %s, %s KV, %d tokens (%d chunks, %.1f MB) | %d | %s | %s | %s | %s | %s | %s | %s | %.1f |",
			typ, cs.codec, n, len(jobs), float64(total)/1e6, workers, dec, bestStats, spawned, pread, hash, move, moveHash, float64(total)/dbest.Seconds()/1e9)
		rows = append(rows, row)
		t.Logf("breakdown %s", row)
	}
	if b := bad.Load(); b > 0 {
		t.Errorf("breakdown %s %s %d: %d chunks read or hashed wrong", typ, cs.codec, n, b)
	}
	return rows
}
