package restore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/gguf/dtype"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
)

// kv1BHyper has the KV shape of Llama-3.2-1B (16 layers, 8 KV heads of 64: 32 KiB of f16 KV a
// token) around small matrices, so that a benchmark can make a 2048-token checkpoint in
// seconds. Restore cost depends only on the KV layout and bytes, not on the weights.
var kv1BHyper = gguf.Hyper{Arch: "llama", Context: 4096, Dim: 512, Layers: 16, FFN: 256, Heads: 8, KVHeads: 8,
	HeadDim: 64, RopeDim: 64, RopeTheta: 500000, RMSEps: 1e-5, Vocab: 2048, Tied: true}

// benchCheckpoint makes a checkpoint of npos positions of model m (kv1BHyper) in a fresh store
// of kind "local" or "pack".
// Computing 2048 positions of attention takes minutes on two cores, so the KV blocks of the
// first npos-1 positions are filled with f16 values of a normal distribution (what real K and
// V look like to the codecs: random low bytes, a narrow range of exponents) and adopted as a
// prefix; the last position is fed for real, for the logits. `driftstore bench restore`
// measures KV computed by the model.
func benchCheckpoint(b *testing.B, m *engine.Model, kind string, npos int, codec checkpoint.KVCodec) (cas.Store, *checkpoint.Checkpoint) {
	b.Helper()
	dir := b.TempDir()
	var store cas.Store
	var err error
	switch kind {
	case "local": // a file per chunk
		store, err = cas.OpenLocal(filepath.Join(dir, "chunks"), cas.LocalOptions{NoSync: true})
	case "pack": // what new data directories use (repo)
		var p *cas.Pack
		if p, err = cas.OpenPack(filepath.Join(dir, "packs"), cas.PackOptions{NoSync: true}); err == nil {
			b.Cleanup(func() { p.Close() })
			store = p
		}
	default:
		b.Fatalf("no store %q", kind)
	}
	if err != nil {
		b.Fatal(err)
	}
	ix, err := index.Open(filepath.Join(dir, "index.db"), store, index.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ix.Close() })
	in, err := m.NewInstance(engine.InstanceOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	toks := cptest.Tokens(npos, kv1BHyper.Vocab, 3)
	regs, err := in.AllocKV(npos - 1)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	mem := in.Memory()
	vals := make([]float32, in.Layout().BlockBytes/2)
	for _, r := range regs {
		for i := range vals {
			vals[i] = float32(rng.NormFloat64())
		}
		dtype.F32sToF16s(mem[r.Offset:r.Offset+r.Length], vals)
	}
	if err := in.AdoptPrefix(toks[:npos-1]); err != nil {
		b.Fatal(err)
	}
	if err := in.Prefill(toks[npos-1:]); err != nil {
		b.Fatal(err)
	}
	r, err := checkpoint.Capture(context.Background(), ix, m, in, checkpoint.CaptureOptions{KVCodec: codec})
	if err != nil {
		b.Fatal(err)
	}
	return store, r.Checkpoint
}

// benchModel writes and loads the model of kv1BHyper in dir.
func benchModel(b *testing.B, dir string) *engine.Model {
	b.Helper()
	path := filepath.Join(dir, "kv1b.gguf")
	if err := cptest.WriteModel(path, kv1BHyper, 1); err != nil {
		b.Fatal(err)
	}
	e, err := cptest.Engine()
	if err != nil {
		b.Fatal(err)
	}
	m, err := e.LoadModel(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// BenchmarkNewInstance1B makes instances of the 1B KV shape: bare, and made for 2048 positions
// (64 MiB of KV blocks allocated and populated at creation), with small or huge pages.
func BenchmarkNewInstance1B(b *testing.B) {
	m := benchModel(b, b.TempDir())
	for _, v := range []struct {
		ctx  int
		huge bool
	}{{0, false}, {2048, false}, {2048, true}} {
		b.Run(fmt.Sprintf("context=%d/huge=%v", v.ctx, v.huge), func(b *testing.B) {
			for b.Loop() {
				in, err := m.NewInstance(engine.InstanceOptions{Context: v.ctx, HugePages: v.huge, Threads: runtime.GOMAXPROCS(0)})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				in.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRestore1B restores 2048 positions of the Llama-3.2-1B KV shape (64 MiB) from a
// pack store (what data directories use) and a file-per-chunk store, with the KV stored in
// each codec, into fresh instances: made for that context (its KV memory allocated and
// resident before the restore, as llama.cpp's context is; in small pages, or huge ones where
// the kernel has them) or made bare (the restore allocates the blocks and faults their pages
// in). Making the instance is outside the timed part; BenchmarkNewInstance1B measures it.
func BenchmarkRestore1B(b *testing.B) {
	const npos = 2048
	m := benchModel(b, b.TempDir())
	for _, kind := range []string{"pack", "local"} {
		for _, codec := range []checkpoint.KVCodec{checkpoint.KVCodecFloat, checkpoint.KVCodecRaw} {
			b.Run("store="+kind+"/codec="+string(codec), func(b *testing.B) {
				store, cp := benchCheckpoint(b, m, kind, npos, codec)
				for _, made := range []struct {
					name string
					ctx  int
					huge bool
				}{{"instance=bare", 0, false}, {"instance=ctx2048", npos, false}, {"instance=ctx2048huge", npos, true}} {
					if made.huge && kind != "pack" {
						continue
					}
					b.Run(made.name, func(b *testing.B) {
						b.SetBytes(cp.KVBytes())
						for b.Loop() {
							b.StopTimer()
							in, err := m.NewInstance(engine.InstanceOptions{Context: made.ctx, HugePages: made.huge, Threads: runtime.GOMAXPROCS(0)})
							if err != nil {
								b.Fatal(err)
							}
							b.StartTimer()
							_, err = restore.IntoWith(context.Background(), store, in, cp, restore.IntoOptions{})
							b.StopTimer()
							in.Close()
							if err != nil {
								b.Fatal(err)
							}
							b.StartTimer()
						}
					})
				}
			})
		}
	}
}

// BenchmarkVerifyCopy1B is the floor BenchmarkRestore1B is held to: copying 64 MiB into
// resident memory while hashing it with BLAKE3, one 32 KiB block at a time, on GOMAXPROCS
// goroutines (what `driftstore bench restore` measures as verify-and-copy).
func BenchmarkVerifyCopy1B(b *testing.B) {
	const n, block = 64 << 20, 32 << 10
	src, dst := make([]byte, n), make([]byte, n)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	copy(dst, src) // fault the destination in
	workers := runtime.GOMAXPROCS(0)
	b.SetBytes(n)
	for b.Loop() {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1)-1) * block
					if i >= n {
						return
					}
					copy(dst[i:i+block], src[i:i+block])
					_ = cas.Sum(dst[i : i+block])
				}
			})
		}
		wg.Wait()
	}
}
