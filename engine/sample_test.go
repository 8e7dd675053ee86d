package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/gguf"
)

// Logit vectors that exercise the sampler's total order: ties at the top, NaNs (at index 0
// too), infinities, signed zeros, and all-NaN.
func specialLogits(kind string, v int) []float32 {
	out := make([]float32, v)
	x := uint32(0x9e3779b9 ^ uint32(len(kind)*7919))
	rnd := func() float32 { x = x*1664525 + 1013904223; return float32(int32(x>>8)%10000) / 1000 }
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for i := range out {
		out[i] = rnd() // [-10, 10)
		switch kind {
		case "ties":
			out[i] = float32(int(out[i]+10) % 3) // 0, 1, 2: a third of the vocabulary ties at 2
		case "nan":
			switch {
			case i == 0 || i%7 == 3:
				out[i] = nan
			case i%11 == 5:
				out[i] = -inf
			}
		case "zeros":
			switch {
			case i%5 == 0:
				out[i] = float32(math.Copysign(0, -1))
			case i%5 == 1:
				out[i] = 0
			default:
				out[i] = -float32(math.Abs(float64(out[i]))) - 0.001
			}
		case "allnan":
			out[i] = nan
		case "inf":
			if i == v/3 || i == v/2 {
				out[i] = inf
			}
		case "neginf":
			out[i] = -inf
		}
	}
	return out
}

var logitKinds = []string{"random", "ties", "nan", "zeros", "allnan", "inf", "neginf"}

// withLogits returns a copy of state (which has logits) carrying logits instead.
func withLogits(t testing.TB, state []byte, logits []float32) []byte {
	t.Helper()
	head := len(state) - 4*len(logits)
	if head < stateFixed || int(leU32(state[76:])) != len(logits) {
		t.Fatalf("state of %d bytes has no room for %d logits", len(state), len(logits))
	}
	out := slices.Clone(state)
	for i, l := range logits {
		putU32(out[head+4*i:], math.Float32bits(l))
	}
	return out
}

func leU32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// draws loads state into in with the given sample mode and returns n sampled tokens.
func draws(t testing.TB, in *Instance, mode int, state []byte, n int) []int32 {
	t.Helper()
	if err := in.setSampleMode(mode); err != nil {
		t.Fatal(err)
	}
	if err := in.LoadState(state); err != nil {
		t.Fatal(err)
	}
	out := make([]int32, n)
	for i := range out {
		tok, err := in.Sample()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = tok
	}
	return out
}

// TestHostSamplingMatchesGuest: the host ops (argmax, top_k) give exactly the tokens of the
// sampler that ran entirely in the guest (sample mode 1, the code before the ops existed),
// for every sampler setting, over logits full of ties, NaNs, infinities and signed zeros,
// for many draws of one seed (the RNG advancing identically).
func TestHostSamplingMatchesGuest(t *testing.T) {
	samplers := []Sampler{
		{},
		{Temp: 1, TopK: 1, TopP: 1, Seed: 1},
		{Temp: 0.7, TopK: 5, TopP: 1, Seed: 2},
		{Temp: 1.3, TopK: 40, TopP: 0.9, Seed: 3},
		{Temp: 1, TopK: 0, TopP: 0.5, Seed: 4},        // top-p alone: the whole vocabulary sorted
		{Temp: 2, TopK: 0, TopP: 1, Seed: 5},          // unrestricted
		{Temp: 0.9, TopK: 100000, TopP: 0.8, Seed: 6}, // k beyond the vocabulary
		{Temp: 0.5, TopK: 21, TopP: 0.3, Seed: 7},     // k*16 ≥ vocab (small model): the sort path
	}
	run := func(t *testing.T, model string, kinds []string, samplers []Sampler, n func(Sampler) int) {
		m := testModel(t, model, gguf.TypeQ8_0)
		v := m.Hyper().Vocab
		in := newInst(t, m, InstanceOptions{})
		if err := in.Prefill(prompt(5, v, 2)); err != nil {
			t.Fatal(err)
		}
		for _, s := range samplers {
			if err := in.SetSampler(s); err != nil {
				t.Fatal(err)
			}
			base, err := in.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			for _, kind := range kinds {
				st := withLogits(t, base, specialLogits(kind, v))
				host := draws(t, in, 0, st, n(s))
				ref := draws(t, in, 1, st, n(s))
				if !slices.Equal(host, ref) {
					t.Fatalf("%s, %s logits, %+v: host ops drew %v, the guest %v", model, kind, s, host, ref)
				}
			}
		}
		if err := in.setSampleMode(0); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("small", func(t *testing.T) {
		run(t, "small", logitKinds, samplers, func(Sampler) int { return 40 })
	})
	t.Run("vocab1b", func(t *testing.T) {
		// The guest's full sort of 128256 ids is slow in Wasm: few draws for top-p alone.
		run(t, "vocab1b", []string{"random", "ties", "nan", "zeros"}, samplers[:5], func(s Sampler) int {
			if s.TopK == 0 && s.TopP < 1 {
				return 2
			}
			return 12
		})
	})
}

// TestHostSamplingGenerate: generation with the host ops equals generation with the guest's
// own sampler, token for token, over many steps (every step's logits differ).
func TestHostSamplingGenerate(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF16)
	for _, s := range []Sampler{{}, {Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 11}, {Temp: 1.1, TopP: 0.7, Seed: 12}, {Temp: 1.5, Seed: 13}} {
		var got [2][]int32
		for mode := range got {
			in := newInst(t, m, InstanceOptions{Sampler: s})
			if err := in.setSampleMode(mode); err != nil {
				t.Fatal(err)
			}
			if err := in.Prefill(prompt(7, m.Hyper().Vocab, 4)); err != nil {
				t.Fatal(err)
			}
			toks, err := in.Generate(150, nil)
			if err != nil {
				t.Fatal(err)
			}
			got[mode] = toks
		}
		if !slices.Equal(got[0], got[1]) {
			t.Fatalf("%+v: host ops generated %v, the guest %v", s, got[0], got[1])
		}
	}
}

