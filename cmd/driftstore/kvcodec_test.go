package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/checkpoint"
)

// TestRunKVCodec: `run --kv-codec` decides how the turn's checkpoint keeps its KV blocks (the
// float16 codec compresses the built-in model's KV; raw keeps every block as it is), and a bad
// value is a usage error that touches nothing.
func TestRunKVCodec(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if code, _, errs := storageRun(t, dir, "run", "--session", "x", "--prompt", "hello", "-n", "2", "--kv-codec", "bogus"); code != 2 || !strings.Contains(errs, "--kv-codec") {
		t.Fatalf("bad codec: exit %d, stderr %q", code, errs)
	}
	// raw: no float16 hint, so no block takes the plane codec (a block still mostly empty may
	// take zstd, which pays on its zeros); float: full blocks take the plane codec.
	for _, tc := range []struct {
		codec  string
		planes bool
	}{{"raw", false}, {"float", true}, {"auto", true}} { // auto: float on the CPU backend
		// A data directory each: chunks are named by content, so a second session with the same
		// prompt would reuse the first one's blocks as they are stored.
		dir := filepath.Join(t.TempDir(), tc.codec)
		name := "s-" + tc.codec
		if code, _, errs := storageRun(t, dir, "run", "--session", name, "--prompt", "the same prompt for both", "-n", "4", "--kv-codec", tc.codec); code != 0 {
			t.Fatalf("run --kv-codec %s: exit %d: %s", tc.codec, code, errs)
		}
		code, out, errs := storageRun(t, dir, "inspect", name, "--json")
		if code != 0 {
			t.Fatalf("inspect: exit %d: %s", code, errs)
		}
		var m struct {
			Regions []struct {
				Name   string `json:"name"`
				Chunks []struct {
					Codec string `json:"codec"`
				} `json:"chunks"`
			} `json:"regions"`
		}
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatal(err)
		}
		kv, planes := 0, 0
		for _, r := range m.Regions {
			if !strings.HasPrefix(r.Name, "kv/") {
				continue
			}
			for _, c := range r.Chunks {
				kv++
				if c.Codec == "f16planes" {
					planes++
				}
			}
		}
		if kv == 0 || (planes > 0) != tc.planes {
			t.Fatalf("--kv-codec %s: %d of %d KV chunks take the float16 plane codec", tc.codec, planes, kv)
		}
	}
}

// TestResolveKVCodec: auto takes raw KV on a GPU backend and float on the CPU; an explicit
// codec stays as it is.
func TestResolveKVCodec(t *testing.T) {
	for _, tc := range []struct {
		codec   checkpoint.KVCodec
		backend string
		want    checkpoint.KVCodec
	}{
		{kvCodecAuto, "cuda", checkpoint.KVCodecRaw},
		{kvCodecAuto, "metal", checkpoint.KVCodecRaw},
		{kvCodecAuto, "cpu", checkpoint.KVCodecFloat},
		{checkpoint.KVCodecFloat, "cuda", checkpoint.KVCodecFloat},
		{checkpoint.KVCodecRaw, "cpu", checkpoint.KVCodecRaw},
	} {
		if got := resolveKVCodec(tc.codec, tc.backend); got != tc.want {
			t.Errorf("resolveKVCodec(%q, %q) = %q, want %q", tc.codec, tc.backend, got, tc.want)
		}
	}
}

// TestRunServerDeferredCheckpoint: `run --server` against a daemon with --defer-checkpoints
// says the turn's checkpoint is pending (no ID yet), and the next turn continues from it: after
// the daemon stops, the session's head holds every token of both turns.
func TestRunServerDeferredCheckpoint(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	url, stop := startServeStop(t, dir, "--defer-checkpoints")
	remote := func(args ...string) (string, string) {
		t.Helper()
		code, out, errs := storageRun(t, dir, append([]string{"--server", url}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		return out, errs
	}
	out, errs := remote("run", "--session", "d", "--tokens", "1,2,3", "-n", "4", "--json")
	var res struct {
		Checkpoint string `json:"checkpoint"`
		Pending    bool   `json:"checkpoint_pending"`
		Position   int    `json:"position"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Pending || res.Checkpoint != "" || res.Position != 7 {
		t.Fatalf("first turn: %v %+v\n%s", err, res, out)
	}
	if _, errs = remote("run", "--session", "d", "-n", "2"); !strings.Contains(errs, "checkpoint pending: position 9") {
		t.Fatalf("second turn's human output:\n%s", errs)
	}
	stop() // waits for the pending commit
	code, out, errs := storageRun(t, dir, "inspect", "d", "--json")
	if code != 0 || !strings.Contains(out, `"position"`) {
		t.Fatalf("inspect after stop: exit %d: %s %s", code, out, errs)
	}
	var m struct {
		Meta map[string]any `json:"meta"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m.Meta["position"]) != "9" {
		t.Fatalf("head after the daemon stopped: position %v, want 9 (meta %v)", m.Meta["position"], m.Meta)
	}
}
