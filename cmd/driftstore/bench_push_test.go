package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/replicate/benchpush"
)

func TestBenchPushJSON(t *testing.T) {
	tmp := t.TempDir()
	var out, errb bytes.Buffer
	code := runMain(context.Background(), []string{"bench", "push", "--size", "1MiB", "--reps", "1", "--dir", tmp, "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var res benchpush.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, out.String())
	}
	if !res.Sync || res.Size != 1<<20 || res.Chunks != 32 || res.StoredBytes <= 0 {
		t.Errorf("result %+v", res)
	}
	if res.PlainHTTP.MBps <= 0 || res.Push.MBps <= 0 || res.Pull.MBps <= 0 || res.Push.Baseline <= 0 || res.Pull.Baseline <= 0 {
		t.Errorf("rates plain %+v push %+v pull %+v", res.PlainHTTP, res.Push, res.Pull)
	}
	if res.Incremental.NewBytes <= 0 || res.Incremental.WireBytes <= res.Incremental.NewBytes || res.Missing.PerSec <= 0 || res.Missing.Digests != 10000 {
		t.Errorf("incremental %+v missing %+v", res.Incremental, res.Missing)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	code = runMain(context.Background(), []string{"bench", "push", "--size", "1KiB"}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "--size") {
		t.Errorf("--size 1KiB: exit %d, stderr %q", code, errb.String())
	}
}
