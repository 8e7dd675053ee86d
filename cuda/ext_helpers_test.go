package cuda_test

// Helpers of the external tests (package cuda_test): whole-system tests that drive the CUDA
// backend through the engine, checkpoint and restore packages, as the CLI does.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/cuda"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
)

// openGPU opens the CUDA backend (KV on the device, the default) or skips the test with the
// reason where there is no driver or device. The backend is closed after the test's other
// cleanups (engines, models and instances the test registered later).
func openGPU(t testing.TB) *cuda.Backend {
	t.Helper()
	if err := cuda.Available(); err != nil {
		t.Skipf("no CUDA driver or device, GPU test skipped: %v", err)
	}
	b, err := cuda.NewBackend(cuda.BackendOptions{})
	if errors.Is(err, cuda.ErrUnavailable) {
		t.Skipf("no usable CUDA device, GPU test skipped: %v", err)
	}
	if err != nil {
		t.Fatalf("open CUDA backend: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// newEngine makes an engine on backend b (nil: the CPU) with the shared module cache, closed
// at cleanup.
func newEngine(t testing.TB, b engine.Backend) *engine.Engine {
	t.Helper()
	e, err := engine.New(engine.Options{Backend: b, CacheDir: cptest.CacheDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// loadModel loads path on e, closed at cleanup.
func loadModel(t testing.TB, e *engine.Engine, path string) *engine.Model {
	t.Helper()
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// ModelsEnv names a directory where synthetic models are kept between test runs (and between
// the tests of one run: the 1B-shaped files take ~15 s each to write on a fast host).
// scripts/gpu-check.sh sets it. Unset: a temporary directory per test.
const ModelsEnv = "DRIFTSTORE_CUDA_MODELS"

// synthPath writes the synthetic preset model (seed 3, what the package's other tests use)
// and returns its path; under $DRIFTSTORE_CUDA_MODELS an existing file is reused (files are
// written atomically, and their bytes depend only on preset, type and seed).
func synthPath(t testing.TB, preset string, typ gguf.Type) string {
	t.Helper()
	dir := os.Getenv(ModelsEnv)
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%s-s3.gguf", preset, typ))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	spec, err := gguf.Synth(preset, typ, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.WriteFile(path, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// kvBytes returns a copy of the KV blocks in use, layer-major as KVRegions lists them.
func kvBytes(t testing.TB, in *engine.Instance) []byte {
	t.Helper()
	regs, err := in.KVRegions()
	if err != nil {
		t.Fatal(err)
	}
	mem := in.Memory()
	var out []byte
	for _, r := range regs {
		out = append(out, mem[r.Offset:r.Offset+r.Length]...)
	}
	return out
}

func logits(t testing.TB, in *engine.Instance) []float32 {
	t.Helper()
	l, err := in.Logits()
	if err != nil {
		t.Fatal(err)
	}
	if l == nil {
		t.Fatal("no logits")
	}
	return l
}

// relDiff returns max |a-b| / RMS(ref) and max |a-b|.
func relDiff(a, b, ref []float32) (rel, abs float64) {
	var ss float64
	for i := range a {
		abs = max(abs, math.Abs(float64(a[i])-float64(b[i])))
		ss += float64(ref[i]) * float64(ref[i])
	}
	rms := math.Sqrt(ss / float64(len(ref)))
	if math.IsNaN(abs) {
		return math.Inf(1), abs
	}
	return abs / rms, abs
}

// tokens returns n deterministic token ids below vocab.
func tokens(n, vocab, salt int) []int32 { return cptest.Tokens(n, vocab, salt) }
