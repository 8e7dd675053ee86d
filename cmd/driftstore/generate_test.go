package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/backends"
	"github.com/driftstore/driftstore/cuda"
)

// TestCLIGenerate: generate on the built-in model prints n tokens, is deterministic for a seed,
// and --backend is checked: unknown names are usage errors, an unavailable GPU is a failure that
// says why (never a silent fallback to the CPU).
func TestCLIGenerate(t *testing.T) {
	cache := filepath.Join(os.TempDir(), "driftstore-test-cli-cache")
	seedModuleCache(t, cache)
	gen := func(args ...string) (int, string, string) {
		return modelRun(t, append([]string{"--data", cache, "generate"}, args...)...)
	}
	type result struct {
		Tokens  []int32 `json:"tokens"`
		Backend string  `json:"backend"`
	}
	var runs [2]result
	for i := range runs {
		code, out, errOut := gen("--json", "--prompt", "Hello", "-n", "5", "--temp", "0.9", "--seed", "3", "--backend", "cpu")
		if code != 0 {
			t.Fatalf("generate: exit %d: %s", code, errOut)
		}
		if err := json.Unmarshal([]byte(out), &runs[i]); err != nil {
			t.Fatalf("generate --json: %v\n%s", err, out)
		}
		if len(runs[i].Tokens) != 5 || runs[i].Backend != "cpu" {
			t.Fatalf("generate --json: %+v, want 5 tokens on cpu", runs[i])
		}
	}
	if !equalInts(runs[0].Tokens, runs[1].Tokens) {
		t.Fatalf("same seed, different tokens: %v vs %v", runs[0].Tokens, runs[1].Tokens)
	}

	if code, _, errOut := gen("--tokens", "1,2", "-n", "1", "--backend", "tpu"); code != 2 || !strings.Contains(errOut, "unknown backend") {
		t.Fatalf("--backend tpu: exit %d, stderr %q; want 2 naming the unknown backend", code, errOut)
	}
	if _, err := backends.Open(backends.CUDA, backends.Options{}); errors.Is(err, cuda.ErrUnavailable) {
		code, _, errOut := gen("--tokens", "1,2", "-n", "1", "--backend", "cuda")
		if code != 1 || !strings.Contains(errOut, "CUDA") {
			t.Fatalf("--backend cuda without a GPU: exit %d, stderr %q; want 1 saying why", code, errOut)
		}
	} else {
		t.Log("a CUDA device works here: the refusal case is not exercised")
	}
	if code, out, errOut := gen("--tokens", "1,999999", "-n", "1"); code != 2 || out != "" || !strings.Contains(errOut, "999999") {
		t.Fatalf("token out of vocabulary: exit %d, stdout %q, stderr %q; want 2 (usage) naming it", code, out, errOut)
	}
}

func equalInts(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
