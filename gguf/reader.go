package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"os"
	"sort"
	"unicode/utf8"
)

// Format constants from the GGUF specification (ggml's docs/gguf.md).
const (
	Magic            = "GGUF" // the first four bytes of every GGUF file
	DefaultAlignment = 32     // tensor data alignment when general.alignment is absent
	MaxDims          = 4      // the most dimensions a tensor may have (ggml's GGML_MAX_DIMS)
	MaxTensorName    = 63     // longest tensor name in bytes the writer produces (ggml's GGML_MAX_NAME-1)
	MaxKeyLen        = 65535  // longest metadata key in bytes

	// KeyAlignment is the metadata key holding the tensor data alignment (uint32).
	KeyAlignment = "general.alignment"
)

// Sanity limits beyond what the file size already bounds. They are far above what any real
// model needs and keep a hostile file from asking for absurd amounts of work.
const (
	maxTensorCount  = 1 << 20
	maxKVCount      = 1 << 20
	maxArrayDepth   = 8
	maxAlignment    = 1 << 20
	maxReadTensorNm = 64 // the spec's limit; the writer stays one byte below it, like ggml
)

// TensorInfo describes one tensor of a GGUF file.
type TensorInfo struct {
	Name string
	Type Type
	// Dims are the dimensions in ggml order: Dims[0] (ne[0]) is the fastest-varying index, the
	// length of one row. A weight matrix with n_out outputs and n_in inputs is {n_in, n_out}.
	Dims []uint64
	// Offset is the absolute file offset of the tensor's first byte (the spec stores it relative
	// to the tensor data section; the reader adds the section's start).
	Offset uint64
	// Size is the tensor's size in bytes.
	Size uint64
}

// Elements returns the number of values in the tensor.
func (t TensorInfo) Elements() uint64 {
	n := uint64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// File is a parsed GGUF file: its metadata, tensor infos and the bytes they point into.
//
// A File is read-only after parsing and safe for concurrent use. Byte slices it hands out
// (TensorData) alias the file's memory: for a File from OpenFile they are valid until Close and
// must never be written (the mapping is read-only; a write faults). For a File from Parse they
// alias the caller's slice.
type File struct {
	Version    uint32       // 2 or 3
	KV         []KV         // metadata in file order
	Tensors    []TensorInfo // tensor infos in file order
	Alignment  uint64       // general.alignment, or DefaultAlignment
	DataOffset uint64       // absolute offset of the tensor data section
	Size       uint64       // file size in bytes

	data    []byte
	unmap   func() error
	kvIdx   map[string]int
	tensIdx map[string]int
}

// OpenFile maps the GGUF file at path read-only and parses it. Close releases the mapping.
// On systems without mmap (or when mapping fails) the file is read into memory instead. The
// file must not be truncated or rewritten in place while it is open (reading a mapped page that
// no longer exists faults); replacing it by rename, as WriteFileAtomic does, is safe.
func OpenFile(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("gguf: %s is not a regular file", path)
	}
	data, unmap, err := mapFile(fh, st.Size())
	if err != nil {
		return nil, fmt.Errorf("gguf: map %s: %w", path, err)
	}
	f, err := Parse(data)
	if err != nil {
		if unmap != nil {
			unmap()
		}
		return nil, fmt.Errorf("gguf: %s: %w", path, err)
	}
	f.unmap = unmap
	return f, nil
}

// Close releases the file's mapping; byte slices from TensorData become invalid (reading them
// afterwards faults). Close is idempotent but not safe to call concurrently with other methods.
func (f *File) Close() error {
	u := f.unmap
	f.unmap = nil
	f.data = nil
	if u != nil {
		return u()
	}
	return nil
}

// Get returns the metadata value for key.
func (f *File) Get(key string) (Value, bool) {
	i, ok := f.kvIdx[key]
	if !ok {
		return Value{}, false
	}
	return f.KV[i].Value, true
}

// Tensor returns the info of the named tensor.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := f.tensIdx[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Tensors[i], true
}

// TensorData returns the bytes of tensor t (which must come from this File), aliasing the file:
// valid until Close, never to be written.
func (f *File) TensorData(t TensorInfo) []byte {
	return f.data[t.Offset : t.Offset+t.Size : t.Offset+t.Size]
}

