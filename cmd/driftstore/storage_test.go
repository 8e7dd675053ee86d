package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
	"github.com/driftstore/driftstore/repo"
)

// storageRun runs one driftstore invocation in-process against data directory dir.
func storageRun(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runMain(context.Background(), append([]string{"--data", dir}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func storageRandFile(t *testing.T, dir, name string, seed uint64, n int) (string, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// storageFsckClean runs `fsck --json` and fails the test on any problem.
func storageFsckClean(t *testing.T, dir string) {
	t.Helper()
	code, out, errOut := storageRun(t, dir, "fsck", "--json")
	if code != 0 {
		t.Fatalf("fsck exit %d:\n%s%s", code, out, errOut)
	}
}

func TestCLIPutGetLsInspectGCFsck(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	work := t.TempDir()
	pa, a := storageRandFile(t, work, "a.bin", 1, 300_000)
	pb, b := storageRandFile(t, work, "b.bin", 2, 70_000)

	code, out, errOut := storageRun(t, dir, "put", pa, "--tag", "first", pb, "--chunk-avg", "16KiB", "--chunk-min", "4KiB", "--chunk-max", "64KiB")
	if code != 0 {
		t.Fatalf("put exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	id := lines[len(lines)-1]
	if _, err := cas.ParseDigest(id); err != nil {
		t.Fatalf("last line of put is not an ID: %q", out)
	}
	for _, want := range []string{"bytes in:", "new stored:", "dedup ratio:", "fastcdc/4096/16384/65536/1"} {
		if !strings.Contains(out, want) {
			t.Errorf("put output lacks %q:\n%s", want, out)
		}
	}

	// Put again with --json: nothing new, ratio null (infinite).
	code, out, _ = storageRun(t, dir, "put", "--json", pa, pb, "--chunk-avg", "16KiB", "--chunk-min", "4KiB", "--chunk-max", "64KiB")
	var pr struct {
		ID       string   `json:"id"`
		BytesIn  int64    `json:"bytes_in"`
		NewBytes int64    `json:"new_bytes"`
		Ratio    *float64 `json:"dedup_ratio"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &pr) != nil || pr.ID != id || pr.NewBytes != 0 || pr.Ratio != nil || pr.BytesIn != 370_000 {
		t.Fatalf("second put: exit %d %+v\n%s", code, pr, out)
	}

	// get by tag, by prefix; a region alone.
	outFile := filepath.Join(work, "out.bin")
	if code, _, e := storageRun(t, dir, "get", "first", "-o", outFile); code != 0 {
		t.Fatalf("get: %s", e)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, append(append([]byte{}, a...), b...)) {
		t.Fatal("get by tag: content differs")
	}
	if code, _, e := storageRun(t, dir, "get", strings.TrimPrefix(id, "blake3:")[:10], "-o", outFile, "--region", "b.bin"); code != 0 {
		t.Fatalf("get by prefix: %s", e)
	}
	if got, _ := os.ReadFile(outFile); !bytes.Equal(got, b) {
		t.Fatal("get region: content differs")
	}

	code, out, _ = storageRun(t, dir, "ls")
	if code != 0 || !strings.Contains(out, strings.TrimPrefix(id, "blake3:")[:16]) || !strings.Contains(out, "first") {
		t.Fatalf("ls:\n%s", out)
	}
	code, out, _ = storageRun(t, dir, "ls", "--json")
	var ls struct {
		Manifests []repo.Entry `json:"manifests"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ls) != nil || len(ls.Manifests) != 1 {
		t.Fatalf("ls --json:\n%s", out)
	}

	code, out, _ = storageRun(t, dir, "inspect", "--json", id)
	var in repo.Inspection
	if code != 0 || json.Unmarshal([]byte(out), &in) != nil {
		t.Fatalf("inspect --json:\n%s", out)
	}
	if len(in.Regions) != 2 || in.Regions[0].Name != "a.bin" || len(in.Regions[0].Chunks) < 3 {
		t.Fatalf("inspect regions: %+v", in.Regions)
	}
	var total int64
	for _, c := range in.Regions[0].Chunks {
		if c.Digest.IsZero() || c.StoredSize <= 0 || c.Codec == "" {
			t.Fatalf("chunk detail %+v", c)
		}
		total += c.Length
	}
	if total != 300_000 {
		t.Fatalf("chunk lengths sum to %d", total)
	}
	if code, out, _ = storageRun(t, dir, "inspect", "first", "--chunks"); code != 0 || !strings.Contains(out, `region     "b.bin"`) || !strings.Contains(out, "meta       chunker = fastcdc") {
		t.Fatalf("inspect:\n%s", out)
	}

	// An untagged put, then gc --grace 0 removes it and keeps the tagged one.
	pc, _ := storageRandFile(t, work, "c.bin", 3, 100_000)
	if code, _, e := storageRun(t, dir, "put", pc, "--chunker", "fixed", "--chunk-size", "32KiB", "--hint", "f16"); code != 0 {
		t.Fatalf("put fixed: %s", e)
	}
	code, out, _ = storageRun(t, dir, "gc", "--grace", "0", "--json")
	var gc repo.GCResult
	if code != 0 || json.Unmarshal([]byte(out), &gc) != nil || gc.ManifestsDeleted != 1 || gc.ManifestsKept != 1 || gc.ChunksDeleted != 4 {
		t.Fatalf("gc: %+v\n%s", gc, out)
	}
	storageFsckClean(t, dir)
	if code, out, _ := storageRun(t, dir, "fsck"); code != 0 || !strings.Contains(out, "no problems") {
		t.Fatalf("fsck:\n%s", out)
	}
}

func TestCLICorruptChunk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	work := t.TempDir()
	p, _ := storageRandFile(t, work, "x.bin", 9, 200_000)
	code, out, _ := storageRun(t, dir, "put", p, "--chunker", "fixed", "--chunk-size", "64KiB", "--tag", "x")
	if code != 0 {
		t.Fatal(out)
	}
	code, out, _ = storageRun(t, dir, "inspect", "x", "--json")
	var in repo.Inspection
	if code != 0 || json.Unmarshal([]byte(out), &in) != nil {
		t.Fatal(out)
	}
	victim := in.Regions[0].Chunks[1].Digest
	castest.Corrupt(t, repo.ChunkStoreDir(dir), victim)

	outFile := filepath.Join(work, "out.bin")
	code, _, errOut := storageRun(t, dir, "get", "x", "-o", outFile)
	if code != 1 || !strings.Contains(errOut, victim.String()) || !strings.Contains(errOut, "corrupt") {
		t.Fatalf("get over a corrupt chunk: exit %d, %s", code, errOut)
	}
	if _, err := os.Stat(outFile); err == nil {
		t.Fatal("failed get wrote the output file")
	}
	code, out, _ = storageRun(t, dir, "fsck")
	if code != 1 || !strings.Contains(out, "chunk-corrupt "+victim.String()) {
		t.Fatalf("fsck: exit %d\n%s", code, out)
	}
	code, out, _ = storageRun(t, dir, "fsck", "--json")
	if code != 1 || !strings.Contains(out, victim.String()) {
		t.Fatalf("fsck --json: exit %d\n%s", code, out)
	}
}

func TestCLIUsageAndBadInput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"put"}, 2, "at least one FILE"},
		{[]string{"put", "x", "--chunker", "rabin"}, 2, "want fastcdc or fixed"},
		{[]string{"put", "x", "--chunk-size", "4KiB"}, 2, "--chunk-size is for --chunker fixed"},
		{[]string{"put", "x", "--chunker", "fixed", "--chunk-avg", "4KiB"}, 2, "are for --chunker fastcdc"},
		{[]string{"put", "x", "--chunk-min", "12parsecs"}, 2, "bad size"},
		{[]string{"put", "x", "--chunk-min", "1MiB"}, 2, "invalid chunker parameters"},
		{[]string{"put", "x", "--tag", ".hidden"}, 2, "bad ref name"},
		{[]string{"put", "/nonexistent/file"}, 1, "no such file"},
		{[]string{"put", "x", "--hint", "f8"}, 2, "want none, f16 or f32"},
		{[]string{"get", "x"}, 2, "needs -o"},
		{[]string{"get", "nosuchtag", "-o", "/tmp/never"}, 1, "no manifest, tag or ID prefix"},
		{[]string{"get", "blake3:zz", "-o", "/tmp/never"}, 1, "no manifest"},
		{[]string{"inspect", "blake3:" + strings.Repeat("0", 64)}, 1, "manifest not found"},
		{[]string{"inspect"}, 2, "one ID or TAG"},
		{[]string{"gc", "--grace", "-1s"}, 2, "must not be negative"},
		{[]string{"bench"}, 2, "needs a benchmark name"},
		{[]string{"bench", "nope"}, 2, "unknown benchmark"},
		{[]string{"--server", "http://127.0.0.1:1", "ls"}, 1, "connection refused"},
	}
	for _, c := range cases {
		code, _, errOut := storageRun(t, dir, c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", c.args, code, c.code, errOut, c.msg)
		}
	}
	storageFsckClean(t, dir)
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"65536": 65536, "64KiB": 64 << 10, "64K": 64 << 10, "64kb": 64000, "1MiB": 1 << 20,
		"1.5MiB": 3 << 19, "2GiB": 2 << 30, "1MB": 1e6, "0": 0, "7B": 7}
	for s, want := range good {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "KiB", "1.3B", "-5", "12XB", "1e3", "99999999999TiB"} {
		if _, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) accepted", s)
		}
	}
}
