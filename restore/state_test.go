package restore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"reflect"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
)

// restoreTrace restores cp into a fresh instance and continues it.
func restoreTrace(t *testing.T, e *env, cp *checkpoint.Checkpoint) trace {
	t.Helper()
	in, res, err := restore.Restore(context.Background(), e.store, e.model, cp, restore.Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if res.StateBytes != cp.StateBytes() || res.Chunks != cp.Chunks() {
		t.Fatalf("result: %d state bytes, %d chunks; checkpoint has %d, %d", res.StateBytes, res.Chunks, cp.StateBytes(), cp.Chunks())
	}
	tr, err := continueTrace(in, steps)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// resplit stores cp's state again cut at the given lengths and commits the checkpoint that
// names those chunks instead.
func resplit(t *testing.T, e *env, cp *checkpoint.Checkpoint, lengths ...int) *checkpoint.Checkpoint {
	t.Helper()
	ctx := context.Background()
	var state []byte
	for _, c := range cp.State {
		b, err := e.store.Get(ctx, c.Digest, nil)
		if err != nil {
			t.Fatal(err)
		}
		state = append(state, b...)
	}
	out := *cp
	out.ID, out.State = index.ID{}, nil
	var infos []cas.Info
	for off, k := 0, 0; off < len(state); k++ {
		n := len(state) - off
		if k < len(lengths) {
			n = lengths[k]
		}
		info, err := e.store.Put(ctx, state[off:off+n], cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
		out.State = append(out.State, index.ChunkRef{Digest: info.Digest, Length: int64(n)})
		off += n
	}
	m, err := out.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if out.ID, err = e.ix.CommitManifest(ctx, infos, m); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestStateLayouts: the state as Capture writes it with the whole logits vector (KeepLogits:
// head, then logits chunks: decoded in place), as one chunk (the earlier layout) and split
// elsewhere all restore to the same continuation.
func TestStateLayouts(t *testing.T) {
	e := openEnv(t, t.TempDir())
	for _, kv := range []engine.KVType{engine.KVF16, engine.KVF32} {
		cp := captureWith(t, e, kv, 37, checkpoint.CaptureOptions{KeepLogits: true})
		if len(cp.State) < 2 || cp.State[0].Length != int64(checkpoint.StateHeadLen(37)) {
			t.Fatalf("capture's state chunks: %+v", cp.State)
		}
		want := restoreTrace(t, e, cp)
		in, _, err := restore.Restore(context.Background(), e.store, e.model, cp, restore.Options{HugePages: true})
		if err != nil {
			t.Fatal(err)
		}
		got, err := continueTrace(in, steps)
		in.Close()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%v: restore with huge pages continues differently (%v)", kv, err)
		}
		head := checkpoint.StateHeadLen(37)
		for _, lengths := range [][]int{nil, {head - 4}, {head + 8, 100}, {1, head - 1}} {
			other := resplit(t, e, cp, lengths...)
			if got := restoreTrace(t, e, other); !reflect.DeepEqual(got, want) {
				t.Fatalf("%v: state split %v continues differently", kv, lengths)
			}
		}
	}
}

// TestCorruptLogitsChunkIsNamed: a logits chunk decoded in place is verified like any other.
func TestCorruptLogitsChunkIsNamed(t *testing.T) {
	e := openEnv(t, t.TempDir())
	for _, opts := range []checkpoint.CaptureOptions{{KeepLogits: true}, {}} {
		testCorruptLogitsChunk(t, e, captureWith(t, e, engine.KVF16, 20, opts))
	}
}

// testCorruptLogitsChunk corrupts cp's last state chunk (logits, or top logits) on disk.
func testCorruptLogitsChunk(t *testing.T, e *env, cp *checkpoint.Checkpoint) {
	st := cp.State[len(cp.State)-1]
	p := e.store.Path(st.Digest)
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	mod := bytes.Clone(orig)
	mod[len(mod)-5] ^= 2
	if err := os.WriteFile(p, mod, 0o644); err != nil {
		t.Fatal(err)
	}
	in, _, err := restore.Restore(context.Background(), e.store, e.model, cp, restore.Options{})
	var ce *restore.ChunkError
	if in != nil || !errors.As(err, &ce) || ce.Digest != st.Digest || ce.Where == "" || !errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("corrupt logits chunk: %v", err)
	}
}

// TestBadTopLogitsRefused: a top-logits chunk that verifies against its digest but that no
// correct selection writes (out of order, an id outside the vocabulary, an id twice, a NaN)
// is refused with ErrBadCheckpoint, and no instance comes back.
func TestBadTopLogitsRefused(t *testing.T) {
	e := openEnv(t, t.TempDir())
	ctx := context.Background()
	cp := capture(t, e, engine.KVF16, 25)
	if cp.TopLogits == 0 || len(cp.State) != 2 {
		t.Fatalf("capture kept %d top logits in %d state chunks", cp.TopLogits, len(cp.State))
	}
	good, err := e.store.Get(ctx, cp.State[1].Digest, nil)
	if err != nil {
		t.Fatal(err)
	}
	entry := func(b []byte, j int) []byte { return b[checkpoint.TopLogitBytes*j : checkpoint.TopLogitBytes*(j+1)] }
	for _, tc := range []struct {
		name   string
		modify func(b []byte)
	}{
		{"swapped", func(b []byte) {
			tmp := bytes.Clone(entry(b, 0))
			copy(entry(b, 0), entry(b, 1))
			copy(entry(b, 1), tmp)
		}},
		{"id-outside", func(b []byte) { binary.LittleEndian.PutUint32(entry(b, 3), uint32(cp.Vocab)) }},
		{"id-twice", func(b []byte) { copy(entry(b, 5)[:4], entry(b, 4)[:4]) }},
		{"nan", func(b []byte) { binary.LittleEndian.PutUint32(entry(b, 0)[4:], 0x7fc00000) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Clone(good)
			tc.modify(bad)
			info, err := e.store.Put(ctx, bad, cas.HintNone)
			if err != nil {
				t.Fatal(err)
			}
			out := *cp
			out.ID, out.State = index.ID{}, []index.ChunkRef{cp.State[0], {Digest: info.Digest, Length: int64(len(bad))}}
			m, err := out.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			if out.ID, err = e.ix.CommitManifest(ctx, []cas.Info{info}, m); err != nil {
				t.Fatal(err)
			}
			in, _, err := restore.Restore(ctx, e.store, e.model, &out, restore.Options{})
			if in != nil || !errors.Is(err, checkpoint.ErrBadCheckpoint) {
				t.Fatalf("restore of a bad top-logits chunk: %v", err)
			}
		})
	}
}

// TestCapturePartialInstance: an instance restored from top logits is checkpointed again
// without a forward pass, keeping the same chunk, even after a sampler change that reads
// more (its restore recomputes); KeepLogits completes them first, and the vector it stores is
// the original instance's, bit for bit.
func TestCapturePartialInstance(t *testing.T) {
	e := openEnv(t, t.TempDir())
	ctx := context.Background()
	orig, err := e.model.NewInstance(engine.InstanceOptions{Sampler: engine.Sampler{Temp: 0.7, TopK: 30, Seed: 4}})
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := orig.Prefill(cptest.Tokens(33, 512, 3)); err != nil {
		t.Fatal(err)
	}
	want, err := orig.Logits()
	if err != nil {
		t.Fatal(err)
	}
	res, err := checkpoint.Capture(ctx, e.ix, e.model, orig, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cp := res.Checkpoint
	in, _, err := restore.Restore(ctx, e.store, e.model, cp, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if in.LogitsTop() != cp.TopLogits || cp.TopLogits == 0 {
		t.Fatalf("restored %d top logits of %d", in.LogitsTop(), cp.TopLogits)
	}
	if err := in.SetSampler(engine.Sampler{Temp: 0.7, Seed: 4}); err != nil { // reads every logit
		t.Fatal(err)
	}
	again, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{Parent: cp})
	if err != nil {
		t.Fatal(err)
	}
	if in.LogitsTop() != cp.TopLogits || again.Checkpoint.TopLogits != cp.TopLogits || again.Checkpoint.State[1] != cp.State[1] {
		t.Fatalf("checkpoint of the restored instance: %d top logits (chunk %v), the instance %d; want %d (chunk %v)",
			again.Checkpoint.TopLogits, again.Checkpoint.State[1], in.LogitsTop(), cp.TopLogits, cp.State[1])
	}
	full, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{Parent: cp, KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	if in.LogitsTop() != 0 || full.Checkpoint.TopLogits != 0 {
		t.Fatalf("KeepLogits: %d top logits, the instance %d", full.Checkpoint.TopLogits, in.LogitsTop())
	}
	var tail []byte
	for _, ref := range full.Checkpoint.State[1:] {
		b, err := e.store.Get(ctx, ref.Digest, nil)
		if err != nil {
			t.Fatal(err)
		}
		tail = append(tail, b...)
	}
	if len(tail) != 4*len(want) {
		t.Fatalf("%d bytes of logits for a vocabulary of %d", len(tail), len(want))
	}
	for i, w := range want {
		if binary.LittleEndian.Uint32(tail[4*i:]) != math.Float32bits(w) {
			t.Fatalf("logit %d: stored %#x, the original instance's %#x", i, binary.LittleEndian.Uint32(tail[4*i:]), math.Float32bits(w))
		}
	}
}
