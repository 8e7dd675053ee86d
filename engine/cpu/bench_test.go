//go:build unix

package cpu

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// cpuTime is this process's user+system CPU time. The benchmark machine is
// shared: wall time per op depends on what else runs, CPU time per op much
// less. Metrics suffixed "/cpu-s" divide work by CPU seconds (all threads):
// the rate one dedicated core would give.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchWeights returns rows×cols weights of type t filled with valid random
// values (a 64 KiB pattern of encoded rows repeated: the benchmarks need
// distinct memory, not distinct values).
func benchWeights(t DType, rows, cols int) *Weights {
	r := rand.New(rand.NewPCG(uint64(rows), uint64(cols)))
	rb, err := t.RowBytes(cols)
	if err != nil {
		panic(err)
	}
	patRows := max(1, min(rows, (1<<16)/rb))
	pat, _ := encode(t, patRows, cols, randVec(r, patRows*cols, 0.05))
	data := make([]byte, rows*rb)
	for off := 0; off < len(data); off += len(pat.Data) {
		copy(data[off:], pat.Data)
	}
	return &Weights{Type: t, Rows: rows, Cols: cols, Data: data}
}

// BenchmarkMatMul: decode (n=1) and prefill (n=32..512) at the Llama-3.2-1B
// shapes. GB/s counts weight bytes streamed per call, GFLOP/s 2·rows·cols·n.
func BenchmarkMatMul(b *testing.B) {
	shapes := []struct {
		name       string
		rows, cols int
	}{
		{"attn2048x2048", 2048, 2048},
		{"ffnup8192x2048", 8192, 2048},
		{"ffndown2048x8192", 2048, 8192},
		{"vocab128256x2048", 128256, 2048},
	}
	for _, typ := range []DType{F16, Q8_0, BF16, F32} {
		for _, sh := range shapes {
			w := benchWeights(typ, sh.rows, sh.cols)
			for _, n := range []int{1, 32, 128, 512} {
				if sh.rows > 100000 && n > 32 {
					continue // logits are computed for the last prompt token only
				}
				x := randVec(rand.New(rand.NewPCG(1, 1)), n*sh.cols, 1)
				out := make([]float32, n*sh.rows)
				for _, threads := range []int{1, 2} {
					b.Run(fmt.Sprintf("%v/%s/n=%d/t=%d", typ, sh.name, n, threads), func(b *testing.B) {
						p := NewPool(threads)
						defer p.Close()
						c0 := cpuTime()
						for b.Loop() {
							p.MatMul(out, w, x, n)
						}
						sec := b.Elapsed().Seconds() / float64(b.N)
						csec := (cpuTime() - c0).Seconds() / float64(b.N)
						flop := 2 * float64(sh.rows) * float64(sh.cols) * float64(n)
						b.ReportMetric(float64(len(w.Data))/sec/1e9, "GB/s")
						b.ReportMetric(flop/sec/1e9, "GFLOP/s")
						b.ReportMetric(flop/csec/1e9, "GFLOP/cpu-s")
					})
				}
			}
		}
	}
}

// BenchmarkMatMulTiny: prefill at the tiny model's shapes (dim 288, FFN
// 768), in the guest's batches of 64 and in one batch of 512, and the
// one-token logits matmul.
func BenchmarkMatMulTiny(b *testing.B) {
	shapes := []struct {
		name       string
		rows, cols int
	}{{"288x288", 288, 288}, {"768x288", 768, 288}, {"288x768", 288, 768}, {"vocab32000x288", 32000, 288}}
	for _, typ := range []DType{F16, Q8_0} {
		for _, sh := range shapes {
			w := benchWeights(typ, sh.rows, sh.cols)
			ns := []int{64, 512}
			if sh.rows > 10000 {
				ns = []int{1} // logits of the last token of a batch
			}
			for _, n := range ns {
				x := randVec(rand.New(rand.NewPCG(1, 1)), n*sh.cols, 1)
				out := make([]float32, n*sh.rows)
				for _, threads := range []int{1, 2} {
					b.Run(fmt.Sprintf("%v/%s/n=%d/t=%d", typ, sh.name, n, threads), func(b *testing.B) {
						p := NewPool(threads)
						defer p.Close()
						c0 := cpuTime()
						for b.Loop() {
							p.MatMul(out, w, x, n)
						}
						sec := b.Elapsed().Seconds() / float64(b.N)
						csec := (cpuTime() - c0).Seconds() / float64(b.N)
						flop := 2 * float64(sh.rows) * float64(sh.cols) * float64(n)
						b.ReportMetric(flop/sec/1e9, "GFLOP/s")
						b.ReportMetric(flop/csec/1e9, "GFLOP/cpu-s")
					})
				}
			}
		}
	}
}

