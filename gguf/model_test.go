package gguf

import (
	"bytes"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/driftstore/driftstore/gguf/dtype"
)

// smallSpec is a small untied GQA model: quick to generate, every code path of the reader.
func smallSpec(typ Type, seed uint64) SynthSpec {
	return SynthSpec{Name: "small", Type: typ, Seed: seed, Hyper: Hyper{Arch: "llama", Context: 64, Dim: 64,
		Layers: 2, FFN: 96, Heads: 4, KVHeads: 2, HeadDim: 16, RopeDim: 16, RopeTheta: 10000, RMSEps: 1e-5, Vocab: 300}}
}

func synthBytes(t testing.TB, s SynthSpec) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.Write(&buf, nil); err != nil {
		t.Fatal(err)
	}
	if size, err := s.Size(); err != nil || size != uint64(buf.Len()) {
		t.Fatalf("Size() = %d, %v; wrote %d", size, err, buf.Len())
	}
	return buf.Bytes()
}

func openBytes(t testing.TB, data []byte) *Model {
	t.Helper()
	f, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewModel(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSynthSmallAllTypes(t *testing.T) {
	for _, typ := range []Type{TypeF32, TypeF16, TypeBF16, TypeQ8_0} {
		s := smallSpec(typ, 7)
		m := openBytes(t, synthBytes(t, s))
		if m.Hyper != s.Hyper {
			t.Fatalf("%s: hyper %+v, want %+v", typ, m.Hyper, s.Hyper)
		}
		if m.Hyper.Tied {
			t.Fatal("untied model read as tied")
		}
		if out := m.Output(); out.Name != TensorOutput {
			t.Fatalf("Output() = %s", out.Name)
		}
		for _, ti := range s.Tensors() {
			got, err := m.Tensor(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			want, err := s.TensorData(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != ti.Type || !bytes.Equal(got.Data, want) {
				t.Fatalf("%s: tensor %s differs from TensorData", typ, ti.Name)
			}
		}
		if _, err := m.Tensor("nope"); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing tensor: %v", err)
		}
	}
}

func TestSynthDeterminismAndFingerprint(t *testing.T) {
	a := openBytes(t, synthBytes(t, smallSpec(TypeF16, 1)))
	b := openBytes(t, synthBytes(t, smallSpec(TypeF16, 1)))
	c := openBytes(t, synthBytes(t, smallSpec(TypeF16, 2)))
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("same seed, different fingerprints")
	}
	if a.Fingerprint() == c.Fingerprint() {
		t.Fatal("different seeds, same fingerprint")
	}
	if a.Fingerprint().IsZero() {
		t.Fatal("zero fingerprint")
	}
	q := openBytes(t, synthBytes(t, smallSpec(TypeQ8_0, 1)))
	if q.Fingerprint() == a.Fingerprint() {
		t.Fatal("F16 and Q8_0 models share a fingerprint")
	}
}

// TestFingerprintCanonical: the fingerprint ignores tensor order and metadata other than the
// hyperparameters, and sees every tensor byte.
func TestFingerprintCanonical(t *testing.T) {
	s := smallSpec(TypeF32, 3)
	m := openBytes(t, synthBytes(t, s))
	var ts []Tensor
	for _, ti := range m.File.Tensors {
		tt, _ := m.Tensor(ti.Name)
		ts = append(ts, tt)
	}
	rev := make([]Tensor, len(ts))
	for i := range ts {
		rev[len(ts)-1-i] = ts[i]
	}
	kv := append(s.Metadata(), KV{"general.description", String("reordered")}, KV{KeyAlignment, Uint32(128)})
	m2 := openBytes(t, writeBytes(t, kv, rev))
	if m.Fingerprint() != m2.Fingerprint() {
		t.Fatal("fingerprint depends on tensor order or non-hyperparameter metadata")
	}
	last := rev[0]
	data := append([]byte(nil), last.Data...)
	data[len(data)-1] ^= 1
	rev[0].Data = data
	m3 := openBytes(t, writeBytes(t, kv, rev))
	if m3.Fingerprint() == m.Fingerprint() {
		t.Fatal("fingerprint missed a flipped bit in the last tensor byte")
	}
	kv2 := append(s.Metadata()[:0:0], s.Metadata()...)
	for i := range kv2 {
		if kv2[i].Key == "llama.rope.freq_base" {
			kv2[i].Value = Float32(20000)
		}
	}
	m4 := openBytes(t, writeBytes(t, kv2, ts))
	if m4.Fingerprint() == m.Fingerprint() {
		t.Fatal("fingerprint ignores rope.freq_base")
	}
}

func TestTinyPreset(t *testing.T) {
	s, err := Synth("tiny", TypeQ8_0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// 32000*288 embeddings + 6 × (4*288*288 + 3*288*768 + 2*288) + 288.
	const want = 32000*288 + 6*(4*288*288+3*288*768+2*288) + 288
	if p := s.Hyper.Params(); p != want || p < 15e6 || p > 15.5e6 {
		t.Fatalf("tiny has %d parameters, want %d (≈15M)", p, want)
	}
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := s.WriteFile(path, nil); err != nil {
		t.Fatal(err)
	}
	m, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Hyper != s.Hyper || !m.Hyper.Tied || m.Params() != want {
		t.Fatalf("tiny read back as %+v", m.Hyper)
	}
	if _, err := m.Tensor(TensorOutput); !errors.Is(err, ErrNotFound) {
		t.Fatal("tied tiny model has output.weight")
	}
	if m.Output().Name != TensorTokenEmbd {
		t.Fatal("Output() of a tied model is not token_embd")
	}
	st, _ := os.Stat(path)
	if size, _ := s.Size(); uint64(st.Size()) != size {
		t.Fatalf("file %d bytes, Size() %d", st.Size(), size)
	}
	logits := checkForwardFinite(t, m, []int32{1, 72, 259, 105})
	best := top(logits, 3)
	t.Logf("top logits: %d %.4f, %d %.4f, %d %.4f", best[0], logits[best[0]], best[1], logits[best[1]], best[2], logits[best[2]])
	// llama.cpp (node-llama-cpp 3.22.1, CPU) loading this preset with seed 0 in F32, F16, BF16
	// and Q8_0 greedily continues [1 72 259 105] with token 27585: the same file layout, tensor
	// orientation and RoPE convention as the reference pass here.
	if best[0] != 27585 {
		t.Errorf("reference argmax %d, llama.cpp picks 27585", best[0])
	}
	// The generator and the file layout are a contract: benchmarks and caches name models by
	// fingerprint, so a change here must be deliberate.
	if fp := m.Fingerprint().String(); fp != "blake3:edea1e7b3a78cf6d70b936f85389582944e2434e02e0c3cccaf88c845e8c66e7" {
		t.Errorf("tiny Q8_0 seed 0 fingerprint changed: %s", fp)
	}
}

// TestLlama32_1BPreset checks the 1B preset's shapes, sizes and a few tensors without writing
// its 2.5 GB.
func TestLlama32_1BPreset(t *testing.T) {
	s, err := Synth("llama-3.2-1b", TypeF16, 42)
	if err != nil {
		t.Fatal(err)
	}
	h := s.Hyper
	if h.Layers != 16 || h.Dim != 2048 || h.Heads != 32 || h.KVHeads != 8 || h.HeadDim != 64 || h.FFN != 8192 ||
		h.Vocab != 128256 || h.RopeTheta != 500000 || h.RMSEps != 1e-5 || !h.Tied || h.KVDim() != 512 {
		t.Fatalf("preset %+v", h)
	}
	const params = 128256*2048 + 16*(2048*2048*2+2048*512*2+3*2048*8192+2*2048) + 2048
	if p := h.Params(); p != params {
		t.Fatalf("params %d, want %d", p, params)
	}
	var data uint64
	for _, ti := range s.Tensors() {
		data += (ti.Size + 31) / 32 * 32
		switch {
		case ti.Name == "blk.3.attn_k.weight" && (ti.Dims[0] != 2048 || ti.Dims[1] != 512):
			t.Errorf("attn_k dims %v", ti.Dims)
		case ti.Name == "blk.3.ffn_down.weight" && (ti.Dims[0] != 8192 || ti.Dims[1] != 2048):
			t.Errorf("ffn_down dims %v", ti.Dims)
		case ti.Name == TensorOutput:
			t.Error("tied preset declares output.weight")
		}
	}
	size, err := s.Size()
	if err != nil {
		t.Fatal(err)
	}
	norms := uint64(2*16+1) * 2048 * 4
	if want := 2*(params-uint64(2*16+1)*2048) + norms; data < want || data > want+33*32*20 {
		t.Fatalf("tensor bytes %d, want about %d", data, want)
	}
	if size < data || size > data+4<<20 || size < 2.4e9 || size > 2.6e9 {
		t.Fatalf("file size %d (tensor bytes %d)", size, data)
	}
	t.Logf("llama-3.2-1b F16: %d parameters, %d bytes", params, size)
	q, _ := Synth("llama-3.2-1b", TypeQ8_0, 42)
	if qs, _ := q.Size(); qs < 1.2e9 || qs > 1.4e9 {
		t.Fatalf("Q8_0 size %d", qs)
	}
	// One weight tensor and one norm, checked against the generator directly.
	k, err := s.TensorData("blk.0.attn_k.weight")
	if err != nil {
		t.Fatal(err)
	}
	vals := make([]float32, 2048*512)
	SynthValues(vals, SynthKey(42, "blk.0.attn_k.weight"), 0, DefaultStd)
	want := make([]byte, 2*len(vals))
	dtype.F32sToF16s(want, vals)
	if !bytes.Equal(k, want) {
		t.Fatal("attn_k bytes differ from the generator")
	}
	checkStats(t, vals, DefaultStd)
	n, _ := s.TensorData("blk.15.ffn_norm.weight")
	if len(n) != 2048*4 || math.Float32frombits(uint32(n[0])|uint32(n[1])<<8|uint32(n[2])<<16|uint32(n[3])<<24) != 1 {
		t.Fatal("norm is not 1.0 F32")
	}
}

func checkStats(t *testing.T, v []float32, std float64) {
	t.Helper()
	var s, s2 float64
	for _, x := range v {
		s += float64(x)
		s2 += float64(x) * float64(x)
	}
	mean := s / float64(len(v))
	sd := math.Sqrt(s2/float64(len(v)) - mean*mean)
	if math.Abs(mean) > 1e-3*std*10 || math.Abs(sd-std)/std > 0.01 {
		t.Fatalf("mean %g std %g, want 0 and %g", mean, sd, std)
	}
}

func TestPresetErrors(t *testing.T) {
	if _, err := Synth("huge", TypeF16, 0); err == nil {
		t.Error("unknown preset accepted")
	}
	if _, err := Synth("tiny", TypeQ4_K, 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Q4_K synth: %v", err)
	}
}

func TestModelRefusals(t *testing.T) {
	s := smallSpec(TypeF16, 1)
	m := openBytes(t, synthBytes(t, s))
	var ts []Tensor
	for _, ti := range m.File.Tensors {
		tt, _ := m.Tensor(ti.Name)
		ts = append(ts, tt)
	}
	set := func(kv []KV, key string, v Value) []KV {
		out := append([]KV(nil), kv...)
		for i := range out {
			if out[i].Key == key {
				out[i].Value = v
				return out
			}
		}
		return append(out, KV{key, v})
	}
	drop := func(kv []KV, key string) []KV {
		var out []KV
		for _, p := range kv {
			if p.Key != key {
				out = append(out, p)
			}
		}
		return out
	}
	f32 := func(name string, dims ...uint64) Tensor {
		n := uint64(1)
		for _, d := range dims {
			n *= d
		}
		return Tensor{Name: name, Type: TypeF32, Dims: dims, Data: make([]byte, 4*n)}
	}
	cases := []struct {
		name   string
		kv     []KV
		ts     []Tensor
		target error
		want   string
	}{
		{"arch", set(s.Metadata(), "general.architecture", String("gpt2")), ts, ErrUnsupported, `architecture "gpt2"`},
		{"no arch", drop(s.Metadata(), "general.architecture"), ts, ErrFormat, "general.architecture is missing"},
		{"missing key", drop(s.Metadata(), "llama.block_count"), ts, ErrFormat, "llama.block_count is missing"},
		{"key type", set(s.Metadata(), "llama.embedding_length", String("64")), ts, ErrFormat, "llama.embedding_length"},
		{"gqa", set(s.Metadata(), "llama.attention.head_count_kv", Uint32(3)), ts, ErrFormat, "head_count_kv"},
		{"rope scaling", set(s.Metadata(), "llama.rope.scaling.type", String("yarn")), ts, ErrUnsupported, `rope scaling "yarn"`},
		{"experts", set(s.Metadata(), "llama.expert_count", Uint32(8)), ts, ErrUnsupported, "expert"},
		{"vocab mismatch", set(s.Metadata(), "llama.vocab_size", Uint32(301)), ts, ErrFormat, "vocab_size"},
		{"missing tensor", s.Metadata(), ts[:len(ts)-2], ErrFormat, "missing tensor"},
		{"extra tensor", s.Metadata(), append(ts[:len(ts):len(ts)], f32("blk.0.attn_q.bias", 64)), ErrUnsupported, "tensor blk.0.attn_q.bias is not part"},
		{"rope freqs", s.Metadata(), append(ts[:len(ts):len(ts)], f32("rope_freqs.weight", 8)), ErrUnsupported, "rope_freqs.weight"},
		{"bad shape", s.Metadata(), append(append([]Tensor(nil), ts[:2]...), append([]Tensor{f32("blk.0.attn_q.weight", 64, 32)}, ts[3:]...)...), ErrFormat, "tensor blk.0.attn_q.weight has dims [64 32], want [64 64]"},
		{"norm type", s.Metadata(), append(append([]Tensor(nil), ts[:1]...), append([]Tensor{{Name: ts[1].Name, Type: TypeF16, Dims: []uint64{64}, Data: make([]byte, 128)}}, ts[2:]...)...), ErrUnsupported, "norm tensor blk.0.attn_norm.weight has type F16"},
	}
	for _, c := range cases {
		f, err := Parse(writeBytes(t, c.kv, c.ts))
		if err != nil {
			t.Fatalf("%s: parse: %v", c.name, err)
		}
		_, err = NewModel(f)
		if !errors.Is(err, c.target) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %v mentioning %q", c.name, err, c.target, c.want)
		}
	}
}

func TestTokenizer(t *testing.T) {
	m := openBytes(t, synthBytes(t, smallSpec(TypeQ8_0, 1)))
	tok, err := m.Tokenizer()
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != 300 || tok.BOS != 1 || tok.EOS != 2 || tok.UNK != 0 || !tok.AddBOS {
		t.Fatalf("tokenizer %+v", tok)
	}
	ids := tok.Encode("Hi there", true)
	want := []int32{1, 3 + 'H', 3 + 'i', 259, 3 + 't', 3 + 'h', 3 + 'e', 3 + 'r', 3 + 'e'}
	if len(ids) != len(want) {
		t.Fatalf("Encode = %v, want %v", ids, want)
	}
	for i := range ids {
		if ids[i] != want[i] {
			t.Fatalf("Encode = %v, want %v", ids, want)
		}
	}
	for _, text := range []string{"", "hello, wörld ✓", "\x00\xff\xfe bytes  two spaces", "▁ literal marker", strings.Repeat("ab ", 100)} {
		got, err := tok.Decode(tok.Encode(text, true))
		if err != nil || got != text {
			t.Errorf("round trip %q -> %q, %v", text, got, err)
		}
	}
	// Decoding is a homomorphism: token by token gives the same bytes, even mid-character.
	ids = tok.Encode("ü ✓", false)
	var acc string
	for _, id := range ids {
		s, _ := tok.Decode([]int32{id})
		acc += s
	}
	if acc != "ü ✓" || utf8.ValidString(func() string { s, _ := tok.Decode(ids[:1]); return s }()) {
		t.Errorf("piecewise decode %q", acc)
	}
	if s, err := tok.Decode([]int32{0, 1, 2, 260, 3 + 'x', 299}); err != nil || s != "[t260]x[t299]" {
		t.Errorf("specials and fillers decode to %q, %v", s, err)
	}
	if _, err := tok.Decode([]int32{300}); err == nil {
		t.Error("out-of-range id decoded")
	}
	if _, err := tok.Decode([]int32{-1}); err == nil {
		t.Error("negative id decoded")
	}
	// The vocabulary metadata is what llama.cpp's llama (SentencePiece) loader reads.
	toks, _ := m.File.Get("tokenizer.ggml.tokens")
	scores, _ := m.File.Get("tokenizer.ggml.scores")
	types, _ := m.File.Get("tokenizer.ggml.token_type")
	if toks.Len() != 300 || scores.Len() != 300 || types.Len() != 300 || scores.Elem != TypeFloat32 || types.Elem != TypeInt32 {
		t.Fatalf("tokenizer arrays %v %v %v", toks, scores, types)
	}
	if s, _ := tok.Token(3 + 0x0A); s != "<0x0A>" {
		t.Errorf("token 13 = %q", s)
	}
}

func TestTokenizerRefusals(t *testing.T) {
	s := smallSpec(TypeF32, 1)
	base := s.Metadata()
	var ts []Tensor
	m := openBytes(t, synthBytes(t, s))
	for _, ti := range m.File.Tensors {
		tt, _ := m.Tensor(ti.Name)
		ts = append(ts, tt)
	}
	mod := func(key string, v Value) []KV {
		out := append([]KV(nil), base...)
		for i := range out {
			if out[i].Key == key {
				out[i].Value = v
			}
		}
		return out
	}
	tokens, _, _ := SynthVocab(300)
	tokens[3+0x41] = "A"
	long, longScores, longTypes := SynthVocab(301)
	for name, kv := range map[string][]KV{
		"gpt2":      mod("tokenizer.ggml.model", String("gpt2")),
		"no bytes":  mod("tokenizer.ggml.tokens", Strings(tokens)),
		"bad bos":   mod("tokenizer.ggml.bos_token_id", Uint32(300)),
		"bad types": mod("tokenizer.ggml.token_type", Int32s([]int32{1})),
		"too long": func() []KV {
			kv := mod("tokenizer.ggml.tokens", Strings(long))
			for i := range kv {
				switch kv[i].Key {
				case "tokenizer.ggml.scores":
					kv[i].Value = Float32s(longScores)
				case "tokenizer.ggml.token_type":
					kv[i].Value = Int32s(longTypes)
				}
			}
			return kv
		}(),
	} {
		mm := openBytes(t, writeBytes(t, kv, ts))
		if _, err := mm.Tokenizer(); err == nil {
			t.Errorf("%s: tokenizer accepted", name)
		}
	}
}

// checkForwardFinite runs a plain float64 Llama forward pass over tokens (layer by layer, weight
// rows dequantized one at a time, so even the 1B model needs little memory) and checks that the
// synthetic weights keep activations finite and well inside the float16 range, and that the
// last token's logits have a sane spread.
func checkForwardFinite(t *testing.T, m *Model, tokens []int32) []float64 {
	t.Helper()
	h := m.Hyper
	tensor := func(name string) Tensor {
		tt, err := m.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	row := func(tt Tensor, r int, buf []float32) []float32 {
		in := int(tt.Dims[0])
		rb, _ := tt.Type.RowBytes(uint64(in))
		src := tt.Data[r*int(rb) : (r+1)*int(rb)]
		buf = buf[:in]
		switch tt.Type {
		case TypeF32:
			dtype.F32sFromBytes(buf, src)
		case TypeF16:
			dtype.F16sToF32s(buf, src)
		case TypeBF16:
			dtype.BF16sToF32s(buf, src)
		case TypeQ8_0:
			dtype.DequantizeQ8_0(buf, src)
		}
		return buf
	}
	vec := func(name string) []float64 {
		tt := tensor(name)
		f := row(tt, 0, make([]float32, tt.Dims[0]))
		out := make([]float64, len(f))
		for i, v := range f {
			out[i] = float64(v)
		}
		return out
	}
	// matmul returns W·x for each x in xs.
	matmul := func(name string, xs [][]float64) [][]float64 {
		tt := tensor(name)
		out := int(tt.Dims[1])
		ys := make([][]float64, len(xs))
		for i := range ys {
			ys[i] = make([]float64, out)
		}
		buf := make([]float32, tt.Dims[0])
		for r := 0; r < out; r++ {
			w := row(tt, r, buf)
			for i, x := range xs {
				var s float64
				for c, wv := range w {
					s += float64(wv) * x[c]
				}
				ys[i][r] = s
			}
		}
		return ys
	}
	rms := func(xs [][]float64, g []float64) [][]float64 {
		out := make([][]float64, len(xs))
		for i, x := range xs {
			var s float64
			for _, v := range x {
				s += v * v
			}
			k := 1 / math.Sqrt(s/float64(len(x))+float64(h.RMSEps))
			out[i] = make([]float64, len(x))
			for j := range x {
				out[i][j] = x[j] * k * g[j]
			}
		}
		return out
	}
	rope := func(v []float64, pos int) {
		for hd := 0; hd < len(v); hd += h.HeadDim {
			for i := 0; i < h.RopeDim; i += 2 {
				th := float64(pos) * math.Pow(float64(h.RopeTheta), -float64(i)/float64(h.RopeDim))
				c, s := math.Cos(th), math.Sin(th)
				a, b := v[hd+i], v[hd+i+1]
				v[hd+i], v[hd+i+1] = a*c-b*s, a*s+b*c
			}
		}
	}
	var maxAbs float64
	track := func(vs [][]float64) {
		for _, v := range vs {
			for _, x := range v {
				if math.IsNaN(x) || math.IsInf(x, 0) {
					t.Fatal("non-finite activation")
				}
				maxAbs = math.Max(maxAbs, math.Abs(x))
			}
		}
	}
	embd := tensor(TensorTokenEmbd)
	xs := make([][]float64, len(tokens))
	buf := make([]float32, h.Dim)
	for i, id := range tokens {
		xs[i] = make([]float64, h.Dim)
		for j, v := range row(embd, int(id), buf) {
			xs[i][j] = float64(v)
		}
	}
	group := h.Heads / h.KVHeads
	for l := 0; l < h.Layers; l++ {
		xn := rms(xs, vec(BlockTensor(l, AttnNorm)))
		q, k, v := matmul(BlockTensor(l, AttnQ), xn), matmul(BlockTensor(l, AttnK), xn), matmul(BlockTensor(l, AttnV), xn)
		for pos := range tokens {
			rope(q[pos], pos)
			rope(k[pos], pos)
		}
		att := make([][]float64, len(tokens))
		for pos := range tokens {
			att[pos] = make([]float64, h.Heads*h.HeadDim)
			for hd := 0; hd < h.Heads; hd++ {
				kvh := hd / group
				sc := make([]float64, pos+1)
				mx := math.Inf(-1)
				for p := 0; p <= pos; p++ {
					var s float64
					for i := 0; i < h.HeadDim; i++ {
						s += q[pos][hd*h.HeadDim+i] * k[p][kvh*h.HeadDim+i]
					}
					sc[p] = s / math.Sqrt(float64(h.HeadDim))
					mx = math.Max(mx, sc[p])
				}
				var sum float64
				for p := range sc {
					sc[p] = math.Exp(sc[p] - mx)
					sum += sc[p]
				}
				for p := range sc {
					for i := 0; i < h.HeadDim; i++ {
						att[pos][hd*h.HeadDim+i] += sc[p] / sum * v[p][kvh*h.HeadDim+i]
					}
				}
			}
		}
		o := matmul(BlockTensor(l, AttnOutput), att)
		for i := range xs {
			for j := range xs[i] {
				xs[i][j] += o[i][j]
			}
		}
		xn = rms(xs, vec(BlockTensor(l, FFNNorm)))
		g, u := matmul(BlockTensor(l, FFNGate), xn), matmul(BlockTensor(l, FFNUp), xn)
		for i := range g {
			for j := range g[i] {
				g[i][j] = g[i][j] / (1 + math.Exp(-g[i][j])) * u[i][j]
			}
		}
		track(q)
		track(g)
		d := matmul(BlockTensor(l, FFNDown), g)
		for i := range xs {
			for j := range xs[i] {
				xs[i][j] += d[i][j]
			}
		}
		track(xs)
	}
	out := TensorOutput
	if h.Tied {
		out = TensorTokenEmbd
	}
	logits := matmul(out, rms(xs[len(xs)-1:], vec(TensorOutputNorm)))[0]
	track([][]float64{logits})
	var s, s2 float64
	for _, l := range logits {
		s += l
		s2 += l * l
	}
	n := float64(len(logits))
	sd := math.Sqrt(s2/n - (s/n)*(s/n))
	if maxAbs > 1000 || sd < 0.01 || sd > 10 {
		t.Fatalf("max |activation| %g, logit std %g", maxAbs, sd)
	}
	t.Logf("forward over %d tokens: max |activation| %.3g, last logits std %.3g", len(tokens), maxAbs, sd)
	return logits
}

// top returns the indexes of the n largest values, largest first.
func top(v []float64, n int) []int {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return v[idx[a]] > v[idx[b]] })
	return idx[:n]
}

// TestForwardFiniteSmallGQA runs the reference pass on the untied GQA model in every type.
func TestForwardFiniteSmallGQA(t *testing.T) {
	for _, typ := range []Type{TypeF32, TypeBF16, TypeQ8_0} {
		checkForwardFinite(t, openBytes(t, synthBytes(t, smallSpec(typ, 5))), []int32{1, 50, 259, 70, 80})
	}
}

// TestForwardFinite1B runs the float64 forward pass on a synthesized llama-3.2-1b file named by
// DRIFTSTORE_GGUF_1B (too large to generate in CI).
func TestForwardFinite1B(t *testing.T) {
	p := os.Getenv("DRIFTSTORE_GGUF_1B")
	if p == "" {
		t.Skip("set DRIFTSTORE_GGUF_1B to a synthesized llama-3.2-1b file")
	}
	m, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	logits := checkForwardFinite(t, m, []int32{1, 72, 259})
	best := top(logits, 3)
	t.Logf("top logits: %d %.4f, %d %.4f, %d %.4f", best[0], logits[best[0]], best[1], logits[best[1]], best[2], logits[best[2]])
	// llama.cpp (node-llama-cpp 3.22.1, CPU) continues [1 72 259] greedily with 28803 on the
	// F16 preset with seed 0.
	seed, _ := m.File.Get("driftstore.synth.seed")
	if s, ok := seed.Uint(); ok && s == 0 && m.File.Tensors[0].Type == TypeF16 && best[0] != 28803 {
		t.Errorf("reference argmax %d, llama.cpp picks 28803", best[0])
	}
}

// BenchmarkSynth measures generating the tiny preset (bytes are file bytes, to io.Discard).
func BenchmarkSynth(b *testing.B) {
	for _, typ := range []Type{TypeF32, TypeF16, TypeQ8_0} {
		b.Run(typ.String(), func(b *testing.B) {
			s, _ := Synth("tiny", typ, 0)
			size, _ := s.Size()
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				if err := s.Write(io.Discard, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFingerprint measures hashing the tiny F16 preset.
func BenchmarkFingerprint(b *testing.B) {
	s, _ := Synth("tiny", TypeF16, 0)
	data := synthBytes(b, s)
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		m := openBytes(b, data)
		m.Fingerprint()
	}
}
