package main

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/session"
)

func init() {
	register(&command{
		name:    "restore",
		args:    "--session NAME [--checkpoint ID] [--from URL] [--compare] [--threads N] [--server URL]",
		summary: "restore a session's checkpoint into a fresh instance and report how long it took (--from: pull it first; --compare: against re-prefilling)",
		run:     runRestore,
	})
}

type restoreOut struct {
	Session      string  `json:"session"`
	Checkpoint   string  `json:"checkpoint"`
	HeadMoved    bool    `json:"head_moved"`
	Position     int     `json:"position"`
	Chunks       int     `json:"chunks"`
	KVBytes      int64   `json:"kv_bytes"`
	StateBytes   int64   `json:"state_bytes"`
	InstanceMS   float64 `json:"instance_ms"`
	AllocMS      float64 `json:"alloc_ms"`
	DecodeMS     float64 `json:"decode_ms"`
	LoadMS       float64 `json:"load_state_ms"`
	TotalMS      float64 `json:"restore_ms"`
	TTFTMS       float64 `json:"first_token_ms"`
	FirstToken   int32   `json:"first_token"`
	PrefillMS    float64 `json:"reprefill_ms,omitempty"`
	PrefillTTFT  float64 `json:"reprefill_first_token_ms,omitempty"`
	PrefillToken *int32  `json:"reprefill_first_token,omitempty"`
	Speedup      float64 `json:"speedup,omitempty"` // re-prefill time to first token / restore time to first token
	LogitsEqual  *bool   `json:"logits_identical,omitempty"`
	// LogitsTop > 0: the checkpoint keeps only the best LogitsTop logits (ids and values), and
	// logits_identical compares those with the re-prefill's best LogitsTop (unless
	// LogitsRecomputed).
	LogitsTop int `json:"logits_top,omitempty"`
	// LogitsRecomputed: the sampler reads more logits than the checkpoint keeps, so the first
	// token cost a forward pass of one token (first_token_ms includes it), and
	// logits_identical compares the recomputed vector.
	LogitsRecomputed bool `json:"logits_recomputed,omitempty"`
}