// Parse parses a whole GGUF file held in data. The File aliases data; the caller keeps it alive
// and unchanged while the File is used. Every count, length and offset is checked against
// len(data) and the sanity limits; a bad file yields an error wrapping ErrFormat or ErrUnsupported
// that names the key or tensor and the offset, never a panic.
func Parse(data []byte) (*File, error) {
	r := &cursor{b: data}
	magic, err := r.bytes(4, "magic")
	if err != nil {
		return nil, err
	}
	if string(magic) != Magic {
		return nil, fmt.Errorf("%w: bad magic %q at offset 0, want %q", ErrFormat, magic, Magic)
	}
	version, err := r.u32("version")
	if err != nil {
		return nil, err
	}
	switch {
	case version == 2 || version == 3:
	case version == 1:
		return nil, fmt.Errorf("%w: GGUF version 1 (only versions 2 and 3 are read)", ErrUnsupported)
	case bits.ReverseBytes32(version) == 2 || bits.ReverseBytes32(version) == 3:
		return nil, fmt.Errorf("%w: big-endian GGUF (version field %#08x)", ErrUnsupported, version)
	default:
		return nil, fmt.Errorf("%w: GGUF version %d (only versions 2 and 3 are read)", ErrUnsupported, version)
	}
	nTensors, err := r.u64("tensor_count")
	if err != nil {
		return nil, err
	}
	nKV, err := r.u64("metadata_kv_count")
	if err != nil {
		return nil, err
	}
	// Each KV takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at least
	// 8 + 4 + 8 + 4 + 8, so counts beyond what the file could hold are refused before allocating.
	if nKV > maxKVCount || nKV > r.remaining()/13 {
		return nil, fmt.Errorf("%w: metadata_kv_count %d at offset 16 is impossible for a file of %d bytes", ErrFormat, nKV, len(data))
	}
	if nTensors > maxTensorCount || nTensors > r.remaining()/32 {
		return nil, fmt.Errorf("%w: tensor_count %d at offset 8 is impossible for a file of %d bytes", ErrFormat, nTensors, len(data))
	}
	f := &File{
		Version: version, Size: uint64(len(data)), data: data,
		KV: make([]KV, 0, nKV), Tensors: make([]TensorInfo, 0, nTensors),
		kvIdx: make(map[string]int, nKV), tensIdx: make(map[string]int, nTensors),
	}
	for i := uint64(0); i < nKV; i++ {
		at := r.off
		key, err := r.str("metadata key", MaxKeyLen)
		if err != nil {
			return nil, fmt.Errorf("metadata pair %d: %w", i, err)
		}
		if err := checkKey(key); err != nil {
			return nil, fmt.Errorf("%w: metadata key at offset %d: %v", ErrFormat, at, err)
		}
		if _, dup := f.kvIdx[key]; dup {
			return nil, fmt.Errorf("%w: duplicate metadata key %q at offset %d", ErrFormat, key, at)
		}
		vt, err := r.u32("value type of " + key)
		if err != nil {
			return nil, err
		}
		v, err := r.value(ValueType(vt), key, 0)
		if err != nil {
			return nil, err
		}
		f.kvIdx[key] = len(f.KV)
		f.KV = append(f.KV, KV{Key: key, Value: v})
	}

	f.Alignment = DefaultAlignment
	if v, ok := f.Get(KeyAlignment); ok {
		a, isU32 := v.Data.(uint32)
		if v.Type != TypeUint32 || !isU32 {
			return nil, fmt.Errorf("%w: %s has type %s, want uint32", ErrFormat, KeyAlignment, v.Type)
		}
		if a == 0 || a%8 != 0 || a&(a-1) != 0 || a > maxAlignment {
			return nil, fmt.Errorf("%w: %s = %d is not a power of two multiple of 8 up to %d", ErrFormat, KeyAlignment, a, maxAlignment)
		}
		f.Alignment = uint64(a)
	}

	for i := uint64(0); i < nTensors; i++ {
		at := r.off
		name, err := r.str("tensor name", maxReadTensorNm)
		if err != nil {
			return nil, fmt.Errorf("tensor info %d: %w", i, err)
		}
		if name == "" || !utf8.ValidString(name) {
			return nil, fmt.Errorf("%w: tensor info %d at offset %d: name %q is empty or not UTF-8", ErrFormat, i, at, name)
		}
		if _, dup := f.tensIdx[name]; dup {
			return nil, fmt.Errorf("%w: duplicate tensor %q at offset %d", ErrFormat, name, at)
		}
		nd, err := r.u32("n_dimensions of tensor " + name)
		if err != nil {
			return nil, err
		}
		if nd == 0 || nd > MaxDims {
			return nil, fmt.Errorf("%w: tensor %s at offset %d has %d dimensions, want 1 to %d", ErrFormat, name, at, nd, MaxDims)
		}
		dims := make([]uint64, nd)
		for d := range dims {
			if dims[d], err = r.u64("dimension of tensor " + name); err != nil {
				return nil, err
			}
		}
		t, err := r.u32("type of tensor " + name)
		if err != nil {
			return nil, err
		}
		typ := Type(t)
		if !typ.Supported() {
			return nil, fmt.Errorf("%w: tensor %s has type %s, which driftstore does not support yet", ErrUnsupported, name, typ)
		}
		size, err := dataSize(typ, dims, f.Size)
		if err != nil {
			return nil, fmt.Errorf("tensor %s at offset %d: %w", name, at, err)
		}
		off, err := r.u64("offset of tensor " + name)
		if err != nil {
			return nil, err
		}
		if off%f.Alignment != 0 {
			return nil, fmt.Errorf("%w: tensor %s data offset %d is not a multiple of the alignment %d", ErrFormat, name, off, f.Alignment)
		}
		f.tensIdx[name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, TensorInfo{Name: name, Type: typ, Dims: dims, Offset: off, Size: size})
	}

	// The data section starts at the next multiple of the alignment after the infos.
	f.DataOffset = alignUp(r.off, f.Alignment)
	if nTensors > 0 && f.DataOffset > f.Size {
		return nil, fmt.Errorf("%w: tensor data section would start at offset %d, past the end of the %d-byte file", ErrFormat, f.DataOffset, f.Size)
	}
	avail := f.Size - min(f.DataOffset, f.Size)
	for i := range f.Tensors {
		t := &f.Tensors[i]
		if t.Offset > avail || t.Size > avail-t.Offset {
			return nil, fmt.Errorf("%w: tensor %s (%d bytes at data offset %d) runs past the end of the file (%d data bytes, file truncated?)", ErrFormat, t.Name, t.Size, t.Offset, avail)
		}
		t.Offset += f.DataOffset
	}
	order := make([]int, len(f.Tensors))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return f.Tensors[order[a]].Offset < f.Tensors[order[b]].Offset })
	for k := 1; k < len(order); k++ {
		p, q := f.Tensors[order[k-1]], f.Tensors[order[k]]
		if p.Offset+p.Size > q.Offset {
			return nil, fmt.Errorf("%w: tensors %s and %s overlap at offset %d", ErrFormat, p.Name, q.Name, q.Offset)
		}
	}
	return f, nil
}

