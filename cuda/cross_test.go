package cuda_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
)

// crossBound is the tolerance for the logits of one forward pass run on the two backends
// from the same restored state: max |Δ| / RMS(logits of the originating backend).
//
// Why these values. From a restored checkpoint both backends hold bit-identical inputs: the
// KV blocks (restore copies the captured bytes; checked), the token history, the sampler and
// RNG state, and the last logits (so the first token is identical too; checked). The next
// forward pass then differs only by float32 arithmetic: summation order in the matrix products
// (the GPU splits each dot product over lanes, the CPU over SIMD registers), the exp and rsqrt
// implementations, and, with an f16 KV cache, the rounding of the new position's K and V to
// f16, where a difference of one float32 ulp can move a value across an f16 rounding boundary
// (one f16 ulp, 2^-11 ≈ 4.9e-4 relative, of that element).
//   - f32 KV: rounding-order noise only. engine/reference_test.go holds the CPU backend within
//     1e-4 of a float64 reference pass (measured ≈ 1e-6), and the CUDA kernels are checked
//     against float64 per op (TestMatMul and the rest: a few units of roundoff per sum). 1e-3
//     leaves ≥ 10× margin over two passes that each meet the engine's 1e-4.
//   - f16 KV: the f16 flips of the one new position add at most ≈ 4.9e-4 relative to the
//     attention output of that position's weight; TestBackendMatchesCPU measured CUDA vs CPU
//     ≤ 5.6e-5 absolute (≈ 1.7e-4 × RMS: tiny's logits have an RMS of ≈ 0.34) over a whole
//     40-token prefill and 16 decode steps, where such flips accumulate over all 56 positions
//     (worse than here). The engine's f16 bound against the float64 reference is 1e-2; we use
//     the same, ≈ 60× the measured whole-run difference.
//
// A state that was not restored right (a stale or misplaced KV block, a wrong position) shows
// as an O(1) relative difference: the negative control below feeds one other token and must
// exceed the bound by far.
func crossBound(kv engine.KVType) float64 {
	if kv == engine.KVF32 {
		return 1e-3
	}
	return 1e-2
}

// crossSteps is how many greedy tokens each continuation compares.
const crossSteps = 12

