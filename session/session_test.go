package session_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas/castest"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/session"
)

type env struct {
	dir   string
	repo  *repo.Repo
	mgr   *session.Manager
	model string
}

func open(t testing.TB, dir string, noPrefix bool, adjust ...func(*session.Config)) *env {
	t.Helper()
	r, err := repo.Open(dir, repo.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	e, err := cptest.Engine()
	if err != nil {
		t.Fatal(err)
	}
	mp, err := cptest.SmallModel(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := session.Config{Index: r.Index(), Engine: e, DataDir: dir, NoPrefixCache: noPrefix}
	for _, f := range adjust {
		f(&cfg)
	}
	m, err := session.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	en := &env{dir: dir, repo: r, mgr: m, model: mp}
	t.Cleanup(en.close)
	return en
}

func (e *env) close() {
	if e.mgr != nil {
		e.mgr.Close()
		e.repo.Close()
		e.mgr = nil
	}
}

var greedy = engine.Sampler{Temp: 0}

func TestSharedPrefixStoresOnlyDivergentBlocks(t *testing.T) {
	ctx := context.Background()
	prefix := cptest.Tokens(1024, 512, 1)
	pa := append(slices.Clone(prefix), cptest.Tokens(40, 512, 2)...)
	pb := append(slices.Clone(prefix), cptest.Tokens(40, 512, 3)...)
	smp := engine.Sampler{Temp: 0.7, TopK: 30, TopP: 0.9, Seed: 3}

	var outputs [2][]int32
	for i, noPrefix := range []bool{true, false} {
		e := open(t, t.TempDir(), noPrefix)
		a, _ := e.mgr.Session("a")
		ra, err := a.Run(ctx, session.Turn{Model: e.model, Prompt: pa, N: 8, Sampler: &smp})
		if err != nil {
			t.Fatal(err)
		}
		if ra.Checkpoint.BlocksNew != 2*67 {
			t.Fatalf("first session: %d new blocks, want %d", ra.Checkpoint.BlocksNew, 2*67)
		}
		b, _ := e.mgr.Session("b")
		rb, err := b.Run(ctx, session.Turn{Model: e.model, Prompt: pb, N: 8, Sampler: &smp})
		if err != nil {
			t.Fatal(err)
		}
		// 1072 positions: blocks 0..63 hold only the shared prefix; 64..66 diverge.
		cr := rb.Checkpoint
		if cr.Blocks != 2*67 || cr.BlocksNew != 2*3 {
			t.Fatalf("prefix cache %v: second session names %d blocks, %d new to the store; want %d and %d", !noPrefix, cr.Blocks, cr.BlocksNew, 2*67, 6)
		}
		for l := range cr.Checkpoint.KV {
			if !slices.Equal(cr.Checkpoint.KV[l][:64], ra.Checkpoint.Checkpoint.KV[l][:64]) {
				t.Fatalf("layer %d: shared blocks have other chunks", l)
			}
		}
		if noPrefix {
			if rb.PrefixTokens != 0 || cr.BlocksWritten != 2*67 {
				t.Fatalf("without prefix cache: %d prefix tokens, %d blocks written", rb.PrefixTokens, cr.BlocksWritten)
			}
		} else if rb.PrefixTokens != 1024 || cr.BlocksWritten != 2*3 {
			t.Fatalf("with prefix cache: %d prefix tokens (want 1024), %d blocks written (want 6)", rb.PrefixTokens, cr.BlocksWritten)
		}
		outputs[i] = rb.Tokens
	}
	if !slices.Equal(outputs[0], outputs[1]) {
		t.Fatalf("prefix cache changed the output: %v without, %v with", outputs[0], outputs[1])
	}
}

func TestContinueAcrossManagers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	prompt := cptest.Tokens(37, 512, 4)
	smp := engine.Sampler{Temp: 0.9, TopK: 0, TopP: 1, Seed: 11}

	// Uninterrupted: one session, three turns without checkpoints in between.
	ref := open(t, t.TempDir(), true)
	rs, _ := ref.mgr.Session("ref")
	r1, err := rs.Run(ctx, session.Turn{Model: ref.model, Prompt: prompt, N: 9, Sampler: &smp, NoCheckpoint: true})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := rs.Run(ctx, session.Turn{Prompt: []int32{5, 6, 7}, N: 9, NoCheckpoint: true})
	if err != nil {
		t.Fatal(err)
	}
	r3, err := rs.Run(ctx, session.Turn{N: 9, NoCheckpoint: true})
	if err != nil {
		t.Fatal(err)
	}

	// The same turns, each in a new manager (a new "process" as far as sessions go), restoring
	// with and without huge pages, instances made for a context or not, KV stored in either
	// codec.
	var got [][]int32
	for i, turn := range []session.Turn{
		{Model: ref.model, Prompt: prompt, N: 9, Sampler: &smp},
		{Prompt: []int32{5, 6, 7}, N: 9},
		{N: 9},
	} {
		e := open(t, dir, false, func(c *session.Config) {
			c.HugePages = i == 2
			if i == 1 {
				c.KVCodec, c.Context = checkpoint.KVCodecRaw, 100
			}
		})
		s, _ := e.mgr.Session("s")
		r, err := s.Run(ctx, turn)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && r.Restored == nil {
			t.Fatalf("turn %d did not restore", i)
		}
		got = append(got, r.Tokens)
		e.close()
	}
	want := [][]int32{r1.Tokens, r2.Tokens, r3.Tokens}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("turn %d: %v, uninterrupted %v", i, got[i], want[i])
		}
	}
	// History: three checkpoints, each the parent of the next.
	e := open(t, dir, false)
	hist, err := e.repo.Index().RefHistory(index.RefSession, "s")
	if err != nil || len(hist) != 3 {
		t.Fatalf("history %v %v", hist, err)
	}
	s, _ := e.mgr.Session("s")
	head, err := s.Head()
	if err != nil {
		t.Fatal(err)
	}
	if head.Parent != hist[1].New || head.Position != 37+9+3+9+9 {
		t.Fatalf("head %s parent %s position %d", head.ID, head.Parent, head.Position)
	}
	// A new sampler on an existing session reseeds.
	smp2 := smp
	smp2.Seed = 12
	r4, err := s.Run(ctx, session.Turn{N: 4, Sampler: &smp2})
	if err != nil {
		t.Fatal(err)
	}
	if r4.Checkpoint.Checkpoint.Sampler.Seed != 12 {
		t.Fatalf("sampler not replaced: %+v", r4.Checkpoint.Checkpoint.Sampler)
	}
}

