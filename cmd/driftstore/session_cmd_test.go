package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas/castest"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

// seedModuleCache copies compiled guests from the shared test cache into dir's module cache,
// so that the engine does not compile the guest again for every data directory.
func seedModuleCache(t *testing.T, dir string) {
	t.Helper()
	dst := filepath.Join(dir, "cache", "modules")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(cptest.CacheDir())
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(cptest.CacheDir(), e.Name())); err == nil {
			os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
		}
	}
}

func TestCLISessions(t *testing.T) {
	cache := filepath.Join(os.TempDir(), "driftstore-test-cli-cache")
	seedModuleCache(t, cache)
	t.Setenv("DRIFTSTORE_DATA", cache) // the demo keeps its model and compiled guest there
	dir := filepath.Join(t.TempDir(), "data")
	seedModuleCache(t, dir)

	// The demo, with its store in dir.
	code, out, errOut := storageRun(t, dir, "demo", "-n", "6")
	if code != 0 || !strings.Contains(out, "identical: yes") {
		t.Fatalf("demo exit %d:\n%s\n%s", code, out, errOut)
	}

	// Two run turns equal one generate of the same length.
	code, out, errOut = storageRun(t, dir, "generate", "--tokens", "1,20,300,4000,50", "-n", "10", "--json")
	if code != 0 {
		t.Fatalf("generate: %s", errOut)
	}
	var gen generateResult
	json.Unmarshal([]byte(out), &gen)
	var r1, r2 runResult
	code, out, errOut = storageRun(t, dir, "run", "--session", "a", "--tokens", "1,20,300,4000,50", "-n", "4", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &r1) != nil || !r1.New || r1.Checkpoint == "" {
		t.Fatalf("run 1: exit %d %s %s", code, out, errOut)
	}
	code, out, errOut = storageRun(t, dir, "run", "--session", "a", "-n", "6", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &r2) != nil || r2.New || r2.RestoreMS <= 0 || r2.Parent != r1.Checkpoint {
		t.Fatalf("run 2: exit %d %s %s", code, out, errOut)
	}
	if got := append(slices.Clone(r1.Tokens), r2.Tokens...); !slices.Equal(got, gen.Tokens) {
		t.Fatalf("run turns %v, generate %v", got, gen.Tokens)
	}
	if r2.Position != 15 {
		t.Fatalf("position %d", r2.Position)
	}

	// restore --compare, checkpoint, fork.
	code, out, errOut = storageRun(t, dir, "restore", "--session", "a", "--compare", "--json", "--verify", "full")
	var ro restoreOut
	if code != 0 || json.Unmarshal([]byte(out), &ro) != nil || ro.Position != 15 || ro.PrefillMS <= 0 || ro.Checkpoint != r2.Checkpoint {
		t.Fatalf("restore: exit %d %s %s", code, out, errOut)
	}
	code, out, _ = storageRun(t, dir, "checkpoint", "--session", "a")
	if code != 0 || !strings.Contains(out, r2.Checkpoint) {
		t.Fatalf("checkpoint: %d %s", code, out)
	}
	if code, _, errOut = storageRun(t, dir, "fork", "--session", "b", "--from", r1.Checkpoint); code != 0 {
		t.Fatalf("fork: %s", errOut)
	}
	var rb runResult
	code, out, errOut = storageRun(t, dir, "run", "--session", "b", "-n", "6", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &rb) != nil || !slices.Equal(rb.Tokens, r2.Tokens) {
		t.Fatalf("run on the fork: %d %s %s (want %v)", code, out, errOut, r2.Tokens)
	}
	if code, _, errOut = storageRun(t, dir, "fork", "--session", "b", "--from", "a"); code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("fork onto an existing session: %d %s", code, errOut)
	}
	if code, _, _ = storageRun(t, dir, "run", "--session", "a", "--kv", "f32", "-n", "1"); code != 2 {
		t.Fatalf("--kv on an existing f16 session: exit %d", code)
	}

	// A corrupt chunk: restore refuses, names it, and the head stays.
	r, err := repo.Open(dir, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := r.Index().Ref(index.RefSession, "a")
	cp, err := checkpoint.Load(r.Index(), id)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	bad := cp.KV[3][0].Digest
	castest.Corrupt(t, repo.ChunkStoreDir(dir), bad)
	// Refused by either verification: the seal (the default) and BLAKE3 (--verify full).
	for _, verify := range []string{"sealed", "full"} {
		code, _, errOut = storageRun(t, dir, "restore", "--session", "a", "--verify", verify)
		if code != 1 || !strings.Contains(errOut, bad.String()) || !strings.Contains(errOut, "layer 3 block 0") {
			t.Fatalf("restore --verify %s of a corrupt chunk: exit %d: %s", verify, code, errOut)
		}
	}
	if code, _, errOut = storageRun(t, dir, "restore", "--session", "a", "--verify", "maybe"); code != 2 || !strings.Contains(errOut, "--verify") {
		t.Fatalf("restore --verify maybe: exit %d: %s", code, errOut)
	}
	if code, _, _ = storageRun(t, dir, "fsck"); code == 0 {
		t.Fatal("fsck passed a corrupt chunk")
	}
}
