package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
)

func init() {
	registerBench(&benchmark{
		name:    "runtime",
		args:    "[--model FILE | --preset tiny|llama-3.2-1b --type f16|q8_0] [--threads N] [--kv f16|f32] [--prefill 32,128,512,2048] [--decode-ctx 32,512,1024] [--decode-n 32]",
		summary: "inference runtime: prefill and decode tok/s, host-op overhead, instance start (module cache cold/warm), RSS",
		run:     runBenchRuntime,
	})
}

type benchRuntimeResult struct {
	Model            string      `json:"model"`
	Backend          string      `json:"backend"`
	Threads          int         `json:"threads"`
	KV               string      `json:"kv"`
	Prefill          []benchRate `json:"prefill"`
	Decode           []benchRate `json:"decode"`
	HostOpNS         float64     `json:"host_op_ns"`
	StartColdMS      float64     `json:"instance_start_cold_ms"`
	StartWarmMS      float64     `json:"instance_start_warm_ms"`
	ModuleCompileMS  float64     `json:"module_compile_ms"`
	ModuleCacheMS    float64     `json:"module_cache_load_ms"`
	InstanceMemBytes int64       `json:"instance_linear_memory_bytes"`
	RSSBytes         int64       `json:"process_rss_bytes"`
	RSSBaseBytes     int64       `json:"process_rss_before_instance_bytes"`
}

type benchRate struct {
	Tokens  int     `json:"tokens"`  // prefill: prompt length; decode: generated tokens
	Context int     `json:"context"` // decode: context length before generating
	MS      float64 `json:"ms"`
	TokS    float64 `json:"tok_s"`
}

func parseInts(s, flagName string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		v, err := strconv.Atoi(p)
		if err != nil || v <= 0 {
			return nil, usageError("--%s: %q is not a positive integer", flagName, p)
		}
		out = append(out, v)
	}
	return out, nil
}

