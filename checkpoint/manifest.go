package checkpoint

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
)

// Kind is the manifest kind of a checkpoint.
const Kind = "checkpoint"

// SchemaVersion is the checkpoint schema this code writes and reads (metadata "checkpoint.schema").
const SchemaVersion = 1

// Metadata keys of a checkpoint manifest (see doc.go).
const (
	KeySchema     = "checkpoint.schema"
	KeyModel      = "model.fingerprint"
	KeyModelSrc   = "model.source"
	KeyVocab      = "model.vocab"
	KeyGuest      = "guest.fingerprint"
	KeyGuestABI   = "guest.abi"
	KeyLayers     = "kv.layers"
	KeyKVHeads    = "kv.kv_heads"
	KeyHeadDim    = "kv.head_dim"
	KeyBlockSize  = "kv.block_size"
	KeyBlockBytes = "kv.block_bytes"
	KeyDType      = "kv.dtype"
	KeyPosition   = "position"
	KeyTokens     = "tokens"
	KeyTemp       = "sampler.temp"
	KeyTopK       = "sampler.top_k"
	KeyTopP       = "sampler.top_p"
	KeySeed       = "sampler.seed"
	KeyRNG        = "sampler.rng"
	KeyLogits     = "logits"
	KeyTopLogits  = "logits.top"
	KeyStateFmt   = "state.format"
)

// RegionState is the name of the region holding the guest's small state.
const RegionState = "state"

// KVRegionName is the name of layer l's KV region: "kv/L".
func KVRegionName(l int) string { return "kv/" + strconv.Itoa(l) }

// Checkpoint is the decoded form of a checkpoint manifest. A Checkpoint made by Capture or
// Snapshot.Commit shares its KV and State lists with the index that committed it: read
// them, never modify them.
type Checkpoint struct {
	ID          index.ID   // the manifest's ID (zero until committed or parsed)
	Parent      index.ID   // the checkpoint this one follows; zero for none
	Model       cas.Digest // model fingerprint
	ModelSource string     // where the model came from ("builtin:…" or a file path); informational
	Vocab       int
	Guest       cas.Digest // guest fingerprint
	GuestABI    int
	Layout      Layout
	Position    int
	Tokens      []int32 // the token history, Position ids
	Sampler     engine.Sampler
	RNG         [4]uint64
	HasLogits   bool
	// TopLogits > 0: the state keeps only the TopLogits best of the last logits (a top-logits
	// chunk, see DecodeTopLogits) instead of the whole vector; 0: the whole vector (or none,
	// without HasLogits). Metadata "logits.top", absent for 0.
	TopLogits int
	// KV[l] lists layer l's block chunks in position order: Layout.Blocks(Position) of them, each
	// Layout.BlockBytes long.
	KV [][]index.ChunkRef
	// State is the guest's small state (see state.go) as chunks: Capture writes the head, then
	// the logits in chunks of at most LogitsChunk bytes, or with TopLogits the head and the
	// top-logits chunk (exactly those two); earlier checkpoints hold one chunk.
	State []index.ChunkRef
}

// KVBytes is the KV bytes the checkpoint holds (all block regions).
func (c *Checkpoint) KVBytes() int64 {
	return int64(c.Layout.Layers) * int64(c.Layout.Blocks(c.Position)) * int64(c.Layout.BlockBytes)
}

// StateBytes is the length of the small state.
func (c *Checkpoint) StateBytes() int64 {
	var n int64
	for _, r := range c.State {
		n += r.Length
	}
	return n
}

// Chunks is the number of chunk references (KV blocks and state).
func (c *Checkpoint) Chunks() int {
	n := len(c.State)
	for _, l := range c.KV {
		n += len(l)
	}
	return n
}

// Manifest builds the index manifest of c. It checks c's consistency first. The manifest
// shares no memory with c.
func (c *Checkpoint) Manifest() (*index.Manifest, error) {
	return c.manifest(slices.Clone)
}

// deferred builds the index manifest of c, sharing c's chunk lists with it, for a commit to
// encode (index.Defer): c's KV and State must not change afterwards.
func (c *Checkpoint) deferred() (*index.Deferred, error) {
	m, err := c.manifest(func(refs []index.ChunkRef) []index.ChunkRef { return refs })
	if err != nil {
		return nil, err
	}
	return index.Defer(m), nil
}

