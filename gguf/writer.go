package gguf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"unicode/utf8"
)

// Version is the GGUF version the writer produces.
const Version = 3

// Tensor is a tensor with its bytes: what Model.Tensor returns and what Write takes.
type Tensor struct {
	Name string
	Type Type
	Dims []uint64 // ggml order: Dims[0] is the row length
	Data []byte   // little-endian values or blocks of Type
}

// Info returns the tensor's info without an offset.
func (t Tensor) Info() TensorInfo {
	return TensorInfo{Name: t.Name, Type: t.Type, Dims: t.Dims, Size: uint64(len(t.Data))}
}

// Writer writes a GGUF v3 file in one pass: NewWriter writes the header, metadata and tensor
// infos, then the tensors' bytes follow in the declared order, each padded to the alignment.
// Tensor bytes may be written in pieces, so a file far larger than memory can be streamed.
//
// A Writer is not safe for concurrent use. After any error it refuses further writes.
type Writer struct {
	w       *bufio.Writer
	tensors []TensorInfo // Offset relative to the data section
	align   uint64
	cur     int    // index of the tensor being written; -1 before Begin
	written uint64 // bytes of tensor cur written so far
	pos     uint64 // bytes written to w
	size    uint64 // total file size
	err     error
}

// NewWriter validates the metadata and tensor declarations and writes everything up to the
// tensor data to w. The alignment is taken from kv's general.alignment (uint32, a power of two
// multiple of 8) when present, else DefaultAlignment. Each TensorInfo needs Name, Type and Dims;
// Offset and Size are computed (a nonzero Size that disagrees with Type and Dims is an error).
// The Writer does not close w.
func NewWriter(w io.Writer, kv []KV, tensors []TensorInfo) (*Writer, error) {
	wr := &Writer{w: bufio.NewWriterSize(w, 1<<20), align: DefaultAlignment, cur: -1}
	var hdr bytes.Buffer
	hdr.WriteString(Magic)
	le := binary.LittleEndian
	hdr.Write(le.AppendUint32(nil, Version))
	hdr.Write(le.AppendUint64(nil, uint64(len(tensors))))
	hdr.Write(le.AppendUint64(nil, uint64(len(kv))))
	seen := make(map[string]bool, len(kv))
	for _, p := range kv {
		if err := checkKey(p.Key); err != nil || len(p.Key) > MaxKeyLen {
			return nil, fmt.Errorf("gguf: write: bad metadata key %q", truncate(p.Key))
		}
		if seen[p.Key] {
			return nil, fmt.Errorf("gguf: write: duplicate metadata key %q", p.Key)
		}
		seen[p.Key] = true
		if p.Key == KeyAlignment {
			a, ok := p.Value.Data.(uint32)
			if p.Value.Type != TypeUint32 || !ok || a == 0 || a%8 != 0 || a&(a-1) != 0 || a > maxAlignment {
				return nil, fmt.Errorf("gguf: write: %s must be a uint32 power of two multiple of 8, got %v", KeyAlignment, p.Value)
			}
			wr.align = uint64(a)
		}
		putString(&hdr, p.Key)
		hdr.Write(le.AppendUint32(nil, uint32(p.Value.Type)))
		if err := putValue(&hdr, p.Value, 0); err != nil {
			return nil, fmt.Errorf("gguf: write: key %s: %w", p.Key, err)
		}
	}
	names := make(map[string]bool, len(tensors))
	var off uint64
	for _, t := range tensors {
		if t.Name == "" || len(t.Name) > MaxTensorName || !utf8.ValidString(t.Name) {
			return nil, fmt.Errorf("gguf: write: bad tensor name %q (1 to %d bytes of UTF-8)", truncate(t.Name), MaxTensorName)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("gguf: write: duplicate tensor %q", t.Name)
		}
		names[t.Name] = true
		if len(t.Dims) == 0 || len(t.Dims) > MaxDims {
			return nil, fmt.Errorf("gguf: write: tensor %s has %d dimensions, want 1 to %d", t.Name, len(t.Dims), MaxDims)
		}
		size, err := dataSize(t.Type, t.Dims, math.MaxInt64)
		if err != nil {
			return nil, fmt.Errorf("gguf: write: tensor %s: %w", t.Name, err)
		}
		if t.Size != 0 && t.Size != size {
			return nil, fmt.Errorf("gguf: write: tensor %s: %d bytes given, %s %v takes %d", t.Name, t.Size, t.Type, t.Dims, size)
		}
		putString(&hdr, t.Name)
		hdr.Write(le.AppendUint32(nil, uint32(len(t.Dims))))
		for _, d := range t.Dims {
			hdr.Write(le.AppendUint64(nil, d))
		}
		hdr.Write(le.AppendUint32(nil, uint32(t.Type)))
		hdr.Write(le.AppendUint64(nil, off))
		wr.tensors = append(wr.tensors, TensorInfo{Name: t.Name, Type: t.Type, Dims: append([]uint64(nil), t.Dims...), Offset: off, Size: size})
		off = alignUp(off+size, wr.align)
	}
	// Pad the header to the alignment: the data section starts there.
	hdr.Write(make([]byte, alignUp(uint64(hdr.Len()), wr.align)-uint64(hdr.Len())))
	wr.size = uint64(hdr.Len()) + off
	if err := wr.raw(hdr.Bytes()); err != nil {
		return nil, err
	}
	return wr, nil
}

