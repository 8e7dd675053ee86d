package checkpoint_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/guest"
	"github.com/driftstore/driftstore/index"
)

type env struct {
	store *cas.Local
	ix    *index.Index
	model *engine.Model
}

func newEnv(t *testing.T) *env {
	t.Helper()
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
	path, err := cptest.SmallModel(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := cptest.Engine()
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &env{store: store, ix: ix, model: m}
}

func (e *env) instance(t *testing.T, kv engine.KVType) *engine.Instance {
	t.Helper()
	in, err := e.model.NewInstance(engine.InstanceOptions{KVType: kv, Sampler: engine.Sampler{Temp: 0.9, TopK: 20, TopP: 0.9, Seed: 7}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in
}

func TestManifestRoundTrip(t *testing.T) {
	e := newEnv(t)
	in := e.instance(t, engine.KVF16)
	if err := in.Prefill(cptest.Tokens(40, 512, 1)); err != nil {
		t.Fatal(err)
	}
	res, err := checkpoint.Capture(context.Background(), e.ix, e.model, in, checkpoint.CaptureOptions{ModelSource: "x.gguf"})
	if err != nil {
		t.Fatal(err)
	}
	cp := res.Checkpoint
	if cp.Position != 40 || len(cp.KV) != 2 || len(cp.KV[0]) != 3 || !cp.HasLogits || len(cp.State) != 2 {
		t.Fatalf("checkpoint: position %d, %d layers, %d blocks, logits %v, %d state chunks", cp.Position, len(cp.KV), len(cp.KV[0]), cp.HasLogits, len(cp.State))
	}
	// The state: the head, then (top-k 20 reads 20 logits) the top 64 logits: 512 bytes
	// instead of the 2048 of the vocabulary's 512 logits.
	if cp.State[0].Length != int64(checkpoint.StateHeadLen(40)) || cp.TopLogits != checkpoint.DefaultTopLogits ||
		cp.State[1].Length != checkpoint.TopLogitBytes*checkpoint.DefaultTopLogits {
		t.Fatalf("state chunks %+v, %d top logits", cp.State, cp.TopLogits)
	}
	if cp.Guest != cas.Digest(guest.Fingerprint) || cp.Model != e.model.Fingerprint() || cp.ModelSource != "x.gguf" {
		t.Fatalf("fingerprints or source wrong: %+v", cp)
	}
	back, err := checkpoint.Load(e.ix, cp.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Tokens, cp.Tokens) || back.Sampler != cp.Sampler || back.RNG != cp.RNG || back.Layout != cp.Layout ||
		back.Position != cp.Position || back.Model != cp.Model || !slices.Equal(back.State, cp.State) || back.TopLogits != cp.TopLogits {
		t.Fatalf("round trip differs:\n%+v\n%+v", back, cp)
	}
	for l := range cp.KV {
		if !slices.Equal(back.KV[l], cp.KV[l]) {
			t.Fatalf("layer %d chunks differ", l)
		}
	}
	if back.Sampler.Temp != 0.9 || back.Sampler.TopK != 20 || back.Sampler.Seed != 7 {
		t.Fatalf("sampler %+v", back.Sampler)
	}
	// Every block chunk holds exactly the block region's bytes.
	regs, err := in.KVRegions()
	if err != nil {
		t.Fatal(err)
	}
	mem := in.Memory()
	for _, r := range regs {
		if got := cas.Sum(mem[r.Offset : r.Offset+r.Length]); got != cp.KV[r.Layer][r.Block].Digest {
			t.Fatalf("layer %d block %d: chunk %s, region hashes to %s", r.Layer, r.Block, cp.KV[r.Layer][r.Block].Digest, got)
		}
	}

	// Not a checkpoint, and broken checkpoints, are refused.
	m, err := e.ix.Manifest(cp.ID)
	if err != nil {
		t.Fatal(err)
	}
	m.Kind = "file"
	if _, err := checkpoint.Parse(cp.ID, m); !errors.Is(err, checkpoint.ErrBadCheckpoint) {
		t.Fatalf("kind file: %v", err)
	}
	m.Kind = checkpoint.Kind
	m.Regions[0].Chunks = m.Regions[0].Chunks[:2]
	if _, err := checkpoint.Parse(cp.ID, m); !errors.Is(err, checkpoint.ErrBadCheckpoint) {
		t.Fatalf("short region: %v", err)
	}
	m, _ = e.ix.Manifest(cp.ID)
	delete(m.Meta, checkpoint.KeyModel)
	if _, err := checkpoint.Parse(cp.ID, m); !errors.Is(err, checkpoint.ErrBadCheckpoint) {
		t.Fatalf("no model fingerprint: %v", err)
	}
}

func TestIncrementalWritesOnlyTouchedBlocks(t *testing.T) {
	e := newEnv(t)
	in := e.instance(t, engine.KVF32)
	ctx := context.Background()
	if err := in.Prefill(cptest.Tokens(100, 512, 2)); err != nil { // blocks 0..6, block 6 partial (96..99)
		t.Fatal(err)
	}
	r1, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r1.BlocksWritten != 14 || r1.Blocks != 14 || r1.BlocksNew != 14 {
		t.Fatalf("first checkpoint wrote %d of %d blocks (%d new)", r1.BlocksWritten, r1.Blocks, r1.BlocksNew)
	}
	cases := []struct {
		add, wantWritten int
	}{
		{1, 2},    // 101: block 6 again (partial)
		{11, 2},   // 112: block 6 now full
		{1, 2},    // 113: block 7 new
		{40, 6},   // 153: blocks 7, 8, 9 (7 rewritten: it was partial)
		{0, 0},    // nothing new: nothing written
		{11, 4},   // 164: block 9 again (it was partial) and block 10
		{12, 2},   // 176: block 10 full
		{16, 2},   // 192: block 11
		{33, 6},   // 225: 12, 13, 14
		{200, 26}, // 425: blocks 14..26
	}
	parent := r1.Checkpoint
	pos := 100
	for i, c := range cases {
		if c.add > 0 {
			if _, err := in.Generate(c.add, nil); err != nil {
				t.Fatal(err)
			}
		}
		before := countChunks(t, e.store)
		r, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{Parent: parent})
		if err != nil {
			t.Fatal(err)
		}
		pos += c.add
		want := c.wantWritten
		if r.Position != pos || r.BlocksWritten != want {
			t.Fatalf("case %d: position %d (want %d), wrote %d blocks, want %d", i, r.Position, pos, r.BlocksWritten, want)
		}
		if r.Checkpoint.Parent != parent.ID {
			t.Fatalf("case %d: parent %s, want %s", i, r.Checkpoint.Parent, parent.ID)
		}
		// The store grew by at most the blocks written plus the state chunks.
		if grew := countChunks(t, e.store) - before; grew > r.BlocksWritten+len(r.Checkpoint.State) {
			t.Fatalf("case %d: store grew by %d chunks for %d blocks written", i, grew, r.BlocksWritten)
		}
		// Reused chunks are exactly what a full capture would name.
		full, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{Parent: parent, Reuse: nil, Workers: 1})
		if err != nil {
			t.Fatal(err)
		}
		if full.Checkpoint.ID != r.Checkpoint.ID {
			t.Fatalf("case %d: capture with the same parent gives another manifest", i)
		}
		noParent, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for l := range r.Checkpoint.KV {
			if !slices.Equal(noParent.Checkpoint.KV[l], r.Checkpoint.KV[l]) {
				t.Fatalf("case %d: layer %d: reused chunks differ from the blocks' content", i, l)
			}
		}
		parent = r.Checkpoint
	}
}

func countChunks(t *testing.T, s cas.Store) int {
	t.Helper()
	n := 0
	if err := s.Walk(context.Background(), func(cas.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPrefixTable(t *testing.T) {
	e := newEnv(t)
	in := e.instance(t, engine.KVF16)
	toks := cptest.Tokens(70, 512, 3)
	if err := in.Prefill(toks); err != nil {
		t.Fatal(err)
	}
	r, err := checkpoint.Capture(context.Background(), e.ix, e.model, in, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tab, err := checkpoint.OpenPrefixTable(filepath.Join(t.TempDir(), "cache", "prefix.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	if err := tab.Add(r.Checkpoint); err != nil {
		t.Fatal(err)
	}
	cp := r.Checkpoint
	key := checkpoint.PrefixKey{Model: cp.Model, Guest: cp.Guest, Layout: cp.Layout}
	// Same first 50 tokens, then different: blocks 0..2 (48 tokens) match.
	q := append(slices.Clone(toks[:50]), cptest.Tokens(30, 512, 9)...)
	b, err := tab.Lookup(key, q, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Tokens) != 48 || len(b.KV[0]) != 3 || len(b.KV[1]) != 3 || b.KV[1][2] != cp.KV[1][2] {
		t.Fatalf("lookup: %d tokens, %d/%d blocks", len(b.Tokens), len(b.KV[0]), len(b.KV[1]))
	}
	if b, _ := tab.Lookup(key, q, 2); len(b.Tokens) != 32 {
		t.Fatalf("maxBlocks 2: %d tokens", len(b.Tokens))
	}
	// A different first token: nothing.
	q[0] = (q[0] + 1) % 512
	if b, _ := tab.Lookup(key, q, 100); len(b.Tokens) != 0 {
		t.Fatalf("diverging first block matched %d tokens", len(b.Tokens))
	}
	// Another model or layout: nothing.
	k2 := key
	k2.Model[0] ^= 1
	if b, _ := tab.Lookup(k2, toks, 100); len(b.Tokens) != 0 {
		t.Fatal("other model matched")
	}
	k3 := key
	k3.Layout.DType = "f32"
	if b, _ := tab.Lookup(k3, toks, 100); len(b.Tokens) != 0 {
		t.Fatal("other layout matched")
	}
}

// TestKVCodec: the KV codec changes how KV blocks are stored, never what a checkpoint names:
// the same instance captured with each codec gives the same checkpoint ID, its KV chunks
// stored as float16 planes with KVCodecFloat and never so with KVCodecRaw; an unknown codec
// is refused.
func TestKVCodec(t *testing.T) {
	ctx := context.Background()
	a, b := newEnv(t), newEnv(t)
	in := a.instance(t, engine.KVF16)
	if err := in.Prefill(cptest.Tokens(100, 512, 4)); err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoint.Capture(ctx, a.ix, a.model, in, checkpoint.CaptureOptions{KVCodec: "zip"}); err == nil {
		t.Fatal("unknown KV codec accepted")
	}
	if _, err := checkpoint.ParseKVCodec("zip"); err == nil {
		t.Fatal("ParseKVCodec accepted zip")
	}
	fl, err := checkpoint.Capture(ctx, a.ix, a.model, in, checkpoint.CaptureOptions{KVCodec: checkpoint.KVCodecFloat})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := checkpoint.Capture(ctx, b.ix, b.model, in, checkpoint.CaptureOptions{KVCodec: checkpoint.KVCodecRaw})
	if err != nil {
		t.Fatal(err)
	}
	if fl.Checkpoint.ID != raw.Checkpoint.ID {
		t.Fatalf("checkpoint IDs differ by codec: %s, %s", fl.Checkpoint.ID, raw.Checkpoint.ID)
	}
	planes := map[*env]int{}
	for _, e := range []*env{a, b} {
		for _, l := range fl.Checkpoint.KV {
			for _, ref := range l {
				info, err := e.store.Stat(ctx, ref.Digest)
				if err != nil {
					t.Fatal(err)
				}
				if info.Codec == cas.CodecF16Planes {
					planes[e]++
				}
			}
		}
	}
	if planes[a] == 0 || planes[b] != 0 {
		t.Fatalf("KV chunks stored as float16 planes: %d with the float codec, %d with raw", planes[a], planes[b])
	}
}