// manifest is Manifest, with each of c's chunk lists passed through own.
func (c *Checkpoint) manifest(own func([]index.ChunkRef) []index.ChunkRef) (*index.Manifest, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	m := &index.Manifest{Kind: Kind, Parent: c.Parent, Meta: make(map[string]index.Value, 24),
		Regions: make([]index.Region, 0, len(c.KV)+1)}
	for l, blocks := range c.KV {
		m.Regions = append(m.Regions, index.Region{Name: KVRegionName(l), Chunks: own(blocks)})
	}
	m.Regions = append(m.Regions, index.Region{Name: RegionState, Chunks: own(c.State)})
	u := func(k string, v int) { m.Meta[k] = index.Uint64(uint64(v)) }
	m.Meta[KeySchema] = index.Uint64(SchemaVersion)
	m.Meta[KeyModel] = index.DigestValue(c.Model)
	if c.ModelSource != "" {
		m.Meta[KeyModelSrc] = index.String(c.ModelSource)
	}
	u(KeyVocab, c.Vocab)
	m.Meta[KeyGuest] = index.DigestValue(c.Guest)
	u(KeyGuestABI, c.GuestABI)
	u(KeyLayers, c.Layout.Layers)
	u(KeyKVHeads, c.Layout.KVHeads)
	u(KeyHeadDim, c.Layout.HeadDim)
	u(KeyBlockSize, c.Layout.BlockSize)
	u(KeyBlockBytes, c.Layout.BlockBytes)
	m.Meta[KeyDType] = index.String(c.Layout.DType)
	u(KeyPosition, c.Position)
	m.Meta[KeyTokens] = index.Bytes(EncodeTokens(c.Tokens))
	m.Meta[KeyTemp] = index.Float64(float64(c.Sampler.Temp))
	u(KeyTopK, c.Sampler.TopK)
	m.Meta[KeyTopP] = index.Float64(float64(c.Sampler.TopP))
	m.Meta[KeySeed] = index.Uint64(c.Sampler.Seed)
	rng := make([]byte, 32)
	for i, w := range c.RNG {
		binary.LittleEndian.PutUint64(rng[8*i:], w)
	}
	m.Meta[KeyRNG] = index.Bytes(rng)
	m.Meta[KeyLogits] = index.Bool(c.HasLogits)
	if c.TopLogits > 0 {
		u(KeyTopLogits, c.TopLogits)
	}
	m.Meta[KeyStateFmt] = index.Uint64(stateVersion)
	return m, nil // index.PutManifest encodes it and so checks the encoding's rules
}

// validate checks the regions against the layout and position.
func (c *Checkpoint) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadCheckpoint, fmt.Sprintf(format, a...))
	}
	if err := c.Layout.Validate(); err != nil {
		return err
	}
	if c.Position < 0 || len(c.Tokens) != c.Position {
		return bad("position %d with %d tokens in the history", c.Position, len(c.Tokens))
	}
	if c.Vocab <= 0 {
		return bad("vocabulary %d", c.Vocab)
	}
	for i, t := range c.Tokens {
		if t < 0 || int(t) >= c.Vocab {
			return bad("token %d at position %d is outside the vocabulary of %d", t, i, c.Vocab)
		}
	}
	if len(c.KV) != c.Layout.Layers {
		return bad("%d KV regions for %d layers", len(c.KV), c.Layout.Layers)
	}
	nb := c.Layout.Blocks(c.Position)
	for l, blocks := range c.KV {
		if len(blocks) != nb {
			return bad("layer %d has %d blocks, position %d needs %d", l, len(blocks), c.Position, nb)
		}
		for b, r := range blocks {
			if r.Length != int64(c.Layout.BlockBytes) || r.Digest.IsZero() {
				return bad("layer %d block %d: chunk %s of %d bytes, want %d", l, b, r.Digest, r.Length, c.Layout.BlockBytes)
			}
		}
	}
	head := int64(stateFixed + 4*c.Position)
	want := head
	switch {
	case c.TopLogits < 0 || c.TopLogits > c.Vocab || (c.TopLogits > 0 && !c.HasLogits):
		return bad("%d top logits for a vocabulary of %d (logits %v)", c.TopLogits, c.Vocab, c.HasLogits)
	case c.TopLogits > 0:
		want += TopLogitBytes * int64(c.TopLogits)
		if len(c.State) != 2 || c.State[0].Length != head {
			return bad("state region of %d chunks for the head and %d top logits, want the head's %d bytes and one chunk", len(c.State), c.TopLogits, head)
		}
	case c.HasLogits:
		want += 4 * int64(c.Vocab)
	}
	if got := c.StateBytes(); got != want {
		return bad("state region of %d bytes, want %d", got, want)
	}
	if c.Sampler.TopK < 0 || math.IsNaN(float64(c.Sampler.Temp)) || math.IsNaN(float64(c.Sampler.TopP)) {
		return bad("sampler settings %+v", c.Sampler)
	}
	return nil
}

