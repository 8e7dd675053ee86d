package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/driftstore/driftstore/cas"
	"github.com/zeebo/blake3"
)

// Tensor names of the llama architecture, as llama.cpp names them.
const (
	TensorTokenEmbd  = "token_embd.weight"
	TensorOutputNorm = "output_norm.weight"
	TensorOutput     = "output.weight" // absent when the embeddings are tied
)

// The per-block tensor kinds; BlockTensor(i, kind) names block i's tensor.
const (
	AttnNorm   = "attn_norm"
	AttnQ      = "attn_q"
	AttnK      = "attn_k"
	AttnV      = "attn_v"
	AttnOutput = "attn_output"
	FFNNorm    = "ffn_norm"
	FFNGate    = "ffn_gate"
	FFNUp      = "ffn_up"
	FFNDown    = "ffn_down"
)

// BlockKinds lists the tensor kinds of one llama block in the order the synthesizer writes them.
var BlockKinds = []string{AttnNorm, AttnQ, AttnK, AttnV, AttnOutput, FFNNorm, FFNGate, FFNUp, FFNDown}

// BlockTensor returns the name of block i's tensor of the given kind: "blk.3.attn_q.weight".
func BlockTensor(i int, kind string) string { return "blk." + strconv.Itoa(i) + "." + kind + ".weight" }

// Hyper holds the hyperparameters of a llama-family model.
//
// Not yet represented (seams for later work): Llama 3 rope scaling (the rope.scaling.* keys and
// the rope_freqs.weight tensor), mixture-of-experts keys, attention.key_length/value_length that
// differ from Dim/Heads. Open refuses files that use them rather than computing something wrong.
type Hyper struct {
	Arch      string  `json:"architecture"`   // general.architecture; "llama"
	Context   int     `json:"context_length"` // llama.context_length, in tokens
	Dim       int     `json:"embedding_length"`
	Layers    int     `json:"block_count"`
	FFN       int     `json:"feed_forward_length"`
	Heads     int     `json:"head_count"`
	KVHeads   int     `json:"head_count_kv"` // < Heads with grouped-query attention; defaults to Heads
	HeadDim   int     `json:"head_dim"`      // Dim / Heads
	RopeDim   int     `json:"rope_dimension_count"`
	RopeTheta float32 `json:"rope_freq_base"`         // default 10000
	RMSEps    float32 `json:"layer_norm_rms_epsilon"` // RMSNorm epsilon
	Vocab     int     `json:"vocab_size"`             // rows of token_embd.weight
	Tied      bool    `json:"tied_embeddings"`        // no output.weight: logits use token_embd.weight
}

// Sanity limits on hyperparameters: far above any real llama model, low enough that products
// of them cannot overflow.
const (
	maxDim     = 1 << 16
	maxLayers  = 1 << 10
	maxFFN     = 1 << 20
	maxHeads   = 1 << 10
	maxVocab   = 1 << 22
	maxContext = 1 << 24
)

// Validate checks the hyperparameters are positive, consistent and within sane limits.
func (h Hyper) Validate() error {
	checks := []struct {
		name   string
		v, max int
	}{
		{"context_length", h.Context, maxContext}, {"embedding_length", h.Dim, maxDim},
		{"block_count", h.Layers, maxLayers}, {"feed_forward_length", h.FFN, maxFFN},
		{"attention.head_count", h.Heads, maxHeads}, {"attention.head_count_kv", h.KVHeads, maxHeads},
		{"vocab_size", h.Vocab, maxVocab}, {"rope.dimension_count", h.RopeDim, maxDim},
	}
	for _, c := range checks {
		if c.v <= 0 || c.v > c.max {
			return fmt.Errorf("%w: %s.%s = %d, want 1 to %d", ErrFormat, h.Arch, c.name, c.v, c.max)
		}
	}
	if h.Dim%h.Heads != 0 || h.HeadDim != h.Dim/h.Heads {
		return fmt.Errorf("%w: embedding_length %d is not head_count %d × head_dim %d", ErrFormat, h.Dim, h.Heads, h.HeadDim)
	}
	if h.Heads%h.KVHeads != 0 {
		return fmt.Errorf("%w: head_count %d is not a multiple of head_count_kv %d", ErrFormat, h.Heads, h.KVHeads)
	}
	if h.HeadDim%2 != 0 || h.RopeDim%2 != 0 || h.RopeDim > h.HeadDim {
		return fmt.Errorf("%w: rope.dimension_count %d must be even and at most the even head dimension %d", ErrFormat, h.RopeDim, h.HeadDim)
	}
	if !(h.RMSEps > 0) || math.IsInf(float64(h.RMSEps), 0) || h.RMSEps > 1 {
		return fmt.Errorf("%w: attention.layer_norm_rms_epsilon = %g, want a small positive number", ErrFormat, h.RMSEps)
	}
	if !(h.RopeTheta > 0) || math.IsInf(float64(h.RopeTheta), 0) {
		return fmt.Errorf("%w: rope.freq_base = %g, want a positive number", ErrFormat, h.RopeTheta)
	}
	return nil
}

