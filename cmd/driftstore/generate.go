package main

import (
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/driftstore/driftstore/backends"
	"github.com/driftstore/driftstore/engine"
)

func init() {
	register(&command{
		name:    "generate",
		args:    "[--model FILE] (--prompt TEXT | --tokens 1,2,3) -n N [--seed S] [--temp T] [--top-k K] [--top-p P] [--threads N] [--kv f16|f32] [--backend auto|cpu|cuda|metal]",
		summary: "run a model on a prompt and print the generated tokens (without --model: the built-in tiny model); stateless and local only: through a daemon use run --session NAME --server URL",
		run:     runGenerate,
	})
}

// runtimeFlags are the model and instance flags shared by generate and bench runtime.
type runtimeFlags struct {
	model     string
	threads   int
	kv        string
	blockSize int
	batch     int
	backend   string
}

func (f *runtimeFlags) register(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
}) {
	fs.StringVar(&f.model, "model", "", "GGUF model file (default: the built-in tiny synthetic model, generated on first use)")
	fs.IntVar(&f.threads, "threads", runtime.NumCPU(), "host threads for the compute ops")
	fs.StringVar(&f.kv, "kv", "f16", "KV cache element type: f16 or f32")
	fs.IntVar(&f.blockSize, "block-size", 16, "token positions per KV block")
	fs.IntVar(&f.batch, "batch", 64, "prefill batch size (tokens per forward pass)")
	backends.FlagVar(fs, &f.backend)
}

func (f *runtimeFlags) instanceOptions() (engine.InstanceOptions, error) {
	kv, err := engine.ParseKVType(f.kv)
	if err != nil {
		return engine.InstanceOptions{}, usageError("--kv: %v", err)
	}
	if f.threads < 1 || f.blockSize < 1 || f.blockSize > 4096 || f.batch < 1 || f.batch > 4096 {
		return engine.InstanceOptions{}, usageError("--threads, --block-size and --batch must be positive (block size and batch at most 4096)")
	}
	return engine.InstanceOptions{KVType: kv, BlockSize: f.blockSize, Threads: f.threads, Batch: f.batch}, nil
}

// openRuntime builds an engine on the --backend backend (module cache under the data directory)
// and loads the model (the built-in one when path is empty).
func (c *cli) openRuntime(path, backend string) (*runEngine, *engine.Model, error) {
	if path == "" {
		p, err := engine.BuiltinModelPath(c.globals.data)
		if err != nil {
			return nil, nil, err
		}
		path = p
	}
	e, err := c.newEngine(backend, engine.ModuleCacheDir(c.globals.data))
	if err != nil {
		return nil, nil, err
	}
	m, err := e.LoadModel(path)
	if err != nil {
		e.Close()
		return nil, nil, err
	}
	return e, m, nil
}

func parseTokenList(s string) ([]int32, error) {
	var out []int32
	for _, p := range splitList(s) {
		v, err := strconv.ParseInt(p, 10, 32)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("token %q is not a non-negative integer", p)
		}
		out = append(out, int32(v))
	}
	return out, nil
}

// checkVocab refuses, as a usage error, a prompt token outside the model's vocabulary, before
// anything is fed or printed.
func checkVocab(ids []int32, vocab int) error {
	for i, t := range ids {
		if int(t) >= vocab {
			return usageError("--tokens: token %d (at %d) is outside the model's vocabulary [0, %d)", t, i, vocab)
		}
	}
	return nil
}

// genFlags are the prompt, length and sampling flags that generate and run share.
type genFlags struct {
	prompt, tokens string
	n              int
	seed           uint64
	temp, topP     float64
	topK           int
}

func (g *genFlags) register(fs *flag.FlagSet, promptHelp, seedHelp string) {
	fs.StringVar(&g.prompt, "prompt", "", promptHelp)
	fs.StringVar(&g.tokens, "tokens", "", "prompt as comma-separated token ids")
	fs.IntVar(&g.n, "n", 16, "number of tokens to generate")
	fs.Uint64Var(&g.seed, "seed", 0, seedHelp)
	fs.Float64Var(&g.temp, "temp", 0.8, "sampling temperature (0: greedy)")
	fs.IntVar(&g.topK, "top-k", 40, "keep only the K most likely tokens (0: all)")
	fs.Float64Var(&g.topP, "top-p", 0.95, "keep the smallest set of tokens whose probability reaches P (1: all)")
}

