package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/driftstore/driftstore/gguf"
)

// Test fixtures: one engine for the whole package (compiling the guest takes seconds, so its
// module cache lives in the user's cache directory, keyed by content like any module cache),
// and synthetic models written once per test binary into a temporary directory.

var (
	tmpOnce sync.Once
	tmpDir  string

	engOnce sync.Once
	eng     *Engine
	engErr  error

	modelsMu sync.Mutex
	models   = map[string]*Model{}
)

func TestMain(m *testing.M) {
	code := m.Run()
	modelsMu.Lock()
	for _, md := range models {
		md.Close()
	}
	modelsMu.Unlock()
	if eng != nil {
		eng.Close()
	}
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
	os.Exit(code)
}

func testTmp(t testing.TB) string {
	tmpOnce.Do(func() {
		d, err := os.MkdirTemp("", "driftstore-engine-test-")
		if err != nil {
			panic(err)
		}
		tmpDir = d
	})
	return tmpDir
}

func testCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "driftstore-test", "modules")
	}
	return filepath.Join(os.TempDir(), "driftstore-test-modules")
}

func testEngine(t testing.TB) *Engine {
	engOnce.Do(func() { eng, engErr = New(Options{CacheDir: testCacheDir()}) })
	if engErr != nil {
		t.Fatal(engErr)
	}
	return eng
}

// smallHyper is a 2-layer model with grouped-query attention (4 heads, 2 KV heads) and a
// vocabulary just above the synthetic byte-level minimum: fast enough for every test, and its
// shapes are multiples of 32 so Q8_0 works.
var smallHyper = gguf.Hyper{Arch: "llama", Context: 512, Dim: 64, Layers: 2, FFN: 160, Heads: 4, KVHeads: 2,
	HeadDim: 16, RopeDim: 16, RopeTheta: 10000, RMSEps: 1e-5, Vocab: 320, Tied: false}

// vocab1bHyper has the Llama-3.2-1B vocabulary (128256, tied embeddings) on one tiny layer:
// for benchmarks and tests of what scales with the vocabulary (sampling, the small state).
var vocab1bHyper = gguf.Hyper{Arch: "llama", Context: 2048, Dim: 64, Layers: 1, FFN: 128, Heads: 4, KVHeads: 2,
	HeadDim: 16, RopeDim: 16, RopeTheta: 500000, RMSEps: 1e-5, Vocab: 128256, Tied: true}

// testModel returns a shared model: "small-<type>" (smallHyper), "vocab1b-<type>" (vocab1bHyper) or "tiny-<type>" (the preset).
func testModel(t testing.TB, name string, typ gguf.Type) *Model {
	key := fmt.Sprintf("%s-%s", name, typ)
	modelsMu.Lock()
	defer modelsMu.Unlock()
	if m, ok := models[key]; ok {
		return m
	}
	var spec gguf.SynthSpec
	switch name {
	case "small":
		spec = gguf.SynthSpec{Name: "small", Hyper: smallHyper, Type: typ, Seed: 7, Std: 0.08}
	case "vocab1b":
		spec = gguf.SynthSpec{Name: "vocab1b", Hyper: vocab1bHyper, Type: typ, Seed: 11, Std: 0.08}
	case "tiny":
		var err error
		if spec, err = gguf.Synth("tiny", typ, 3); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("no test model %q", name)
	}
	path := filepath.Join(testTmp(t), key+".gguf")
	if err := spec.WriteFile(path, nil); err != nil {
		t.Fatal(err)
	}
	m, err := testEngine(t).LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	models[key] = m
	return m
}

func newInst(t testing.TB, m *Model, opts InstanceOptions) *Instance {
	t.Helper()
	in, err := m.NewInstance(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in
}

// prompt returns n deterministic token ids below vocab.
func prompt(n, vocab int, salt int) []int32 {
	out := make([]int32, n)
	x := uint32(2166136261 ^ uint32(salt))
	for i := range out {
		x = x*1664525 + 1013904223
		out[i] = int32(x>>8) % int32(vocab)
	}
	return out
}