// Size returns the size of the complete file in bytes, known as soon as NewWriter returns.
func (w *Writer) Size() uint64 { return w.size }

// Written returns the number of bytes written so far.
func (w *Writer) Written() uint64 { return w.pos }

// Tensors returns the declared tensors with offsets relative to the data section.
func (w *Writer) Tensors() []TensorInfo { return w.tensors }

func (w *Writer) raw(p []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(p)
	w.pos += uint64(n)
	if err != nil {
		w.err = fmt.Errorf("gguf: write: %w", err)
	}
	return w.err
}

// finish checks the current tensor is complete and pads it to the alignment.
func (w *Writer) finish() error {
	if w.cur < 0 {
		return w.err
	}
	t := w.tensors[w.cur]
	if w.written != t.Size {
		w.err = fmt.Errorf("gguf: write: tensor %s: %d of %d bytes written", t.Name, w.written, t.Size)
		return w.err
	}
	pad := alignUp(t.Size, w.align) - t.Size
	return w.raw(make([]byte, pad))
}

// Begin starts the data of the next declared tensor, which must be called name. It fails if
// the previous tensor is not complete.
func (w *Writer) Begin(name string) error {
	if err := w.finish(); err != nil {
		return err
	}
	if w.cur+1 >= len(w.tensors) {
		w.err = fmt.Errorf("gguf: write: tensor %s was not declared (all %d declared tensors written)", name, len(w.tensors))
		return w.err
	}
	if next := w.tensors[w.cur+1].Name; next != name {
		w.err = fmt.Errorf("gguf: write: tensor %s written out of order, expected %s", name, next)
		return w.err
	}
	w.cur++
	w.written = 0
	return nil
}

// Write appends bytes to the tensor started by Begin; writing past its size is an error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.cur < 0 {
		w.err = fmt.Errorf("gguf: write: tensor bytes before Begin")
		return 0, w.err
	}
	t := w.tensors[w.cur]
	if uint64(len(p)) > t.Size-w.written {
		w.err = fmt.Errorf("gguf: write: tensor %s: %d bytes past its size %d", t.Name, w.written+uint64(len(p))-t.Size, t.Size)
		return 0, w.err
	}
	if err := w.raw(p); err != nil {
		return 0, err
	}
	w.written += uint64(len(p))
	return len(p), nil
}

// WriteTensor writes the whole data of the next declared tensor.
func (w *Writer) WriteTensor(name string, data []byte) error {
	if err := w.Begin(name); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

// Close completes the last tensor, checks every declared tensor was written and flushes. It does
// not close the underlying io.Writer.
func (w *Writer) Close() error {
	if err := w.finish(); err != nil {
		return err
	}
	if w.cur != len(w.tensors)-1 {
		w.err = fmt.Errorf("gguf: write: only %d of %d tensors written", w.cur+1, len(w.tensors))
		return w.err
	}
	if err := w.w.Flush(); err != nil {
		w.err = fmt.Errorf("gguf: write: %w", err)
		return w.err
	}
	if w.pos != w.size {
		return fmt.Errorf("gguf: write: internal error: wrote %d bytes, expected %d", w.pos, w.size)
	}
	return nil
}

// Write writes a complete GGUF v3 file with the given metadata and tensors (in that order) to w.
func Write(w io.Writer, kv []KV, tensors []Tensor) error {
	infos := make([]TensorInfo, len(tensors))
	for i, t := range tensors {
		infos[i] = t.Info()
	}
	wr, err := NewWriter(w, kv, infos)
	if err != nil {
		return err
	}
	for _, t := range tensors {
		if err := wr.WriteTensor(t.Name, t.Data); err != nil {
			return err
		}
	}
	return wr.Close()
}

// WriteFile writes a GGUF file at path atomically (see WriteFileAtomic).
func WriteFile(path string, kv []KV, tensors []Tensor) error {
	return WriteFileAtomic(path, func(w io.Writer) error { return Write(w, kv, tensors) })
}

// WriteFileAtomic creates path with the bytes fill writes: into a temporary file in the same
// directory, synced, then renamed over path. On error the temporary file is removed and path
// is left as it was.
func WriteFileAtomic(path string, fill func(w io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = fill(tmp); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func putString(b *bytes.Buffer, s string) {
	b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(s))))
	b.WriteString(s)
}

