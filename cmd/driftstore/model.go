package main

import (
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/internal/progress"
)

func init() {
	register(&command{
		name:    "model",
		args:    "synth --preset NAME --type TYPE [--seed N] -o FILE | info FILE",
		summary: "write synthetic GGUF models and describe GGUF files",
		run:     runModel,
	})
}

// modelSubcommands are the subcommands of "driftstore model".
var modelSubcommands = []struct{ name, args, summary string }{
	{"synth", "--preset tiny|llama-3.2-1b --type f32|f16|bf16|q8_0 [--seed N] -o FILE",
		"write a llama-architecture GGUF file with deterministic random weights"},
	{"info", "FILE", "print a GGUF model's architecture, hyperparameters, tensors and fingerprint"},
}

func runModel(c *cli, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		w := c.stdout
		fmt.Fprintf(w, "Usage: driftstore model SUBCOMMAND [flags]\n\nSubcommands:\n")
		for _, s := range modelSubcommands {
			fmt.Fprintf(w, "  %-6s %s\n         %s\n", s.name, s.args, s.summary)
		}
		if len(args) == 0 {
			return usageError("model needs a subcommand: synth or info")
		}
		return nil
	}
	switch args[0] {
	case "synth":
		return runModelSynth(c, args[1:])
	case "info":
		return runModelInfo(c, args[1:])
	}
	return usageError("unknown model subcommand %q (want synth or info)", args[0])
}

// modelFlagSet is c.flagSet with the usage text of a model subcommand.
func (c *cli) modelFlagSet(sub string) *flag.FlagSet {
	fs := c.flagSet()
	for _, s := range modelSubcommands {
		if s.name == sub {
			fs.Usage = func() {
				fmt.Fprintf(fs.Output(), "Usage: driftstore model %s %s\n\n%s\n\nFlags:\n", s.name, s.args, s.summary)
				fs.PrintDefaults()
			}
		}
	}
	return fs
}

type synthResult struct {
	Path        string  `json:"path"`
	Preset      string  `json:"preset"`
	Type        string  `json:"type"`
	Seed        uint64  `json:"seed"`
	Size        uint64  `json:"size"`
	Params      uint64  `json:"parameters"`
	Fingerprint string  `json:"fingerprint"`
	Seconds     float64 `json:"seconds"` // time to generate and write the file
}

func runModelSynth(c *cli, args []string) error {
	fs := c.modelFlagSet("synth")
	preset := fs.String("preset", "tiny", "model shape: "+strings.Join(gguf.PresetNames(), ", "))
	typ := fs.String("type", "f16", "type of the weight matrices: f32, f16, bf16 or q8_0 (norms stay f32)")
	seed := fs.Uint64("seed", 0, "weight seed: the same seed gives the same file")
	out := fs.String("o", "", "output file (written atomically)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if *out == "" {
		return usageError("-o FILE is required")
	}
	t, err := gguf.ParseType(*typ)
	if err != nil || !(t == gguf.TypeF32 || t == gguf.TypeF16 || t == gguf.TypeBF16 || t == gguf.TypeQ8_0) {
		return usageError("--type %q: want f32, f16, bf16 or q8_0", *typ)
	}
	spec, err := gguf.Synth(*preset, t, *seed)
	if err != nil {
		return usageError("%v", err)
	}
	size, err := spec.Size()
	if err != nil {
		return err
	}
	bar := progress.New(c.stderr, "synth "+*preset, int64(size))
	start := time.Now()
	err = spec.WriteFile(*out, func(done, total uint64) error {
		bar.Set(int64(done), int64(total))
		return c.ctx.Err() // interrupted: the temporary file is removed, -o is left alone
	})
	bar.Finish()
	if err != nil {
		return fmt.Errorf("model synth: %w", err)
	}
	elapsed := time.Since(start)
	m, err := gguf.Open(*out)
	if err != nil {
		return fmt.Errorf("model synth: reading back %s: %w", *out, err)
	}
	defer m.Close()
	res := synthResult{Path: *out, Preset: *preset, Type: t.String(), Seed: *seed, Size: m.File.Size,
		Params: m.Params(), Fingerprint: m.Fingerprint().String(), Seconds: elapsed.Seconds()}
	if c.globals.json {
		return c.printJSON(res)
	}
	c.printf("wrote %s: %s %s, %s parameters, %s in %.1fs\nfingerprint %s\n", res.Path, res.Preset, res.Type,
		humanCount(res.Params), progress.Bytes(int64(res.Size)), res.Seconds, res.Fingerprint)
	return nil
}

