package gguf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// fuzzSeeds are the in-code seeds; testdata/fuzz/FuzzParse holds the committed corpus
// (regenerate it with DRIFTSTORE_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus). Fuzz with
// a bounded minimization, or the engine spends minutes shrinking the larger seeds:
//
//	go test ./gguf -run XXX -fuzz FuzzParse -fuzzminimizetime 2s -parallel 1
func fuzzSeeds(t testing.TB) map[string][]byte {
	generic := writeBytes(t, allValuesKV(), someTensors())
	v2 := append([]byte(nil), generic...)
	v2[4] = 2
	tinyModel := smallSpec(TypeQ8_0, 9)
	tinyModel.Hyper.Dim, tinyModel.Hyper.FFN, tinyModel.Hyper.Heads, tinyModel.Hyper.KVHeads = 32, 32, 2, 1
	tinyModel.Hyper.HeadDim, tinyModel.Hyper.RopeDim, tinyModel.Hyper.Layers, tinyModel.Hyper.Vocab = 16, 16, 1, 260
	var r raw
	r.header(1, 0).str("blk.0.attn_q.weight").u32(2).u64(256).u64(1).u32(uint32(TypeQ4_K)).u64(0).pad()
	return map[string][]byte{
		"generic":     generic,
		"v2":          v2,
		"model":       synthBytes(t, tinyModel),
		"header":      generic[:24],
		"unsupported": r.Bytes(),
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error wraps neither ErrFormat nor ErrUnsupported: %v", err)
			}
			return
		}
		var ts []Tensor
		for _, ti := range file.Tensors {
			d := file.TensorData(ti)
			if uint64(len(d)) != ti.Size || ti.Offset%file.Alignment != 0 {
				t.Fatalf("tensor %s: %d bytes at %d, want %d", ti.Name, len(d), ti.Offset, ti.Size)
			}
			ts = append(ts, Tensor{Name: ti.Name, Type: ti.Type, Dims: ti.Dims, Data: d})
		}
		if m, err := NewModel(file); err == nil {
			m.Fingerprint()
			if tok, err := m.Tokenizer(); err == nil {
				if _, err := tok.Decode(tok.Encode("a b\xff", true)); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Whatever parses re-encodes to a file that parses to the same encoding.
		var w1 bytes.Buffer
		if err := Write(&w1, file.KV, ts); err != nil {
			return // e.g. a 64-byte tensor name: readable, but the writer stays within ggml's limit
		}
		file2, err := Parse(w1.Bytes())
		if err != nil {
			t.Fatalf("re-encoded file does not parse: %v", err)
		}
		var ts2 []Tensor
		for _, ti := range file2.Tensors {
			ts2 = append(ts2, Tensor{Name: ti.Name, Type: ti.Type, Dims: ti.Dims, Data: file2.TensorData(ti)})
		}
		var w2 bytes.Buffer
		if err := Write(&w2, file2.KV, ts2); err != nil || !bytes.Equal(w1.Bytes(), w2.Bytes()) {
			t.Fatalf("re-encoding is not stable (%v)", err)
		}
	})
}

func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("DRIFTSTORE_WRITE_FUZZ_CORPUS") == "" {
		t.Skip("set DRIFTSTORE_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz/FuzzParse")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range fuzzSeeds(t) {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
		if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
