package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/gguf/dtype"
)

// allValuesKV has a metadata pair of every value type, arrays of every element type, an empty
// array and a nested array.
func allValuesKV() []KV {
	return []KV{
		{"test.u8", Uint8(200)},
		{"test.i8", Int8(-100)},
		{"test.u16", Uint16(60000)},
		{"test.i16", Int16(-30000)},
		{"test.u32", Uint32(4000000000)},
		{"test.i32", Int32(-2000000000)},
		{"test.f32", Float32(3.25)},
		{"test.bool_true", Bool(true)},
		{"test.bool_false", Bool(false)},
		{"test.string", String("héllo ▁ wörld")},
		{"test.empty_string", String("")},
		{"test.u64", Uint64(1 << 60)},
		{"test.i64", Int64(-1 << 60)},
		{"test.f64", Float64(math.Pi)},
		{"test.arr.u8", Array(TypeUint8, []uint8{1, 2, 255})},
		{"test.arr.i8", Array(TypeInt8, []int8{-1, 2, -128})},
		{"test.arr.u16", Array(TypeUint16, []uint16{1, 65535})},
		{"test.arr.i16", Array(TypeInt16, []int16{-1, 32767})},
		{"test.arr.u32", Array(TypeUint32, []uint32{7, 1 << 31})},
		{"test.arr.i32", Int32s([]int32{-7, 1 << 30})},
		{"test.arr.f32", Float32s([]float32{0.5, -1e-7, float32(math.Inf(1))})},
		{"test.arr.bool", Array(TypeBool, []bool{true, false, true})},
		{"test.arr.string", Strings([]string{"a", "", "<0x0A>"})},
		{"test.arr.u64", Array(TypeUint64, []uint64{1 << 63})},
		{"test.arr.i64", Array(TypeInt64, []int64{-1 << 63})},
		{"test.arr.f64", Array(TypeFloat64, []float64{math.E})},
		{"test.arr.empty", Array(TypeUint32, []uint32{})},
		{"test.arr.nested", Array(TypeArray, []Value{
			Strings([]string{"x", "y"}),
			Array(TypeArray, []Value{Int32s([]int32{1, 2, 3})}),
		})},
		{KeyAlignment, Uint32(64)},
	}
}

// someTensors has one tensor of each supported type with recognizable contents.
func someTensors() []Tensor {
	f32 := make([]float32, 6)
	for i := range f32 {
		f32[i] = float32(i) - 2.5
	}
	b32 := make([]byte, 24)
	dtype.F32sToBytes(b32, f32)
	f16 := make([]byte, 2*5*3)
	for i := range f16 {
		f16[i] = byte(i * 7)
	}
	bf := make([]byte, 2*7)
	for i := range bf {
		bf[i] = byte(200 - i)
	}
	src := make([]float32, 64)
	for i := range src {
		src[i] = float32(math.Sin(float64(i)))
	}
	q := make([]byte, dtype.Q8_0Len(64))
	dtype.QuantizeQ8_0(q, src)
	return []Tensor{
		{Name: "a.f32", Type: TypeF32, Dims: []uint64{3, 2}, Data: b32},
		{Name: "b.f16", Type: TypeF16, Dims: []uint64{5, 3}, Data: f16},
		{Name: "c.bf16", Type: TypeBF16, Dims: []uint64{7}, Data: bf},
		{Name: "d.q8_0", Type: TypeQ8_0, Dims: []uint64{32, 2, 1, 1}, Data: q},
	}
}

