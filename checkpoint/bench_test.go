package checkpoint_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/gguf/dtype"
	"github.com/driftstore/driftstore/index"
)

// incr1BHyper has the checkpoint shape of Llama-3.2-1B: 16 layers of 8 KV heads of 64 (32 KiB
// of f16 KV a token, blocks of 16 positions of one layer: 32 KiB) and its 128256-entry vocabulary (513 KB
// of logits in every checkpoint), around small matrices, so that a benchmark builds a
// 4096-token state in seconds. The cost of a checkpoint depends only on the KV layout, the
// vocabulary and the position, not on the weights.
var incr1BHyper = gguf.Hyper{Arch: "llama", Context: 8192, Dim: 512, Layers: 16, FFN: 256, Heads: 8, KVHeads: 8,
	HeadDim: 64, RopeDim: 64, RopeTheta: 500000, RMSEps: 1e-5, Vocab: 128256, Tied: true}

// BenchmarkIncremental1B measures the incremental checkpoint of issue #4 on the 1B checkpoint
// shape at 512, 2048 and 4096 positions: 16 new tokens are fed (not timed), then
//
//   - incr16: Capture with the previous checkpoint as parent, into a pack store and index that
//     sync (as a data directory does): it stores the blocks the 16 tokens touched and the state
//     (head and logits), and commits the manifest of the whole context;
//   - snap16: the same turn's checkpoint taken as a snapshot (TakeSnapshot: the state and
//     the touched blocks copied out of the instance, what a turn that commits in the
//     background waits for), from a second instance fed the same tokens, then committed
//     (not timed; its manifest ID must equal incr16's);
//   - store16: the same blocks alone hashed and stored as cas.PutAll does (workers putting into
//     one batch, then its Commit), into the same store, so into the same pack file in the same
//     state (each block with its first and last byte changed, so that they are new chunks of
//     the same size).
//
// Both are timed in every iteration, side by side; the metrics are medians (ms) and their
// ratio, with Capture's phases (see checkpoint.Result). The KV blocks of the first positions
// are normal-distributed f16 values adopted as a prefix (computing 4096 positions of attention
// takes minutes); every later position is computed by the model. Run with -benchtime=Nx.
func BenchmarkIncremental1B(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "incr1b.gguf")
	spec := gguf.SynthSpec{Name: "incr1b", Hyper: incr1BHyper, Type: gguf.TypeQ8_0, Seed: 1}
	if err := spec.WriteFile(path, nil); err != nil {
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
	defer m.Close()
	workers := runtime.GOMAXPROCS(0)
	for _, npos := range []int{512, 2048, 4096} {
		for _, codec := range []checkpoint.KVCodec{checkpoint.KVCodecFloat, checkpoint.KVCodecRaw} {
			b.Run(fmt.Sprintf("ctx=%d/codec=%s", npos, codec), func(b *testing.B) {
				benchIncremental(b, m, npos, codec, workers, false)
			})
			if npos == 2048 {
				// The instance is greedy: its checkpoints keep the best 64 logits. The same
				// with the whole vector (513 KB), for comparison.
				b.Run(fmt.Sprintf("ctx=%d/codec=%s/logits=all", npos, codec), func(b *testing.B) {
					benchIncremental(b, m, npos, codec, workers, true)
				})
			}
		}
	}
}