// KVDim returns the width of one token's keys (or values) in one layer: KVHeads × HeadDim.
func (h Hyper) KVDim() int { return h.KVHeads * h.HeadDim }

// Shapes returns every tensor of the architecture with its dims (ggml order) in the order the
// synthesizer writes them; output.weight only when not Tied.
func (h Hyper) Shapes() []TensorInfo {
	d, kv, ff, v := uint64(h.Dim), uint64(h.KVDim()), uint64(h.FFN), uint64(h.Vocab)
	q := uint64(h.Heads * h.HeadDim)
	out := []TensorInfo{{Name: TensorTokenEmbd, Dims: []uint64{d, v}}}
	for i := 0; i < h.Layers; i++ {
		for _, k := range BlockKinds {
			var dims []uint64
			switch k {
			case AttnNorm, FFNNorm:
				dims = []uint64{d}
			case AttnQ:
				dims = []uint64{d, q}
			case AttnK, AttnV:
				dims = []uint64{d, kv}
			case AttnOutput:
				dims = []uint64{q, d}
			case FFNGate, FFNUp:
				dims = []uint64{d, ff}
			case FFNDown:
				dims = []uint64{ff, d}
			}
			out = append(out, TensorInfo{Name: BlockTensor(i, k), Dims: dims})
		}
	}
	out = append(out, TensorInfo{Name: TensorOutputNorm, Dims: []uint64{d}})
	if !h.Tied {
		out = append(out, TensorInfo{Name: TensorOutput, Dims: []uint64{d, v}})
	}
	return out
}

// Params returns the number of parameters (tensor elements) of the architecture.
func (h Hyper) Params() uint64 {
	var n uint64
	for _, t := range h.Shapes() {
		n += t.Elements()
	}
	return n
}

