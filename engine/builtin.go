package engine

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/driftstore/driftstore/gguf"
)

// The built-in model: gguf.Synth's "tiny" preset (6 layers, dim 288, vocab 32000, ≈15M
// parameters) with Q8_0 weights and seed BuiltinSeed. Q8_0 because it is half the size of F16
// (16 MB instead of 30 MB, written in well under a second) and faster to decode; norms stay
// F32 as in every GGUF file.
const (
	BuiltinPreset = "tiny"
	BuiltinType   = gguf.TypeQ8_0
	BuiltinSeed   = 1
)

// BuiltinModelPath returns the path of the built-in tiny model under dataDir
// (DATA/models/driftstore-tiny-q8_0-s1.gguf), writing it first if it is not there yet. The
// file is written through a temporary file and a rename, so concurrent first uses are safe:
// each may generate it, and every rename installs identical bytes.
func BuiltinModelPath(dataDir string) (string, error) {
	dir := filepath.Join(dataDir, "models")
	path := filepath.Join(dir, fmt.Sprintf("driftstore-%s-%s-s%d.gguf", BuiltinPreset, "q8_0", BuiltinSeed))
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("engine: built-in model: %w", err)
	}
	spec, err := gguf.Synth(BuiltinPreset, BuiltinType, BuiltinSeed)
	if err != nil {
		return "", fmt.Errorf("engine: built-in model: %w", err)
	}
	if err := spec.WriteFile(path, nil); err != nil {
		return "", fmt.Errorf("engine: built-in model: write %s: %w", path, err)
	}
	return path, nil
}

// ModuleCacheDir is where an engine for dataDir keeps compiled guest modules.
func ModuleCacheDir(dataDir string) string { return filepath.Join(dataDir, "cache", "modules") }
