package engine

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/wasmmem"
)

// deferBackend runs the CPU backend's ops only when the engine calls Sync: the most
// asynchronous an Exec may be (a GPU queue that has not started yet). Generation through it
// must match the CPU backend exactly; it would not if the guest or the host read an op's
// results, or wrote its inputs, anywhere but across an export boundary.
type deferBackend struct {
	cpu  Backend
	sync *int // Sync calls with work queued
	inv  *int // InvalidateKV calls
}

func (b deferBackend) Name() string             { return "defer" }
func (b deferBackend) RegionHook() wasmmem.Hook { return nil }
func (b deferBackend) Load(t *Tensors) (Weights, error) {
	w, err := b.cpu.Load(t)
	if err != nil {
		return nil, err
	}
	return deferWeights{w, b}, nil
}

type deferWeights struct {
	Weights
	b deferBackend
}

func (w deferWeights) NewExec(threads int) (Exec, error) {
	e, err := w.Weights.NewExec(threads)
	if err != nil {
		return nil, err
	}
	return &deferExec{e: e, b: w.b}, nil
}

type deferExec struct {
	e Exec
	b deferBackend
	q []func()
}

func (d *deferExec) Embed(out []float32, ids []int32) {
	ids = slices.Clone(ids) // the engine's scratch: an async Exec copies it
	d.q = append(d.q, func() { d.e.Embed(out, ids) })
}
func (d *deferExec) RMSNorm(out, x []float32, w int, n int) {
	d.q = append(d.q, func() { d.e.RMSNorm(out, x, w, n) })
}
func (d *deferExec) MatMul(out []float32, w int, x []float32, n int) {
	d.q = append(d.q, func() { d.e.MatMul(out, w, x, n) })
}
func (d *deferExec) RoPE(x []float32, n, nHeads, pos0 int) {
	d.q = append(d.q, func() { d.e.RoPE(x, n, nHeads, pos0) })
}
func (d *deferExec) StoreKV(l KVLayout, blocks [][]byte, k, v []float32, n, pos0 int) {
	blocks = slices.Clone(blocks)
	d.q = append(d.q, func() { d.e.StoreKV(l, blocks, k, v, n, pos0) })
}
func (d *deferExec) Attention(out, q []float32, n, pos0 int, l KVLayout, blocks [][]byte) {
	blocks = slices.Clone(blocks)
	d.q = append(d.q, func() { d.e.Attention(out, q, n, pos0, l, blocks) })
}
func (d *deferExec) SwiGLU(out, gate, up []float32) {
	d.q = append(d.q, func() { d.e.SwiGLU(out, gate, up) })
}
func (d *deferExec) Add(dst, src []float32) { d.q = append(d.q, func() { d.e.Add(dst, src) }) }
func (d *deferExec) Close()                 { d.e.Close() }

func (d *deferExec) Sync() error {
	if len(d.q) > 0 {
		*d.b.sync++
	}
	for _, f := range d.q {
		f()
	}
	d.q = d.q[:0]
	return nil
}

func (d *deferExec) InvalidateKV() { *d.b.inv++ }

// TestSyncerBarrier: an Exec whose ops run only at Sync gives the CPU backend's logits,
// tokens and KV bytes, through prefill in batches, sampled generation, state save and a
// restore into a fresh instance (which calls InvalidateKV).
func TestSyncerBarrier(t *testing.T) {
	var syncs, invs int
	e, err := New(Options{CacheDir: testCacheDir(), Backend: deferBackend{cpu: CPU(), sync: &syncs, inv: &invs}})
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
	opts := InstanceOptions{Batch: 8, Sampler: Sampler{Temp: 0.9, TopK: 20, TopP: 0.9, Seed: 5}}
	p := prompt(29, smallHyper.Vocab, 3)
	run := func(m *Model) (logits []float32, toks []int32, kv []byte, state []byte, in *Instance) {
		in = newInst(t, m, opts)
		if err := in.Prefill(p); err != nil {
			t.Fatal(err)
		}
		if toks, err = in.Generate(12, nil); err != nil {
			t.Fatal(err)
		}
		if logits, err = in.Logits(); err != nil {
			t.Fatal(err)
		}
		regs, err := in.KVRegions()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range regs {
			kv = append(kv, in.Memory()[r.Offset:r.Offset+r.Length]...)
		}
		if state, err = in.SaveState(); err != nil {
			t.Fatal(err)
		}
		return
	}
	l1, t1, kv1, st1, _ := run(ref)
	l2, t2, kv2, st2, in2 := run(m)
	if !slices.Equal(t1, t2) || bitsDiffer(l1, l2) || !bytes.Equal(kv1, kv2) || !bytes.Equal(st1, st2) {
		t.Fatalf("deferred ops differ from the CPU backend: tokens %v vs %v", t1, t2)
	}
	if syncs < 2 {
		t.Fatalf("Sync ran queued work %d times", syncs)
	}
	// Restore into a fresh instance of the deferring backend, then continue on both.
	in3 := newInst(t, m, opts)
	regs, err := in3.AllocKV(len(p) + 12)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range regs {
		copy(in3.Memory()[r.Offset:r.Offset+r.Length], kv2[i*int(r.Length):])
	}
	if err := in3.LoadState(st2); err != nil {
		t.Fatal(err)
	}
	if invs == 0 {
		t.Fatal("LoadState did not call InvalidateKV")
	}
	a, err := in2.Generate(6, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := in3.Generate(6, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a, b) {
		t.Fatalf("restored instance continues %v, original %v", b, a)
	}
}

func bitsDiffer(a, b []float32) bool {
	if len(a) != len(b) {
		return true
	}
	for i := range a {
		if a[i] != b[i] && !(a[i] != a[i] && b[i] != b[i]) {
			return true
		}
	}
	return false
}
