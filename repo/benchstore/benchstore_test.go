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
// the numbers are sane (positive, ratios ≥ 1 where they must be).
func TestRunSmall(t *testing.T) {
	res, err := Run(context.Background(), Config{Size: 2 << 20, Workers: []int{1, 2}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Stages) != 2*2*8 || len(res.Pipelines) != 2*2*2 {
		t.Fatalf("%d stages, %d pipelines", len(res.Stages), len(res.Pipelines))
	}
	for _, p := range res.Pipelines {
		if p.MBps <= 0 || p.Bytes != 2<<20 || p.Ratio < 0.99 {
			t.Errorf("pipeline %+v", p)
		}
	}
	var sb strings.Builder
	res.WriteTable(&sb)
	for _, want := range []string{"blake3", "zstd-enc", "ingest", "read-back", "f16-kv", "random"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, sb.String())
		}
	}
}