func TestFailedRestoreLeavesLiveSessionUntouched(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir(), true)
	s, _ := e.mgr.Session("x")
	r1, err := s.Run(ctx, session.Turn{Model: e.model, Prompt: cptest.Tokens(50, 512, 5), N: 4, Sampler: &greedy})
	if err != nil {
		t.Fatal(err)
	}
	cp1 := r1.Checkpoint.Checkpoint
	if _, err := s.Run(ctx, session.Turn{N: 4}); err != nil {
		t.Fatal(err)
	}
	// Corrupt a block of the first checkpoint, then try to restore it.
	bad := cp1.KV[0][1].Digest
	castest.Corrupt(t, repo.ChunkStoreDir(e.dir), bad)
	head, _ := s.Head()
	_, err = s.Restore(ctx, cp1.ID)
	if err == nil || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("restore of a corrupt checkpoint: %v", err)
	}
	if !s.Live() {
		t.Fatal("failed restore dropped the live instance")
	}
	if h, _ := s.Head(); h.ID != head.ID {
		t.Fatal("failed restore moved the head")
	}
	r3, err := s.Run(ctx, session.Turn{N: 2})
	if err != nil || r3.Restored != nil || r3.Position != 50+4+4+2 {
		t.Fatalf("after a failed restore: %+v, %v", r3, err)
	}
}