// TestSampleKernelsMatchReference: the engine/cpu kernels behind the ops against a plain Go
// implementation of the order, on many sizes (SIMD bodies and tails) and every k regime.
func TestSampleKernelsMatchReference(t *testing.T) {
	for _, n := range []int{1, 2, 7, 8, 9, 31, 32, 33, 100, 1000, 128256} {
		for _, kind := range logitKinds {
			ls := specialLogits(kind, n)
			if got, want := cpu.Argmax(ls), argmaxRef(ls); got != want {
				t.Fatalf("n=%d %s: Argmax %d, reference %d", n, kind, got, want)
			}
			for _, k := range []int{1, 2, 5, 40, n / 16, n/16 + 1, n - 1, n} {
				if k < 1 || k > n {
					continue
				}
				ids, vals := make([]int32, k), make([]float32, k)
				rids, rvals := make([]int32, k), make([]float32, k)
				cpu.TopK(ids, vals, ls, nil)
				topKRef(rids, rvals, ls, nil)
				if !slices.Equal(ids, rids) || !bytes.Equal(f32bits(vals), f32bits(rvals)) {
					t.Fatalf("n=%d %s k=%d: TopK %v %v, reference %v %v", n, kind, k, ids, vals, rids, rvals)
				}
			}
		}
	}
	// The reference itself, on a case small enough to see: ties go to the lower id, NaN is
	// last, -0 ties with +0.
	nan := float32(math.NaN())
	ls := []float32{nan, 1, float32(math.Copysign(0, -1)), 1, 0, float32(math.Inf(-1))}
	ids, vals := make([]int32, 6), make([]float32, 6)
	topKRef(ids, vals, ls, nil)
	if want := []int32{1, 3, 2, 4, 0, 5}; !slices.Equal(ids, want) {
		t.Fatalf("reference order %v, want %v", ids, want)
	}
	if argmaxRef(ls) != 1 || !math.IsInf(float64(vals[4]), -1) {
		t.Fatalf("reference argmax %d, NaN's value %v", argmaxRef(ls), vals[4])
	}
}

// plainBackend hides the CPU Exec's optional interfaces (Argmaxer, TopKer), so the engine's
// own selection over linear memory runs: what CUDA and Metal get until they implement them.
type plainBackend struct{ Backend }

func (b plainBackend) Load(t *Tensors) (Weights, error) {
	w, err := b.Backend.Load(t)
	return plainWeights{w}, err
}

type plainWeights struct{ Weights }

func (w plainWeights) NewExec(threads int) (Exec, error) {
	e, err := w.Weights.NewExec(threads)
	return plainExec{e}, err
}

type plainExec struct{ Exec }

