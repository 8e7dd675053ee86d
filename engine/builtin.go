package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
// (DATA/models/driftstore-tiny-q8_0-s1.gguf), writing it first if it is not there yet.
func BuiltinModelPath(dataDir string) (string, error) {
	return SynthModelPath(dataDir, BuiltinPreset, BuiltinType, BuiltinSeed, nil)
}

// SynthModelPath returns the path of a synthetic preset model under DATA/models
// (driftstore-PRESET-TYPE-sSEED.gguf), generating it with gguf.Synth first if it is missing.
// The file is written through a temporary file and a rename, so concurrent first uses are
// safe: each may generate it, and every rename installs identical bytes. progress, if not nil,
// is called while a file is being written.
func SynthModelPath(dataDir, preset string, typ gguf.Type, seed uint64, progress func(done, total uint64) error) (string, error) {
	dir := filepath.Join(dataDir, "models")
	name := fmt.Sprintf("driftstore-%s-%s-s%d.gguf", preset, strings.ToLower(typ.String()), seed)
	path := filepath.Join(dir, name)
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("engine: synthetic model: %w", err)
	}
	spec, err := gguf.Synth(preset, typ, seed)
	if err != nil {
		return "", fmt.Errorf("engine: synthetic model: %w", err)
	}
	if err := spec.WriteFile(path, progress); err != nil {
		return "", fmt.Errorf("engine: synthetic model: write %s: %w", path, err)
	}
	return path, nil
}

// ModuleCacheDir is where an engine for dataDir keeps compiled guest modules.
func ModuleCacheDir(dataDir string) string { return filepath.Join(dataDir, "cache", "modules") }
