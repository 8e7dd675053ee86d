package main

import (
	"flag"
	"fmt"
	"strconv"

	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/restore"
	"github.com/driftstore/driftstore/session"
)

func init() {
	register(&command{
		name:    "run",
		args:    "--session NAME [--model FILE] [--prompt TEXT | --tokens 1,2,3] -n N [--seed S] [--temp T] [--top-k K] [--top-p P] [--kv f16|f32] [--block-size N] [--server URL]",
		summary: "run one turn of a named, persistent session: restore it, feed the prompt, generate, checkpoint (--server: live in the daemon, tokens streamed)",
		run:     runRun,
	})
}

// sessionEnv is an open data directory with an engine and a session manager.
type sessionEnv struct {
	repo *repo.Repo
	eng  interface{ Close() error } // *engine.Engine, or *runEngine (closes its backend too)
	mgr  *session.Manager
}

func (e *sessionEnv) Close() {
	if e.mgr != nil {
		e.mgr.Close()
	}
	if e.eng != nil {
		e.eng.Close()
	}
	if e.repo != nil {
		e.repo.Close()
	}
}

// openSessions opens the data directory, an engine (module cache under it) and a session
// manager configured by cfg (its Index, Engine and DataDir are filled in here, and a KVCodec of
// kvCodecAuto resolved for the backend). backend is --backend ("": the CPU, quietly).
func (c *cli) openSessions(cfg session.Config, backend string) (*sessionEnv, error) {
	r, err := c.openRepo(false)
	if err != nil {
		return nil, err
	}
	env := &sessionEnv{repo: r}
	var eng *engine.Engine
	chosen := "cpu"
	if backend == "" {
		eng, err = engine.New(engine.Options{CacheDir: engine.ModuleCacheDir(c.globals.data)})
		if err == nil {
			env.eng = eng
		}
	} else {
		var re *runEngine
		re, err = c.newEngine(backend, engine.ModuleCacheDir(c.globals.data))
		if err == nil {
			env.eng, eng, chosen = re, re.Engine, re.sel.Name()
		}
	}
	if err != nil {
		env.Close()
		return nil, err
	}
	cfg.Index, cfg.Engine, cfg.DataDir = r.Index(), eng, c.globals.data
	cfg.KVCodec = resolveKVCodec(cfg.KVCodec, chosen)
	env.mgr, err = session.NewManager(cfg)
	if err != nil {
		env.Close()
		return nil, err
	}
	return env, nil
}

type runResult struct {
	generateResult
	Session      string  `json:"session"`
	Checkpoint   string  `json:"checkpoint,omitempty"`
	Parent       string  `json:"parent,omitempty"`
	Position     int     `json:"position"`
	New          bool    `json:"new"`
	RestoreMS    float64 `json:"restore_ms,omitempty"`
	PrefixTokens int     `json:"prefix_cache_tokens"`
	PrefixMS     float64 `json:"prefix_cache_ms,omitempty"`
	CheckpointMS float64 `json:"checkpoint_ms,omitempty"`
	// CheckpointPending: a daemon with --defer-checkpoints snapshotted the turn's checkpoint and
	// makes it durable in the background; Checkpoint is then empty (its ID is not known yet),
	// CheckpointMS is the snapshot's time and BlocksWritten the blocks it will store.
	CheckpointPending bool  `json:"checkpoint_pending,omitempty"`
	BlocksWritten     int   `json:"blocks_written"`
	Blocks            int   `json:"blocks"`
	StoredNew         int64 `json:"stored_new_bytes"`
}