func writeBytes(t testing.TB, kv []KV, ts []Tensor) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, kv, ts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	kv, ts := allValuesKV(), someTensors()
	data := writeBytes(t, kv, ts)
	path := filepath.Join(t.TempDir(), "rt.gguf")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, open := range []struct {
		name string
		fn   func() (*File, error)
	}{{"Parse", func() (*File, error) { return Parse(data) }}, {"OpenFile", func() (*File, error) { return OpenFile(path) }}} {
		t.Run(open.name, func(t *testing.T) {
			f, err := open.fn()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Version != 3 || f.Alignment != 64 || f.DataOffset%64 != 0 || f.Size != uint64(len(data)) {
				t.Fatalf("version %d alignment %d data offset %d size %d", f.Version, f.Alignment, f.DataOffset, f.Size)
			}
			if len(data)%64 != 0 {
				t.Errorf("file size %d not padded to the alignment", len(data))
			}
			if !reflect.DeepEqual(f.KV, kv) {
				t.Fatalf("metadata differs:\n got %#v\nwant %#v", f.KV, kv)
			}
			if len(f.Tensors) != len(ts) {
				t.Fatalf("%d tensors, want %d", len(f.Tensors), len(ts))
			}
			for i, want := range ts {
				got := f.Tensors[i]
				if got.Name != want.Name || got.Type != want.Type || !reflect.DeepEqual(got.Dims, want.Dims) {
					t.Errorf("tensor %d: %+v, want %s %s %v", i, got, want.Name, want.Type, want.Dims)
				}
				if got.Offset%64 != 0 {
					t.Errorf("tensor %s at unaligned offset %d", got.Name, got.Offset)
				}
				if d := f.TensorData(got); !bytes.Equal(d, want.Data) {
					t.Errorf("tensor %s data differs", got.Name)
				}
				if ti, ok := f.Tensor(want.Name); !ok || ti.Offset != got.Offset {
					t.Errorf("Tensor(%s) lookup failed", want.Name)
				}
			}
			if v, ok := f.Get("test.string"); !ok || v.Data != "héllo ▁ wörld" {
				t.Errorf("Get(test.string) = %v, %v", v, ok)
			}
		})
	}
}

// TestWriterLayout checks the byte layout against the spec by hand for a minimal file.
func TestWriterLayout(t *testing.T) {
	data := writeBytes(t, []KV{{"general.architecture", String("x")}},
		[]Tensor{{Name: "t", Type: TypeF32, Dims: []uint64{1}, Data: []byte{1, 2, 3, 4}}})
	var want bytes.Buffer
	le := binary.LittleEndian
	want.WriteString("GGUF")
	want.Write(le.AppendUint32(nil, 3))
	want.Write(le.AppendUint64(nil, 1)) // tensor_count
	want.Write(le.AppendUint64(nil, 1)) // metadata_kv_count
	want.Write(le.AppendUint64(nil, 20))
	want.WriteString("general.architecture")
	want.Write(le.AppendUint32(nil, 8)) // string
	want.Write(le.AppendUint64(nil, 1))
	want.WriteString("x")
	want.Write(le.AppendUint64(nil, 1))
	want.WriteString("t")
	want.Write(le.AppendUint32(nil, 1)) // n_dimensions
	want.Write(le.AppendUint64(nil, 1))
	want.Write(le.AppendUint32(nil, 0)) // F32
	want.Write(le.AppendUint64(nil, 0)) // offset
	for want.Len()%32 != 0 {
		want.WriteByte(0)
	}
	want.Write([]byte{1, 2, 3, 4})
	for want.Len()%32 != 0 {
		want.WriteByte(0)
	}
	if !bytes.Equal(data, want.Bytes()) {
		t.Fatalf("layout differs:\n got %x\nwant %x", data, want.Bytes())
	}
}

func TestReadV2(t *testing.T) {
	data := writeBytes(t, allValuesKV(), someTensors())
	binary.LittleEndian.PutUint32(data[4:], 2) // v2 and v3 share the little-endian layout
	f, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != 2 || len(f.Tensors) != 4 || len(f.KV) != len(allValuesKV()) {
		t.Fatalf("v2: version %d, %d tensors, %d keys", f.Version, len(f.Tensors), len(f.KV))
	}
	for _, v := range []uint32{1, 4, 0x03000000} {
		binary.LittleEndian.PutUint32(data[4:], v)
		if _, err := Parse(data); !errors.Is(err, ErrUnsupported) {
			t.Errorf("version %#x: err %v, want ErrUnsupported", v, err)
		}
	}
}

// raw builds hand-made GGUF bytes.
type raw struct{ bytes.Buffer }

func (r *raw) u32(v uint32) *raw { r.Write(binary.LittleEndian.AppendUint32(nil, v)); return r }
func (r *raw) u64(v uint64) *raw { r.Write(binary.LittleEndian.AppendUint64(nil, v)); return r }
func (r *raw) str(s string) *raw { r.u64(uint64(len(s))); r.WriteString(s); return r }
func (r *raw) header(nt, nkv uint64) *raw {
	r.WriteString("GGUF")
	return r.u32(3).u64(nt).u64(nkv)
}
func (r *raw) pad() *raw {
	for r.Len()%32 != 0 {
		r.WriteByte(0)
	}
	return r
}