// BenchmarkAttention: one layer of the 1B shape (32 heads, 8 KV heads, head
// dim 64, F16 cache in blocks of 16): decode of one token at context 512 and
// 2048, and a prefill chunk of 512 tokens from position 0.
func BenchmarkAttention(b *testing.B) {
	const heads, nkv, hd = 32, 8, 64
	for _, c := range []struct{ n, ctx int }{{1, 512}, {1, 2048}, {512, 512}} {
		l := KVLayout{BlockSize: 16, NKVHeads: nkv, HeadDim: hd, KVType: F16}
		r := rand.New(rand.NewPCG(2, 2))
		blocks := make([][]byte, (c.ctx+15)/16)
		for i := range blocks {
			blocks[i] = make([]byte, l.BlockBytes())
		}
		kv := randVec(r, c.ctx*nkv*hd, 1)
		StoreKV(l, blocks, kv, kv, c.ctx, 0)
		q := randVec(r, c.n*heads*hd, 1)
		out := make([]float32, len(q))
		pos0 := c.ctx - c.n
		var kvBytes, flops float64
		for t := 0; t < c.n; t++ {
			ctx := float64(pos0 + t + 1)
			kvBytes += ctx * 2 * nkv * hd * 2
			flops += ctx * 4 * heads * hd
		}
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("n=%d/ctx=%d/t=%d", c.n, c.ctx, threads), func(b *testing.B) {
				p := NewPool(threads)
				defer p.Close()
				c0 := cpuTime()
				for b.Loop() {
					p.Attention(out, q, c.n, heads, pos0, l, blocks)
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				csec := (cpuTime() - c0).Seconds() / float64(b.N)
				b.ReportMetric(flops/csec/1e9, "GFLOP/cpu-s")
				b.ReportMetric(kvBytes/sec/1e9, "KV-GB/s")
				b.ReportMetric(flops/sec/1e9, "GFLOP/s")
			})
		}
	}
}

// benchModel is a Llama shape for BenchmarkForward.
type benchModel struct {
	name                                    string
	dim, ffn, layers, heads, kvHeads, vocab int
}

var benchModels = []benchModel{
	{"tiny", 288, 768, 6, 6, 6, 32000},
	{"llama1B", 2048, 8192, 16, 32, 8, 128256},
}

type benchLayer struct {
	wq, wk, wv, wo, w1, w2, w3 *Weights
	attnNorm, ffnNorm          []float32
	blocks                     [][]byte
}

// BenchmarkForward runs the whole Llama forward pass of a model shape with
// these kernels (random weights, every layer its own): prefill of 512
// tokens in one batch and in batches of 64 as the guest feeds them (logits
// for the last token of each batch only) and decode of one token at
// position 64. tok/s is wall-clock; tok/cpu-s divides by the CPU time of
// all threads, i.e. the rate per dedicated core.
func BenchmarkForward(b *testing.B) {
	for _, m := range benchModels {
		for _, typ := range []DType{Q8_0, F16} {
			// Nested so the weights of a model are made only when a
			// benchmark of it is selected.
			b.Run(fmt.Sprintf("%s/%v", m.name, typ), func(b *testing.B) { benchForward(b, m, typ) })
		}
	}
}

