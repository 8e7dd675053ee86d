package main

import (
	"bytes"
	"context"
	"encoding/json"
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
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	done := make(chan int, 1)
	args := append([]string{"--data", dir, "serve", "--addr", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	go func() { done <- runMain(ctx, args, &out, &errb) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d: %s", code, errb.String())
		}
	})
	for i := 0; i < 1000; i++ {
		if m := servingRE.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d: %s", code, errb.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("serve did not start: %s", errb.String())
	return ""
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