// check refuses, as usage errors, both --prompt and --tokens, a negative -n and sampling
// settings out of range. A missing prompt is for the caller to judge.
func (g *genFlags) check() error {
	if g.prompt != "" && g.tokens != "" {
		return usageError("give at most one of --prompt and --tokens")
	}
	if g.n < 0 {
		return usageError("-n must be >= 0")
	}
	if g.temp < 0 || g.topK < 0 || g.topP <= 0 || g.topP > 1 {
		return usageError("--temp must be >= 0, --top-k >= 0 and --top-p in (0, 1]")
	}
	return nil
}

func (g *genFlags) sampler() engine.Sampler {
	return engine.Sampler{Temp: float32(g.temp), TopK: g.topK, TopP: float32(g.topP), Seed: g.seed}
}

type generateResult struct {
	Tokens       []int32 `json:"tokens"`
	Text         string  `json:"text"`
	PromptTokens int     `json:"prompt_tokens"`
	PrefillMS    float64 `json:"prefill_ms"`
	DecodeMS     float64 `json:"decode_ms"`
	PrefillTokS  float64 `json:"prefill_tok_s"`
	DecodeTokS   float64 `json:"decode_tok_s"`
	Backend      string  `json:"backend"`
}

func runGenerate(c *cli, args []string) error {
	fs := c.flagSet()
	var rf runtimeFlags
	rf.register(fs)
	var gf genFlags
	gf.register(fs, "prompt text (encoded with the model's tokenizer, BOS first)", "sampler RNG seed")
	prompt, tokens, n := &gf.prompt, &gf.tokens, &gf.n
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if c.globals.server != "" {
		return usageError("generate runs locally only (the daemon has no stateless endpoint); through a daemon use: driftstore run --session NAME --server URL")
	}
	if len(fs.Args()) > 0 {
		return usageError("unexpected argument %q", fs.Args()[0])
	}
	if (*prompt == "") == (*tokens == "") {
		return usageError("give exactly one of --prompt and --tokens")
	}
	if err := gf.check(); err != nil {
		return err
	}
	opts, err := rf.instanceOptions()
	if err != nil {
		return err
	}
	opts.Sampler = gf.sampler()

	e, m, err := c.openRuntime(rf.model, rf.backend)
	if err != nil {
		return err
	}
	defer e.Close()
	defer m.Close()
	tok, tokErr := m.GGUF().Tokenizer()
	var ids []int32
	if *prompt != "" {
		if tokErr != nil {
			return fmt.Errorf("--prompt needs the model's tokenizer: %w", tokErr)
		}
		ids = tok.Encode(*prompt, true)
	} else if ids, err = parseTokenList(*tokens); err != nil {
		return usageError("--tokens: %v", err)
	}
	if len(ids) == 0 {
		return usageError("the prompt is empty")
	}
	if err := checkVocab(ids, m.Hyper().Vocab); err != nil {
		return err
	}
	in, err := m.NewInstance(opts)
	if err != nil {
		return err
	}
	defer in.Close()

	t0 := time.Now()
	if err := in.Prefill(ids); err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	prefill := time.Since(t0)
	stream := !c.globals.json
	if stream {
		c.printf("tokens:")
	}
	t1 := time.Now()
	out, err := in.Generate(*n, func(t int32) error {
		if stream {
			c.printf(" %d", t)
		}
		return nil
	})
	decode := time.Since(t1)
	if stream {
		c.printf("\n")
	}
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	res := generateResult{
		Tokens: out, PromptTokens: len(ids), Backend: e.Backend().Name(),
		PrefillMS: ms(prefill), DecodeMS: ms(decode),
		PrefillTokS: perSec(len(ids), prefill), DecodeTokS: perSec(len(out), decode),
	}
	if res.Tokens == nil {
		res.Tokens = []int32{}
	}
	if tokErr == nil {
		res.Text, _ = tok.Decode(out)
	}
	if c.globals.json {
		return c.printJSON(res)
	}
	if tokErr == nil {
		c.printf("text: %s\n", strconv.Quote(res.Text))
	}
	c.logf("prompt %d tokens, prefill %.1f ms (%.0f tok/s), decode %d tokens %.1f ms (%.1f tok/s), backend %s\n",
		len(ids), res.PrefillMS, res.PrefillTokS, len(out), res.DecodeMS, res.DecodeTokS, res.Backend)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func perSec(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// joinInts formats ids as "1,2,3".
func joinInts(ids []int32) string {
	s := make([]string, len(ids))
	for i, v := range ids {
		s[i] = strconv.Itoa(int(v))
	}
	return strings.Join(s, ",")
}