func benchForward(b *testing.B, m benchModel, typ DType) {
	hd := m.dim / m.heads
	kvDim := m.kvHeads * hd
	l := KVLayout{BlockSize: 16, NKVHeads: m.kvHeads, HeadDim: hd, KVType: F16}
	const ctxMax = 1024
	layers := make([]benchLayer, m.layers)
	r := rand.New(rand.NewPCG(5, 5))
	for i := range layers {
		ly := &layers[i]
		ly.wq = benchWeights(typ, m.dim, m.dim)
		ly.wk = benchWeights(typ, kvDim, m.dim)
		ly.wv = benchWeights(typ, kvDim, m.dim)
		ly.wo = benchWeights(typ, m.dim, m.dim)
		ly.w1 = benchWeights(typ, m.ffn, m.dim)
		ly.w3 = benchWeights(typ, m.ffn, m.dim)
		ly.w2 = benchWeights(typ, m.dim, m.ffn)
		ly.attnNorm = randVec(r, m.dim, 1)
		ly.ffnNorm = randVec(r, m.dim, 1)
		ly.blocks = make([][]byte, ctxMax/l.BlockSize)
		for j := range ly.blocks {
			ly.blocks[j] = make([]byte, l.BlockBytes())
		}
	}
	outW := benchWeights(typ, m.vocab, m.dim)
	outNorm := randVec(r, m.dim, 1)
	const maxN = 512
	x := randVec(r, maxN*m.dim, 1)
	xb := make([]float32, maxN*m.dim)
	xb2 := make([]float32, maxN*m.dim)
	q := make([]float32, maxN*m.dim)
	att := make([]float32, maxN*m.dim)
	k := make([]float32, maxN*kvDim)
	v := make([]float32, maxN*kvDim)
	g := make([]float32, maxN*m.ffn)
	u := make([]float32, maxN*m.ffn)
	logits := make([]float32, m.vocab)
	forward := func(p *Pool, n, pos0 int) {
		for i := range layers {
			ly := &layers[i]
			p.RMSNorm(xb, x, ly.attnNorm, n, m.dim, 1e-5)
			p.MatMul(q, ly.wq, xb, n)
			p.MatMul(k, ly.wk, xb, n)
			p.MatMul(v, ly.wv, xb, n)
			p.RoPE(q, n, m.heads, hd, pos0, 500000)
			p.RoPE(k, n, m.kvHeads, hd, pos0, 500000)
			StoreKV(l, ly.blocks, k, v, n, pos0)
			p.Attention(att, q, n, m.heads, pos0, l, ly.blocks)
			p.MatMul(xb2, ly.wo, att, n)
			Add(x[:n*m.dim], xb2)
			p.RMSNorm(xb, x, ly.ffnNorm, n, m.dim, 1e-5)
			p.MatMul(g, ly.w1, xb, n)
			p.MatMul(u, ly.w3, xb, n)
			p.SwiGLU(g[:n*m.ffn], g, u)
			p.MatMul(xb2, ly.w2, g, n)
			Add(x[:n*m.dim], xb2)
		}
		last := x[(n-1)*m.dim : n*m.dim]
		p.RMSNorm(xb, last, outNorm, 1, m.dim, 1e-5)
		p.MatMul(logits, outW, xb, 1)
		// Keep activations bounded across iterations.
		p.RMSNorm(x, x, outNorm, n, m.dim, 1e-5)
	}
	for _, mode := range []struct {
		name           string
		n, pos0, batch int
	}{{"prefill512", 512, 0, 512}, {"prefill512b64", 512, 0, 64}, {"decode@64", 1, 64, 1}} {
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/t=%d", mode.name, threads), func(b *testing.B) {
				p := NewPool(threads)
				defer p.Close()
				c0 := cpuTime()
				for b.Loop() {
					for t := 0; t < mode.n; t += mode.batch {
						forward(p, min(mode.batch, mode.n-t), mode.pos0+t)
					}
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				csec := (cpuTime() - c0).Seconds() / float64(b.N)
				b.ReportMetric(float64(mode.n)/sec, "tok/s")
				b.ReportMetric(float64(mode.n)/csec, "tok/cpu-s")
			})
		}
	}
}