// canonical is the fixed binary encoding of the hyperparameters hashed into the fingerprint.
func (h Hyper) canonical() []byte {
	b := []byte("driftstore/gguf-hyper/v1\x00")
	b = binary.LittleEndian.AppendUint64(b, uint64(len(h.Arch)))
	b = append(b, h.Arch...)
	for _, v := range []int{h.Context, h.Dim, h.Layers, h.FFN, h.Heads, h.KVHeads, h.HeadDim, h.RopeDim, h.Vocab} {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(h.RopeTheta))
	b = binary.LittleEndian.AppendUint32(b, math.Float32bits(h.RMSEps))
	if h.Tied {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return b
}

// Model is a llama-family GGUF model opened for inference: validated hyperparameters and
// tensors mapped in place.
//
// A Model is safe for concurrent use until Close. Tensor data slices alias the read-only file
// mapping: valid until Close, never to be written.
type Model struct {
	File  *File
	Hyper Hyper

	fpOnce sync.Once
	fp     cas.Digest

	tokOnce sync.Once
	tok     *Tokenizer
	tokErr  error
}

// Open maps the GGUF file at path and validates it as a llama model: architecture,
// hyperparameters, every tensor's presence, type and shape. Errors wrap ErrFormat or
// ErrUnsupported and name the key or tensor at fault.
func Open(path string) (*Model, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	m, err := NewModel(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("gguf: %s: %w", path, err)
	}
	return m, nil
}

// NewModel validates a parsed File as a llama model. The Model takes over f: Model.Close
// closes it.
func NewModel(f *File) (*Model, error) {
	h, err := hyperFrom(f)
	if err != nil {
		return nil, err
	}
	want := map[string][]uint64{}
	for _, t := range h.Shapes() {
		want[t.Name] = t.Dims
	}
	for _, t := range f.Tensors {
		dims, ok := want[t.Name]
		if !ok {
			if t.Name == "rope_freqs.weight" {
				return nil, fmt.Errorf("%w: tensor rope_freqs.weight (Llama 3 rope frequency scaling is not implemented yet)", ErrUnsupported)
			}
			return nil, fmt.Errorf("%w: tensor %s is not part of the %s architecture as driftstore implements it", ErrUnsupported, t.Name, h.Arch)
		}
		if !equalDims(dims, t.Dims) {
			return nil, fmt.Errorf("%w: tensor %s has dims %v, want %v for these hyperparameters", ErrFormat, t.Name, t.Dims, dims)
		}
		if len(dims) == 1 && t.Type != TypeF32 {
			return nil, fmt.Errorf("%w: norm tensor %s has type %s, driftstore reads norms as F32 only", ErrUnsupported, t.Name, t.Type)
		}
		delete(want, t.Name)
	}
	if len(want) > 0 {
		missing := make([]string, 0, len(want))
		for n := range want {
			missing = append(missing, n)
		}
		sort.Strings(missing)
		more := ""
		if len(missing) > 3 {
			more = fmt.Sprintf(" and %d more", len(missing)-3)
			missing = missing[:3]
		}
		return nil, fmt.Errorf("%w: missing tensor %s%s", ErrFormat, strings.Join(missing, ", "), more)
	}
	return &Model{File: f, Hyper: h}, nil
}

func equalDims(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// hyperFrom reads the llama hyperparameters from f's metadata.
func hyperFrom(f *File) (Hyper, error) {
	var h Hyper
	av, ok := f.Get("general.architecture")
	if !ok {
		return h, fmt.Errorf("%w: metadata key general.architecture is missing", ErrFormat)
	}
	arch, ok := av.Str()
	if !ok {
		return h, fmt.Errorf("%w: general.architecture has type %s, want string", ErrFormat, av.Type)
	}
	if arch != "llama" {
		return h, fmt.Errorf("%w: architecture %q (driftstore runs llama only)", ErrUnsupported, truncate(arch))
	}
	h.Arch = arch
	var err error
	getU := func(key string, def int) int {
		if err != nil {
			return 0
		}
		full := arch + "." + key
		v, ok := f.Get(full)
		if !ok {
			if def < 0 {
				err = fmt.Errorf("%w: metadata key %s is missing", ErrFormat, full)
			}
			return def
		}
		n, ok := v.Uint()
		if !ok || n > math.MaxInt32 {
			err = fmt.Errorf("%w: metadata key %s = %v (%s), want a non-negative integer", ErrFormat, full, v, v.Type)
			return 0
		}
		return int(n)
	}
	getF := func(key string, def float32) float32 {
		if err != nil {
			return 0
		}
		full := arch + "." + key
		v, ok := f.Get(full)
		if !ok {
			if def < 0 {
				err = fmt.Errorf("%w: metadata key %s is missing", ErrFormat, full)
			}
			return def
		}
		if _, ok := v.Float(); !ok {
			err = fmt.Errorf("%w: metadata key %s has type %s, want float32", ErrFormat, full, v.Type)
			return 0
		}
		return v.f32()
	}
	h.Context = getU("context_length", -1)
	h.Dim = getU("embedding_length", -1)
	h.Layers = getU("block_count", -1)
	h.FFN = getU("feed_forward_length", -1)
	h.Heads = getU("attention.head_count", -1)
	h.KVHeads = getU("attention.head_count_kv", h.Heads)
	h.RMSEps = getF("attention.layer_norm_rms_epsilon", -1)
	h.RopeTheta = getF("rope.freq_base", 10000)
	if err != nil {
		return h, err
	}
	if h.Heads > 0 {
		h.HeadDim = h.Dim / h.Heads
	}
	h.RopeDim = getU("rope.dimension_count", h.HeadDim)
	kl := getU("attention.key_length", h.HeadDim)
	vl := getU("attention.value_length", h.HeadDim)
	experts := getU("expert_count", 0)
	vocabKey := getU("vocab_size", 0)
	if err != nil {
		return h, err
	}
	if kl != h.HeadDim || vl != h.HeadDim {
		return h, fmt.Errorf("%w: attention key/value length %d/%d differs from embedding_length/head_count = %d", ErrUnsupported, kl, vl, h.HeadDim)
	}
	if experts > 0 {
		return h, fmt.Errorf("%w: mixture of experts (%s.expert_count = %d)", ErrUnsupported, arch, experts)
	}
	if v, ok := f.Get(arch + ".rope.scaling.type"); ok {
		if s, _ := v.Str(); s != "none" {
			return h, fmt.Errorf("%w: rope scaling %q (%s.rope.scaling.type) is not implemented yet", ErrUnsupported, truncate(s), arch)
		}
	}
	if v, ok := f.Get(arch + ".rope.scale_linear"); ok {
		if s, _ := v.Float(); s != 1 {
			return h, fmt.Errorf("%w: linear rope scaling %v (%s.rope.scale_linear) is not implemented yet", ErrUnsupported, v, arch)
		}
	}
	te, ok := f.Tensor(TensorTokenEmbd)
	if !ok {
		return h, fmt.Errorf("%w: missing tensor %s", ErrFormat, TensorTokenEmbd)
	}
	if len(te.Dims) != 2 || te.Dims[1] > maxVocab {
		return h, fmt.Errorf("%w: tensor %s has dims %v, want {embedding_length, vocab}", ErrFormat, te.Name, te.Dims)
	}
	h.Vocab = int(te.Dims[1])
	if vocabKey != 0 && vocabKey != h.Vocab {
		return h, fmt.Errorf("%w: %s.vocab_size = %d but %s has %d rows", ErrFormat, arch, vocabKey, TensorTokenEmbd, h.Vocab)
	}
	_, hasOut := f.Tensor(TensorOutput)
	h.Tied = !hasOut
	return h, h.Validate()
}

// Tensor returns the named tensor with its bytes aliasing the file mapping (valid until Close,
// read-only). The error wraps ErrNotFound for a name the model does not have.
func (m *Model) Tensor(name string) (Tensor, error) {
	ti, ok := m.File.Tensor(name)
	if !ok {
		return Tensor{}, fmt.Errorf("gguf: tensor %s: %w", name, ErrNotFound)
	}
	return Tensor{Name: ti.Name, Type: ti.Type, Dims: ti.Dims, Data: m.File.TensorData(ti)}, nil
}

// Output returns the output projection: output.weight, or token_embd.weight when tied.
func (m *Model) Output() Tensor {
	name := TensorOutput
	if m.Hyper.Tied {
		name = TensorTokenEmbd
	}
	t, err := m.Tensor(name)
	if err != nil {
		panic("gguf: validated model lacks " + name) // NewModel checked it
	}
	return t
}

// Params returns the number of parameters (values in all tensors).
func (m *Model) Params() uint64 { return m.Hyper.Params() }

// Fingerprint returns the model's identity: BLAKE3-256 over a canonical encoding of the
// hyperparameters and, for every tensor in name order, its name, type, dims and bytes. It does
// not depend on metadata order, tensor order, alignment or the tokenizer vocabulary (which maps
// text to token ids but does not change what the model computes from ids).
//
// The first call reads every tensor byte (about a second for 2.5 GB); the result is cached and
// later calls are free. Safe for concurrent use; must not be called after Close.
func (m *Model) Fingerprint() cas.Digest {
	m.fpOnce.Do(func() { m.fp = fingerprint(m.Hyper, m.File) })
	return m.fp
}

func fingerprint(h Hyper, f *File) cas.Digest {
	hs := blake3.New()
	le := binary.LittleEndian
	hs.Write([]byte("driftstore/gguf-fingerprint/v1\x00"))
	c := h.canonical()
	hs.Write(le.AppendUint64(nil, uint64(len(c))))
	hs.Write(c)
	names := make([]string, len(f.Tensors))
	for i, t := range f.Tensors {
		names[i] = t.Name
	}
	sort.Strings(names)
	hs.Write(le.AppendUint64(nil, uint64(len(names))))
	for _, n := range names {
		t, _ := f.Tensor(n)
		var b []byte
		b = le.AppendUint64(b, uint64(len(n)))
		b = append(b, n...)
		b = le.AppendUint32(b, uint32(t.Type))
		b = le.AppendUint32(b, uint32(len(t.Dims)))
		for _, d := range t.Dims {
			b = le.AppendUint64(b, d)
		}
		b = le.AppendUint64(b, t.Size)
		hs.Write(b)
		data := f.TensorData(t)
		for len(data) > 0 { // in pieces, so the hasher never needs the whole tensor resident
			k := min(len(data), 16<<20)
			hs.Write(data[:k])
			data = data[k:]
		}
	}
	var d cas.Digest
	hs.Sum(d[:0])
	return d
}

// Tokenizer returns the model's byte-level tokenizer (see Tokenizer), built once from the
// tokenizer.ggml.* metadata. The error wraps ErrUnsupported for vocabularies it cannot handle.
func (m *Model) Tokenizer() (*Tokenizer, error) {
	m.tokOnce.Do(func() {
		m.tok, m.tokErr = NewTokenizer(m.File)
		if m.tokErr == nil && m.tok.VocabSize() > m.Hyper.Vocab {
			m.tok, m.tokErr = nil, fmt.Errorf("gguf: tokenizer: %w: %d tokens but %s has only %d rows", ErrFormat, m.tok.VocabSize(), TensorTokenEmbd, m.Hyper.Vocab)
		}
	})
	return m.tok, m.tokErr
}

// Close unmaps the file. Tensor bytes obtained earlier become invalid.
func (m *Model) Close() error { return m.File.Close() }