func runRun(c *cli, args []string) error {
	fs := c.flagSet()
	var rf runtimeFlags
	rf.register(fs)
	name := fs.String("session", "", "session name (created on first use)")
	var gf genFlags
	gf.register(fs, "prompt text (a new session starts with BOS)", "sampler RNG seed (setting any sampling flag on an existing session reseeds it)")
	prompt, tokens, n := &gf.prompt, &gf.tokens, &gf.n
	noCP := fs.Bool("no-checkpoint", false, "do not checkpoint at the end of the turn")
	kvCodec := kvCodecFlag(fs)
	keepLogits := keepLogitsFlag(fs)
	verify := verifyFlag(fs)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if len(fs.Args()) > 0 {
		return usageError("unexpected argument %q", fs.Args()[0])
	}
	if *name == "" {
		return usageError("--session NAME is required")
	}
	if err := gf.check(); err != nil {
		return err
	}
	opts, err := rf.instanceOptions()
	if err != nil {
		return err
	}
	codec, err := kvCodec()
	if err != nil {
		return err
	}
	ver, err := verify()
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	smp := gf.sampler()
	if c.globals.server != "" {
		if *keepLogits {
			return usageError("--keep-logits applies where the checkpoint is taken: give it to the daemon (serve --keep-logits)")
		}
		return runRunRemote(c, remoteTurn{name: *name, model: rf.model, prompt: *prompt, tokens: *tokens, n: *n,
			smp: smp, set: set, kv: rf.kv, blockSize: rf.blockSize, noCheckpoint: *noCP})
	}

	env, err := c.openSessions(session.Config{Threads: opts.Threads, Batch: opts.Batch, KVCodec: codec, KeepLogits: *keepLogits, Verify: ver}, rf.backend)
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
	turn := session.Turn{Model: rf.model, N: *n, KVType: opts.KVType, BlockSize: opts.BlockSize, NoCheckpoint: *noCP}
	if head == nil {
		turn.Sampler = &smp
	} else if set["seed"] || set["temp"] || set["top-k"] || set["top-p"] {
		// Continue with the session's settings, replacing those given.
		cur := head.Sampler
		if set["seed"] {
			cur.Seed = smp.Seed
		}
		if set["temp"] {
			cur.Temp = smp.Temp
		}
		if set["top-k"] {
			cur.TopK = smp.TopK
		}
		if set["top-p"] {
			cur.TopP = smp.TopP
		}
		turn.Sampler = &cur
	}
	if head != nil && (set["kv"] || set["block-size"]) {
		if opts.KVType.String() != head.Layout.DType || opts.BlockSize != head.Layout.BlockSize {
			return usageError("session %s has KV %s with block size %d; --kv and --block-size apply to new sessions only", *name, head.Layout.DType, head.Layout.BlockSize)
		}
	}
	model, _, err := env.mgr.Model(modelSource(rf.model, head))
	if err != nil {
		return err
	}
	tok, tokErr := model.GGUF().Tokenizer()
	switch {
	case *prompt != "":
		if tokErr != nil {
			return fmt.Errorf("--prompt needs the model's tokenizer: %w", tokErr)
		}
		turn.Prompt = tok.Encode(*prompt, head == nil)
	case *tokens != "":
		if turn.Prompt, err = parseTokenList(*tokens); err != nil {
			return usageError("--tokens: %v", err)
		}
	}
	if head == nil && len(turn.Prompt) == 0 {
		return usageError("session %s is new: give --prompt or --tokens", *name)
	}
	if err := checkVocab(turn.Prompt, model.Hyper().Vocab); err != nil {
		return err
	}
	stream := !c.globals.json
	if stream {
		c.printf("tokens:")
		turn.OnToken = func(t int32) error { c.printf(" %d", t); return nil }
	}
	res, err := s.Run(c.ctx, turn)
	if stream {
		c.printf("\n")
	}
	if err != nil {
		return err
	}
	out := runResult{
		generateResult: generateResult{
			Tokens: res.Tokens, PromptTokens: res.PromptTokens, Backend: res.Backend,
			PrefillMS: ms(res.Prefill), DecodeMS: ms(res.Decode),
			PrefillTokS: perSec(res.PromptTokens-res.PrefixTokens, res.Prefill), DecodeTokS: perSec(len(res.Tokens), res.Decode),
		},
		Session: *name, Position: res.Position, New: head == nil, PrefixTokens: res.PrefixTokens, PrefixMS: ms(res.PrefixLoad),
	}
	if out.Tokens == nil {
		out.Tokens = []int32{}
	}
	if tokErr == nil {
		out.Text, _ = tok.Decode(res.Tokens)
	}
	if res.Restored != nil {
		out.RestoreMS = ms(res.Restored.Total)
	}
	if cr := res.Checkpoint; cr != nil {
		out.Checkpoint = cr.Checkpoint.ID.String()
		if !cr.Checkpoint.Parent.IsZero() {
			out.Parent = cr.Checkpoint.Parent.String()
		}
		out.CheckpointMS, out.BlocksWritten, out.Blocks, out.StoredNew = ms(cr.Duration), cr.BlocksWritten, cr.Blocks, cr.StoredNew
	}
	restoredFrom := ""
	if res.Restored != nil {
		restoredFrom = head.ID.String()
	}
	return c.printRun(out, tokErr == nil, restoredFrom)
}