// TestCheckpointAcrossBackends: a checkpoint captured on CUDA restores and continues on the CPU
// backend and the other way round, on the tiny synthetic model (6 layers, Q8_0 weights) and a
// small 2-layer grouped-query model (4 heads over 2 KV heads, head dim 16, F16 weights), with
// f16 and f32 KV caches. The instance generates 40 + 8 tokens (a temperature sampler, so the
// RNG state matters), is checkpointed into a real cas.Local and bbolt index, and restored with
// restore.Restore on the other backend. Checked:
//   - the restored KV block bytes equal the captured ones, bit for bit, and the restored token
//     history and last logits equal the originating instance's;
//   - the next token (sampled from the restored logits with the restored RNG state) is the
//     same on both sides;
//   - the logits of each following forward pass agree within crossBound, for as long as the
//     greedy tokens agree (at least the first crossSteps/2 are required to; see below);
//   - a negative control (the restored instance fed another token) differs by ≫ the bound.
//
// Greedy tokens may diverge after a while without anything being wrong: where two logits of
// one step lie within 2·max|Δ| of each other, each backend's argmax may pick a different one,
// and from there the histories differ. With the measured differences (≈ 1e-5 of the RMS) such
// a near-tie within the first steps is improbable; the test reports the agreeing length.
func TestCheckpointAcrossBackends(t *testing.T) {
	gpu := openGPU(t)
	ctx := context.Background()
	dir := t.TempDir()
	store, err := cas.OpenLocal(filepath.Join(dir, "chunks"), cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.Open(filepath.Join(dir, "index.db"), store, index.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	small, err := cptest.SmallModel(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	models := []struct{ name, path string }{
		{"tiny-q8_0", synthPath(t, "tiny", gguf.TypeQ8_0)},
		{"small-gqa-f16", small},
	}
	engs := map[string]*engine.Engine{"cpu": newEngine(t, nil), "cuda": newEngine(t, gpu)}
	for _, md := range models {
		ms := map[string]*engine.Model{}
		for name, e := range engs {
			ms[name] = loadModel(t, e, md.path)
		}
		if ms["cpu"].Fingerprint() != ms["cuda"].Fingerprint() {
			t.Fatal("one model file, two fingerprints")
		}
		for _, kv := range []engine.KVType{engine.KVF16, engine.KVF32} {
			for _, dirn := range [][2]string{{"cuda", "cpu"}, {"cpu", "cuda"}} {
				name := fmt.Sprintf("%s/kv%s/%s-to-%s", md.name, kv, dirn[0], dirn[1])
				t.Run(name, func(t *testing.T) {
					crossOne(t, ctx, ix, ms[dirn[0]], ms[dirn[1]], kv)
				})
			}
		}
	}
}

func crossOne(t *testing.T, ctx context.Context, ix *index.Index, from, to *engine.Model, kv engine.KVType) {
	vocab := from.Hyper().Vocab
	bound := crossBound(kv)
	src, err := from.NewInstance(engine.InstanceOptions{KVType: kv,
		Sampler: engine.Sampler{Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 7}})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Prefill(tokens(40, vocab, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Generate(8, nil); err != nil {
		t.Fatal(err)
	}
	// The whole logits vector: a checkpoint of this top-k sampler would otherwise keep only the
	// best 64, and the other backend would recompute the rest (its own bits, not the captured
	// ones this test compares).
	res, err := checkpoint.Capture(ctx, ix, from, src, checkpoint.CaptureOptions{KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	cp := res.Checkpoint
	capturedKV := kvBytes(t, src)
	srcTokens, err := src.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	srcLogits := logits(t, src)
	if int64(len(capturedKV)) != cp.KVBytes() || cp.Position != 48 {
		t.Fatalf("captured %d KV bytes at position %d; the checkpoint names %d at %d", len(capturedKV), 48, cp.KVBytes(), cp.Position)
	}

	dst, rr, err := restore.Restore(ctx, ix.Store(), to, cp, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if got := kvBytes(t, dst); !bytes.Equal(got, capturedKV) {
		t.Fatalf("restored KV bytes differ from the captured ones (%d vs %d bytes, first difference at %d)", len(got), len(capturedKV), firstDiff(got, capturedKV))
	}
	if got, err := dst.Tokens(); err != nil || !slices.Equal(got, srcTokens) {
		t.Fatalf("restored token history differs (%v)", err)
	}
	if i := bitsDiff(logits(t, dst), srcLogits); i >= 0 {
		t.Fatalf("restored logits differ from the captured ones at %d", i)
	}

	// The first token: sampled from identical logits with the identical RNG state.
	ts, err := src.Step()
	if err != nil {
		t.Fatal(err)
	}
	td, err := dst.Step()
	if err != nil {
		t.Fatal(err)
	}
	if ts != td {
		t.Fatalf("first token after restore: %d on the originating backend, %d on the other (same logits, same RNG state)", ts, td)
	}
	// Greedy from here on (set on both sides: resets both RNGs alike).
	for _, in := range []*engine.Instance{src, dst} {
		if err := in.SetSampler(engine.Sampler{}); err != nil {
			t.Fatal(err)
		}
	}
	worst, worstAbs := 0.0, 0.0
	agree := 1 // the first token
	for step := 0; ; step++ {
		ls, ld := logits(t, src), logits(t, dst)
		rel, abs := relDiff(ld, ls, ls)
		if !(rel <= bound) {
			t.Fatalf("step %d (position %d): logits differ by max |Δ| %.3g = %.3g × RMS, bound %g", step, 49+step, abs, rel, bound)
		}
		worst, worstAbs = max(worst, rel), max(worstAbs, abs)
		if step == crossSteps {
			break
		}
		ts, err := src.Step()
		if err != nil {
			t.Fatal(err)
		}
		td, err := dst.Step()
		if err != nil {
			t.Fatal(err)
		}
		if ts != td {
			a, b := ls[ts], ls[td]
			t.Logf("greedy tokens diverge at step %d: %d vs %d (originating logits %.6g vs %.6g, a near-tie within 2·max|Δ| = %.3g)", step+1, ts, td, a, b, 2*abs)
			break
		}
		agree++
	}
	if agree < crossSteps/2 {
		t.Fatalf("greedy continuations agree for only %d tokens", agree)
	}

	// Negative control: the checkpoint restored again on the target, fed a token other than the
	// first one above: its logits must be far outside the bound from the originating ones after
	// that token.
	ctl, _, err := restore.Restore(ctx, ix.Store(), to, cp, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if err := ctl.Prefill([]int32{(ts + 1) % int32(vocab)}); err != nil {
		t.Fatal(err)
	}
	ref := refAfter(t, ctx, ix, from, cp, ts)
	rel, _ := relDiff(logits(t, ctl), ref, ref)
	if !(rel > 10*bound) {
		t.Fatalf("negative control: another token changes the logits by only %.3g × RMS (bound %g): the comparison cannot tell states apart", rel, bound)
	}
	// One line per case, for scripts/gpu-check.sh's summary.
	t.Logf("cross: %s: %d KV bytes restored bit-identical (%d chunks); next-pass logits max |Δ| %.3g = %.3g × RMS (bound %g, RMS %.3g); greedy tokens agree %d/%d; negative control %.3g × RMS",
		strings.TrimPrefix(t.Name(), "TestCheckpointAcrossBackends/"), len(capturedKV), rr.Chunks, worstAbs, worst, bound, rms(ref), agree, crossSteps+1, rel)
}

// refAfter restores cp on m, feeds tok and returns the logits.
func refAfter(t *testing.T, ctx context.Context, ix *index.Index, m *engine.Model, cp *checkpoint.Checkpoint, tok int32) []float32 {
	in, _, err := restore.Restore(ctx, ix.Store(), m, cp, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := in.Prefill([]int32{tok}); err != nil {
		t.Fatal(err)
	}
	return logits(t, in)
}

func rms(v []float32) float64 {
	var ss float64
	for _, x := range v {
		ss += float64(x) * float64(x)
	}
	return math.Sqrt(ss / float64(len(v)))
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func bitsDiff(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}