func TestUnsupportedTypeRefusedByName(t *testing.T) {
	var r raw
	r.header(1, 0).str("blk.0.attn_q.weight").u32(2).u64(256).u64(1).u32(uint32(TypeQ4_K)).u64(0).pad()
	r.Write(make([]byte, 144))
	_, err := Parse(r.Bytes())
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "tensor blk.0.attn_q.weight has type Q4_K, which driftstore does not support yet") {
		t.Fatalf("err = %v", err)
	}
	var r2 raw
	r2.header(1, 0).str("x").u32(1).u64(4).u32(99).u64(0)
	if _, err := Parse(r2.Bytes()); err == nil || !strings.Contains(err.Error(), "type(99)") {
		t.Fatalf("unknown type id: err = %v", err)
	}
}

func TestMalformed(t *testing.T) {
	cases := []struct {
		name string
		data func() []byte
		want string
	}{
		{"bad magic", func() []byte { return []byte("GGML\x03\x00\x00\x00") }, "bad magic"},
		{"huge kv count", func() []byte { var r raw; return r.header(0, 1<<40).Bytes() }, "metadata_kv_count"},
		{"huge tensor count", func() []byte { var r raw; return r.header(1<<40, 0).Bytes() }, "tensor_count"},
		{"huge string", func() []byte {
			var r raw
			r.header(0, 1).u64(1 << 62)
			r.Write(make([]byte, 64))
			return r.Bytes()
		}, "limit"},
		{"huge array", func() []byte {
			var r raw
			r.header(0, 1).str("k").u32(uint32(TypeArray)).u32(uint32(TypeUint64)).u64(1 << 61)
			return r.Bytes()
		}, "does not fit"},
		{"bad value type", func() []byte { var r raw; return r.header(0, 1).str("k").u32(13).Bytes() }, "not a GGUF value type"},
		{"bad bool", func() []byte {
			var r raw
			r.header(0, 1).str("k").u32(uint32(TypeBool)).WriteByte(2)
			return r.Bytes()
		}, "neither 0 nor 1"},
		{"duplicate key", func() []byte {
			var r raw
			r.header(0, 2).str("k").u32(uint32(TypeUint8)).WriteByte(1)
			r.str("k").u32(uint32(TypeUint8)).WriteByte(1)
			return r.Bytes()
		}, "duplicate metadata key"},
		{"bad alignment", func() []byte {
			var r raw
			return r.header(0, 1).str(KeyAlignment).u32(uint32(TypeUint32)).u32(48).Bytes()
		}, "power of two"},
		{"alignment type", func() []byte {
			var r raw
			return r.header(0, 1).str(KeyAlignment).u32(uint32(TypeUint64)).u64(32).Bytes()
		}, "want uint32"},
		{"deep nesting", func() []byte {
			var r raw
			r.header(0, 1).str("k").u32(uint32(TypeArray))
			for i := 0; i < 10; i++ {
				r.u32(uint32(TypeArray)).u64(1)
			}
			return r.Bytes()
		}, "nested deeper"},
		{"too many dims", func() []byte {
			var r raw
			r.header(1, 0).str("t").u32(5)
			r.Write(make([]byte, 64))
			return r.Bytes()
		}, "5 dimensions"},
		{"long tensor name", func() []byte {
			var r raw
			return r.header(1, 0).str(strings.Repeat("n", 65)).Bytes()
		}, "limit 64"},
		{"dims overflow", func() []byte {
			var r raw
			r.header(1, 0).str("t").u32(3).u64(1 << 40).u64(1 << 40).u64(1 << 40).u32(0).u64(0)
			return r.Bytes()
		}, "overflows"},
		{"q8 row", func() []byte {
			var r raw
			r.header(1, 0).str("t").u32(1).u64(33).u32(uint32(TypeQ8_0)).u64(0)
			return r.Bytes()
		}, "multiple of the Q8_0 block size"},
		{"misaligned offset", func() []byte {
			var r raw
			r.header(1, 0).str("t").u32(1).u64(1).u32(0).u64(4).pad()
			r.Write(make([]byte, 64))
			return r.Bytes()
		}, "not a multiple of the alignment"},
		{"past end", func() []byte {
			var r raw
			r.header(1, 0).str("t").u32(1).u64(20).u32(0).u64(0).pad()
			r.Write(make([]byte, 64))
			return r.Bytes()
		}, "runs past the end"},
		{"overlap", func() []byte {
			var r raw
			r.header(2, 0).str("t").u32(1).u64(16).u32(0).u64(0)
			r.str("u").u32(1).u64(16).u32(0).u64(32).pad()
			r.Write(make([]byte, 128))
			return r.Bytes()
		}, "overlap"},
		{"duplicate tensor", func() []byte {
			var r raw
			r.header(2, 0).str("t").u32(1).u64(1).u32(0).u64(0)
			r.str("t").u32(1).u64(1).u32(0).u64(32).pad()
			r.Write(make([]byte, 64))
			return r.Bytes()
		}, "duplicate tensor"},
	}
	for _, c := range cases {
		_, err := Parse(c.data())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
		if err != nil && !errors.Is(err, ErrFormat) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: err %v wraps neither ErrFormat nor ErrUnsupported", c.name, err)
		}
	}
}

