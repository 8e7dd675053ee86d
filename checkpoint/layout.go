// Package checkpoint turns the inference state of a live engine instance into a checkpoint: one
// chunk per KV block region, the guest's small state (position, token history, sampler settings,
// RNG state, last logits) as chunks too, and a manifest of kind "checkpoint" in the index that
// names them all, its parent, and what a restore must check (model and guest fingerprints, KV
// layout). See doc.go for the manifest schema.
package checkpoint

import (
	"errors"
	"fmt"
	"strings"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/engine"
)

// Layout is the KV cache layout a checkpoint was taken with. A restore needs an instance with
// exactly this layout: the chunks are the block regions' raw bytes.
type Layout struct {
	Layers     int    `json:"layers"`
	KVHeads    int    `json:"kv_heads"`
	HeadDim    int    `json:"head_dim"`
	BlockSize  int    `json:"block_size"`  // positions per block
	BlockBytes int    `json:"block_bytes"` // bytes of one block region (K then V)
	DType      string `json:"dtype"`       // "f16" or "f32"
}

// LayoutOf converts an engine layout.
func LayoutOf(l engine.KVLayout) Layout {
	return Layout{Layers: l.Layers, KVHeads: l.KVHeads, HeadDim: l.HeadDim, BlockSize: l.BlockSize,
		BlockBytes: l.BlockBytes, DType: l.Type.String()}
}

// ElemSize is the size of one KV element in bytes (2 for f16, 4 for f32), 0 for an unknown type.
func (l Layout) ElemSize() int {
	switch l.DType {
	case "f16":
		return 2
	case "f32":
		return 4
	}
	return 0
}

// Hint is the chunk store hint for this layout's KV blocks.
func (l Layout) Hint() cas.Hint {
	if l.DType == "f32" {
		return cas.HintFloat32
	}
	return cas.HintFloat16
}

// KVCodec selects how Capture asks the chunk store to encode KV blocks. It changes only the
// bytes at rest and the speed of capture and restore: chunk digests, manifests and checkpoint
// IDs are the same for every codec, so checkpoints taken with different codecs share chunks
// already stored in the other form (a chunk is stored once, in the form of its first Put).
type KVCodec string

const (
	// KVCodecDefault is KVCodecFloat.
	KVCodecDefault KVCodec = ""
	// KVCodecFloat hints the blocks as the layout's float type (Layout.Hint): float16 blocks go
	// to the float16 byte-plane codec (about 1.16× smaller on real KV; restore decodes at about
	// 0.9 GB/s a core), float32 blocks to zstd where it pays.
	KVCodecFloat KVCodec = "float"
	// KVCodecRaw gives no hint: the store tries plain zstd, which on KV almost never saves its
	// threshold, so the blocks stay raw and a restore reads them straight into place at copy
	// speed. More bytes at rest, the fastest restore.
	KVCodecRaw KVCodec = "raw"
)

// ParseKVCodec parses "float" or "raw" ("" is KVCodecDefault).
func ParseKVCodec(s string) (KVCodec, error) {
	switch c := KVCodec(s); c {
	case KVCodecDefault, KVCodecFloat, KVCodecRaw:
		return c, nil
	}
	return "", fmt.Errorf("checkpoint: KV codec %q: want float or raw", s)
}

// Hint is the chunk store hint for KV blocks of layout l under codec c.
func (c KVCodec) Hint(l Layout) cas.Hint {
	if c == KVCodecRaw {
		return cas.HintNone
	}
	return l.Hint()
}

// Blocks is the number of blocks per layer that hold positions [0, npos).
func (l Layout) Blocks(npos int) int {
	if l.BlockSize <= 0 {
		return 0
	}
	return (npos + l.BlockSize - 1) / l.BlockSize
}

// BytesPerToken is the KV bytes one position takes across all layers.
func (l Layout) BytesPerToken() int {
	return 2 * l.Layers * l.KVHeads * l.HeadDim * l.ElemSize()
}

