// Package cptest holds test fixtures for the checkpoint, restore and session packages: a small
// synthetic model (fast enough for thousand-token contexts in unit tests) and an engine whose
// compiled guest is cached across test runs.
package cptest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
)

// SmallHyper is the small model: 2 layers, dim 64, 4 heads over 2 KV heads (grouped-query
// attention, head dim 16), FFN 128, vocabulary 512, context 4096. Its f16 KV block (16
// positions) is 2 KiB.
var SmallHyper = gguf.Hyper{Arch: "llama", Context: 4096, Dim: 64, Layers: 2, FFN: 128, Heads: 4, KVHeads: 2,
	HeadDim: 16, RopeDim: 16, RopeTheta: 10000, RMSEps: 1e-5, Vocab: 512, Tied: true}

// WriteModel writes a synthetic model with hyperparameters h and weight seed seed to path
// (F16 weights).
func WriteModel(path string, h gguf.Hyper, seed uint64) error {
	spec := gguf.SynthSpec{Name: fmt.Sprintf("cptest-%d", seed), Hyper: h, Type: gguf.TypeF16, Seed: seed}
	return spec.WriteFile(path, nil)
}

// SmallModel writes the small model with seed into dir and returns its path.
func SmallModel(dir string, seed uint64) (string, error) {
	path := filepath.Join(dir, fmt.Sprintf("small-s%d.gguf", seed))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	return path, WriteModel(path, SmallHyper, seed)
}

// CacheDir is a module cache shared by test runs (compiled guests are keyed by content, so
// sharing is safe): compiling the guest takes seconds, loading it milliseconds.
func CacheDir() string { return filepath.Join(os.TempDir(), "driftstore-test-module-cache") }

var (
	engOnce sync.Once
	eng     *engine.Engine
	engErr  error
)

// Engine returns a process-wide CPU engine using CacheDir. It is never closed.
func Engine() (*engine.Engine, error) {
	engOnce.Do(func() {
		eng, engErr = engine.New(engine.Options{CacheDir: CacheDir()})
	})
	return eng, engErr
}

// Tokens returns n deterministic token ids below vocab, starting at offset salt.
func Tokens(n, vocab int, salt int) []int32 {
	out := make([]int32, n)
	x := uint32(2166136261 + salt*7919)
	for i := range out {
		x ^= uint32(i + salt)
		x *= 16777619
		out[i] = int32(x % uint32(vocab))
	}
	return out
}