// TestTruncatedEveryOffset cuts a small file at every length: each prefix must fail cleanly.
func TestTruncatedEveryOffset(t *testing.T) {
	data := writeBytes(t, allValuesKV(), someTensors())
	for n := 0; n < len(data); n++ {
		// The last tensor's trailing padding is not data: a cut inside it still parses.
		f, err := Parse(data[:n])
		if err == nil {
			last := f.Tensors[len(f.Tensors)-1]
			if uint64(n) < last.Offset+last.Size {
				t.Fatalf("prefix of %d bytes parsed", n)
			}
			continue
		}
		if !errors.Is(err, ErrFormat) {
			t.Fatalf("prefix %d: %v does not wrap ErrFormat", n, err)
		}
	}
}

func TestWriterRefuses(t *testing.T) {
	var buf bytes.Buffer
	good := []TensorInfo{{Name: "a", Type: TypeF32, Dims: []uint64{2}}, {Name: "b", Type: TypeF16, Dims: []uint64{2}}}
	bad := []struct {
		name string
		kv   []KV
		ts   []TensorInfo
	}{
		{"dup key", []KV{{"k", Uint8(1)}, {"k", Uint8(2)}}, nil},
		{"bad value", []KV{{"k", Value{Type: TypeUint32, Data: "no"}}}, nil},
		{"bad array", []KV{{"k", Array(TypeUint32, []int32{1})}}, nil},
		{"alignment type", []KV{{KeyAlignment, Uint64(32)}}, nil},
		{"dup tensor", nil, []TensorInfo{good[0], good[0]}},
		{"long name", nil, []TensorInfo{{Name: strings.Repeat("x", 64), Type: TypeF32, Dims: []uint64{1}}}},
		{"unsupported type", nil, []TensorInfo{{Name: "q", Type: TypeQ4_K, Dims: []uint64{256}}}},
		{"no dims", nil, []TensorInfo{{Name: "q", Type: TypeF32}}},
	}
	for _, c := range bad {
		if _, err := NewWriter(&buf, c.kv, c.ts); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	w, err := NewWriter(&buf, nil, good)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("b", make([]byte, 4)); err == nil {
		t.Error("out-of-order tensor accepted")
	}
	w, _ = NewWriter(&buf, nil, good)
	if err := w.WriteTensor("a", make([]byte, 9)); err == nil {
		t.Error("oversized tensor accepted")
	}
	w, _ = NewWriter(&buf, nil, good)
	w.WriteTensor("a", make([]byte, 8))
	if err := w.Close(); err == nil {
		t.Error("Close with a tensor missing succeeded")
	}
	w, _ = NewWriter(&buf, nil, good)
	w.WriteTensor("a", make([]byte, 7))
	if err := w.Begin("b"); err == nil {
		t.Error("short tensor accepted")
	}
}

func TestWriteFileAtomicLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.gguf")
	os.WriteFile(path, []byte("old"), 0o644)
	err := WriteFile(path, nil, []Tensor{{Name: "a", Type: TypeF32, Dims: []uint64{2}, Data: []byte{1}}})
	if err == nil {
		t.Fatal("short tensor written")
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("destination changed to %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}
