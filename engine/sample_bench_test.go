package engine

import (
	"testing"

	"github.com/driftstore/driftstore/gguf"
)

// Benchmarks of the per-token sampler and of the small state's save and load at the
// Llama-3.2-1B vocabulary (128256 logits) on a model with tiny layers (vocab1bHyper), so that
// the model's math does not drown them. Run:
//
//	go test ./engine -run '^$' -bench 'Sample|State' -benchtime 200x

func vocab1bInstance(b *testing.B, s Sampler) *Instance {
	m := testModel(b, "vocab1b", gguf.TypeQ8_0)
	in := newInst(b, m, InstanceOptions{Threads: 1, Sampler: s})
	if err := in.Prefill(prompt(24, m.Hyper().Vocab, 5)); err != nil {
		b.Fatal(err)
	}
	return in
}

func BenchmarkSample(b *testing.B) {
	for _, c := range []struct {
		name string
		s    Sampler
	}{
		{"greedy", Sampler{}},
		{"topk40", Sampler{Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 1}},
	} {
		for mode, where := range []string{"host", "guest"} {
			b.Run(c.name+"/"+where, func(b *testing.B) {
				in := vocab1bInstance(b, c.s)
				if err := in.setSampleMode(mode); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := in.Sample(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkLoadState loads the state of 24 tokens with its logits (80 + 96 + 513024 bytes)
// into an instance whose blocks are allocated, as restore does.
func BenchmarkLoadState(b *testing.B) {
	in := vocab1bInstance(b, Sampler{})
	st, err := in.SaveState()
	if err != nil {
		b.Fatal(err)
	}
	m := in.Model()
	dst := newInst(b, m, InstanceOptions{Threads: 1})
	if _, err := dst.AllocKV(24); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(st)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := dst.LoadState(st); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSaveState(b *testing.B) {
	in := vocab1bInstance(b, Sampler{})
	b.Run("new", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			st, err := in.SaveState()
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(st)))
		}
	})
	b.Run("append", func(b *testing.B) {
		var buf []byte
		for i := 0; i < b.N; i++ {
			st, err := in.AppendState(buf[:0])
			if err != nil {
				b.Fatal(err)
			}
			buf = st
			b.SetBytes(int64(len(st)))
		}
	})
}

// BenchmarkDecodeSampleMode: decode steps on the tiny preset (vocabulary 32000), greedy, with
// the selection on the host and in the guest, side by side.
func BenchmarkDecodeSampleMode(b *testing.B) {
	m := testModel(b, "tiny", gguf.TypeQ8_0)
	for mode, where := range []string{"host", "guest"} {
		b.Run(where, func(b *testing.B) {
			in := newInst(b, m, InstanceOptions{Threads: 2})
			if err := in.setSampleMode(mode); err != nil {
				b.Fatal(err)
			}
			if err := in.Prefill(prompt(32, m.Hyper().Vocab, 9)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := in.Step(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}
