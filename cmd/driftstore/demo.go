package main

import (
	"fmt"
	"github.com/driftstore/driftstore/backends"
	"os"
	"slices"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/restore"
	"github.com/driftstore/driftstore/session"
)

func init() {
	register(&command{
		name:    "demo",
		args:    "[--data DIR] [-n N] [--backend auto|cpu|cuda|metal]",
		summary: "the whole story on the built-in tiny model: generate, checkpoint, restore, continue identically",
		run:     runDemo,
	})
}

type demoOut struct {
	DataDir          string  `json:"data_dir"`
	Prompt           string  `json:"prompt"`
	FirstTurn        []int32 `json:"first_turn"`
	Checkpoint       string  `json:"checkpoint"`
	Uninterrupted    []int32 `json:"uninterrupted"`
	Restored         []int32 `json:"restored"`
	Identical        bool    `json:"identical"`
	Position         int     `json:"position"`
	RestoreMS        float64 `json:"restore_ms"`
	RestoreTTFTMS    float64 `json:"restore_first_token_ms"`
	ReprefillMS      float64 `json:"reprefill_ms"`
	ReprefillTTFTMS  float64 `json:"reprefill_first_token_ms"`
	CheckpointMS     float64 `json:"checkpoint_ms"`
	IncrementalMS    float64 `json:"incremental_checkpoint_ms"`
	IncrementalBlock int     `json:"incremental_blocks_written"`
	IncrementalOf    int     `json:"incremental_blocks_total"`
	PrefixTokens     int     `json:"prefix_cache_tokens"`
	LogicalBytes     int64   `json:"logical_bytes"`
	StoredBytes      int64   `json:"stored_bytes"`
	Checkpoints      int     `json:"checkpoints"`
}

