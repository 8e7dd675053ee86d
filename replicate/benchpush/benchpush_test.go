package benchpush

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRunTiny(t *testing.T) {
	dir := t.TempDir()
	res, err := Run(context.Background(), Config{Size: 1 << 20, Reps: 1, Dir: dir, NoSync: true, AppendBytes: 64 << 10,
		MissingDigests: 2000, MissingTime: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Chunks != 32 || res.ChunkSize != ChunkSize || res.Size != 1<<20 {
		t.Errorf("session: %d chunks of %d, %d bytes", res.Chunks, res.ChunkSize, res.Size)
	}
	if res.StoredBytes <= 0 || res.StoredBytes >= res.Size {
		t.Errorf("stored bytes %d of %d: the float16 codec should shrink them", res.StoredBytes, res.Size)
	}
	for name, r := range map[string]Rate{"plain": res.PlainHTTP, "push": res.Push, "pull": res.Pull} {
		if r.Bytes != res.StoredBytes || r.MBps <= 0 || r.Seconds <= 0 {
			t.Errorf("%s: %+v", name, r)
		}
	}
	if res.Push.Baseline != res.Push.MBps/res.PlainHTTP.MBps || res.Pull.Baseline != res.Pull.MBps/res.PlainHTTP.MBps || res.Push.Baseline <= 0 {
		t.Errorf("ratios push %v pull %v", res.Push.Baseline, res.Pull.Baseline)
	}
	in := res.Incremental
	if in.NewChunks != 2 || in.NewBytes <= 0 || in.WireBytes <= in.NewBytes || in.ManifestBytes <= 0 ||
		in.Overhead != in.WireBytes-in.NewBytes || in.Requests < 2 || in.WireOverNew <= 1 || in.WireOverNewNet <= 0 {
		t.Errorf("incremental %+v", in)
	}
	// An incremental push asks the peer only about chunks its parent does not name: 32 bytes
	// per new chunk (binary digest list), not per chunk of the whole session.
	if in.MissingBytes != int64(32*in.NewChunks) {
		t.Errorf("incremental missing-set request: %d bytes for %d new chunks of %d; want %d", in.MissingBytes, in.NewChunks, res.Chunks, 32*in.NewChunks)
	}
	if in.UploadBytes < in.NewBytes || in.MissingBytes <= 0 || in.UploadBytes+in.MissingBytes+in.ManifestBytes > in.WireBytes || in.UploadOverNew < 1 {
		t.Errorf("incremental parts %+v", in)
	}
	m := res.Missing
	if m.Digests != 2000 || m.Known != 32+2 || m.Requests < 3 || m.PerSec <= 0 {
		t.Errorf("missing %+v", m)
	}
	var sb strings.Builder
	res.WriteTable(&sb)
	for _, want := range []string{"plain-http", "push", "pull", "incremental", "missing-set", "vs baseline"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, sb.String())
		}
	}
	if _, err := json.Marshal(res); err != nil {
		t.Fatal(err)
	}
	left, err := os.ReadDir(dir)
	if err != nil || len(left) != 0 {
		t.Errorf("left behind in %s: %v %v", dir, left, err)
	}
}
