package checkpoint_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/index"
)

// topOf selects the k best of ls as Capture does (engine.Instance.TopLogits is cpu.TopK over
// the guest's logits) and encodes them.
func topOf(ls []float32, k int) []byte {
	ids, vals := make([]int32, k), make([]float32, k)
	cpu.TopK(ids, vals, ls, nil)
	return checkpoint.AppendTopLogits(nil, ids, vals)
}

func f32le(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

// TestTopLogitsReconstruction: the vector a restore writes for the top K logits
// (DecodeTopLogits, then ExpandTopLogits) has, for every k ≤ K, the same k best (ids and
// value bits, in order) and the same argmax as the full vector, on vectors with ties, -Inf,
// NaN, +Inf and -0.
func TestTopLogitsReconstruction(t *testing.T) {
	const n = 300
	inf, nan, negZero := float32(math.Inf(1)), float32(math.NaN()), float32(math.Copysign(0, -1))
	fill := func(f func(i int) float32) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	x := uint32(12345)
	for _, tc := range []struct {
		name string
		ls   []float32
	}{
		{"random", fill(func(int) float32 { x = x*1664525 + 1013904223; return float32(int32(x>>8)) / (1 << 22) })},
		{"ties", fill(func(i int) float32 { return float32((i * 37) % 5) })},
		{"all-equal", fill(func(int) float32 { return -2.5 })},
		{"few-finite", fill(func(i int) float32 {
			if i%50 == 7 {
				return float32(i)
			}
			return -inf
		})},
		{"nan-among-neg-inf", fill(func(i int) float32 {
			switch {
			case i == 299:
				return 1
			case i%3 == 0:
				return nan
			}
			return -inf
		})},
		{"all-nan", fill(func(int) float32 { return nan })},
		{"all-neg-inf", fill(func(int) float32 { return -inf })},
		{"infinities-and-zeros", fill(func(i int) float32 {
			switch i % 6 {
			case 0:
				return negZero
			case 1:
				return 0
			case 2:
				if i > 200 {
					return inf
				}
			}
			return -float32(i)
		})},
	} {
		for _, K := range []int{1, 2, 9, 64, n} {
			t.Run(fmt.Sprintf("%s/K%d", tc.name, K), func(t *testing.T) {
				chunk := topOf(tc.ls, K)
				if len(chunk) != checkpoint.TopLogitBytes*K {
					t.Fatalf("chunk of %d bytes for %d entries", len(chunk), K)
				}
				ids, vals, err := checkpoint.DecodeTopLogits(chunk, n)
				if err != nil {
					t.Fatalf("a correct selection refused: %v", err)
				}
				buf := make([]byte, 4*n)
				for i := range buf {
					buf[i] = 0x5a // whatever the buffer held before
				}
				checkpoint.ExpandTopLogits(buf, ids, vals)
				got := f32le(buf)
				if a, b := cpu.Argmax(got), cpu.Argmax(tc.ls); a != b {
					t.Fatalf("argmax %d, full vector's %d", a, b)
				}
				for k := 1; k <= K; k++ {
					wi, wv := make([]int32, k), make([]float32, k)
					gi, gv := make([]int32, k), make([]float32, k)
					cpu.TopK(wi, wv, tc.ls, nil)
					cpu.TopK(gi, gv, got, nil)
					if !slices.Equal(gi, wi) {
						t.Fatalf("top %d: ids %v, full vector's %v", k, gi, wi)
					}
					for j := range gv {
						if math.Float32bits(gv[j]) != math.Float32bits(wv[j]) {
							t.Fatalf("top %d: value %d is %g, full vector's %g", k, j, gv[j], wv[j])
						}
					}
				}
			})
		}
	}
}

// TestDecodeTopLogitsRefusals: what no correct selection writes is refused, never trusted.
func TestDecodeTopLogitsRefusals(t *testing.T) {
	negInf, nan := float32(math.Inf(-1)), float32(math.NaN())
	enc := func(e ...any) []byte {
		var ids []int32
		var vals []float32
		for i := 0; i < len(e); i += 2 {
			ids, vals = append(ids, int32(e[i].(int))), append(vals, e[i+1].(float32))
		}
		return checkpoint.AppendTopLogits(nil, ids, vals)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"valid", enc(3, float32(2), 1, float32(1), 2, float32(1)), true},
		{"valid-neg-inf-lowest", enc(5, float32(1), 0, negInf, 1, negInf), true},
		{"valid-neg-inf-skips-listed", enc(0, float32(1), 1, negInf, 2, negInf), true},
		{"empty", nil, false},
		{"ragged", enc(1, float32(1))[:7], false},
		{"more-than-vocab", enc(0, float32(9), 1, float32(8), 2, float32(7), 3, float32(6), 4, float32(5), 5, float32(4), 6, float32(3), 7, float32(2), 8, float32(1), 9, float32(0), 0, float32(-1)), false},
		{"id-outside", enc(10, float32(1)), false},
		{"id-negative", enc(-1, float32(1)), false},
		{"nan", enc(1, nan), false},
		{"ascending", enc(1, float32(1), 2, float32(2)), false},
		{"tie-ids-descending", enc(2, float32(1), 1, float32(1)), false},
		{"repeated-id", enc(4, float32(2), 4, float32(1)), false},
		{"repeated-tie", enc(4, float32(1), 4, float32(1)), false},
		{"neg-inf-not-lowest", enc(5, float32(1), 3, negInf), false},
		{"neg-inf-listed-id", enc(0, float32(1), 0, negInf), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := checkpoint.DecodeTopLogits(tc.b, 10)
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, checkpoint.ErrBadCheckpoint)) {
				t.Fatalf("err %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// FuzzDecodeTopLogits: any chunk is refused with ErrBadCheckpoint or accepted, never a panic;
// an accepted one expands to a vector whose top entries are exactly its entries.
func FuzzDecodeTopLogits(f *testing.F) {
	f.Add(topOf([]float32{3, 1, 4, 1, 5, 9, 2, 6}, 3), uint16(8))
	f.Add(topOf([]float32{float32(math.Inf(-1)), 1, float32(math.NaN()), 0}, 4), uint16(4))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0x80, 0xff}, uint16(2))
	f.Fuzz(func(t *testing.T, b []byte, vocab uint16) {
		v := int(vocab%512) + 1
		ids, vals, err := checkpoint.DecodeTopLogits(b, v)
		if err != nil {
			if !errors.Is(err, checkpoint.ErrBadCheckpoint) {
				t.Fatalf("error does not wrap ErrBadCheckpoint: %v", err)
			}
			return
		}
		buf := make([]byte, 4*v)
		checkpoint.ExpandTopLogits(buf, ids, vals)
		gi, gv := make([]int32, len(ids)), make([]float32, len(ids))
		cpu.TopK(gi, gv, f32le(buf), nil)
		if !slices.Equal(gi, ids) {
			t.Fatalf("accepted entries %v expand to a vector whose top is %v", ids, gi)
		}
		for j := range gv {
			if math.Float32bits(gv[j]) != math.Float32bits(vals[j]) {
				t.Fatalf("entry %d: %g expands to %g", j, vals[j], gv[j])
			}
		}
	})
}

// TestCaptureKeepsTopLogits: which samplers' checkpoints keep the top logits, how many, and
// that the chunk holds the instance's own best logits; KeepLogits and TopLogits override.
func TestCaptureKeepsTopLogits(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const vocab = 512
	for _, tc := range []struct {
		smp  engine.Sampler
		opts checkpoint.CaptureOptions
		top  int
	}{
		{engine.Sampler{}, checkpoint.CaptureOptions{}, checkpoint.DefaultTopLogits},                                // greedy
		{engine.Sampler{Temp: 0.8, TopK: 40, TopP: 0.95}, checkpoint.CaptureOptions{}, checkpoint.DefaultTopLogits}, // the CLI's default
		{engine.Sampler{Temp: 0.8, TopK: 100}, checkpoint.CaptureOptions{}, 100},
		{engine.Sampler{Temp: 0.8, TopK: 300}, checkpoint.CaptureOptions{}, 0}, // 300 of 512: not smaller
		{engine.Sampler{Temp: 0.8}, checkpoint.CaptureOptions{}, 0},            // the whole vocabulary
		{engine.Sampler{Temp: 0.8, TopP: 0.9}, checkpoint.CaptureOptions{}, 0},
		{engine.Sampler{Temp: 0.8, TopK: vocab}, checkpoint.CaptureOptions{}, 0},
		{engine.Sampler{}, checkpoint.CaptureOptions{KeepLogits: true}, 0},
		{engine.Sampler{}, checkpoint.CaptureOptions{TopLogits: 4}, 4},
		{engine.Sampler{Temp: 1, TopK: 10}, checkpoint.CaptureOptions{TopLogits: 4}, 10},
		{engine.Sampler{Temp: 1, TopK: 10}, checkpoint.CaptureOptions{TopLogits: 300}, 0},
	} {
		t.Run(fmt.Sprintf("t%g-k%d-p%g-%+v", tc.smp.Temp, tc.smp.TopK, tc.smp.TopP, tc.opts), func(t *testing.T) {
			in, err := e.model.NewInstance(engine.InstanceOptions{Sampler: tc.smp})
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			if err := in.Prefill(cptest.Tokens(21, vocab, 9)); err != nil {
				t.Fatal(err)
			}
			res, err := checkpoint.Capture(ctx, e.ix, e.model, in, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			cp := res.Checkpoint
			head := int64(checkpoint.StateHeadLen(21))
			if cp.TopLogits != tc.top {
				t.Fatalf("keeps %d top logits, want %d", cp.TopLogits, tc.top)
			}
			if tc.top == 0 {
				if cp.StateBytes() != head+4*vocab {
					t.Fatalf("state of %d bytes with the whole vector", cp.StateBytes())
				}
				return
			}
			if len(cp.State) != 2 || cp.State[0].Length != head || cp.State[1].Length != int64(checkpoint.TopLogitBytes*tc.top) {
				t.Fatalf("state chunks %+v for %d top logits", cp.State, tc.top)
			}
			chunk, err := e.store.Get(ctx, cp.State[1].Digest, nil)
			if err != nil {
				t.Fatal(err)
			}
			ls, err := in.Logits()
			if err != nil {
				t.Fatal(err)
			}
			if want := topOf(ls, tc.top); !slices.Equal(chunk, want) {
				t.Fatal("the top-logits chunk is not the instance's best logits")
			}
			m, err := e.ix.Manifest(cp.ID)
			if err != nil {
				t.Fatal(err)
			}
			if v, ok := m.Meta[checkpoint.KeyTopLogits].AsUint64(); !ok || v != uint64(tc.top) {
				t.Fatalf("metadata %q: %v", checkpoint.KeyTopLogits, m.Meta[checkpoint.KeyTopLogits])
			}
		})
	}
	in, err := e.model.NewInstance(engine.InstanceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := in.Prefill(cptest.Tokens(3, vocab, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{TopLogits: -1}); err == nil {
		t.Fatal("negative TopLogits accepted")
	}
}

// TestParseTopLogits: the "logits.top" metadata is optional (absent: the whole vector, as in
// every checkpoint before it), and a manifest whose value or state region disagrees with it
// is refused.
func TestParseTopLogits(t *testing.T) {
	e := newEnv(t)
	in := e.instance(t, engine.KVF16)
	if err := in.Prefill(cptest.Tokens(30, 512, 2)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	topRes, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fullRes, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	full, err := e.ix.Manifest(fullRes.Checkpoint.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := full.Meta[checkpoint.KeyTopLogits]; ok {
		t.Fatal("a checkpoint with the whole vector names top logits")
	}
	for _, tc := range []struct {
		name   string
		modify func(m *index.Manifest)
	}{
		{"zero", func(m *index.Manifest) { m.Meta[checkpoint.KeyTopLogits] = index.Uint64(0) }},
		{"wrong-type", func(m *index.Manifest) { m.Meta[checkpoint.KeyTopLogits] = index.String("64") }},
		{"more-than-vocab", func(m *index.Manifest) { m.Meta[checkpoint.KeyTopLogits] = index.Uint64(513) }},
		{"other-count", func(m *index.Manifest) { m.Meta[checkpoint.KeyTopLogits] = index.Uint64(63) }},
		{"absent", func(m *index.Manifest) { delete(m.Meta, checkpoint.KeyTopLogits) }},
		{"no-logits", func(m *index.Manifest) { m.Meta[checkpoint.KeyLogits] = index.Bool(false) }},
		{"split", func(m *index.Manifest) {
			st := &m.Regions[len(m.Regions)-1]
			h, tl := st.Chunks[0], st.Chunks[1]
			st.Chunks = []index.ChunkRef{{Digest: h.Digest, Length: h.Length - 4}, {Digest: h.Digest, Length: 4}, tl}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := e.ix.Manifest(topRes.Checkpoint.ID)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := checkpoint.Parse(topRes.Checkpoint.ID, m); err != nil {
				t.Fatal(err)
			}
			tc.modify(m)
			if _, err := checkpoint.Parse(topRes.Checkpoint.ID, m); !errors.Is(err, checkpoint.ErrBadCheckpoint) {
				t.Fatalf("err %v", err)
			}
		})
	}
	m, _ := e.ix.Manifest(fullRes.Checkpoint.ID)
	m.Meta[checkpoint.KeyTopLogits] = index.Uint64(64)
	if _, err := checkpoint.Parse(fullRes.Checkpoint.ID, m); !errors.Is(err, checkpoint.ErrBadCheckpoint) {
		t.Fatalf("the whole vector named as top logits: %v", err)
	}
}

// FuzzParse: any manifest bytes decode and parse to a checkpoint or an error, never a panic;
// seeds are real checkpoints with top logits and with the whole vector.
func FuzzParse(f *testing.F) {
	for _, top := range []int{0, 64} {
		cp := &checkpoint.Checkpoint{Vocab: 512, Layout: checkpoint.Layout{Layers: 1, KVHeads: 2, HeadDim: 16, BlockSize: 16, BlockBytes: 2048, DType: "f16"},
			Position: 2, Tokens: []int32{1, 2}, Sampler: engine.Sampler{TopP: 1}, HasLogits: true, TopLogits: top,
			KV: [][]index.ChunkRef{{{Length: 2048}}}}
		cp.KV[0][0].Digest[0] = 1
		head := index.ChunkRef{Length: int64(checkpoint.StateHeadLen(2))}
		head.Digest[0] = 2
		tail := index.ChunkRef{Length: 4 * 512}
		if top > 0 {
			tail.Length = int64(checkpoint.TopLogitBytes * top)
		}
		tail.Digest[0] = 3
		cp.State = []index.ChunkRef{head, tail}
		m, err := cp.Manifest()
		if err != nil {
			f.Fatal(err)
		}
		b, _, err := m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := index.Decode(b)
		if err != nil {
			return
		}
		cp, err := checkpoint.Parse(index.ID{}, m)
		if err != nil {
			if !errors.Is(err, checkpoint.ErrBadCheckpoint) {
				t.Fatalf("error does not wrap ErrBadCheckpoint: %v", err)
			}
			return
		}
		if _, err := cp.Manifest(); err != nil {
			t.Fatalf("a parsed checkpoint does not build its manifest: %v", err)
		}
	})
}
