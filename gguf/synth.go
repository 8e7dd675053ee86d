package gguf

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"sort"
	"sync"

	"github.com/driftstore/driftstore/gguf/dtype"
)

// Presets for synthetic models. Both tie the output projection to the token embeddings (no
// output.weight), as the models they imitate do.
//
//   - "tiny": 6 layers, dim 288, 6 heads (no GQA), FFN 768, vocab 32000, context 2048:
//     15.2M parameters, the shape of llama2.c's stories15M. For tests and demos.
//   - "llama-3.2-1b": Llama-3.2-1B's shape: 16 layers, dim 2048, 32 heads, 8 KV heads (head dim
//     64), FFN 8192, vocab 128256, rope theta 500000, RMS eps 1e-5: 1.24G parameters. The context
//     is 8192, Llama 3's pre-scaling length, because the synthetic file carries no rope scaling
//     (the real model reaches 131072 through Llama 3 rope scaling, not implemented yet). Its
//     vocabulary is the synthetic byte-level one, not Llama 3's BPE vocabulary.
var presets = map[string]Hyper{
	"tiny": {Arch: "llama", Context: 2048, Dim: 288, Layers: 6, FFN: 768, Heads: 6, KVHeads: 6,
		HeadDim: 48, RopeDim: 48, RopeTheta: 10000, RMSEps: 1e-5, Vocab: 32000, Tied: true},
	"llama-3.2-1b": {Arch: "llama", Context: 8192, Dim: 2048, Layers: 16, FFN: 8192, Heads: 32, KVHeads: 8,
		HeadDim: 64, RopeDim: 64, RopeTheta: 500000, RMSEps: 1e-5, Vocab: 128256, Tied: true},
}

// Preset returns the hyperparameters of a named preset ("tiny", "llama-3.2-1b").
func Preset(name string) (Hyper, error) {
	h, ok := presets[name]
	if !ok {
		return Hyper{}, fmt.Errorf("gguf: unknown preset %q (have %v)", name, PresetNames())
	}
	return h, nil
}

