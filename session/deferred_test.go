package session_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/session"
)

func deferred(c *session.Config) { c.DeferCheckpoints = true }

// deferredTurns are the turns the deferred-checkpoint tests run: a new session, a turn with a
// prompt, a turn without.
func deferredTurns(model string) []session.Turn {
	smp := engine.Sampler{Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 21}
	return []session.Turn{
		{Model: model, Prompt: cptest.Tokens(37, 512, 6), N: 7, Sampler: &smp},
		{Prompt: []int32{9, 8, 7, 6}, N: 11},
		{N: 5},
	}
}

// TestDeferredCheckpointsMatchSynchronous: the same turns checkpointed synchronously and
// deferred give the same manifest IDs, the same head history, and a deferred checkpoint
// resumes (in a new manager) exactly as the live session continues; Manager.Close waits for
// the last pending commit.
func TestDeferredCheckpointsMatchSynchronous(t *testing.T) {
	ctx := context.Background()
	syn := open(t, t.TempDir(), false)
	dir := t.TempDir()
	def := open(t, dir, false, deferred)
	ss, _ := syn.mgr.Session("s")
	ds, _ := def.mgr.Session("s")
	var want []index.ID
	for i, turn := range deferredTurns(syn.model) {
		if turn.Model != "" {
			turn.Model = syn.model
		}
		r, err := ss.Run(ctx, turn)
		if err != nil {
			t.Fatal(err)
		}
		if r.Pending != nil || r.Checkpoint == nil {
			t.Fatalf("synchronous turn %d: pending %v", i, r.Pending)
		}
		want = append(want, r.Checkpoint.Checkpoint.ID)
		d, err := ds.Run(ctx, turn) // the same model file: its path is in the manifest
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.Tokens, r.Tokens) {
			t.Fatalf("turn %d: tokens %v deferred, %v synchronous", i, d.Tokens, r.Tokens)
		}
		if d.Checkpoint != nil || d.Pending == nil || d.Pending.Snapshot <= 0 || d.Pending.Position != r.Position {
			t.Fatalf("deferred turn %d: checkpoint %v, pending %+v", i, d.Checkpoint, d.Pending)
		}
		if d.Pending.BlocksCopied != r.Checkpoint.BlocksWritten || d.Pending.Blocks != r.Checkpoint.Blocks {
			t.Fatalf("deferred turn %d copied %d of %d blocks; synchronous wrote %d of %d", i,
				d.Pending.BlocksCopied, d.Pending.Blocks, r.Checkpoint.BlocksWritten, r.Checkpoint.Blocks)
		}
		if i == 2 {
			break // the last commit is left pending for Close
		}
		cr, err := d.Pending.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if cr.Checkpoint.ID != want[i] {
			t.Fatalf("turn %d: deferred checkpoint %s, synchronous %s", i, cr.Checkpoint.ID, want[i])
		}
		head, err := ds.Head()
		if err != nil || head.ID != want[i] {
			t.Fatalf("turn %d: head %v (%v), want %s", i, head, err, want[i])
		}
	}
	// Close waits for the last commit: its checkpoint is the head when the directory opens
	// again, with the same history as the synchronous session's.
	def.close()
	re := open(t, dir, false)
	hist, err := re.repo.Index().RefHistory(index.RefSession, "s")
	if err != nil || len(hist) != 3 {
		t.Fatalf("history %v %v", hist, err)
	}
	for i, h := range hist {
		if h.New != want[i] {
			t.Fatalf("history entry %d: %s, want %s", i, h.New, want[i])
		}
	}
	// Resume equivalence: restored from the deferred checkpoint, the session continues as the
	// synchronous one does live.
	rs, _ := re.mgr.Session("s")
	got, err := rs.Run(ctx, session.Turn{Prompt: []int32{3, 1, 4}, N: 9})
	if err != nil {
		t.Fatal(err)
	}
	live, err := ss.Run(ctx, session.Turn{Prompt: []int32{3, 1, 4}, N: 9})
	if err != nil {
		t.Fatal(err)
	}
	if got.Restored == nil || !slices.Equal(got.Tokens, live.Tokens) || got.Checkpoint.Checkpoint.ID != live.Checkpoint.Checkpoint.ID {
		t.Fatalf("resumed from the deferred checkpoint: %v, live: %v", got.Tokens, live.Tokens)
	}
}

// gate holds the commit of one chosen checkpoint (the n-th session "s" takes) before it hashes
// anything, until released.
type gate struct {
	mu      sync.Mutex
	n       int
	hold    int
	entered chan struct{}
	release chan struct{}
}