func benchIncremental(b *testing.B, m *engine.Model, npos int, codec checkpoint.KVCodec, workers int, keepLogits bool) {
	ctx := context.Background()
	dir := b.TempDir()
	store, err := cas.OpenPack(filepath.Join(dir, "packs"), cas.PackOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	ix, err := index.Open(filepath.Join(dir, "index.db"), store, index.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer ix.Close()

	in, err := m.NewInstance(engine.InstanceOptions{Threads: workers})
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	in2, err := m.NewInstance(engine.InstanceOptions{Threads: workers})
	if err != nil {
		b.Fatal(err)
	}
	defer in2.Close()
	toks := cptest.Tokens(npos, incr1BHyper.Vocab, 3)
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
	regs2, err := in2.AllocKV(npos - 1)
	if err != nil {
		b.Fatal(err)
	}
	for i, r := range regs {
		copy(in2.Memory()[regs2[i].Offset:regs2[i].Offset+regs2[i].Length], mem[r.Offset:r.Offset+r.Length])
	}
	for _, x := range []*engine.Instance{in, in2} {
		if err := x.AdoptPrefix(toks[:npos-1]); err != nil {
			b.Fatal(err)
		}
		if err := x.Prefill(toks[npos-1:]); err != nil {
			b.Fatal(err)
		}
	}
	full, err := checkpoint.Capture(ctx, ix, m, in, checkpoint.CaptureOptions{Workers: workers, KVCodec: codec, KeepLogits: keepLogits})
	if err != nil {
		b.Fatal(err)
	}
	parent := full.Checkpoint
	var incr, snap16, store16, prep, stor, commit, put, sync, enc, idx, fput, fsync []time.Duration
	rep := 0
	for b.Loop() {
		b.StopTimer()
		turn := cptest.Tokens(16, incr1BHyper.Vocab, 1000+rep)
		// in last: the checkpoint follows its own turn, as in a session (the other
		// instance's prefill would leave in's state out of the caches).
		if err := in2.Prefill(turn); err != nil {
			b.Fatal(err)
		}
		if err := in.Prefill(turn); err != nil {
			b.Fatal(err)
		}
		rep++
		b.StartTimer()
		res, err := checkpoint.Capture(ctx, ix, m, in, checkpoint.CaptureOptions{Parent: parent, Workers: workers, KVCodec: codec, KeepLogits: keepLogits})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		snap, err := checkpoint.TakeSnapshot(m, in2, checkpoint.CaptureOptions{Parent: parent, Workers: workers, KVCodec: codec, KeepLogits: keepLogits})
		if err != nil {
			b.Fatal(err)
		}
		snap16 = append(snap16, snap.Duration())
		sres, err := snap.Commit(ctx, ix)
		if err != nil {
			b.Fatal(err)
		}
		if sres.Checkpoint.ID != res.Checkpoint.ID || snap.BlocksCopied() != res.BlocksWritten {
			b.Fatalf("snapshot of the same state: %s (%d blocks), Capture %s (%d)", sres.Checkpoint.ID, snap.BlocksCopied(), res.Checkpoint.ID, res.BlocksWritten)
		}
		// The blocks the 16 tokens touched: new, or changed since the parent.
		regs, err := in.KVRegions()
		if err != nil {
			b.Fatal(err)
		}
		mem := in.Memory()
		var blocks [][]byte
		for _, rg := range regs {
			old := parent.KV[rg.Layer]
			if rg.Block >= len(old) || old[rg.Block] != res.Checkpoint.KV[rg.Layer][rg.Block] {
				bl := slices.Clone(mem[rg.Offset : rg.Offset+rg.Length])
				bl[0] ^= 0x5a
				bl[len(bl)-1] ^= byte(rep)
				blocks = append(blocks, bl)
			}
		}
		if len(blocks) != res.BlocksWritten {
			b.Fatalf("%d blocks changed, Capture wrote %d", len(blocks), res.BlocksWritten)
		}
		// Both commits applied to the index file first (a read waits for that), so that their
		// background transactions do not share the disk with the store below.
		if _, err := ix.HasManifest(sres.Checkpoint.ID); err != nil {
			b.Fatal(err)
		}
		// What cas.PutAll does, with its put and sync phases timed apart.
		t0 := time.Now()
		batch := store.NewBatch()
		hint := codec.Hint(res.Checkpoint.Layout)
		errs := make(chan error, workers)
		for w := range workers {
			go func() {
				for i := w; i < len(blocks); i += workers {
					if _, err := batch.Put(ctx, blocks[i], hint); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range workers {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		if err := batch.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		store16 = append(store16, time.Since(t0))
		fput, fsync = append(fput, t1.Sub(t0)), append(fsync, time.Since(t1))
		incr = append(incr, res.Duration)
		prep, stor, commit = append(prep, res.Prepare), append(stor, res.Store), append(commit, res.Commit)
		put, sync, enc, idx = append(put, res.Put), append(sync, res.Sync), append(enc, res.Encode), append(idx, res.Index)
		parent = res.Checkpoint
		b.StartTimer()
	}
	med := func(ds []time.Duration) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[len(s)/2]) / 1e6
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med(incr), "incr16-ms")
	b.ReportMetric(med(snap16), "snap16-ms")
	b.ReportMetric(med(store16), "store16-ms")
	b.ReportMetric(med(incr)/med(store16), "incr/store")
	b.ReportMetric(med(prep), "prepare-ms")
	b.ReportMetric(med(stor), "store-ms")
	b.ReportMetric(med(commit), "commit-ms")
	b.ReportMetric(med(put), "put-ms")
	b.ReportMetric(med(sync), "sync-ms")
	b.ReportMetric(med(enc), "encode-ms")
	b.ReportMetric(med(idx), "index-ms")
	b.ReportMetric(med(fput), "store16-put-ms")
	b.ReportMetric(med(fsync), "store16-sync-ms")
}
