package benchstore

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

func TestFloat16(t *testing.T) {
	cases := map[float32]uint16{
		0: 0, 1: 0x3c00, -2: 0xc000, 65504: 0x7bff, 65520: 0x7c00, 1e-8: 0,
		float32(math.Inf(-1)): 0xfc00, 5.960464477539063e-08: 0x0001, 6.103515625e-05: 0x0400,
		0.333333333: 0x3555, 1.0009765625: 0x3c01, 1.00048828125: 0x3c00, // ties to even
	}
	for f, want := range cases {
		if got := Float16(f); got != want {
			t.Errorf("Float16(%g) = %#04x, want %#04x", f, got, want)
		}
	}
	if got := Float16(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("NaN -> %#04x", got)
	}
}

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
