package engine

import (
	"testing"

	"github.com/driftstore/driftstore/gguf"
)

// Benchmarks on the tiny preset (Q8_0). Run: go test ./engine -run '^$' -bench . -benchtime 3x

func benchPrefill(b *testing.B, n, threads int) {
	m := testModel(b, "tiny", gguf.TypeQ8_0)
	toks := prompt(n, m.Hyper().Vocab, 9)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		in := newInst(b, m, InstanceOptions{Threads: threads})
		b.StartTimer()
		if err := in.Prefill(toks); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		in.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tok/s")
}

func BenchmarkPrefill128(b *testing.B) { benchPrefill(b, 128, 2) }
func BenchmarkPrefill512(b *testing.B) { benchPrefill(b, 512, 2) }

func benchDecode(b *testing.B, ctx, threads int) {
	m := testModel(b, "tiny", gguf.TypeQ8_0)
	in := newInst(b, m, InstanceOptions{Threads: threads})
	if err := in.Prefill(prompt(ctx, m.Hyper().Vocab, 9)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := in.Step(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
}

func BenchmarkDecodeCtx32(b *testing.B)  { benchDecode(b, 32, 2) }
func BenchmarkDecodeCtx512(b *testing.B) { benchDecode(b, 512, 2) }

func BenchmarkHostOpNop(b *testing.B) {
	m := testModel(b, "small", gguf.TypeF32)
	in := newInst(b, m, InstanceOptions{})
	b.ResetTimer()
	if err := in.NopLoop(b.N); err != nil {
		b.Fatal(err)
	}
}