func runRestore(c *cli, args []string) error {
	fs := c.flagSet()
	name := fs.String("session", "", "session name")
	cpFlag := fs.String("checkpoint", "", "checkpoint to restore (ID, unique prefix or tag; default: the session's head); the head moves there")
	compare := fs.Bool("compare", false, "also time re-prefilling the same tokens in a fresh instance")
	threads := fs.Int("threads", 0, "host threads for the compute ops (default: all cores)")
	from := fs.String("from", "", "pull the session from this daemon first (only the chunks missing here), then restore")
	peerToken := fs.String("peer-token-file", "", "file holding the --from daemon's bearer token (default: --token-file)")
	force := fs.Bool("force", false, "with --from: move the session here even when its head here is not an ancestor of the pulled one")
	verify := verifyFlag(fs)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *name == "" || len(fs.Args()) > 0 {
		return usageError("want --session NAME [--checkpoint ID] [--from URL] [--compare]")
	}
	if err := index.ValidRefName(*name); err != nil {
		return usageError("--session: %v", err)
	}
	if *threads <= 0 {
		*threads = defaultThreads()
	}
	if c.globals.server != "" && *compare {
		return usageError("--compare runs locally; it cannot be combined with --server")
	}
	var pull func(dst replicate.Peer) error
	if *from != "" {
		tf := transferFlags{peerToken: *peerToken, force: *force, concurrency: 4}
		peer, err := c.newClient(*from, c.peerTokenFile(&tf))
		if err != nil {
			return err
		}
		pull = func(dst replicate.Peer) error {
			opts, bar := tf.options(c, "pull")
			st, err := replicate.Copy(c.ctx, peer, dst, index.RefSession, *name, opts)
			bar.Finish()
			r := replicate.RefName{Kind: index.RefSession, Name: *name}
			if err != nil {
				return fmt.Errorf("pull %s from %s: %w", r, *from, err)
			}
			if !c.globals.json {
				c.report("pulled", r, st, nil)
			}
			return nil
		}
	}
	if c.globals.server != "" {
		if pull != nil {
			dst, err := c.sessionClient()
			if err != nil {
				return err
			}
			if err := pull(dst); err != nil {
				return err
			}
		}
		return runRestoreRemote(c, *name, *cpFlag)
	}
	ver, err := verify()
	if err != nil {
		return err
	}
	env, err := c.openSessions(session.Config{Threads: *threads, Verify: ver}, "")
	if err != nil {
		return err
	}
	defer env.Close()
	if pull != nil {
		if err := pull(replicate.NewLocal(env.repo.Index())); err != nil {
			return err
		}
	}
	s, err := env.mgr.Session(*name)
	if err != nil {
		return usageError("%v", err)
	}
	head, err := s.Head()
	if err != nil {
		return err
	}
	var id index.ID
	if *cpFlag != "" {
		if id, err = env.repo.Resolve(*cpFlag); err != nil {
			return err
		}
	}
	res, err := s.Restore(c.ctx, id)
	if err != nil {
		return err
	}
	cp := res.Checkpoint
	out := restoreOut{
		Session: *name, Checkpoint: cp.ID.String(), HeadMoved: head == nil || head.ID != cp.ID, Position: res.Position,
		Chunks: res.Chunks, KVBytes: res.KVBytes, StateBytes: res.StateBytes,
		InstanceMS: ms(res.NewInstance), AllocMS: ms(res.Alloc), DecodeMS: ms(res.Decode), LoadMS: ms(res.Load), TotalMS: ms(res.Total),
		LogitsTop: cp.TopLogits,
	}
	// The first token, drawn from the restored logits. This advances the RNG of the live
	// instance, which this process drops without checkpointing: the stored session is unchanged.
	// What is compared with the re-prefill is what the restored instance sampled from: the
	// top logits the checkpoint keeps (read without a recompute), or the whole vector.
	var restoredLogits []float32
	var restoredIDs []int32
	cmpTop := 0 // > 0: the restored instance holds only its best cmpTop logits
	err = s.Instance(func(in *engine.Instance) error {
		t0 := time.Now()
		tok, err := in.Sample()
		if err != nil {
			return err
		}
		out.TTFTMS = out.TotalMS + ms(time.Since(t0))
		out.FirstToken = tok
		if k := in.LogitsTop(); k > 0 {
			cmpTop = k
			restoredIDs, restoredLogits = make([]int32, k), make([]float32, k)
			return in.TopLogits(restoredIDs, restoredLogits)
		}
		out.LogitsRecomputed = out.LogitsTop > 0
		restoredLogits, err = in.Logits()
		return err
	})
	if err != nil {
		return fmt.Errorf("first token after restore: %w", err)
	}
	if *compare {
		model, _, err := env.mgr.Model(cp.ModelSource)
		if err != nil {
			return err
		}
		kv, _ := engine.ParseKVType(cp.Layout.DType)
		t0 := time.Now()
		in, err := model.NewInstance(engine.InstanceOptions{KVType: kv, BlockSize: cp.Layout.BlockSize, Threads: *threads, Sampler: cp.Sampler})
		if err != nil {
			return err
		}
		defer in.Close()
		if err := in.Prefill(cp.Tokens); err != nil {
			return fmt.Errorf("re-prefill: %w", err)
		}
		out.PrefillMS = ms(time.Since(t0))
		tok, err := in.Sample()
		if err != nil {
			return err
		}
		out.PrefillTTFT = ms(time.Since(t0))
		out.PrefillToken = &tok
		out.Speedup = out.PrefillTTFT / math.Max(out.TTFTMS, 1e-6)
		var lg []float32
		eq := true
		if k := cmpTop; k > 0 {
			ids := make([]int32, k)
			lg = make([]float32, k)
			err = in.TopLogits(ids, lg)
			eq = slices.Equal(ids, restoredIDs)
		} else {
			lg, err = in.Logits()
		}
		if err != nil {
			return err
		}
		eq = eq && len(lg) == len(restoredLogits)
		for i := 0; eq && i < len(lg); i++ {
			eq = math.Float32bits(lg[i]) == math.Float32bits(restoredLogits[i])
		}
		out.LogitsEqual = &eq
	}
	if c.globals.json {
		return c.printJSON(out)
	}
	c.printRestoreHead(out)
	switch {
	case out.LogitsRecomputed:
		c.printf("first token %.2f ms after the restore began: %d (the sampler reads more logits than the checkpoint keeps: recomputed by one token's forward pass)\n", out.TTFTMS, out.FirstToken)
	case out.LogitsTop > 0:
		c.printf("first token %.2f ms after the restore began: %d (from the stored best %d logits, no forward pass)\n", out.TTFTMS, out.FirstToken, out.LogitsTop)
	default:
		c.printf("first token %.2f ms after the restore began: %d (from the stored logits, no forward pass)\n", out.TTFTMS, out.FirstToken)
	}
	if *compare {
		c.printf("re-prefill  %.2f ms for the same %d tokens, first token at %.2f ms: %d\n", out.PrefillMS, out.Position, out.PrefillTTFT, *out.PrefillToken)
		c.printf("speedup     %.1f× to the first token\n", out.Speedup)
		what := "logits     "
		if cmpTop > 0 {
			what = fmt.Sprintf("logits      the best %d (all the checkpoint keeps), ids and values,", cmpTop)
		} else if out.LogitsRecomputed {
			what = "logits      recomputed after the restore:"
		}
		if *out.LogitsEqual {
			c.printf("%s identical to re-prefill's\n", what)
		} else if cmpTop > 0 {
			c.printf("%s differ from re-prefill's\n", what)
		} else {
			c.printf("logits      differ from re-prefill's in the last bits (batched prefill rounds differently from the token-by-token decode that produced them)\n")
		}
	} else {
		c.printf("(--compare also times re-prefilling the same tokens)\n")
	}
	return nil
}

// printRestoreHead prints what the local and the remote restore share.
func (c *cli) printRestoreHead(out restoreOut) {
	c.printf("session     %s\n", out.Session)
	c.printf("checkpoint  %s", out.Checkpoint)
	if out.HeadMoved {
		c.printf(" (the session's head now)")
	}
	logits := "last logits"
	if out.LogitsTop > 0 {
		logits = fmt.Sprintf("the best %d last logits", out.LogitsTop)
	}
	c.printf("\nrestored    %d tokens: %d chunks, %s of KV + %s of state (token history, sampler, RNG, %s), every byte verified\n",
		out.Position, out.Chunks, progress.Bytes(out.KVBytes), progress.Bytes(out.StateBytes), logits)
	c.printf("restore     %.2f ms (instance %.2f, allocate %.2f, decode+verify %.2f = %s/s, load state %.2f)\n",
		out.TotalMS, out.InstanceMS, out.AllocMS, out.DecodeMS, progress.Bytes(int64(float64(out.KVBytes+out.StateBytes)/math.Max(out.DecodeMS/1000, 1e-9))), out.LoadMS)
}

// defaultThreads is the host thread count when none is given: every core.
func defaultThreads() int { return runtime.NumCPU() }