// printRun prints a turn's result: --json, or the text and notes on stderr. restoredFrom is
// the checkpoint the turn restored ("" when the session was live or new).
func (c *cli) printRun(out runResult, hasText bool, restoredFrom string) error {
	if c.globals.json {
		return c.printJSON(out)
	}
	if hasText {
		c.printf("text: %s\n", strconv.Quote(out.Text))
	}
	switch {
	case out.New && out.PrefixTokens > 0:
		c.logf("session %s: new; %d of %d prompt tokens restored from the prefix cache in %.1f ms\n", out.Session, out.PrefixTokens, out.PromptTokens, out.PrefixMS)
	case out.New:
		c.logf("session %s: new\n", out.Session)
	case restoredFrom != "":
		c.logf("session %s: restored %d tokens from checkpoint %s in %.1f ms\n", out.Session, out.Position-out.PromptTokens-len(out.Tokens), restoredFrom, out.RestoreMS)
	}
	c.logf("prompt %d tokens, prefill %.1f ms, decode %d tokens %.1f ms (%.1f tok/s), backend %s\n",
		out.PromptTokens, out.PrefillMS, len(out.Tokens), out.DecodeMS, out.DecodeTokS, out.Backend)
	switch {
	case out.CheckpointPending:
		c.logf("checkpoint pending: position %d, %d of %d KV blocks snapshotted in %.2f ms; the daemon makes it durable in the background (--defer-checkpoints)\n",
			out.Position, out.BlocksWritten, out.Blocks, out.CheckpointMS)
	case out.Checkpoint != "":
		c.logf("checkpoint %s: position %d, %d of %d KV blocks written (%s new at rest) in %.1f ms\n",
			out.Checkpoint, out.Position, out.BlocksWritten, out.Blocks, progress.Bytes(out.StoredNew), out.CheckpointMS)
	}
	return nil
}

// modelSource is the model a command should load: the one given, else the session's.
func modelSource(given string, head *checkpoint.Checkpoint) string {
	if given == "" && head != nil {
		return head.ModelSource
	}
	return given
}

// verifyFlag registers --verify on fs (commands that restore checkpoints); the returned func
// parses it.
func verifyFlag(fs *flag.FlagSet) func() (restore.Verify, error) {
	v := fs.String("verify", "sealed", "how a restore checks each chunk it reads: sealed (against the CRC-32C the pack store took when it stored the chunk, after hashing it to its digest: damage at rest, ten times cheaper) or full (BLAKE3 of every chunk against its digest)")
	return func() (restore.Verify, error) {
		r, err := restore.ParseVerify(*v)
		if err != nil {
			return 0, usageError("--verify: %v", err)
		}
		return r, nil
	}
}

// keepLogitsFlag registers --keep-logits on fs (commands whose sessions write checkpoints).
func keepLogitsFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("keep-logits", false, "checkpoints keep the whole logits vector (4 bytes per vocabulary entry) even when the sampler reads only the best few: greedy or top-k sampling keeps max(64, k) of them by default, and a restored session whose sampler is later changed to read more recomputes its last logits (one token's forward pass)")
}
