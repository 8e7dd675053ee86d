package benchstore

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

func TestKVDataCompressesLikeKV(t *testing.T) {
	buf := make([]byte, 1<<20)
	KVFloat16(buf, 1)
	codec, stored := cas.Encode(nil, buf[:64<<10], cas.HintFloat16)
	ratio := float64(64<<10) / float64(len(stored))
	if codec != cas.CodecF16Planes || ratio < 1.05 || ratio > 1.5 {
		t.Fatalf("KV-like data: codec %v ratio %.3f; want the plane codec near 1.2", codec, ratio)
	}
	again := make([]byte, 1<<20)
	KVFloat16(again, 1)
	if !bytes.Equal(buf, again) {
		t.Fatal("KVFloat16 is not deterministic")
	}
}

// TestRunSmall runs every measurement on small inputs and checks the table's shape and that
// the numbers are sane (positive, ratios ≥ 1 where they must be, the float16 hint compressing
// KV-like data and the default choice storing it raw).
func TestRunSmall(t *testing.T) {
	dir := t.TempDir()
	res, err := Run(context.Background(), Config{Size: 2 << 20, Workers: []int{1, 2}, Dirs: []string{dir}})
	if err != nil {
		t.Fatal(err)
	}
	// Per worker count: 5 stages of each of 2 datasets, 2 codec stages of each of 3 cases, 2
	// file stages of the one directory. Pipelines: 3 cases x 2 worker counts x (ingest, read-back).
	if len(res.Stages) != 2*(2*5+3*2+2) || len(res.Pipelines) != 3*2*2 {
		t.Fatalf("%d stages, %d pipelines", len(res.Stages), len(res.Pipelines))
	}
	for _, s := range res.Stages {
		if s.MBps <= 0 {
			t.Errorf("stage %+v", s)
		}
	}
	for _, p := range res.Pipelines {
		if p.MBps <= 0 || p.Bytes != 2<<20 || p.Ratio < 0.99 || p.Where != dir || p.Cores <= 0 || p.MBPerCPUSecond < 0 || p.EstimateMBps <= 0 {
			t.Errorf("pipeline %+v", p)
		}
		if p.Data == "f16-kv" && p.Hint == "float16" && p.Ratio < 1.05 {
			t.Errorf("hinted KV data stored at ratio %.3f", p.Ratio)
		}
		if p.Data == "f16-kv" && p.Hint == "none" && p.Ratio > 1.01 {
			t.Errorf("KV data without a hint stored at ratio %.3f; plain zstd at its defaults should store it raw", p.Ratio)
		}
	}
	var sb strings.Builder
	res.WriteTable(&sb)
	for _, want := range []string{"blake3", "fastcdc", "zstd-enc", "codec-enc+verify", "file-append", "ingest", "read-back", "f16-kv", "random", "float16", "estimate"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, sb.String())
		}
	}
}
