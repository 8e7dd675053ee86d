package engine

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/gguf"
)

// Partial logits (MarkLogitsTop): what a restore of a checkpoint that kept only the top k
// logits gives an instance, and the recompute that completes them (CompleteLogits).

// topVector is the vector a restore writes for the k best of ls: those at their ids (NaN as
// -Inf, as cpu.TopK reports them), -Inf everywhere else.
func topVector(ls []float32, k int) []float32 {
	ids, vals := make([]int32, k), make([]float32, k)
	cpu.TopK(ids, vals, ls, nil)
	out := make([]float32, len(ls))
	for i := range out {
		out[i] = float32(math.Inf(-1))
	}
	for j, id := range ids {
		out[id] = vals[j]
	}
	return out
}

// restoreInto makes a fresh instance holding a's KV blocks and the state st (as a restore
// does), with the logits marked as the top k when k > 0.
func restoreInto(t *testing.T, m *Model, opts InstanceOptions, a *Instance, st []byte, k int) *Instance {
	t.Helper()
	pos, err := a.Position()
	if err != nil {
		t.Fatal(err)
	}
	kv := kvBytes(t, a)
	b := newInst(t, m, opts)
	regs, err := b.AllocKV(pos)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range regs {
		copy(b.Memory()[r.Offset:r.Offset+r.Length], kv[i])
	}
	if err := b.LoadState(st); err != nil {
		t.Fatal(err)
	}
	if k > 0 {
		if err := b.MarkLogitsTop(k); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// TestCompleteLogits: partial logits recomputed by CompleteLogits are bit-identical to the
// original on the CPU backend, whether a batched prefill (one batch, or batches of 7) or a
// Step computed them, for both KV types; the KV bytes, the head of the state (position,
// history, sampler, RNG) are unchanged; and the continuation equals the original's.
func TestCompleteLogits(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	v := m.Hyper().Vocab
	for _, kv := range []KVType{KVF16, KVF32} {
		for _, tc := range []struct {
			name  string
			batch int
			n     int // prompt tokens
			steps int // generated after the prompt
		}{
			{"prefill-batch64", 64, 37, 0},
			{"prefill-batch7", 7, 33, 0}, // the last batch is 5 tokens
			{"prefill-one-block", 64, 16, 0},
			{"prefill-1", 64, 1, 0},
			{"after-steps", 64, 21, 3},
			{"step-at-block-start", 64, 15, 2},
		} {
			t.Run(fmt.Sprintf("%s/%s", kv, tc.name), func(t *testing.T) {
				opts := InstanceOptions{KVType: kv, Batch: tc.batch, Sampler: Sampler{Temp: 0.7, TopK: 12, Seed: 3}}
				a := newInst(t, m, opts)
				if err := a.Prefill(prompt(tc.n, v, tc.n)); err != nil {
					t.Fatal(err)
				}
				if _, err := a.Generate(tc.steps, nil); err != nil {
					t.Fatal(err)
				}
				st, err := a.SaveState()
				if err != nil {
					t.Fatal(err)
				}
				want, _ := a.Logits()
				wantKV := kvBytes(t, a)
				b := restoreInto(t, m, opts, a, withLogits(t, st, topVector(want, 8)), 8)
				if b.LogitsTop() != 8 {
					t.Fatalf("LogitsTop %d after marking 8", b.LogitsTop())
				}
				got, err := b.Logits()
				if err != nil {
					t.Fatal(err)
				}
				if b.LogitsTop() != 0 {
					t.Fatalf("LogitsTop %d after Logits", b.LogitsTop())
				}
				if !bytes.Equal(f32bits(got), f32bits(want)) {
					t.Fatal("recomputed logits differ from the original")
				}
				gotKV := kvBytes(t, b)
				for i := range wantKV {
					if !bytes.Equal(gotKV[i], wantKV[i]) {
						t.Fatalf("KV region %d changed by the recompute", i)
					}
				}
				bst, err := b.SaveState()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(bst, st) {
					t.Fatal("the state after the recompute differs from the original")
				}
				wantToks, err := a.Generate(6, nil)
				if err != nil {
					t.Fatal(err)
				}
				gotToks, err := b.Generate(6, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(gotToks, wantToks) {
					t.Fatalf("continuation %v, want %v", gotToks, wantToks)
				}
			})
		}
	}
}

// TestPartialLogitsSampling: a sampler whose Candidates are at most k draws from the top-k
// vector exactly what it draws from the full one, without a recompute, on vectors with ties,
// -Inf, NaN, +Inf and -0 (table), in both sample modes (host ops and the guest's reference).
func TestPartialLogitsSampling(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	v := m.Hyper().Vocab
	base := newInst(t, m, InstanceOptions{})
	if err := base.Prefill(prompt(19, v, 5)); err != nil {
		t.Fatal(err)
	}
	st, err := base.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	real, _ := base.Logits()
	inf, nan := float32(math.Inf(1)), float32(math.NaN())
	fill := func(f func(i int) float32) []float32 {
		out := make([]float32, v)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	vectors := []struct {
		name string
		ls   []float32
	}{
		{"model", real},
		{"ties", fill(func(i int) float32 { return float32(i%7) * 0.25 })},
		{"all-equal", fill(func(int) float32 { return 1.5 })},
		{"neg-inf-tail", fill(func(i int) float32 {
			if i%3 == 0 && i < 30 {
				return float32(i) * 0.1
			}
			return -inf
		})},
		{"nan-and-neg-inf", fill(func(i int) float32 {
			switch {
			case i == 4 || i == 9:
				return 2
			case i%2 == 0:
				return nan
			}
			return -inf
		})},
		{"all-nan", fill(func(int) float32 { return nan })},
		{"pos-inf-and-zeros", fill(func(i int) float32 {
			switch {
			case i == 200:
				return inf
			case i%5 == 0:
				return float32(math.Copysign(0, -1))
			case i%5 == 1:
				return 0
			}
			return -1
		})},
	}
	const k = 16
	samplers := []Sampler{
		{Temp: 0, Seed: 1},
		{Temp: 0.8, TopK: 1, Seed: 2},
		{Temp: 0.8, TopK: 5, Seed: 3},
		{Temp: 1.3, TopK: k, Seed: 4},
		{Temp: 0.6, TopK: k, TopP: 0.5, Seed: 5},
	}
	for _, vec := range vectors {
		for _, smp := range samplers {
			for _, mode := range []int{0, 1} {
				name := fmt.Sprintf("%s/t%g-k%d-p%g/mode%d", vec.name, smp.Temp, smp.TopK, smp.TopP, mode)
				t.Run(name, func(t *testing.T) {
					opts := InstanceOptions{Sampler: smp}
					full := restoreInto(t, m, opts, base, withLogits(t, st, vec.ls), 0)
					part := restoreInto(t, m, opts, base, withLogits(t, st, topVector(vec.ls, k)), k)
					for _, in := range []*Instance{full, part} {
						if err := in.SetSampler(smp); err != nil {
							t.Fatal(err)
						}
						if err := in.setSampleMode(mode); err != nil {
							t.Fatal(err)
						}
					}
					for i := 0; i < 24; i++ {
						a, err := full.Sample()
						if err != nil {
							t.Fatal(err)
						}
						b, err := part.Sample()
						if err != nil {
							t.Fatal(err)
						}
						if a != b {
							t.Fatalf("draw %d: %d from the top %d, %d from the full vector", i, b, k, a)
						}
					}
					if part.LogitsTop() != k {
						t.Fatalf("sampling recomputed the logits (LogitsTop %d)", part.LogitsTop())
					}
				})
			}
		}
	}
}

// TestSamplerChangeCompletesLogits: after a restore with the top k logits, a sampler change
// to one that reads at most k samples from them as they are, and a change to one that reads
// the whole vocabulary (temperature, top-k 0, with or without top-p) recomputes them first:
// either way the continuation equals an uninterrupted instance given the same sampler change
// (same seed, so the same RNG), token for token.
func TestSamplerChangeCompletesLogits(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	v := m.Hyper().Vocab
	const k = 8
	for _, tc := range []struct {
		smp       Sampler
		recompute bool
	}{
		{Sampler{Temp: 0, Seed: 1}, false},
		{Sampler{Temp: 0.9, TopK: k, TopP: 0.9, Seed: 2}, false},
		{Sampler{Temp: 0.9, TopK: k + 1, Seed: 3}, true},
		{Sampler{Temp: 0.9, Seed: 4}, true},
		{Sampler{Temp: 1.1, TopP: 0.8, Seed: 5}, true},
		{Sampler{Temp: 0.5, TopK: v, Seed: 6}, true},
	} {
		t.Run(fmt.Sprintf("t%g-k%d-p%g", tc.smp.Temp, tc.smp.TopK, tc.smp.TopP), func(t *testing.T) {
			opts := InstanceOptions{Sampler: Sampler{Seed: 9}} // greedy before the change
			a := newInst(t, m, opts)
			if err := a.Prefill(prompt(29, v, 8)); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Generate(2, nil); err != nil {
				t.Fatal(err)
			}
			st, err := a.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			ls, _ := a.Logits()
			b := restoreInto(t, m, opts, a, withLogits(t, st, topVector(ls, k)), k)
			for _, in := range []*Instance{a, b} {
				if err := in.SetSampler(tc.smp); err != nil {
					t.Fatal(err)
				}
			}
			wa, err := a.Sample()
			if err != nil {
				t.Fatal(err)
			}
			wb, err := b.Sample()
			if err != nil {
				t.Fatal(err)
			}
			if recomputed := b.LogitsTop() == 0; recomputed != tc.recompute {
				t.Fatalf("recomputed %v, want %v", recomputed, tc.recompute)
			}
			want, err := a.Generate(10, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := b.Generate(10, nil)
			if err != nil {
				t.Fatal(err)
			}
			if wa != wb || !slices.Equal(got, want) {
				t.Fatalf("after the sampler change: %d then %v, want %d then %v", wb, got, wa, want)
			}
		})
	}
}

// TestMarkLogitsTopRefusals: no mark without logits or with k < 1; k at or above the
// vocabulary means full; a feed and a state load clear the mark; TopLogits refuses bad sizes.
func TestMarkLogitsTopRefusals(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	v := m.Hyper().Vocab
	in := newInst(t, m, InstanceOptions{})
	if err := in.MarkLogitsTop(4); err == nil {
		t.Fatal("MarkLogitsTop on a fresh instance succeeded")
	}
	if err := in.TopLogits(make([]int32, 1), make([]float32, 1)); err == nil {
		t.Fatal("TopLogits on a fresh instance succeeded")
	}
	if err := in.Prefill(prompt(5, v, 1)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]int{{0, 0}, {2, 1}, {v + 1, v + 1}} {
		if err := in.TopLogits(make([]int32, bad[0]), make([]float32, bad[1])); err == nil {
			t.Fatalf("TopLogits with %d ids and %d values succeeded", bad[0], bad[1])
		}
	}
	if err := in.MarkLogitsTop(0); err == nil {
		t.Fatal("MarkLogitsTop(0) succeeded")
	}
	if err := in.MarkLogitsTop(v); err != nil || in.LogitsTop() != 0 {
		t.Fatalf("MarkLogitsTop(vocab): %v, LogitsTop %d", err, in.LogitsTop())
	}
	st, err := in.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if err := in.MarkLogitsTop(3); err != nil || in.LogitsTop() != 3 {
		t.Fatalf("MarkLogitsTop(3): %v, LogitsTop %d", err, in.LogitsTop())
	}
	if err := in.Prefill(prompt(2, v, 2)); err != nil || in.LogitsTop() != 0 {
		t.Fatalf("Prefill: %v, LogitsTop %d", err, in.LogitsTop())
	}
	if err := in.MarkLogitsTop(3); err != nil {
		t.Fatal(err)
	}
	if err := in.LoadState(st); err != nil || in.LogitsTop() != 0 {
		t.Fatalf("LoadState: %v, LogitsTop %d", err, in.LogitsTop())
	}
}

// BenchmarkTopLogits: what a checkpoint that keeps the top k logits pays to select them
// (Instance.TopLogits: one host pass over the 128256 logits of the Llama-3.2-1B vocabulary),
// beside what one that keeps them all pays to copy them out (AppendLogits, 513 KB).
func BenchmarkTopLogits(b *testing.B) {
	m := testModel(b, "vocab1b", gguf.TypeQ8_0)
	in := newInst(b, m, InstanceOptions{})
	if err := in.Prefill(prompt(9, m.Hyper().Vocab, 4)); err != nil {
		b.Fatal(err)
	}
	for _, k := range []int{1, 40, 64, 256, 1024} {
		b.Run(fmt.Sprintf("k%d", k), func(b *testing.B) {
			ids, vals := make([]int32, k), make([]float32, k)
			for b.Loop() {
				if err := in.TopLogits(ids, vals); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("append-all", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = in.AppendLogits(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
		b.SetBytes(int64(len(buf)))
	})
}