// TestSamplingFallback: an Exec without Argmaxer/TopKer samples exactly like the CPU's.
func TestSamplingFallback(t *testing.T) {
	e, err := New(Options{CacheDir: testCacheDir(), Backend: plainBackend{CPU()}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ref := testModel(t, "small", gguf.TypeF16)
	m, err := e.LoadModel(filepath.Join(testTmp(t), fmt.Sprintf("small-%s.gguf", gguf.TypeF16)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, s := range []Sampler{{}, {Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 21}, {Temp: 1, TopP: 0.6, Seed: 22}} {
		var got [2][]int32
		for i, md := range []*Model{ref, m} {
			in := newInst(t, md, InstanceOptions{Sampler: s})
			if _, ok := in.exec.(Argmaxer); ok == (i == 1) {
				t.Fatalf("model %d: Argmaxer %v", i, ok)
			}
			if err := in.Prefill(prompt(6, m.Hyper().Vocab, 9)); err != nil {
				t.Fatal(err)
			}
			if got[i], err = in.Generate(40, nil); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(got[0], got[1]) {
			t.Fatalf("%+v: fallback generated %v, the CPU Exec %v", s, got[1], got[0])
		}
	}
}

// TestStateBuffers: a state written straight into the guest's buffers (as restore decodes
// it) loads like LoadState; mismatched or malformed ones are refused with the instance, its
// logits included, unchanged.
func TestStateBuffers(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	v := m.Hyper().Vocab
	a := newInst(t, m, InstanceOptions{Sampler: sampled})
	if err := a.Prefill(prompt(21, v, 3)); err != nil {
		t.Fatal(err)
	}
	state, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	kv := kvBytes(t, a)
	head := stateFixed + 4*21

	b := newInst(t, m, InstanceOptions{})
	if err := b.LoadStateBuffers(); err == nil {
		t.Fatal("LoadStateBuffers without StateBuffers succeeded")
	}
	regs, err := b.AllocKV(21)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range regs {
		copy(b.Memory()[r.Offset:r.Offset+r.Length], kv[i])
	}
	for _, bad := range []struct{ head, nl int }{{79, v}, {head + 2, v}, {head, v - 1}, {head, 1}} {
		if _, _, err := b.StateBuffers(bad.head, bad.nl); err == nil {
			t.Fatalf("StateBuffers(%d, %d) accepted", bad.head, bad.nl)
		}
	}
	hb, lb, err := b.StateBuffers(head, v)
	if err != nil {
		t.Fatal(err)
	}
	if len(hb) != head || len(lb) != 4*v {
		t.Fatalf("buffers of %d and %d bytes", len(hb), len(lb))
	}
	copy(hb, state[:head])
	copy(lb, state[head:])
	if err := b.LoadStateBuffers(); err != nil {
		t.Fatal(err)
	}
	if b.Options().Sampler != sampled {
		t.Fatalf("sampler after LoadStateBuffers %+v", b.Options().Sampler)
	}
	la, _ := a.Logits()
	lbits, _ := b.Logits()
	if !bytes.Equal(f32bits(la), f32bits(lbits)) {
		t.Fatal("logits differ after LoadStateBuffers")
	}
	ga, err := a.Generate(10, nil)
	if err != nil {
		t.Fatal(err)
	}
	gb, err := b.Generate(10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ga, gb) {
		t.Fatalf("continuation %v after LoadStateBuffers, want %v", gb, ga)
	}

	// Refusals leave b as it is, logits included (they are loaded beside the kept ones).
	before, _ := b.SaveState()
	other := withLogits(t, state, specialLogits("random", v))
	refuse := func(name string, mut func(h []byte), nl int, want string) {
		t.Helper()
		hb, lb, err := b.StateBuffers(head, nl)
		if err != nil {
			t.Fatal(err)
		}
		copy(hb, other[:head])
		copy(lb, other[head:])
		mut(hb)
		err = b.LoadStateBuffers()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: err %v, want %q", name, err, want)
		}
		if after, _ := b.SaveState(); !bytes.Equal(after, before) {
			t.Fatalf("%s: the refused state changed the instance", name)
		}
	}
	refuse("bad magic", func(h []byte) { h[0] ^= 1 }, v, "not a driftstore guest state")
	refuse("token out of vocab", func(h []byte) { putU32(h[stateFixed:], uint32(v)) }, v, "token id")
	refuse("position beyond blocks", func(h []byte) { putU32(h[20:], 20) }, v, "length does not match")
	refuse("count differs", func(h []byte) { putU32(h[76:], 0) }, v, "counts 0 logits")
	refuse("bad sampler", func(h []byte) { putU32(h[24:], math.Float32bits(-1)) }, v, "sampler")
	if _, err := b.Step(); err != nil {
		t.Fatal(err)
	}
}

// TestSampleOpRefusals: the guest's sample mode is checked; sampling needs logits.
func TestSampleModeRefusal(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF32)
	in := newInst(t, m, InstanceOptions{})
	if err := in.setSampleMode(2); !errors.Is(err, ErrGuest) {
		t.Fatalf("sample mode 2: %v", err)
	}
}

// TestAppendState: AppendState appends exactly SaveState's bytes, after what dst holds.
func TestAppendState(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	in := newInst(t, m, InstanceOptions{Sampler: sampled})
	for _, n := range []int{0, 9} {
		if err := in.Prefill(prompt(n, m.Hyper().Vocab, 1)); err != nil {
			t.Fatal(err)
		}
		want, err := in.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		got, err := in.AppendState([]byte("prefix"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("n=%d: AppendState differs from SaveState", n)
		}
		if (n == 0) != (len(want) == stateFixed) {
			t.Fatalf("n=%d: state of %d bytes", n, len(want))
		}
	}
}