// TestRestoreHeadConflictKeepsLiveSession: when the head moved under a live session, a restore
// of another checkpoint fails on the compare-and-swap and leaves the live instance, with its
// unsaved tokens, as it was.
func TestRestoreHeadConflictKeepsLiveSession(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir(), true)
	s, _ := e.mgr.Session("x")
	r1, err := s.Run(ctx, session.Turn{Model: e.model, Prompt: cptest.Tokens(40, 512, 3), N: 4, Sampler: &greedy})
	if err != nil {
		t.Fatal(err)
	}
	cp1 := r1.Checkpoint.Checkpoint
	if _, err := s.Run(ctx, session.Turn{N: 4}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx, session.Turn{N: 3, NoCheckpoint: true}); err != nil {
		t.Fatal(err)
	}
	// Another writer moves the head back to cp1 behind the live session's back.
	if _, err := e.repo.Index().SetRef(ctx, index.RefSession, "x", cp1.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.Restore(ctx, cp1.ID)
	if !errors.Is(err, index.ErrConflict) {
		t.Fatalf("restore after the head moved: %v, want a conflict", err)
	}
	if !s.Live() {
		t.Fatal("a restore refused by the compare-and-swap dropped the live instance")
	}
	var pos int
	if err := s.Instance(func(in *engine.Instance) error { pos, err = in.Position(); return err }); err != nil || pos != 40+4+4+3 {
		t.Fatalf("live position after a refused restore: %d, %v", pos, err)
	}
}

func TestModelMismatchIsRefused(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir(), true)
	s, _ := e.mgr.Session("m")
	if _, err := s.Run(ctx, session.Turn{Model: e.model, Prompt: cptest.Tokens(20, 512, 6), N: 2}); err != nil {
		t.Fatal(err)
	}
	other, err := cptest.SmallModel(e.dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	e = open(t, e.dir, true)
	s, _ = e.mgr.Session("m")
	_, err = s.Run(ctx, session.Turn{Model: other, N: 2})
	if !errors.Is(err, session.ErrModel) || !strings.Contains(err.Error(), "model") {
		t.Fatalf("other model: %v", err)
	}
}