func runDemo(c *cli, args []string) error {
	fs := c.flagSet()
	n := fs.Int("n", 16, "tokens per step of the story")
	backend := backends.Flag(fs)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if len(fs.Args()) > 0 || *n < 1 {
		return usageError("want [--data DIR] [-n N>0]")
	}
	// Compiled guest and built-in model are caches: keep them in the default data directory so
	// that the demo is fast the second time, whatever --data says.
	var def globals
	def.defaults()
	data := c.globals.data
	if data == def.data {
		tmp, err := os.MkdirTemp("", "driftstore-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		data = tmp
	}
	r, err := repo.Open(data, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	eng, err := c.newEngine(*backend, engine.ModuleCacheDir(def.data))
	if err != nil {
		return err
	}
	defer eng.Close()
	modelPath, err := engine.BuiltinModelPath(def.data)
	if err != nil {
		return err
	}
	threads := defaultThreads()
	mgr, err := session.NewManager(session.Config{Index: r.Index(), Engine: eng.Engine, DataDir: data, Threads: threads})
	if err != nil {
		return err
	}
	defer mgr.Close()
	model, _, err := mgr.Model(modelPath)
	if err != nil {
		return err
	}
	tok, err := model.GGUF().Tokenizer()
	if err != nil {
		return err
	}
	out := demoOut{DataDir: data, Prompt: "Once upon a time, in a quiet village by the sea, there lived a clockmaker"}
	say := c.printf
	say("driftstore demo: built-in tiny model (%d layers, vocab %d), %s backend, data in %s\n\n",
		model.Hyper().Layers, model.Hyper().Vocab, eng.Backend().Name(), data)

	// 1. Generate.
	ctx := c.ctx
	s, err := mgr.Session("demo")
	if err != nil {
		return err
	}
	smp := engine.Sampler{Temp: 0.8, TopK: 40, TopP: 0.95, Seed: 42}
	prompt := tok.Encode(out.Prompt, true)
	t1, err := s.Run(ctx, session.Turn{Model: modelPath, Prompt: prompt, N: *n, Sampler: &smp})
	if err != nil {
		return err
	}
	cp1 := t1.Checkpoint.Checkpoint
	out.FirstTurn, out.Checkpoint, out.Position, out.CheckpointMS = t1.Tokens, cp1.ID.String(), cp1.Position, ms(t1.Checkpoint.Duration)
	say("1. generate   prompt of %d tokens, then %d sampled (temp 0.8, seed 42): %v\n", len(prompt), len(t1.Tokens), t1.Tokens)
	say("2. checkpoint %s\n", short(cp1.ID))
	logits := "last logits"
	if cp1.TopLogits > 0 {
		logits = fmt.Sprintf("the best %d of the last logits (top-k %d sampling reads no more)", cp1.TopLogits, smp.TopK)
	}
	say("              %d tokens: %d KV blocks of %s (%s), the token history, sampler + RNG state, %s; %.1f ms\n",
		cp1.Position, t1.Checkpoint.Blocks, progress.Bytes(int64(cp1.Layout.BlockBytes)), progress.Bytes(cp1.KVBytes()), logits, out.CheckpointMS)

	// 3. The reference: keep going in the same live instance.
	ref, err := s.Run(ctx, session.Turn{N: *n, NoCheckpoint: true})
	if err != nil {
		return err
	}
	out.Uninterrupted = ref.Tokens
	say("3. continue   in the same instance, uninterrupted: %v\n", ref.Tokens)

	// 4. Restore the checkpoint into a fresh instance (the live one is replaced only on success).
	rr, err := s.Restore(ctx, cp1.ID)
	if err != nil {
		return err
	}
	say("4. restore    checkpoint %s into a fresh instance: %d chunks decoded in place and verified, %.1f ms\n", short(cp1.ID), rr.Chunks, ms(rr.Total))
	cont, err := s.Run(ctx, session.Turn{N: *n, NoCheckpoint: true})
	if err != nil {
		return err
	}
	out.Restored = cont.Tokens
	out.Identical = slices.Equal(out.Restored, out.Uninterrupted)
	say("5. continue   from the restored instance:          %v\n", cont.Tokens)
	say("   identical: %s\n\n", yesNo(out.Identical))

	// 6. Restore against re-prefill, both warm, each to its first token.
	kv, _ := engine.ParseKVType(cp1.Layout.DType)
	best := func(f func() (time.Duration, time.Duration, error)) (time.Duration, time.Duration, error) {
		var b1, b2 time.Duration
		for i := 0; i < 3; i++ {
			d1, d2, err := f()
			if err != nil {
				return 0, 0, err
			}
			if i == 0 || d2 < b2 {
				b1, b2 = d1, d2
			}
		}
		return b1, b2, nil
	}
	rd, rt, err := best(func() (time.Duration, time.Duration, error) {
		t0 := time.Now()
		in, _, err := restore.Restore(ctx, r.Store(), model, cp1, restore.Options{Instance: engine.InstanceOptions{Threads: threads}})
		if err != nil {
			return 0, 0, err
		}
		defer in.Close()
		d := time.Since(t0)
		if _, err := in.Sample(); err != nil {
			return 0, 0, err
		}
		return d, time.Since(t0), nil
	})
	if err != nil {
		return err
	}
	pd, pt, err := best(func() (time.Duration, time.Duration, error) {
		t0 := time.Now()
		in, err := model.NewInstance(engine.InstanceOptions{KVType: kv, BlockSize: cp1.Layout.BlockSize, Threads: threads, Sampler: cp1.Sampler})
		if err != nil {
			return 0, 0, err
		}
		defer in.Close()
		if err := in.Prefill(cp1.Tokens); err != nil {
			return 0, 0, err
		}
		d := time.Since(t0)
		if _, err := in.Sample(); err != nil {
			return 0, 0, err
		}
		return d, time.Since(t0), nil
	})
	if err != nil {
		return err
	}
	out.RestoreMS, out.RestoreTTFTMS, out.ReprefillMS, out.ReprefillTTFTMS = ms(rd), ms(rt), ms(pd), ms(pt)
	say("6. timing     (best of 3, fresh instance each)      to state     to first token\n")
	say("              restore the checkpoint              %8.2f ms  %8.2f ms   (stored logits: no forward pass)\n", out.RestoreMS, out.RestoreTTFTMS)
	say("              re-prefill the same %4d tokens     %8.2f ms  %8.2f ms\n", cp1.Position, out.ReprefillMS, out.ReprefillTTFTMS)
	say("              restore is %.1f× faster to the first token\n\n", out.ReprefillTTFTMS/max(out.RestoreTTFTMS, 1e-6))

	// 7. Storage: an incremental checkpoint, a fork, and a new session sharing the prompt.
	t2, err := s.Run(ctx, session.Turn{N: *n})
	if err != nil {
		return err
	}
	out.IncrementalMS, out.IncrementalBlock, out.IncrementalOf = ms(t2.Checkpoint.Duration), t2.Checkpoint.BlocksWritten, t2.Checkpoint.Blocks
	say("7. storage    next turn's checkpoint wrote %d of %d KV blocks (those touched by the %d tokens since its parent), %.1f ms\n",
		t2.Checkpoint.BlocksWritten, t2.Checkpoint.Blocks, t2.Position-cp1.Position, out.IncrementalMS)
	fk, err := mgr.Fork(ctx, "demo-fork", cp1.ID)
	if err != nil {
		return err
	}
	other := smp
	other.Seed = 7
	t3, err := fk.Run(ctx, session.Turn{N: *n, Sampler: &other})
	if err != nil {
		return err
	}
	say("              fork of the first checkpoint, other seed: wrote %d of %d blocks\n", t3.Checkpoint.BlocksWritten, t3.Checkpoint.Blocks)
	s2, err := mgr.Session("demo-2")
	if err != nil {
		return err
	}
	t4, err := s2.Run(ctx, session.Turn{Model: modelPath, Prompt: prompt, N: *n, Sampler: &other})
	if err != nil {
		return err
	}
	out.PrefixTokens = t4.PrefixTokens
	say("              new session, same prompt: %d of %d prompt tokens restored from the prefix cache; wrote %d of %d blocks, %d of them new to the store\n",
		t4.PrefixTokens, len(prompt), t4.Checkpoint.BlocksWritten, t4.Checkpoint.Blocks, t4.Checkpoint.BlocksNew)

	// Logical bytes (what every checkpoint holds) against bytes at rest.
	infos, err := r.Index().Manifests()
	if err != nil {
		return err
	}
	for _, mi := range infos {
		if mi.Kind == checkpoint.Kind {
			out.Checkpoints++
			out.LogicalBytes += mi.Size
		}
	}
	if err := r.Store().Walk(ctx, func(in cas.Info) error { out.StoredBytes += in.StoredSize; return nil }); err != nil {
		return err
	}
	say("              %d checkpoints hold %s; the store keeps %s at rest (%.1f× less: shared blocks stored once, compressed)\n\n",
		out.Checkpoints, progress.Bytes(out.LogicalBytes), progress.Bytes(out.StoredBytes), float64(out.LogicalBytes)/float64(max(out.StoredBytes, 1)))
	if c.globals.json {
		if err := c.printJSON(out); err != nil {
			return err
		}
	}
	if !out.Identical {
		c.logf("driftstore demo: the restored continuation differs from the uninterrupted one\n")
		return errSilentFailure
	}
	say("Next: driftstore run --session NAME --prompt TEXT -n 32, then driftstore restore --session NAME --compare\n")
	return nil
}

func short(id cas.Digest) string { return id.String()[:len("blake3:")+16] }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}
