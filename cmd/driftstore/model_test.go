package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func modelRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestModelSynthAndInfo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	code, out, errs := modelRun(t, "model", "synth", "--preset", "tiny", "--type", "q8_0", "--seed", "3", "-o", path, "--json")
	if code != 0 {
		t.Fatalf("synth exit %d: %s", code, errs)
	}
	var syn synthResult
	if err := json.Unmarshal([]byte(out), &syn); err != nil {
		t.Fatalf("synth --json output %q: %v", out, err)
	}
	st, err := os.Stat(path)
	if err != nil || uint64(st.Size()) != syn.Size || syn.Params != 15191712 || syn.Type != "Q8_0" || syn.Seed != 3 {
		t.Fatalf("synth result %+v, file %v", syn, err)
	}
	code, out, errs = modelRun(t, "model", "info", "--json", path)
	if code != 0 {
		t.Fatalf("info exit %d: %s", code, errs)
	}
	var info infoResult
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if info.Fingerprint != syn.Fingerprint || info.Hyper.Layers != 6 || info.Hyper.Dim != 288 ||
		info.TensorTypes["Q8_0"] != 43 || info.TensorTypes["F32"] != 13 || info.Version != 3 || !info.Hyper.Tied {
		t.Fatalf("info %+v", info)
	}
	code, out, _ = modelRun(t, "model", "info", path)
	if code != 0 || !strings.Contains(out, "architecture llama") || !strings.Contains(out, syn.Fingerprint) {
		t.Fatalf("human info (exit %d):\n%s", code, out)
	}
}

func TestModelUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"model"},
		{"model", "frob"},
		{"model", "synth", "--preset", "tiny"},
		{"model", "synth", "--preset", "tiny", "--type", "q4_k", "-o", filepath.Join(dir, "x")},
		{"model", "synth", "--preset", "huge", "-o", filepath.Join(dir, "x")},
		{"model", "info"},
	} {
		if code, _, _ := modelRun(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	bad := filepath.Join(dir, "bad.gguf")
	os.WriteFile(bad, []byte("GGUF\x01\x00\x00\x00"), 0o644)
	if code, _, errs := modelRun(t, "model", "info", bad); code != 1 || !strings.Contains(errs, "version 1") {
		t.Errorf("info of a v1 file: exit %d, %s", code, errs)
	}
	if code, out, _ := modelRun(t, "model", "--help"); code != 0 || !strings.Contains(out, "synth") {
		t.Errorf("model --help: exit %d", code)
	}
}
