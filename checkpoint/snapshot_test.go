package checkpoint_test

import (
	"context"
	"errors"
	"testing"

	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/restore"
)

// TestSnapshotIndependent: a snapshot committed after its instance ran on (more tokens written
// into the partial block it copied, and new blocks) stores what Capture stores for the state it
// was taken at: the same manifest ID as a Capture of a second instance fed the same tokens, and
// that checkpoint restores and continues like the instance did.
func TestSnapshotIndependent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.instance(t, engine.KVF16)
	b := e.instance(t, engine.KVF16)
	prompt := cptest.Tokens(37, 512, 5) // blocks 0..2, block 2 partial
	for _, in := range []*engine.Instance{a, b} {
		if err := in.Prefill(prompt); err != nil {
			t.Fatal(err)
		}
	}
	parentA, err := checkpoint.Capture(ctx, e.ix, e.model, a, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parentB, err := checkpoint.Capture(ctx, e.ix, e.model, b, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if parentA.Checkpoint.ID != parentB.Checkpoint.ID {
		t.Fatal("two instances fed the same tokens give different checkpoints")
	}
	for _, in := range []*engine.Instance{a, b} {
		if _, err := in.Generate(6, nil); err != nil { // 43: block 2 still partial
			t.Fatal(err)
		}
	}
	snap, err := checkpoint.TakeSnapshot(e.model, a, checkpoint.CaptureOptions{Parent: parentA.Checkpoint})
	if err != nil {
		t.Fatal(err)
	}
	// Block 2 of both layers: the partial block the parent holds is copied again.
	if snap.BlocksCopied() != 2 || snap.Position() != 43 || snap.Parent() != parentA.Checkpoint.ID {
		t.Fatalf("snapshot: %d blocks copied at position %d, parent %s", snap.BlocksCopied(), snap.Position(), snap.Parent())
	}
	// a runs on: into block 2 (the one the snapshot copied) and past it.
	if _, err := a.Generate(30, nil); err != nil {
		t.Fatal(err)
	}
	got, err := snap.Commit(ctx, e.ix)
	if err != nil {
		t.Fatal(err)
	}
	want, err := checkpoint.Capture(ctx, e.ix, e.model, b, checkpoint.CaptureOptions{Parent: parentB.Checkpoint})
	if err != nil {
		t.Fatal(err)
	}
	if got.Checkpoint.ID != want.Checkpoint.ID || got.BlocksWritten != want.BlocksWritten || got.Position != 43 {
		t.Fatalf("snapshot committed later: %s (%d blocks written, position %d), Capture: %s (%d)",
			got.Checkpoint.ID, got.BlocksWritten, got.Position, want.Checkpoint.ID, want.BlocksWritten)
	}
	if _, err := snap.Commit(ctx, e.ix); !errors.Is(err, checkpoint.ErrSnapshotUsed) {
		t.Fatalf("second commit: %v, want ErrSnapshotUsed", err)
	}
	// The committed checkpoint resumes as b continues.
	cp, err := checkpoint.Load(e.ix, got.Checkpoint.ID)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := restore.Restore(ctx, e.store, e.model, cp, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	wantToks, err := b.Generate(8, nil)
	if err != nil {
		t.Fatal(err)
	}
	gotToks, err := r.Generate(8, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !equalTokens(gotToks, wantToks) {
		t.Fatalf("restored from the snapshot: %v, live: %v", gotToks, wantToks)
	}
}

// TestSnapshotRelease: a released snapshot cannot be committed, and its buffers go back to the
// pool without affecting a later snapshot's content.
func TestSnapshotRelease(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	in := e.instance(t, engine.KVF32)
	if err := in.Prefill(cptest.Tokens(20, 512, 9)); err != nil {
		t.Fatal(err)
	}
	s1, err := checkpoint.TakeSnapshot(e.model, in, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s1.Release()
	s1.Release()
	if _, err := s1.Commit(ctx, e.ix); !errors.Is(err, checkpoint.ErrSnapshotUsed) {
		t.Fatalf("commit after release: %v", err)
	}
	s2, err := checkpoint.TakeSnapshot(e.model, in, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s2.Commit(ctx, e.ix)
	if err != nil {
		t.Fatal(err)
	}
	want, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Checkpoint.ID != want.Checkpoint.ID || got.BlocksWritten != 4 {
		t.Fatalf("snapshot %s (%d blocks), Capture %s", got.Checkpoint.ID, got.BlocksWritten, want.Checkpoint.ID)
	}
}

func equalTokens(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
