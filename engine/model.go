package engine

import (
	"fmt"
	"sync"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/engine/cpu"
	"github.com/driftstore/driftstore/gguf"
)

// Hyper is what the engine needs of a model's hyperparameters.
type Hyper struct {
	Layers, Dim, Heads, KVHeads, HeadDim, FFN, Vocab int
	CtxMax                                           int // context length; positions beyond it are refused
	RopeBase, Eps                                    float32
}

// Model is a GGUF model with its weights loaded by the engine's backend, shared by any number
// of instances (safe for concurrent use). Close it after its instances.
type Model struct {
	engine  *Engine
	src     *gguf.Model
	hyper   Hyper
	tensors *Tensors
	weights Weights

	mu     sync.Mutex
	closed bool
}

// LoadModel opens the GGUF file at path and loads its weights into the engine's backend.
// The file stays mapped until Close.
func (e *Engine) LoadModel(path string) (*Model, error) {
	src, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("engine: load model: %w", err)
	}
	m, err := e.NewModel(src)
	if err != nil {
		src.Close()
		return nil, err
	}
	return m, nil
}

// NewModel loads an opened GGUF model into the engine's backend. The Model takes over src:
// Model.Close closes it. On error src stays the caller's to close.
func (e *Engine) NewModel(src *gguf.Model) (*Model, error) {
	gh := src.Hyper
	if gh.RopeDim != gh.HeadDim {
		return nil, fmt.Errorf("engine: %w: partial rotary embedding (rope.dimension_count %d < head dim %d)",
			gguf.ErrUnsupported, gh.RopeDim, gh.HeadDim)
	}
	h := Hyper{
		Layers: gh.Layers, Dim: gh.Dim, Heads: gh.Heads, KVHeads: gh.KVHeads, HeadDim: gh.HeadDim,
		FFN: gh.FFN, Vocab: gh.Vocab, CtxMax: gh.Context, RopeBase: gh.RopeTheta, Eps: gh.RMSEps,
	}
	t := &Tensors{Hyper: h, W: make([]cpu.Weights, wiGlobal(h.Layers, nGlobals))}
	set := func(i int, name string) error {
		tt, err := src.Tensor(name)
		if err != nil {
			return err
		}
		return setTensor(&t.W[i], tt)
	}
	for l := 0; l < h.Layers; l++ {
		for k, kind := range gguf.BlockKinds {
			if err := set(l*kindsPerLayer+k, gguf.BlockTensor(l, kind)); err != nil {
				return nil, fmt.Errorf("engine: load model: %w", err)
			}
		}
	}
	if err := set(wiGlobal(h.Layers, gTokenEmbd), gguf.TensorTokenEmbd); err != nil {
		return nil, fmt.Errorf("engine: load model: %w", err)
	}
	if err := set(wiGlobal(h.Layers, gOutputNorm), gguf.TensorOutputNorm); err != nil {
		return nil, fmt.Errorf("engine: load model: %w", err)
	}
	if err := setTensor(&t.W[wiGlobal(h.Layers, gOutput)], src.Output()); err != nil {
		return nil, fmt.Errorf("engine: load model: %w", err)
	}
	w, err := e.backend.Load(t)
	if err != nil {
		return nil, fmt.Errorf("engine: %s backend: load model: %w", e.backend.Name(), err)
	}
	return &Model{engine: e, src: src, hyper: h, tensors: t, weights: w}, nil
}

// setTensor describes a gguf tensor as cpu.Weights: a vector (norm) as 1×n, a matrix with ggml
// dims {cols, rows} as rows×cols.
func setTensor(w *cpu.Weights, t gguf.Tensor) error {
	switch len(t.Dims) {
	case 1:
		*w = cpu.Weights{Type: cpu.DType(t.Type), Rows: 1, Cols: int(t.Dims[0]), Data: t.Data}
	case 2:
		*w = cpu.Weights{Type: cpu.DType(t.Type), Rows: int(t.Dims[1]), Cols: int(t.Dims[0]), Data: t.Data}
	default:
		return fmt.Errorf("tensor %s has %d dims", t.Name, len(t.Dims))
	}
	if err := w.Validate(); err != nil {
		return fmt.Errorf("tensor %s: %w", t.Name, err)
	}
	return nil
}

// Hyper returns the model's hyperparameters.
func (m *Model) Hyper() Hyper { return m.hyper }

// GGUF returns the underlying GGUF model (for its tokenizer and metadata). It is closed with m.
func (m *Model) GGUF() *gguf.Model { return m.src }

// Fingerprint is the model identity a checkpoint records (gguf.Model.Fingerprint: hashes every
// tensor byte on first call, cached after).
func (m *Model) Fingerprint() cas.Digest { return m.src.Fingerprint() }

// Engine returns the engine the model was loaded into.
func (m *Model) Engine() *Engine { return m.engine }

// Close releases the weights and unmaps the file. Instances of the model must be closed first.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	err := m.weights.Close()
	if cerr := m.src.Close(); err == nil {
		err = cerr
	}
	return err
}