// Parse decodes a checkpoint manifest (kind "checkpoint") with ID id. Anything missing or
// inconsistent gives an error wrapping ErrBadCheckpoint.
func Parse(id index.ID, m *index.Manifest) (*Checkpoint, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: manifest %s: %s", ErrBadCheckpoint, id, fmt.Sprintf(format, a...))
	}
	if m.Kind != Kind {
		return nil, bad("kind %q, not %q", m.Kind, Kind)
	}
	var err error
	uint := func(k string, max uint64) int {
		v, ok := m.Meta[k].AsUint64()
		if !ok || v > max {
			if err == nil {
				err = bad("metadata %q missing, of the wrong type or out of range", k)
			}
			return 0
		}
		return int(v)
	}
	str := func(k string, optional bool) string {
		v, ok := m.Meta[k].AsString()
		if !ok && !optional && err == nil {
			err = bad("metadata %q missing or not a string", k)
		}
		return v
	}
	dig := func(k string) cas.Digest {
		v, ok := m.Meta[k].AsDigest()
		if !ok && err == nil {
			err = bad("metadata %q missing or not a digest", k)
		}
		return v
	}
	flt := func(k string) float32 {
		v, ok := m.Meta[k].AsFloat64()
		if !ok && err == nil {
			err = bad("metadata %q missing or not a float", k)
		}
		return float32(v)
	}
	if v := uint(KeySchema, math.MaxInt32); err == nil && v != SchemaVersion {
		return nil, bad("checkpoint schema %d, this driftstore reads %d", v, SchemaVersion)
	}
	if v := uint(KeyStateFmt, math.MaxInt32); err == nil && v != stateVersion {
		return nil, bad("guest state format %d, this driftstore reads %d", v, stateVersion)
	}
	const maxInt = math.MaxInt32
	c := &Checkpoint{
		ID: id, Parent: m.Parent,
		Model: dig(KeyModel), ModelSource: str(KeyModelSrc, true), Vocab: uint(KeyVocab, maxInt),
		Guest: dig(KeyGuest), GuestABI: uint(KeyGuestABI, maxInt),
		Layout: Layout{
			Layers: uint(KeyLayers, 1<<16), KVHeads: uint(KeyKVHeads, 1<<16), HeadDim: uint(KeyHeadDim, 1<<16),
			BlockSize: uint(KeyBlockSize, 1<<16), BlockBytes: uint(KeyBlockBytes, index.MaxChunkLength), DType: str(KeyDType, false),
		},
		Position: uint(KeyPosition, maxInt),
		Sampler:  engine.Sampler{Temp: flt(KeyTemp), TopK: uint(KeyTopK, maxInt), TopP: flt(KeyTopP)},
	}
	if s, ok := m.Meta[KeySeed].AsUint64(); ok {
		c.Sampler.Seed = s
	} else if err == nil {
		err = bad("metadata %q missing", KeySeed)
	}
	if hl, ok := m.Meta[KeyLogits].AsBool(); ok {
		c.HasLogits = hl
	} else if err == nil {
		err = bad("metadata %q missing", KeyLogits)
	}
	if _, ok := m.Meta[KeyTopLogits]; ok {
		// absent: the whole vector (every checkpoint before top logits)
		if c.TopLogits = uint(KeyTopLogits, maxInt); err == nil && c.TopLogits == 0 {
			err = bad("metadata %q is 0", KeyTopLogits)
		}
	}
	if err != nil {
		return nil, err
	}
	tb, ok := m.Meta[KeyTokens].AsBytes()
	if !ok || len(tb) != 4*c.Position {
		return nil, bad("token history of %d bytes for position %d", len(tb), c.Position)
	}
	c.Tokens = DecodeTokens(tb)
	rb, ok := m.Meta[KeyRNG].AsBytes()
	if !ok || len(rb) != 32 {
		return nil, bad("RNG state missing or not 32 bytes")
	}
	for i := range c.RNG {
		c.RNG[i] = binary.LittleEndian.Uint64(rb[8*i:])
	}
	if len(m.Regions) != c.Layout.Layers+1 {
		return nil, bad("%d regions, want %d KV layers and the state", len(m.Regions), c.Layout.Layers)
	}
	c.KV = make([][]index.ChunkRef, c.Layout.Layers)
	for l := range c.KV {
		r := m.Regions[l]
		if r.Name != KVRegionName(l) {
			return nil, bad("region %d is %q, want %q", l, r.Name, KVRegionName(l))
		}
		c.KV[l] = slices.Clone(r.Chunks)
	}
	st := m.Regions[c.Layout.Layers]
	if st.Name != RegionState {
		return nil, bad("last region is %q, want %q", st.Name, RegionState)
	}
	c.State = slices.Clone(st.Chunks)
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", id, err)
	}
	return c, nil
}

// Load reads checkpoint id from the index.
func Load(ix *index.Index, id index.ID) (*Checkpoint, error) {
	m, err := ix.Manifest(id)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint: %w", err)
	}
	return Parse(id, m)
}

// EncodeTokens encodes token ids as little-endian int32s.
func EncodeTokens(ts []int32) []byte {
	b := make([]byte, 4*len(ts))
	for i, t := range ts {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(t))
	}
	return b
}

// DecodeTokens decodes little-endian int32s (len(b) must be a multiple of 4).
func DecodeTokens(b []byte) []int32 {
	ts := make([]int32, len(b)/4)
	for i := range ts {
		ts[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return ts
}