func alignUp(off, a uint64) uint64 { return off + (a-off%a)%a }

func checkKey(k string) error {
	if k == "" {
		return fmt.Errorf("empty key")
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("key %q has a byte %#02x that is not printable ASCII", truncate(k), c)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// cursor reads little-endian values from a byte slice with bounds checks.
type cursor struct {
	b   []byte
	off uint64
}

func (r *cursor) remaining() uint64 { return uint64(len(r.b)) - r.off }

func (r *cursor) bytes(n uint64, what string) ([]byte, error) {
	if n > r.remaining() {
		return nil, fmt.Errorf("%w: %s at offset %d needs %d bytes, only %d left (file truncated?)", ErrFormat, what, r.off, n, r.remaining())
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

func (r *cursor) u32(what string) (uint32, error) {
	p, err := r.bytes(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(p), nil
}

func (r *cursor) u64(what string) (uint64, error) {
	p, err := r.bytes(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

// str reads a GGUF string of at most max bytes.
func (r *cursor) str(what string, max uint64) (string, error) {
	at := r.off
	n, err := r.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > max {
		return "", fmt.Errorf("%w: %s at offset %d is %d bytes long, limit %d", ErrFormat, what, at, n, max)
	}
	p, err := r.bytes(n, what)
	if err != nil {
		return "", err
	}
	return string(p), nil
}

// minEncoded is the fewest bytes one value of type t can take.
func minEncoded(t ValueType) uint64 {
	switch t {
	case TypeString:
		return 8
	case TypeArray:
		return 12
	}
	return uint64(t.fixedSize())
}

// value reads one value of type t for key.
func (r *cursor) value(t ValueType, key string, depth int) (Value, error) {
	at := r.off
	if t == TypeArray {
		if depth >= maxArrayDepth {
			return Value{}, fmt.Errorf("%w: key %s: arrays nested deeper than %d at offset %d", ErrFormat, key, maxArrayDepth, at)
		}
		et, err := r.u32("array element type of " + key)
		if err != nil {
			return Value{}, err
		}
		elem := ValueType(et)
		if minEncoded(elem) == 0 {
			return Value{}, fmt.Errorf("%w: key %s: array element type %d at offset %d is not a GGUF value type", ErrFormat, key, et, at)
		}
		n, err := r.u64("array length of " + key)
		if err != nil {
			return Value{}, err
		}
		if n > r.remaining()/minEncoded(elem) {
			return Value{}, fmt.Errorf("%w: key %s: array of %d %s at offset %d does not fit in the %d bytes left", ErrFormat, key, n, elem, at, r.remaining())
		}
		return r.array(elem, int(n), key, depth)
	}
	switch sz := t.fixedSize(); {
	case t == TypeString:
		s, err := r.str("string value of "+key, r.remaining())
		return String(s), err
	case sz == 0:
		return Value{}, fmt.Errorf("%w: key %s: value type %d at offset %d is not a GGUF value type", ErrFormat, key, uint32(t), at)
	default:
		p, err := r.bytes(uint64(sz), "value of "+key)
		if err != nil {
			return Value{}, err
		}
		return scalar(t, p, key, at)
	}
}

func scalar(t ValueType, p []byte, key string, at uint64) (Value, error) {
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return Uint8(p[0]), nil
	case TypeInt8:
		return Int8(int8(p[0])), nil
	case TypeBool:
		if p[0] > 1 {
			return Value{}, fmt.Errorf("%w: key %s: bool byte %d at offset %d is neither 0 nor 1", ErrFormat, key, p[0], at)
		}
		return Bool(p[0] == 1), nil
	case TypeUint16:
		return Uint16(le.Uint16(p)), nil
	case TypeInt16:
		return Int16(int16(le.Uint16(p))), nil
	case TypeUint32:
		return Uint32(le.Uint32(p)), nil
	case TypeInt32:
		return Int32(int32(le.Uint32(p))), nil
	case TypeFloat32:
		return Float32(math.Float32frombits(le.Uint32(p))), nil
	case TypeUint64:
		return Uint64(le.Uint64(p)), nil
	case TypeInt64:
		return Int64(int64(le.Uint64(p))), nil
	case TypeFloat64:
		return Float64(math.Float64frombits(le.Uint64(p))), nil
	}
	return Value{}, fmt.Errorf("%w: key %s: value type %d at offset %d", ErrFormat, key, uint32(t), at)
}

// array reads n elements of type elem; n has been checked against the bytes left.
func (r *cursor) array(elem ValueType, n int, key string, depth int) (Value, error) {
	switch elem {
	case TypeString:
		out := make([]string, n)
		for i := range out {
			s, err := r.str(fmt.Sprintf("element %d of %s", i, key), r.remaining())
			if err != nil {
				return Value{}, err
			}
			out[i] = s
		}
		return Array(elem, out), nil
	case TypeArray:
		out := make([]Value, n)
		for i := range out {
			v, err := r.value(TypeArray, key, depth+1)
			if err != nil {
				return Value{}, err
			}
			out[i] = v
		}
		return Array(elem, out), nil
	}
	sz := uint64(elem.fixedSize())
	at := r.off
	p, err := r.bytes(uint64(n)*sz, "array of "+key)
	if err != nil {
		return Value{}, err
	}
	le := binary.LittleEndian
	switch elem {
	case TypeUint8:
		return Array(elem, append([]uint8(nil), p...)), nil
	case TypeInt8:
		out := make([]int8, n)
		for i := range out {
			out[i] = int8(p[i])
		}
		return Array(elem, out), nil
	case TypeBool:
		out := make([]bool, n)
		for i := range out {
			if p[i] > 1 {
				return Value{}, fmt.Errorf("%w: key %s: bool element %d byte %d at offset %d is neither 0 nor 1", ErrFormat, key, i, p[i], at+uint64(i))
			}
			out[i] = p[i] == 1
		}
		return Array(elem, out), nil
	case TypeUint16:
		out := make([]uint16, n)
		for i := range out {
			out[i] = le.Uint16(p[2*i:])
		}
		return Array(elem, out), nil
	case TypeInt16:
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(le.Uint16(p[2*i:]))
		}
		return Array(elem, out), nil
	case TypeUint32:
		out := make([]uint32, n)
		for i := range out {
			out[i] = le.Uint32(p[4*i:])
		}
		return Array(elem, out), nil
	case TypeInt32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(le.Uint32(p[4*i:]))
		}
		return Array(elem, out), nil
	case TypeFloat32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(p[4*i:]))
		}
		return Array(elem, out), nil
	case TypeUint64:
		out := make([]uint64, n)
		for i := range out {
			out[i] = le.Uint64(p[8*i:])
		}
		return Array(elem, out), nil
	case TypeInt64:
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(le.Uint64(p[8*i:]))
		}
		return Array(elem, out), nil
	case TypeFloat64:
		out := make([]float64, n)
		for i := range out {
			out[i] = math.Float64frombits(le.Uint64(p[8*i:]))
		}
		return Array(elem, out), nil
	}
	return Value{}, fmt.Errorf("%w: key %s: array element type %d", ErrFormat, key, uint32(elem))
}
