package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var servingRE = regexp.MustCompile(`serving .* on (http://127\.0\.0\.1:\d+)`)

// startServe runs `driftstore serve` in-process on a random port and returns its URL. The
// daemon is shut down (as by SIGTERM) at the end of the test, and must exit 0.
func startServe(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	url, _ := startServeStop(t, dir, extra...)
	return url
}

// startServeStop is startServe that also returns a function that stops the daemon (as by
// SIGTERM) and waits for it to exit 0.
func startServeStop(t *testing.T, dir string, extra ...string) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int, 1)
	args := append([]string{"--data", dir, "serve", "--addr", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	go func() { done <- runMain(ctx, args, &out, &errb) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if code := <-done; code != 0 {
				t.Errorf("serve exited %d: %s", code, errb.String())
			}
		})
	}
	t.Cleanup(stop)
	for i := 0; i < 1000; i++ {
		if m := servingRE.FindStringSubmatch(out.String()); m != nil {
			return m[1], stop
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d: %s", code, errb.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("serve did not start: %s", errb.String())
	return "", nil
}

func TestCLIServePushPullReplicate(t *testing.T) {
	work := t.TempDir()
	src := filepath.Join(work, "src")
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte("tok-123\n"), 0o600)
	f, data := storageRandFile(t, work, "a.bin", 11, 400_000)
	if code, _, errOut := storageRun(t, src, "put", f, "--tag", "t1"); code != 0 {
		t.Fatalf("put: %s", errOut)
	}
	urlB := startServe(t, filepath.Join(work, "b"), "--token-file", tokFile)
	urlC := startServe(t, filepath.Join(work, "c"), "--token-file", tokFile)

	// Without the token the daemon refuses, and push exits 1.
	if code, _, errOut := storageRun(t, src, "push", "--tag", "t1", "--to", urlB); code != 1 || !strings.Contains(errOut, "unauthorized") {
		t.Fatalf("push without token: exit %d: %s", code, errOut)
	}
	code, out, errOut := storageRun(t, src, "push", "--tag", "t1", "--to", urlB, "--token-file", tokFile, "--json")
	if code != 0 {
		t.Fatalf("push: exit %d: %s", code, errOut)
	}
	var res struct {
		Results []transferJSON `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Results) != 1 || res.Results[0].ChunksSent == 0 {
		t.Fatalf("push --json: %v %s", err, out)
	}
	// B → C through --server (daemon to daemon), then pull from C into a fresh directory.
	code, out, errOut = storageRun(t, src, "--server", urlB, "--token-file", tokFile, "replicate", "--all", "--to", urlC)
	if code != 0 || !strings.Contains(out, "tag/t1: replicated") {
		t.Fatalf("replicate: exit %d: %s%s", code, out, errOut)
	}
	dst := filepath.Join(work, "dst")
	code, _, errOut = storageRun(t, dst, "pull", "--tag", "t1", "--from", urlC, "--token-file", tokFile)
	if code != 0 {
		t.Fatalf("pull: exit %d: %s", code, errOut)
	}
	outFile := filepath.Join(work, "out.bin")
	if code, _, errOut := storageRun(t, dst, "get", "t1", "-o", outFile); code != 0 {
		t.Fatalf("get: %s", errOut)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, data) {
		t.Fatal("content after push, replicate and pull differs")
	}
	storageFsckClean(t, dst)
	// Up to date now.
	code, out, _ = storageRun(t, dst, "push", "--tag", "t1", "--to", urlC, "--token-file", tokFile)
	if code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("second push: exit %d: %s", code, out)
	}
	// Usage errors.
	for _, args := range [][]string{
		{"push", "--tag", "t1"},
		{"push", "--to", urlB},
		{"push", "--tag", "../x", "--to", urlB},
		{"pull", "--session", "s", "--from", "ftp://x"},
		{"replicate", "--to", urlB},
		{"replicate", "--to", urlB, "--all", "--tag", "t1"},
		{"serve", "--backend", "tpu"},
	} {
		if code, _, errOut := storageRun(t, dst, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
	}
}

// TestCLIStorageThroughServer runs the storage commands with --server against a daemon and
// checks they behave as on the data directory itself.
func TestCLIStorageThroughServer(t *testing.T) {
	work := t.TempDir()
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte("tok"), 0o600)
	dataB := filepath.Join(work, "b")
	url := startServe(t, dataB, "--token-file", tokFile)
	remote := func(args ...string) (int, string, string) {
		return storageRun(t, filepath.Join(work, "unused"), append([]string{"--server", url, "--token-file", tokFile}, args...)...)
	}
	// The directory is held by the daemon: a direct command says so and suggests --server.
	if code, _, errOut := storageRun(t, dataB, "ls"); code != 1 || !strings.Contains(errOut, "--server") {
		t.Fatalf("ls on a held directory: exit %d: %s", code, errOut)
	}
	f, data := storageRandFile(t, work, "a.bin", 21, 300_000)
	code, out, errOut := remote("put", f, "--tag", "t", "--json")
	if code != 0 {
		t.Fatalf("put: exit %d: %s", code, errOut)
	}
	var put struct {
		ID        string `json:"id"`
		UniqueNew int    `json:"new_chunks"`
	}
	if err := json.Unmarshal([]byte(out), &put); err != nil || put.UniqueNew == 0 {
		t.Fatalf("put --json: %v %s", err, out)
	}
	// The same file again sends no chunks, and gives the same ID as a local put would.
	code, out, _ = remote("put", f, "--json")
	var again struct {
		ID        string `json:"id"`
		UniqueNew int    `json:"new_chunks"`
	}
	json.Unmarshal([]byte(out), &again)
	if code != 0 || again.UniqueNew != 0 || again.ID != put.ID {
		t.Fatalf("second put: exit %d, %+v", code, again)
	}
	local := filepath.Join(work, "local")
	_, out, _ = storageRun(t, local, "put", f, "--json")
	var loc struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(out), &loc)
	if loc.ID != put.ID {
		t.Fatalf("remote put ID %s, local put ID %s", put.ID, loc.ID)
	}
	if code, out, errOut = remote("ls"); code != 0 || !strings.Contains(out, "t") {
		t.Fatalf("ls: exit %d: %s%s", code, out, errOut)
	}
	if code, out, errOut = remote("inspect", "t", "--json"); code != 0 || !strings.Contains(out, put.ID) {
		t.Fatalf("inspect: exit %d: %s%s", code, out, errOut)
	}
	outFile := filepath.Join(work, "out.bin")
	if code, _, errOut = remote("get", put.ID[:20], "-o", outFile); code != 0 {
		t.Fatalf("get: exit %d: %s", code, errOut)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, data) {
		t.Fatal("get through the daemon differs")
	}
	if code, _, errOut = remote("get", "no-such-tag", "-o", outFile); code != 1 || !strings.Contains(errOut, "unknown_name") {
		t.Fatalf("get of an unknown name: exit %d: %s", code, errOut)
	}
	if code, out, errOut = remote("gc", "--json"); code != 0 || !strings.Contains(out, "manifests_kept") {
		t.Fatalf("gc: exit %d: %s%s", code, out, errOut)
	}
	if code, out, errOut = remote("fsck", "--json"); code != 0 {
		t.Fatalf("fsck: exit %d: %s%s", code, out, errOut)
	}
	// A wrong token changes nothing.
	bad := filepath.Join(work, "bad")
	os.WriteFile(bad, []byte("nope"), 0o600)
	if code, _, _ := storageRun(t, work, "--server", url, "--token-file", bad, "put", f, "--tag", "u"); code != 1 {
		t.Fatalf("put with a wrong token: exit %d", code)
	}
}

// TestCLISessionResumesAcrossDaemons: a session run on A and pushed to daemon B continues on B
// exactly as it continues on A (resume equivalence across machines).
func TestCLISessionResumesAcrossDaemons(t *testing.T) {
	work := t.TempDir()
	dirA, dirB := filepath.Join(work, "a"), filepath.Join(work, "b")
	run := func(dir string, args ...string) []int {
		t.Helper()
		code, out, errOut := storageRun(t, dir, append(args, "--json")...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		var res struct {
			Tokens []int `json:"tokens"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Tokens) == 0 {
			t.Fatalf("%v: %v %s", args, err, out)
		}
		return res.Tokens
	}
	run(dirA, "run", "--session", "s", "--tokens", "1,2,3", "-n", "4")
	urlB, stopB := startServeStop(t, dirB)
	if code, _, errOut := storageRun(t, dirA, "push", "--session", "s", "--to", urlB); code != 0 {
		t.Fatalf("push: exit %d: %s", code, errOut)
	}
	stopB()
	onB := run(dirB, "run", "--session", "s", "-n", "6")
	onA := run(dirA, "run", "--session", "s", "-n", "6")
	if fmt.Sprint(onA) != fmt.Sprint(onB) {
		t.Fatalf("continued on A: %v; on B after a push: %v", onA, onB)
	}
	storageFsckClean(t, dirB)
}