func TestConcurrentSessions(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir(), false)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 4; i++ {
		name := fmt.Sprintf("c%d", i%2) // two goroutines per session: serialized
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.mgr.Session(name)
			if err != nil {
				errs <- err
				return
			}
			for j := 0; j < 3; j++ {
				if _, err := s.Run(ctx, session.Turn{Model: e.model, Prompt: cptest.Tokens(20, 512, 7), N: 3, Sampler: &greedy}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, name := range []string{"c0", "c1"} {
		s, _ := e.mgr.Session(name)
		h, err := s.Head()
		if err != nil || h.Position != 6*(20+3) {
			t.Fatalf("%s: %v, %v", name, h, err)
		}
	}
	res, err := e.repo.Fsck(ctx, index.FsckOptions{})
	if err != nil || !res.OK() {
		t.Fatalf("fsck: %v %v", res.Problems, err)
	}
}

// TestKillDuringCheckpoint kills a process at random moments of a checkpoint: the previous
// checkpoint must still restore and fsck must find nothing wrong.
func TestKillDuringCheckpoint(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := open(t, dir, false)
	s, _ := e.mgr.Session("k")
	r0, err := s.Run(ctx, session.Turn{Model: e.model, Prompt: cptest.Tokens(30, 512, 8), N: 2, Sampler: &greedy})
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	heads := map[index.ID]bool{r0.Checkpoint.Checkpoint.ID: true}

	run := func(kill time.Duration) (time.Duration, bool) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCheckpointProcess$")
		cmd.Env = append(os.Environ(), "DRIFTSTORE_SESSION_HELPER="+dir)
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		var took time.Duration
		killed := false
		for sc.Scan() {
			line := sc.Text()
			if line == "checkpointing" && kill >= 0 {
				time.Sleep(kill)
				cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
			if v, ok := strings.CutPrefix(line, "took "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				took = time.Duration(n)
			}
		}
		err := cmd.Wait()
		if !killed && err != nil {
			t.Fatalf("helper: %v", err)
		}
		return took, killed
	}
	// Calibrate: one checkpoint that runs to the end.
	took, _ := run(-1)
	if took <= 0 {
		t.Fatal("helper reported no checkpoint time")
	}
	t.Logf("an uninterrupted checkpoint of 600 tokens took %v", took)
	// Its checkpoint is a known head too: a killed process may commit its own on top of it.
	{
		e := open(t, dir, false)
		s, _ := e.mgr.Session("k")
		head, err := s.Head()
		if err != nil || !heads[head.Parent] {
			t.Fatalf("calibration head %v (parent known: %v): %v", head, err == nil && heads[head.Parent], err)
		}
		heads[head.ID] = true
		e.close()
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for i := 0; i < 5; i++ {
		at := time.Duration(rng.Int64N(int64(took) + 1))
		run(at)
		e := open(t, dir, false)
		res, err := e.repo.Fsck(ctx, index.FsckOptions{})
		if err != nil || !res.OK() {
			t.Fatalf("kill at %v: fsck: %v %v", at, res.Problems, err)
		}
		s, _ := e.mgr.Session("k")
		head, err := s.Head()
		if err != nil {
			t.Fatal(err)
		}
		// The head is a checkpoint that existed before, or the one the killed process
		// committed just before the kill.
		if _, err := s.Restore(ctx, index.ID{}); err != nil {
			t.Fatalf("kill at %v: head %s does not restore: %v", at, head.ID, err)
		}
		if !heads[head.ID] {
			if !heads[head.Parent] {
				t.Fatalf("kill at %v: head %s descends from no known checkpoint", at, head.ID)
			}
			heads[head.ID] = true
		}
		// Every earlier head still restores too.
		for id := range heads {
			cp, err := checkpoint.Load(e.repo.Index(), id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Restore(ctx, cp.ID); err != nil {
				t.Fatalf("kill at %v: checkpoint %s: %v", at, id, err)
			}
		}
		// Leave the head where it was for the next round.
		if _, err := s.Restore(ctx, head.ID); err != nil {
			t.Fatal(err)
		}
		e.close()
		t.Logf("killed at %v: head at position %d, %d heads seen", at, head.Position, len(heads))
	}
}

// TestHelperCheckpointProcess is the process TestKillDuringCheckpoint kills: a turn of 600
// tokens, then a checkpoint with fsync on.
func TestHelperCheckpointProcess(t *testing.T) {
	dir := os.Getenv("DRIFTSTORE_SESSION_HELPER")
	if dir == "" {
		t.Skip("helper process only")
	}
	r, err := repo.Open(dir, repo.Options{LockTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	eng, err := cptest.Engine()
	if err != nil {
		t.Fatal(err)
	}
	m, err := session.NewManager(session.Config{Index: r.Index(), Engine: eng, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, _ := m.Session("k")
	ctx := context.Background()
	if _, err := s.Run(ctx, session.Turn{Prompt: cptest.Tokens(600, 512, int(time.Now().UnixNano()%1000)), N: 1, NoCheckpoint: true}); err != nil {
		t.Fatal(err)
	}
	fmt.Println("checkpointing")
	t0 := time.Now()
	if _, err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("took %d\n", time.Since(t0))
}

func TestConfigRefused(t *testing.T) {
	r, err := repo.Open(t.TempDir(), repo.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e, err := cptest.Engine()
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []session.Config{{KVCodec: "zip"}, {Context: -1}} {
		cfg.Index, cfg.Engine, cfg.DataDir = r.Index(), e, t.TempDir()
		if m, err := session.NewManager(cfg); err == nil {
			m.Close()
			t.Fatalf("NewManager accepted KV codec %q, context %d", cfg.KVCodec, cfg.Context)
		}
	}
}