func runBenchRuntime(c *cli, args []string) error {
	fs := c.flagSet()
	var rf runtimeFlags
	rf.register(fs)
	preset := fs.String("preset", "", "synthetic preset to benchmark instead of --model: tiny or llama-3.2-1b (generated into DATA/models on first use)")
	typ := fs.String("type", "q8_0", "weight type of the --preset model: f16 or q8_0 (f32, bf16 also work)")
	prefillList := fs.String("prefill", "32,128,512,2048", "prompt lengths to time prefill at")
	decodeList := fs.String("decode-ctx", "32,512,1024", "context lengths to time decode at")
	decodeN := fs.Int("decode-n", 32, "tokens generated per decode measurement")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if rf.model != "" && *preset != "" {
		return usageError("give --model or --preset, not both")
	}
	prefills, err := parseInts(*prefillList, "prefill")
	if err != nil {
		return err
	}
	decodes, err := parseInts(*decodeList, "decode-ctx")
	if err != nil {
		return err
	}
	if *decodeN < 1 {
		return usageError("--decode-n must be positive")
	}
	opts, err := rf.instanceOptions()
	if err != nil {
		return err
	}
	opts.Sampler = engine.Sampler{Temp: 0}

	path := rf.model
	switch {
	case *preset != "":
		t, err := gguf.ParseType(*typ)
		if err != nil {
			return usageError("--type: %v", err)
		}
		c.logf("model: synthetic %s %s (generated into %s on first use)\n", *preset, t, filepath.Join(c.globals.data, "models"))
		if path, err = engine.SynthModelPath(c.globals.data, *preset, t, 1, nil); err != nil {
			return err
		}
	case path == "":
		if path, err = engine.BuiltinModelPath(c.globals.data); err != nil {
			return err
		}
	}

	res := benchRuntimeResult{Model: filepath.Base(path), Threads: opts.Threads, KV: opts.KVType.String()}

	// The engine the prefill and decode figures use; the start figures use the same backend.
	e, err := c.newEngine(rf.backend, engine.ModuleCacheDir(c.globals.data))
	if err != nil {
		return err
	}
	defer e.Close()
	res.Backend = e.Backend().Name()

	// Instance start, module cache cold: a fresh cache directory, so the guest is compiled.
	coldDir, err := os.MkdirTemp("", "driftstore-bench-modcache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(coldDir)
	start := func(cacheDir string) (time.Duration, engine.ModuleLoad, error) {
		t0 := time.Now()
		e, err := engine.New(engine.Options{CacheDir: cacheDir, Backend: e.Backend()})
		if err != nil {
			return 0, engine.ModuleLoad{}, err
		}
		defer e.Close()
		m, err := e.LoadModel(path)
		if err != nil {
			return 0, engine.ModuleLoad{}, err
		}
		defer m.Close()
		in, err := m.NewInstance(opts)
		if err != nil {
			return 0, engine.ModuleLoad{}, err
		}
		d := time.Since(t0)
		in.Close()
		return d, e.ModuleLoad(), nil
	}
	c.logf("instance start, module cache cold (compiles the guest)...\n")
	d, ld, err := start(coldDir)
	if err != nil {
		return err
	}
	res.StartColdMS, res.ModuleCompileMS = ms(d), ms(ld.Duration)
	d, ld, err = start(coldDir)
	if err != nil {
		return err
	}
	if !ld.FromCache {
		return fmt.Errorf("bench: the module cache was not used on the second start")
	}
	res.StartWarmMS, res.ModuleCacheMS = ms(d), ms(ld.Duration)

	m, err := e.LoadModel(path)
	if err != nil {
		return err
	}
	defer m.Close()
	h := m.Hyper()
	toks := func(n int) []int32 {
		out := make([]int32, n)
		x := uint32(12345)
		for i := range out {
			x = x*1664525 + 1013904223
			out[i] = int32(3 + (x>>8)%uint32(h.Vocab-3))
		}
		return out
	}
	newInst := func() (*engine.Instance, error) { return m.NewInstance(opts) }

	// Host-op overhead: the guest calls the empty op in a loop.
	{
		in, err := newInst()
		if err != nil {
			return err
		}
		const n = 200000
		in.NopLoop(1000)
		t0 := time.Now()
		if err := in.NopLoop(n); err != nil {
			return err
		}
		res.HostOpNS = float64(time.Since(t0).Nanoseconds()) / n
		in.Close()
	}

	res.RSSBaseBytes = rss()
	for _, n := range prefills {
		if h.CtxMax > 0 && n > h.CtxMax {
			c.logf("prefill %d: beyond the model's context (%d), skipped\n", n, h.CtxMax)
			continue
		}
		in, err := newInst()
		if err != nil {
			return err
		}
		t0 := time.Now()
		if err := in.Prefill(toks(n)); err != nil {
			return err
		}
		d := time.Since(t0)
		res.Prefill = append(res.Prefill, benchRate{Tokens: n, MS: ms(d), TokS: perSec(n, d)})
		c.logf("prefill %5d tokens: %8.1f ms %9.1f tok/s\n", n, ms(d), perSec(n, d))
		if mem := int64(in.Region().Len()); mem > res.InstanceMemBytes {
			res.InstanceMemBytes = mem
			res.RSSBytes = rss()
		}
		in.Close()
	}
	for _, ctx := range decodes {
		if h.CtxMax > 0 && ctx+*decodeN > h.CtxMax {
			c.logf("decode at %d: beyond the model's context (%d), skipped\n", ctx, h.CtxMax)
			continue
		}
		in, err := newInst()
		if err != nil {
			return err
		}
		if err := in.Prefill(toks(ctx)); err != nil {
			return err
		}
		t0 := time.Now()
		if _, err := in.Generate(*decodeN, nil); err != nil {
			return err
		}
		d := time.Since(t0)
		res.Decode = append(res.Decode, benchRate{Tokens: *decodeN, Context: ctx, MS: ms(d), TokS: perSec(*decodeN, d)})
		c.logf("decode %d at context %5d: %8.1f ms %9.1f tok/s\n", *decodeN, ctx, ms(d), perSec(*decodeN, d))
		if mem := int64(in.Region().Len()); mem > res.InstanceMemBytes {
			res.InstanceMemBytes = mem
			res.RSSBytes = rss()
		}
		in.Close()
	}

	if c.globals.json {
		return c.printJSON(res)
	}
	c.printf("driftstore bench runtime — %s, backend %s, %d threads, KV %s, %s/%s, %d CPUs\n\n",
		res.Model, res.Backend, res.Threads, res.KV, runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	c.printf("%-44s %14s\n", "measurement", "value")
	c.printf("%s\n", strings.Repeat("-", 59))
	for _, p := range res.Prefill {
		c.printf("%-44s %10.1f tok/s\n", fmt.Sprintf("prefill %d tokens (%.1f ms)", p.Tokens, p.MS), p.TokS)
	}
	for _, p := range res.Decode {
		c.printf("%-44s %10.1f tok/s\n", fmt.Sprintf("decode %d tokens at context %d", p.Tokens, p.Context), p.TokS)
	}
	c.printf("%-44s %10.0f ns\n", "host-op call (empty op, guest → host → guest)", res.HostOpNS)
	c.printf("%-44s %10.1f ms\n", "instance start, module cache cold", res.StartColdMS)
	c.printf("%-44s %10.1f ms\n", "  of which guest compile + cache write", res.ModuleCompileMS)
	c.printf("%-44s %10.1f ms\n", "instance start, module cache warm", res.StartWarmMS)
	c.printf("%-44s %10.1f ms\n", "  of which module cache load", res.ModuleCacheMS)
	c.printf("%-44s %10.1f MiB\n", "instance linear memory (largest run)", float64(res.InstanceMemBytes)/(1<<20))
	c.printf("%-44s %10.1f MiB\n", "process RSS with that instance", float64(res.RSSBytes)/(1<<20))
	c.printf("%-44s %10.1f MiB\n", "process RSS before instances (model mapped)", float64(res.RSSBaseBytes)/(1<<20))
	return nil
}

// rss returns the process's resident set size in bytes (Linux; 0 elsewhere).
func rss() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "VmRSS:") {
			fields := strings.Fields(line)
			if len(fields) >= 2 {
				kb, _ := strconv.ParseInt(fields[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