type infoResult struct {
	Path          string         `json:"path"`
	Size          uint64         `json:"size"`
	Version       uint32         `json:"gguf_version"`
	Alignment     uint64         `json:"alignment"`
	MetadataCount int            `json:"metadata_count"`
	TensorCount   int            `json:"tensor_count"`
	Name          string         `json:"name,omitempty"`
	Hyper         gguf.Hyper     `json:"hyperparameters"`
	TensorTypes   map[string]int `json:"tensors_by_type"`
	Params        uint64         `json:"parameters"`
	Tokenizer     string         `json:"tokenizer"` // "llama, 32000 tokens" or why it is not usable
	Fingerprint   string         `json:"fingerprint"`
}

func runModelInfo(c *cli, args []string) error {
	fs := c.modelFlagSet("info")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError("model info takes one FILE")
	}
	path := fs.Arg(0)
	m, err := gguf.Open(path)
	if err != nil {
		return err
	}
	defer m.Close()
	f := m.File
	res := infoResult{Path: path, Size: f.Size, Version: f.Version, Alignment: f.Alignment,
		MetadataCount: len(f.KV), TensorCount: len(f.Tensors), Hyper: m.Hyper,
		TensorTypes: map[string]int{}, Params: m.Params()}
	if v, ok := f.Get("general.name"); ok {
		res.Name, _ = v.Str()
	}
	for _, t := range f.Tensors {
		res.TensorTypes[t.Type.String()]++
	}
	if tok, err := m.Tokenizer(); err != nil {
		res.Tokenizer = "not usable: " + err.Error()
	} else {
		res.Tokenizer = fmt.Sprintf("byte-level llama vocabulary, %d tokens (bos %d, eos %d)", tok.VocabSize(), tok.BOS, tok.EOS)
	}
	res.Fingerprint = m.Fingerprint().String()
	if c.globals.json {
		return c.printJSON(res)
	}
	h := res.Hyper
	types := make([]string, 0, len(res.TensorTypes))
	for t, n := range res.TensorTypes {
		types = append(types, fmt.Sprintf("%s %d", t, n))
	}
	sort.Strings(types)
	gqa := ""
	if h.KVHeads != h.Heads {
		gqa = fmt.Sprintf(" (grouped-query, %d per KV head)", h.Heads/h.KVHeads)
	}
	tied := "no (output.weight)"
	if h.Tied {
		tied = "yes (no output.weight)"
	}
	rows := [][2]string{
		{"file", fmt.Sprintf("%s (%s)", path, progress.Bytes(int64(res.Size)))},
		{"gguf", fmt.Sprintf("v%d, alignment %d, %d metadata keys, %d tensors", res.Version, res.Alignment, res.MetadataCount, res.TensorCount)},
		{"name", res.Name},
		{"architecture", h.Arch},
		{"context", fmt.Sprint(h.Context)},
		{"embedding", fmt.Sprint(h.Dim)},
		{"layers", fmt.Sprint(h.Layers)},
		{"ffn", fmt.Sprint(h.FFN)},
		{"heads", fmt.Sprintf("%d, KV heads %d%s, head dim %d", h.Heads, h.KVHeads, gqa, h.HeadDim)},
		{"rope", fmt.Sprintf("theta %g, %d dims", h.RopeTheta, h.RopeDim)},
		{"rms eps", fmt.Sprintf("%g", h.RMSEps)},
		{"vocab", fmt.Sprint(h.Vocab)},
		{"tied embd", tied},
		{"tensors", strings.Join(types, ", ")},
		{"parameters", fmt.Sprintf("%s (%d)", humanCount(res.Params), res.Params)},
		{"tokenizer", res.Tokenizer},
		{"fingerprint", res.Fingerprint},
	}
	for _, r := range rows {
		c.printf("%-12s %s\n", r[0], r[1])
	}
	return nil
}

// humanCount formats a count with an SI suffix: "15.19M", "1.24G".
func humanCount(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fG", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.2fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