// putValue encodes v's payload (not its type tag).
func putValue(b *bytes.Buffer, v Value, depth int) error {
	le := binary.LittleEndian
	bad := func() error { return fmt.Errorf("value of type %s holds a %T", v.Type, v.Data) }
	switch v.Type {
	case TypeArray:
		if depth >= maxArrayDepth {
			return fmt.Errorf("arrays nested deeper than %d", maxArrayDepth)
		}
		if minEncoded(v.Elem) == 0 {
			return fmt.Errorf("array element type %d is not a GGUF value type", uint32(v.Elem))
		}
		b.Write(le.AppendUint32(nil, uint32(v.Elem)))
		n := v.Len()
		b.Write(le.AppendUint64(nil, uint64(n)))
		return putArray(b, v, depth)
	case TypeString:
		s, ok := v.Data.(string)
		if !ok {
			return bad()
		}
		putString(b, s)
		return nil
	}
	if v.Type.fixedSize() == 0 {
		return fmt.Errorf("value type %d is not a GGUF value type", uint32(v.Type))
	}
	switch x := v.Data.(type) {
	case uint8:
		if v.Type != TypeUint8 {
			return bad()
		}
		b.WriteByte(x)
	case int8:
		if v.Type != TypeInt8 {
			return bad()
		}
		b.WriteByte(byte(x))
	case bool:
		if v.Type != TypeBool {
			return bad()
		}
		if x {
			b.WriteByte(1)
		} else {
			b.WriteByte(0)
		}
	case uint16:
		if v.Type != TypeUint16 {
			return bad()
		}
		b.Write(le.AppendUint16(nil, x))
	case int16:
		if v.Type != TypeInt16 {
			return bad()
		}
		b.Write(le.AppendUint16(nil, uint16(x)))
	case uint32:
		if v.Type != TypeUint32 {
			return bad()
		}
		b.Write(le.AppendUint32(nil, x))
	case int32:
		if v.Type != TypeInt32 {
			return bad()
		}
		b.Write(le.AppendUint32(nil, uint32(x)))
	case float32:
		if v.Type != TypeFloat32 {
			return bad()
		}
		b.Write(le.AppendUint32(nil, math.Float32bits(x)))
	case uint64:
		if v.Type != TypeUint64 {
			return bad()
		}
		b.Write(le.AppendUint64(nil, x))
	case int64:
		if v.Type != TypeInt64 {
			return bad()
		}
		b.Write(le.AppendUint64(nil, uint64(x)))
	case float64:
		if v.Type != TypeFloat64 {
			return bad()
		}
		b.Write(le.AppendUint64(nil, math.Float64bits(x)))
	default:
		return bad()
	}
	return nil
}

// sliceMatches reports whether an array value's Data has the Go slice type for its Elem.
func (v Value) sliceMatches() bool {
	switch v.Data.(type) {
	case []uint8:
		return v.Elem == TypeUint8
	case []int8:
		return v.Elem == TypeInt8
	case []uint16:
		return v.Elem == TypeUint16
	case []int16:
		return v.Elem == TypeInt16
	case []uint32:
		return v.Elem == TypeUint32
	case []int32:
		return v.Elem == TypeInt32
	case []float32:
		return v.Elem == TypeFloat32
	case []bool:
		return v.Elem == TypeBool
	case []string:
		return v.Elem == TypeString
	case []uint64:
		return v.Elem == TypeUint64
	case []int64:
		return v.Elem == TypeInt64
	case []float64:
		return v.Elem == TypeFloat64
	case []Value:
		return v.Elem == TypeArray
	}
	return false
}

func putArray(b *bytes.Buffer, v Value, depth int) error {
	if !v.sliceMatches() {
		return fmt.Errorf("array of %s holds a %T", v.Elem, v.Data)
	}
	le := binary.LittleEndian
	switch x := v.Data.(type) {
	case []uint8:
		b.Write(x)
	case []int8:
		for _, e := range x {
			b.WriteByte(byte(e))
		}
	case []bool:
		for _, e := range x {
			if e {
				b.WriteByte(1)
			} else {
				b.WriteByte(0)
			}
		}
	case []uint16:
		for _, e := range x {
			b.Write(le.AppendUint16(nil, e))
		}
	case []int16:
		for _, e := range x {
			b.Write(le.AppendUint16(nil, uint16(e)))
		}
	case []uint32:
		for _, e := range x {
			b.Write(le.AppendUint32(nil, e))
		}
	case []int32:
		for _, e := range x {
			b.Write(le.AppendUint32(nil, uint32(e)))
		}
	case []float32:
		for _, e := range x {
			b.Write(le.AppendUint32(nil, math.Float32bits(e)))
		}
	case []uint64:
		for _, e := range x {
			b.Write(le.AppendUint64(nil, e))
		}
	case []int64:
		for _, e := range x {
			b.Write(le.AppendUint64(nil, uint64(e)))
		}
	case []float64:
		for _, e := range x {
			b.Write(le.AppendUint64(nil, math.Float64bits(e)))
		}
	case []string:
		for _, e := range x {
			putString(b, e)
		}
	case []Value:
		for i, e := range x {
			if e.Type != TypeArray {
				return fmt.Errorf("element %d of an array of arrays is a %s", i, e.Type)
			}
			if err := putValue(b, e, depth+1); err != nil {
				return fmt.Errorf("element %d: %w", i, err)
			}
		}
	}
	return nil
}