// Validate checks the layout is self-consistent.
func (l Layout) Validate() error {
	if l.Layers <= 0 || l.KVHeads <= 0 || l.HeadDim <= 0 || l.BlockSize <= 0 || l.ElemSize() == 0 {
		return fmt.Errorf("%w: KV layout %s", ErrBadCheckpoint, l)
	}
	if want := 2 * l.BlockSize * l.KVHeads * l.HeadDim * l.ElemSize(); l.BlockBytes != want {
		return fmt.Errorf("%w: KV layout %s: block bytes %d, the shape gives %d", ErrBadCheckpoint, l, l.BlockBytes, want)
	}
	return nil
}

func (l Layout) String() string {
	return fmt.Sprintf("%d layers × %d KV heads × head dim %d, %s, %d positions per block (%d bytes)",
		l.Layers, l.KVHeads, l.HeadDim, l.DType, l.BlockSize, l.BlockBytes)
}

// Diff lists what differs between two layouts, as "name: a, want b" phrases (a from l, b from
// want); nil when they are equal.
func (l Layout) Diff(want Layout) []string {
	var d []string
	add := func(name string, a, b any) {
		if a != b {
			d = append(d, fmt.Sprintf("%s %v, instance has %v", name, a, b))
		}
	}
	add("KV dtype", l.DType, want.DType)
	add("KV layers", l.Layers, want.Layers)
	add("KV heads", l.KVHeads, want.KVHeads)
	add("KV head dim", l.HeadDim, want.HeadDim)
	add("KV block size", l.BlockSize, want.BlockSize)
	add("KV block bytes", l.BlockBytes, want.BlockBytes)
	return d
}

// Sentinel errors.
var (
	// ErrBadCheckpoint: a manifest is not a well-formed checkpoint (wrong kind, missing or
	// inconsistent metadata, regions that do not match the layout).
	ErrBadCheckpoint = errors.New("not a valid checkpoint")
	// ErrMismatch: a checkpoint does not fit the model, guest or instance it is meant for.
	// Returned wrapped in a *MismatchError naming what differs.
	ErrMismatch = errors.New("checkpoint does not match")
	// ErrEmpty: an instance at position 0 has nothing to checkpoint.
	ErrEmpty = errors.New("nothing to checkpoint")
)

// MismatchError names everything that differs between a checkpoint and the model, guest and
// KV layout it was to be restored with.
type MismatchError struct {
	Checkpoint cas.Digest
	Diffs      []string // "model fingerprint blake3:…, instance has blake3:…", "KV dtype f16, instance has f32"
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("checkpoint %s does not match: %s", e.Checkpoint, strings.Join(e.Diffs, "; "))
}

// Unwrap makes errors.Is(err, ErrMismatch) true.
func (e *MismatchError) Unwrap() error { return ErrMismatch }

// Target is what a checkpoint is checked against before it is restored.
type Target struct {
	Model  cas.Digest // the model's fingerprint
	Guest  cas.Digest // the guest's fingerprint
	Vocab  int
	Layout Layout
}

// Check compares the checkpoint with a target and returns a *MismatchError naming every
// difference, or nil.
func (c *Checkpoint) Check(t Target) error {
	var d []string
	if c.Model != t.Model {
		d = append(d, fmt.Sprintf("model fingerprint %s, instance has %s", c.Model, t.Model))
	}
	if c.Guest != t.Guest {
		d = append(d, fmt.Sprintf("guest fingerprint %s, instance has %s", c.Guest, t.Guest))
	}
	if c.Vocab != t.Vocab {
		d = append(d, fmt.Sprintf("vocabulary %d, instance has %d", c.Vocab, t.Vocab))
	}
	d = append(d, c.Layout.Diff(t.Layout)...)
	if len(d) > 0 {
		return &MismatchError{Checkpoint: c.ID, Diffs: d}
	}
	return nil
}
