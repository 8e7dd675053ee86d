package session_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/session"
)

// TestTopLogitsSessions: a greedy or top-k session's checkpoints keep the top 64 logits (512
// bytes instead of the 2048 of the small model's vocabulary; Config.KeepLogits keeps the
// whole vector), and continuing each turn in a new manager (a restore) equals an
// uninterrupted session, token for token: after a turn that keeps the sampler (sampling
// from the restored top logits as they are), after one that changes it to a temperature over
// the whole vocabulary (the restored instance recomputes its logits before the first token),
// and after one restored from that turn's checkpoint, which keeps the whole vector.
func TestTopLogitsSessions(t *testing.T) {
	ctx := context.Background()
	const vocab = 512
	prompt := cptest.Tokens(29, vocab, 6)
	whole := engine.Sampler{Temp: 0.9, TopK: 0, TopP: 1, Seed: 5}
	for _, tc := range []struct {
		name string
		smp  engine.Sampler
		keep bool
	}{
		{"greedy", engine.Sampler{Seed: 1}, false},
		{"top-k", engine.Sampler{Temp: 0.9, TopK: 20, TopP: 0.95, Seed: 2}, false},
		{"keep-logits", engine.Sampler{Temp: 0.9, TopK: 20, TopP: 0.95, Seed: 2}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			smp := tc.smp
			turns := []session.Turn{
				{Prompt: prompt, N: 7, Sampler: &smp},
				{N: 6},
				{N: 6, Sampler: &whole},
				{Prompt: []int32{3, 4}, N: 6},
			}
			ref := open(t, t.TempDir(), true)
			rs, _ := ref.mgr.Session("ref")
			var want [][]int32
			for _, turn := range turns {
				turn.Model, turn.NoCheckpoint = ref.model, true
				r, err := rs.Run(ctx, turn)
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, r.Tokens)
			}
			dir := t.TempDir()
			head := func(pos int) int64 { return int64(checkpoint.StateHeadLen(pos)) }
			for i, turn := range turns {
				e := open(t, dir, true, func(c *session.Config) { c.KeepLogits = tc.keep })
				s, _ := e.mgr.Session("s")
				turn.Model = e.model
				r, err := s.Run(ctx, turn)
				if err != nil {
					t.Fatal(err)
				}
				if i > 0 && r.Restored == nil {
					t.Fatalf("turn %d did not restore", i)
				}
				if !slices.Equal(r.Tokens, want[i]) {
					t.Fatalf("turn %d: %v, uninterrupted %v", i, r.Tokens, want[i])
				}
				cp := r.Checkpoint.Checkpoint
				// Turn 2 changed the sampler to one that reads every logit: from then on the
				// checkpoints keep the whole vector.
				top := checkpoint.DefaultTopLogits
				if tc.keep || i >= 2 {
					top = 0
				}
				wantState := head(cp.Position) + checkpoint.TopLogitBytes*int64(top)
				if top == 0 {
					wantState = head(cp.Position) + 4*vocab
				}
				if cp.TopLogits != top || cp.StateBytes() != wantState {
					t.Fatalf("turn %d: checkpoint keeps %d top logits in %d state bytes, want %d in %d", i, cp.TopLogits, cp.StateBytes(), top, wantState)
				}
				if top > 0 && (len(cp.State) != 2 || cp.State[1].Length != checkpoint.TopLogitBytes*int64(top)) {
					t.Fatalf("turn %d: state chunks %+v", i, cp.State)
				}
				e.close()
			}
		})
	}
}

// TestTopLogitsRestoreThenSamplerChange: Restore, then a turn whose sampler reads more than
// the restored top logits hold, in the same manager: the same tokens as the uninterrupted
// session given the same change, whatever the new sampler (top-k above 64, a whole-vocabulary
// temperature with top-p, greedy).
func TestTopLogitsRestoreThenSamplerChange(t *testing.T) {
	ctx := context.Background()
	prompt := cptest.Tokens(40, 512, 2)
	start := engine.Sampler{Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 7}
	for _, next := range []engine.Sampler{
		{Temp: 1.2, TopK: 100, Seed: 8},
		{Temp: 0.7, TopP: 0.9, Seed: 9},
		{Seed: 10},
	} {
		t.Run(fmt.Sprintf("t%g-k%d-p%g", next.Temp, next.TopK, next.TopP), func(t *testing.T) {
			ref := open(t, t.TempDir(), true)
			rs, _ := ref.mgr.Session("ref")
			if _, err := rs.Run(ctx, session.Turn{Model: ref.model, Prompt: prompt, N: 5, Sampler: &start, NoCheckpoint: true}); err != nil {
				t.Fatal(err)
			}
			want, err := rs.Run(ctx, session.Turn{N: 8, Sampler: &next, NoCheckpoint: true})
			if err != nil {
				t.Fatal(err)
			}
			e := open(t, t.TempDir(), true)
			s, _ := e.mgr.Session("s")
			r1, err := s.Run(ctx, session.Turn{Model: e.model, Prompt: prompt, N: 5, Sampler: &start})
			if err != nil {
				t.Fatal(err)
			}
			if r1.Checkpoint.Checkpoint.TopLogits != checkpoint.DefaultTopLogits {
				t.Fatalf("the first turn's checkpoint keeps %d top logits", r1.Checkpoint.Checkpoint.TopLogits)
			}
			if _, err := s.Restore(ctx, r1.Checkpoint.Checkpoint.ID); err != nil {
				t.Fatal(err)
			}
			got, err := s.Run(ctx, session.Turn{N: 8, Sampler: &next})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Tokens, want.Tokens) {
				t.Fatalf("after restore and the sampler change: %v, uninterrupted %v", got.Tokens, want.Tokens)
			}
		})
	}
}
