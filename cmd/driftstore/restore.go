package main

import (
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
)

func init() {
	register(&command{
		name:    "restore",
		args:    "--session NAME [--checkpoint ID] [--compare] [--threads N]",
		summary: "restore a session's checkpoint into a fresh instance and report how long it took (--compare: against re-prefilling)",
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
}

func runRestore(c *cli, args []string) error {
	fs := c.flagSet()
	name := fs.String("session", "", "session name")
	cpFlag := fs.String("checkpoint", "", "checkpoint to restore (ID, unique prefix or tag; default: the session's head); the head moves there")
	compare := fs.Bool("compare", false, "also time re-prefilling the same tokens in a fresh instance")
	threads := fs.Int("threads", 0, "host threads for the compute ops (default: all cores)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *name == "" || len(fs.Args()) > 0 {
		return usageError("want --session NAME [--checkpoint ID] [--compare]")
	}
	if *threads <= 0 {
		*threads = defaultThreads()
	}
	env, err := c.openSessions(*threads, 0)
	if err != nil {
		return err
	}
	defer env.Close()
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
	}
	// The first token, drawn from the restored logits. This advances the RNG of the live
	// instance, which this process drops without checkpointing: the stored session is unchanged.
	var restoredLogits []float32
	err = s.Instance(func(in *engine.Instance) error {
		t0 := time.Now()
		tok, err := in.Sample()
		if err != nil {
			return err
		}
		out.TTFTMS = out.TotalMS + ms(time.Since(t0))
		out.FirstToken = tok
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
		lg, err := in.Logits()
		if err != nil {
			return err
		}
		eq := len(lg) == len(restoredLogits)
		for i := 0; eq && i < len(lg); i++ {
			eq = math.Float32bits(lg[i]) == math.Float32bits(restoredLogits[i])
		}
		out.LogitsEqual = &eq
	}
	if c.globals.json {
		return c.printJSON(out)
	}
	c.printf("session     %s\n", *name)
	c.printf("checkpoint  %s", out.Checkpoint)
	if out.HeadMoved {
		c.printf(" (the session's head now)")
	}
	c.printf("\nrestored    %d tokens: %d chunks, %s of KV + %s of state (token history, sampler, RNG, last logits), every byte verified\n",
		out.Position, out.Chunks, progress.Bytes(out.KVBytes), progress.Bytes(out.StateBytes))
	c.printf("restore     %.2f ms (instance %.2f, allocate %.2f, decode+verify %.2f = %s/s, load state %.2f)\n",
		out.TotalMS, out.InstanceMS, out.AllocMS, out.DecodeMS, progress.Bytes(int64(float64(out.KVBytes+out.StateBytes)/math.Max(res.Decode.Seconds(), 1e-9))), out.LoadMS)
	c.printf("first token %.2f ms after the restore began: %d (from the stored logits, no forward pass)\n", out.TTFTMS, out.FirstToken)
	if *compare {
		c.printf("re-prefill  %.2f ms for the same %d tokens, first token at %.2f ms: %d\n", out.PrefillMS, out.Position, out.PrefillTTFT, *out.PrefillToken)
		c.printf("speedup     %.1f× to the first token\n", out.Speedup)
		if *out.LogitsEqual {
			c.printf("logits      identical to re-prefill's\n")
		} else {
			c.printf("logits      differ from re-prefill's in the last bits (batched prefill rounds differently from the token-by-token decode that produced them)\n")
		}
	} else {
		c.printf("(--compare also times re-prefilling the same tokens)\n")
	}
	return nil
}

// defaultThreads is the host thread count when none is given: every core.
func defaultThreads() int { return runtime.NumCPU() }
