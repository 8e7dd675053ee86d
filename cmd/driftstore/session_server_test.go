package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/checkpoint/cptest"
)

// TestCLISessionsThroughServer: run, checkpoint, restore and fork with --server against live
// sessions in daemons; the session pushed to B, replicated B → C and pulled into a local data
// directory by restore --from continues everywhere token for token as on A.
func TestCLISessionsThroughServer(t *testing.T) {
	work := t.TempDir()
	model, err := cptest.SmallModel(work, 1)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte("secret"), 0o600)
	dirs := map[string]string{}
	urls := map[string]string{}
	for _, n := range []string{"a", "b", "c"} {
		dirs[n] = filepath.Join(work, n)
		seedModuleCache(t, dirs[n])
		urls[n] = startServe(t, dirs[n], "--model", model, "--token-file", tokFile, "--threads", "1")
	}
	local := filepath.Join(work, "local")
	seedModuleCache(t, local)
	at := func(daemon string, args ...string) (int, string, string) {
		return storageRun(t, filepath.Join(work, "unused"), append([]string{"--server", urls[daemon], "--token-file", tokFile}, args...)...)
	}
	turn := func(code int, out, errOut string) runResult {
		t.Helper()
		var r runResult
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("run: exit %d: %s%s", code, out, errOut)
		}
		return r
	}

	r1 := turn(at("a", "run", "--session", "s", "--tokens", "1,2,3,4,5,6,7", "-n", "5", "--seed", "3", "--json"))
	if !r1.New || len(r1.Tokens) != 5 || r1.Position != 12 || r1.Checkpoint == "" {
		t.Fatalf("first turn: %+v", r1)
	}
	// Human output streams the tokens and reports the checkpoint.
	code, out, errOut := at("a", "run", "--session", "s", "--tokens", "9,10", "-n", "4")
	if code != 0 || !strings.HasPrefix(out, "tokens: ") || !strings.Contains(errOut, "checkpoint blake3:") {
		t.Fatalf("second turn: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut = at("a", "checkpoint", "--session", "s", "--json")
	var cp checkpointOut
	if code != 0 || json.Unmarshal([]byte(out), &cp) != nil || cp.Position != 18 || cp.BlocksWritten != 0 {
		t.Fatalf("checkpoint: exit %d: %s%s", code, out, errOut)
	}
	// A → B (push from A's daemon), B → C (replicate), A → local (restore --from).
	if code, out, errOut := at("a", "push", "--session", "s", "--to", urls["b"]); code != 0 {
		t.Fatalf("push: exit %d: %s%s", code, out, errOut)
	}
	if code, out, errOut := at("b", "replicate", "--session", "s", "--to", urls["c"]); code != 0 {
		t.Fatalf("replicate: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut = at("b", "restore", "--session", "s", "--json")
	var rb restoreOut
	if code != 0 || json.Unmarshal([]byte(out), &rb) != nil || rb.Position != 18 || rb.Checkpoint != cp.Checkpoint || rb.HeadMoved {
		t.Fatalf("restore on B: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut = storageRun(t, local, "restore", "--session", "s", "--from", urls["a"], "--token-file", tokFile)
	if code != 0 || !strings.Contains(out, "session/s: pulled") || !strings.Contains(out, "restored    18 tokens") {
		t.Fatalf("restore --from: exit %d: %s%s", code, out, errOut)
	}

	next := []string{"run", "--session", "s", "--tokens", "11", "-n", "6", "--json"}
	onA := turn(at("a", next...))
	onB := turn(at("b", next...))
	onC := turn(at("c", next...))
	onLocal := turn(storageRun(t, local, next...))
	for name, r := range map[string]runResult{"B": onB, "C": onC, "local": onLocal} {
		if !slices.Equal(r.Tokens, onA.Tokens) || r.Checkpoint != onA.Checkpoint {
			t.Errorf("continued on %s: %v %s; on A: %v %s", name, r.Tokens, r.Checkpoint, onA.Tokens, onA.Checkpoint)
		}
	}
	if onB.RestoreMS != 0 || onC.RestoreMS <= 0 {
		t.Errorf("B was live after its restore (restore %.2f ms), C restored on its turn (%.2f ms)", onB.RestoreMS, onC.RestoreMS)
	}

	// Fork through the daemon, then continue the fork there.
	code, out, errOut = at("c", "fork", "--session", "f", "--from", "s", "--json")
	var fk struct {
		Checkpoint string `json:"checkpoint"`
		Position   int    `json:"position"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &fk) != nil || fk.Checkpoint != onC.Checkpoint || fk.Position != 25 {
		t.Fatalf("fork: exit %d: %s%s", code, out, errOut)
	}
	// Back to an older checkpoint on C: the head moves and the turn after it repeats.
	code, out, errOut = at("c", "restore", "--session", "s", "--checkpoint", cp.Checkpoint)
	if code != 0 || !strings.Contains(out, "the session's head now") {
		t.Fatalf("restore --checkpoint: exit %d: %s%s", code, out, errOut)
	}
	if again := turn(at("c", next...)); !slices.Equal(again.Tokens, onA.Tokens) {
		t.Fatalf("after restoring the older checkpoint: %v, want %v", again.Tokens, onA.Tokens)
	}

	// Refusals: a token outside the vocabulary, a client-named model file, no token.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--session", "s", "--tokens", "99999", "-n", "1"}, "bad_token"},
		{[]string{"run", "--session", "s", "-n", "5000"}, "token_limit"},
		{[]string{"run", "--session", "n", "--tokens", "1", "--model", "/etc/passwd", "-n", "1"}, "bad_model"},
		{[]string{"checkpoint", "--session", "none"}, "session_not_found"},
	} {
		if code, _, errOut := at("a", tc.args...); code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d: %s", tc.args, code, errOut)
		}
	}
	if code, _, errOut := storageRun(t, work, "--server", urls["a"], "run", "--session", "s", "-n", "1"); code != 1 || !strings.Contains(errOut, "unauthorized") {
		t.Errorf("run without the token: exit %d: %s", code, errOut)
	}
	if code, _, _ := at("a", "restore", "--session", "s", "--compare"); code != 2 {
		t.Errorf("restore --compare --server: exit %d, want 2", code)
	}
	if code, _, errOut := at("a", "generate", "--tokens", "1", "-n", "1"); code != 2 || !strings.Contains(errOut, "run --session NAME --server URL") {
		t.Errorf("generate --server: exit %d, want 2: %s", code, errOut)
	}
}