// PresetNames lists the preset names in sorted order.
func PresetNames() []string {
	var n []string
	for k := range presets {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// DefaultStd is the standard deviation of synthetic weights. With unit RMSNorm weights, every
// sublayer sees normalized inputs, so each projection's outputs have a standard deviation of
// about DefaultStd*sqrt(fan-in) (0.34 for dim 288, 0.9 for dim 2048): activations and logits stay
// well within float16 range through all layers (the tests run a float64 forward pass to check).
const DefaultStd = 0.02

// SynthSpec describes a synthetic model: real llama architecture and tokenizer metadata,
// deterministic pseudo-random weights.
//
// Weights depend only on (Seed, tensor name, element index) through a counter-based generator
// (SplitMix64 of the index, keyed by seed and name), so any piece of any tensor can be generated
// independently, in parallel and in any order, with identical results on every platform. Values
// are approximately normal (a sum of four uniforms) with standard deviation Std; norm weights
// are 1.0 and stay F32, as llama.cpp keeps them.
type SynthSpec struct {
	Name  string  // general.name
	Hyper Hyper   // must have Arch "llama" and Vocab >= 260
	Type  Type    // type of token_embd and the 2-D weight matrices: F32, F16, BF16 or Q8_0
	Seed  uint64  // weight seed
	Std   float32 // weight standard deviation; 0 means DefaultStd
}

// Synth returns the spec of a preset model with the given weight type and seed.
func Synth(preset string, typ Type, seed uint64) (SynthSpec, error) {
	h, err := Preset(preset)
	if err != nil {
		return SynthSpec{}, err
	}
	s := SynthSpec{Name: "driftstore-synth-" + preset, Hyper: h, Type: typ, Seed: seed}
	return s, s.check()
}

func (s SynthSpec) check() error {
	if s.Hyper.Arch != "llama" {
		return fmt.Errorf("gguf: synth: %w: architecture %q", ErrUnsupported, s.Hyper.Arch)
	}
	if err := s.Hyper.Validate(); err != nil {
		return fmt.Errorf("gguf: synth: %w", err)
	}
	if s.Hyper.Vocab < synthVocabMin {
		return fmt.Errorf("gguf: synth: vocabulary of %d is smaller than the %d tokens of the byte-level layout", s.Hyper.Vocab, synthVocabMin)
	}
	switch s.Type {
	case TypeF32, TypeF16, TypeBF16, TypeQ8_0:
	default:
		return fmt.Errorf("gguf: synth: %w: weight type %s (want F32, F16, BF16 or Q8_0)", ErrUnsupported, s.Type)
	}
	if s.Type == TypeQ8_0 && (s.Hyper.Dim%32 != 0 || s.Hyper.FFN%32 != 0 || (s.Hyper.Heads*s.Hyper.HeadDim)%32 != 0) {
		return fmt.Errorf("gguf: synth: Q8_0 needs embedding, FFN and attention widths divisible by 32")
	}
	if s.Std < 0 || s.Std > 1 || s.Std != s.Std {
		return fmt.Errorf("gguf: synth: std %v out of range", s.Std)
	}
	return nil
}

func (s SynthSpec) std() float32 {
	if s.Std == 0 {
		return DefaultStd
	}
	return s.Std
}

// fileType is general.file_type for the weight type (llama_ftype numbering).
func fileType(t Type) uint32 {
	switch t {
	case TypeF16:
		return 1
	case TypeQ8_0:
		return 7
	case TypeBF16:
		return 32
	}
	return 0
}

// Metadata returns the metadata the synthetic file carries: general.*, llama.* hyperparameters
// (uint32 and float32, the types llama.cpp's loader insists on), the tokenizer.ggml.* keys of
// the synthetic vocabulary (see SynthVocab) and driftstore.synth.* provenance.
func (s SynthSpec) Metadata() []KV {
	h := s.Hyper
	kv := []KV{
		{"general.architecture", String("llama")},
		{"general.name", String(s.Name)},
		{"general.file_type", Uint32(fileType(s.Type))},
		{"general.quantization_version", Uint32(2)},
		{"llama.vocab_size", Uint32(uint32(h.Vocab))},
		{"llama.context_length", Uint32(uint32(h.Context))},
		{"llama.embedding_length", Uint32(uint32(h.Dim))},
		{"llama.block_count", Uint32(uint32(h.Layers))},
		{"llama.feed_forward_length", Uint32(uint32(h.FFN))},
		{"llama.rope.dimension_count", Uint32(uint32(h.RopeDim))},
		{"llama.attention.head_count", Uint32(uint32(h.Heads))},
		{"llama.attention.head_count_kv", Uint32(uint32(h.KVHeads))},
		{"llama.rope.freq_base", Float32(h.RopeTheta)},
		{"llama.attention.layer_norm_rms_epsilon", Float32(h.RMSEps)},
	}
	kv = append(kv, tokenizerKV(h.Vocab)...)
	kv = append(kv,
		KV{"driftstore.synth.seed", Uint64(s.Seed)},
		KV{"driftstore.synth.std", Float32(s.std())},
	)
	return kv
}

// Tensors returns the tensor declarations in file order with their types.
func (s SynthSpec) Tensors() []TensorInfo {
	ts := s.Hyper.Shapes()
	for i := range ts {
		if len(ts[i].Dims) == 1 {
			ts[i].Type = TypeF32
		} else {
			ts[i].Type = s.Type
		}
		ts[i].Size, _ = dataSize(ts[i].Type, ts[i].Dims, math.MaxInt64)
	}
	return ts
}

// Size returns the exact size in bytes of the file Write produces.
func (s SynthSpec) Size() (uint64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	w, err := NewWriter(io.Discard, s.Metadata(), s.Tensors())
	if err != nil {
		return 0, err
	}
	return w.Size(), nil
}

// chunkElems is the number of values generated per work item (a multiple of the Q8_0 block).
const chunkElems = 1 << 18

// Write streams the synthetic GGUF file to w, generating weights in parallel chunks on up to
// GOMAXPROCS goroutines; memory use is a few MiB per goroutine whatever the model size.
// progress, if not nil, is called after each batch of chunks with the bytes written so far and
// the total; an error it returns stops the write and is returned.
func (s SynthSpec) Write(w io.Writer, progress func(done, total uint64) error) error {
	if err := s.check(); err != nil {
		return err
	}
	tensors := s.Tensors()
	wr, err := NewWriter(w, s.Metadata(), tensors)
	if err != nil {
		return err
	}
	workers := max(1, runtime.GOMAXPROCS(0))
	type buf struct {
		f32 []float32
		out []byte
	}
	bufs := make([]buf, workers)
	for i := range bufs {
		bufs[i] = buf{f32: make([]float32, chunkElems), out: make([]byte, 4*chunkElems)}
	}
	for _, t := range tensors {
		if err := wr.Begin(t.Name); err != nil {
			return err
		}
		n := t.Elements()
		key := SynthKey(s.Seed, t.Name)
		for start := uint64(0); start < n; start += chunkElems * uint64(workers) {
			var wg sync.WaitGroup
			outs := make([][]byte, workers)
			for k := 0; k < workers; k++ {
				lo := start + uint64(k)*chunkElems
				if lo >= n {
					break
				}
				hi := min(lo+chunkElems, n)
				wg.Add(1)
				go func(k int, lo, hi uint64) {
					defer wg.Done()
					outs[k] = s.gen(t, key, lo, hi, bufs[k].f32[:hi-lo], bufs[k].out)
				}(k, lo, hi)
			}
			wg.Wait()
			for _, o := range outs {
				if o == nil {
					break
				}
				if _, err := wr.Write(o); err != nil {
					return err
				}
			}
			if progress != nil {
				if err := progress(wr.Written(), wr.Size()); err != nil {
					return err
				}
			}
		}
	}
	return wr.Close()
}

// WriteFile writes the synthetic model to path atomically (temporary file, sync, rename).
func (s SynthSpec) WriteFile(path string, progress func(done, total uint64) error) error {
	return WriteFileAtomic(path, func(w io.Writer) error { return s.Write(w, progress) })
}

// TensorData returns the bytes of one synthetic tensor, exactly as Write stores them, without
// generating the rest of the model.
func (s SynthSpec) TensorData(name string) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	for _, t := range s.Tensors() {
		if t.Name != name {
			continue
		}
		out := make([]byte, 0, t.Size)
		f := make([]float32, chunkElems)
		o := make([]byte, 4*chunkElems)
		key := SynthKey(s.Seed, t.Name)
		n := t.Elements()
		for lo := uint64(0); lo < n; lo += chunkElems {
			hi := min(lo+chunkElems, n)
			out = append(out, s.gen(t, key, lo, hi, f[:hi-lo], o)...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("gguf: synth: tensor %s: %w", name, ErrNotFound)
}

// gen generates values [lo, hi) of tensor t into f and encodes them into out, returning the
// encoded bytes (a prefix of out).
func (s SynthSpec) gen(t TensorInfo, key, lo, hi uint64, f []float32, out []byte) []byte {
	if len(t.Dims) == 1 {
		for i := range f {
			f[i] = 1
		}
	} else {
		SynthValues(f, key, lo, s.std())
	}
	n := int(hi - lo)
	switch t.Type {
	case TypeF16:
		dtype.F32sToF16s(out[:2*n], f)
		return out[:2*n]
	case TypeBF16:
		dtype.F32sToBF16s(out[:2*n], f)
		return out[:2*n]
	case TypeQ8_0:
		m := dtype.Q8_0Len(n)
		dtype.QuantizeQ8_0(out[:m], f)
		return out[:m]
	default:
		dtype.F32sToBytes(out[:4*n], f)
		return out[:4*n]
	}
}

// SynthKey derives a tensor's generator key from the seed and its name (FNV-1a, then mixed).
func SynthKey(seed uint64, name string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= 1099511628211
	}
	return mix64(seed ^ mix64(h))
}

// mix64 is SplitMix64's output function.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// SynthValues fills dst with the synthetic values at indexes start, start+1, ... of the stream
// with the given key: value i is std × (sum of the four 16-bit parts of SplitMix64(key, i),
// centered and scaled to unit variance). Exposed so tests elsewhere can regenerate weights.
func SynthValues(dst []float32, key, start uint64, std float32) {
	const gamma = 0x9e3779b97f4a7c15
	// Four uniform 16-bit integers sum to mean 131070 and standard deviation 65536/sqrt(3)
	// (to within 1e-9 relative).
	scale := std * float32(math.Sqrt(3)/65536)
	for i := range dst {
		x := mix64(key + (start+uint64(i)+1)*gamma)
		sum := int32(x&0xffff) + int32(x>>16&0xffff) + int32(x>>32&0xffff) + int32(x>>48)
		dst[i] = float32(sum-131070) * scale
	}
}