func newGate(hold int) *gate {
	return &gate{hold: hold, entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) adjust(session string, o *checkpoint.CaptureOptions) {
	if session != "s" {
		return
	}
	g.mu.Lock()
	g.n++
	n := g.n
	g.mu.Unlock()
	if n == g.hold {
		o.BeforeStore = func() {
			close(g.entered)
			<-g.release
		}
	}
}

// TestDeferredCommitIndependentOfNextTurn: while a turn's commit is held before it reads its
// snapshot, the instance runs on (writing into the partial block the snapshot copied, and past
// it); the commit still stores the checkpoint the synchronous session stores, and the next Run,
// started meanwhile, waits for it: its checkpoint follows it.
func TestDeferredCommitIndependentOfNextTurn(t *testing.T) {
	ctx := context.Background()
	syn := open(t, t.TempDir(), true)
	g := newGate(2)
	def := open(t, t.TempDir(), true, deferred, func(c *session.Config) { c.AdjustCapture = g.adjust })
	ss, _ := syn.mgr.Session("s")
	ds, _ := def.mgr.Session("s")
	turns := deferredTurns("")
	var want []index.ID
	for _, turn := range turns[:2] {
		turn.Model = syn.model
		r, err := ss.Run(ctx, turn)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, r.Checkpoint.Checkpoint.ID)
	}
	var pending *session.PendingCheckpoint
	for _, turn := range turns[:2] {
		turn.Model = syn.model // the same file: its path is in the manifest
		d, err := ds.Run(ctx, turn)
		if err != nil {
			t.Fatal(err)
		}
		pending = d.Pending
	}
	<-g.entered
	// The next turn's work on the instance while the commit is held (Run itself would wait
	// for the commit first: the session's lock is free only now).
	if err := ds.Instance(func(in *engine.Instance) error {
		_, err := in.Generate(23, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	next := make(chan *session.TurnResult, 1)
	go func() {
		r, err := ds.Run(ctx, session.Turn{N: 2})
		if err != nil {
			t.Error(err)
		}
		next <- r
	}()
	close(g.release)
	cr, err := pending.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cr.Checkpoint.ID != want[1] {
		t.Fatalf("held commit stored %s, synchronous checkpoint %s", cr.Checkpoint.ID, want[1])
	}
	r := <-next
	if r == nil || r.Pending == nil || r.Pending.Parent != want[1] {
		t.Fatalf("the next turn's checkpoint does not follow the held one: %+v", r)
	}
	if _, err := r.Pending.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDeferredCommitFailureSurfaces: a commit that fails (the session's head moved by another
// writer while it was held, so its compare-and-swap conflicts) is logged, reported by the next
// operation, once, and the session stays live with its state.
func TestDeferredCommitFailureSurfaces(t *testing.T) {
	ctx := context.Background()
	g := newGate(2)
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	e := open(t, t.TempDir(), true, deferred, func(c *session.Config) {
		c.AdjustCapture = g.adjust
		c.Log = slog.New(slog.NewTextHandler(&lockedWriter{w: &logBuf, mu: &logMu}, nil))
	})
	s, _ := e.mgr.Session("s")
	turns := deferredTurns(e.model)
	r1, err := s.Run(ctx, turns[0])
	if err != nil {
		t.Fatal(err)
	}
	c1, err := r1.Pending.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := e.mgr.Session("other")
	ro, err := other.Run(ctx, session.Turn{Model: e.model, Prompt: []int32{1, 2, 3}, N: 1})
	if err != nil {
		t.Fatal(err)
	}
	o, err := ro.Pending.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Run(ctx, turns[1])
	if err != nil {
		t.Fatal(err)
	}
	<-g.entered
	ix := e.repo.Index()
	if err := ix.CompareAndSwapRef(ctx, index.RefSession, "s", c1.Checkpoint.ID, o.Checkpoint.ID); err != nil {
		t.Fatal(err)
	}
	close(g.release)
	if _, err := r2.Pending.Wait(ctx); !errors.Is(err, index.ErrConflict) {
		t.Fatalf("commit after the head moved: %v, want a conflict", err)
	}
	_, err = s.Checkpoint(ctx)
	if !errors.Is(err, session.ErrDeferredCheckpoint) || !errors.Is(err, index.ErrConflict) {
		t.Fatalf("next operation: %v, want the deferred checkpoint's failure", err)
	}
	logMu.Lock()
	logged := logBuf.String()
	logMu.Unlock()
	if !strings.Contains(logged, "deferred checkpoint failed") || !strings.Contains(logged, "session=s") {
		t.Fatalf("log: %q", logged)
	}
	// Reported once; the session is live and still holds the turn (its head in memory where it
	// was: the next checkpoint conflicts as a synchronous one would).
	head, err := s.Head()
	if err != nil || head.ID != c1.Checkpoint.ID || !s.Live() {
		t.Fatalf("after the failure: head %v (%v), live %v", head, err, s.Live())
	}
	if _, err := s.Checkpoint(ctx); !errors.Is(err, index.ErrConflict) || errors.Is(err, session.ErrDeferredCheckpoint) {
		t.Fatalf("checkpoint after the failure: %v", err)
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestDeferredPrefixCache: a new session whose prompt's prefix comes from the prefix cache
// snapshots only the blocks it computed; its deferred commit names the cached blocks.
func TestDeferredPrefixCache(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir(), false, deferred)
	prefix := cptest.Tokens(256, 512, 1)
	pa := append(slices.Clone(prefix), cptest.Tokens(20, 512, 2)...)
	pb := append(slices.Clone(prefix), cptest.Tokens(20, 512, 3)...)
	a, _ := e.mgr.Session("a")
	ra, err := a.Run(ctx, session.Turn{Model: e.model, Prompt: pa, N: 4})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ra.Pending.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := e.mgr.Session("b")
	rb, err := b.Run(ctx, session.Turn{Model: e.model, Prompt: pb, N: 4})
	if err != nil {
		t.Fatal(err)
	}
	// 280 positions: blocks 0..15 are the cached prefix, 16 and 17 computed (2 layers).
	if rb.PrefixTokens != 256 || rb.Pending == nil || rb.Pending.BlocksCopied != 4 || rb.Pending.Blocks != 36 {
		t.Fatalf("second session: %d prefix tokens, pending %+v", rb.PrefixTokens, rb.Pending)
	}
	cb, err := rb.Pending.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for l := range cb.Checkpoint.KV {
		if !slices.Equal(cb.Checkpoint.KV[l][:16], ca.Checkpoint.KV[l][:16]) {
			t.Fatalf("layer %d: the cached blocks are not the first session's", l)
		}
	}
	if head, err := b.Head(); err != nil || head.ID != cb.Checkpoint.ID {
		t.Fatalf("head %v %v", head, err)
	}
}
