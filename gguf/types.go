package gguf

import (
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Sentinel errors. Every error returned by this package for a bad or unsupported file wraps one
// of them, together with the key, tensor name and file offset involved.
var (
	// ErrFormat: the file is not a well-formed GGUF file (bad magic, out-of-bounds length or
	// offset, truncated data, duplicate names, misaligned tensor data ...).
	ErrFormat = errors.New("malformed GGUF")
	// ErrUnsupported: the file is well-formed but uses something driftstore does not implement
	// yet (a tensor type, an architecture, a GGUF version, a tokenizer model, rope scaling).
	ErrUnsupported = errors.New("unsupported")
	// ErrNotFound: a tensor or metadata key that was asked for is not in the file.
	ErrNotFound = errors.New("not found")
)

// Type is a ggml tensor type id as stored in a GGUF tensor info.
type Type uint32

// The ggml tensor types. Only F32, F16, BF16 and Q8_0 are supported (Supported reports it); the
// others are named so that a refusal can say what the file holds. Adding a type (the K-quants
// are next) means giving it a block shape in typeTraits and kernels in the compute backends.
const (
	TypeF32     Type = 0
	TypeF16     Type = 1
	TypeQ4_0    Type = 2
	TypeQ4_1    Type = 3
	TypeQ5_0    Type = 6
	TypeQ5_1    Type = 7
	TypeQ8_0    Type = 8
	TypeQ8_1    Type = 9
	TypeQ2_K    Type = 10
	TypeQ3_K    Type = 11
	TypeQ4_K    Type = 12
	TypeQ5_K    Type = 13
	TypeQ6_K    Type = 14
	TypeQ8_K    Type = 15
	TypeIQ2_XXS Type = 16
	TypeIQ2_XS  Type = 17
	TypeIQ3_XXS Type = 18
	TypeIQ1_S   Type = 19
	TypeIQ4_NL  Type = 20
	TypeIQ3_S   Type = 21
	TypeIQ2_S   Type = 22
	TypeIQ4_XS  Type = 23
	TypeI8      Type = 24
	TypeI16     Type = 25
	TypeI32     Type = 26
	TypeI64     Type = 27
	TypeF64     Type = 28
	TypeIQ1_M   Type = 29
	TypeBF16    Type = 30
	TypeTQ1_0   Type = 34
	TypeTQ2_0   Type = 35
	TypeMXFP4   Type = 39
)

var typeNames = map[Type]string{
	TypeF32: "F32", TypeF16: "F16", TypeQ4_0: "Q4_0", TypeQ4_1: "Q4_1", 4: "Q4_2", 5: "Q4_3",
	TypeQ5_0: "Q5_0", TypeQ5_1: "Q5_1", TypeQ8_0: "Q8_0", TypeQ8_1: "Q8_1", TypeQ2_K: "Q2_K",
	TypeQ3_K: "Q3_K", TypeQ4_K: "Q4_K", TypeQ5_K: "Q5_K", TypeQ6_K: "Q6_K", TypeQ8_K: "Q8_K",
	TypeIQ2_XXS: "IQ2_XXS", TypeIQ2_XS: "IQ2_XS", TypeIQ3_XXS: "IQ3_XXS", TypeIQ1_S: "IQ1_S",
	TypeIQ4_NL: "IQ4_NL", TypeIQ3_S: "IQ3_S", TypeIQ2_S: "IQ2_S", TypeIQ4_XS: "IQ4_XS",
	TypeI8: "I8", TypeI16: "I16", TypeI32: "I32", TypeI64: "I64", TypeF64: "F64",
	TypeIQ1_M: "IQ1_M", TypeBF16: "BF16", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
	TypeTQ1_0: "TQ1_0", TypeTQ2_0: "TQ2_0", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8",
	TypeMXFP4: "MXFP4",
}

// String returns ggml's name for the type ("F16", "Q4_K"), or "type(N)" for an unknown id.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// ParseType maps a name as String returns it (case-insensitive) to a Type.
func ParseType(name string) (Type, error) {
	for t, n := range typeNames {
		if equalFold(n, name) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown tensor type %q", name)
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// typeTraits gives the block shape of each supported type: blockLen values are stored in
// blockBytes bytes, and a row (dims[0]) must hold a whole number of blocks.
var typeTraits = map[Type]struct{ blockLen, blockBytes uint64 }{
	TypeF32:  {1, 4},
	TypeF16:  {1, 2},
	TypeBF16: {1, 2},
	TypeQ8_0: {32, 34},
}

// Supported reports whether driftstore can load tensors of type t.
func (t Type) Supported() bool { _, ok := typeTraits[t]; return ok }

// BlockLen returns the number of values per block (1 for plain float types, 32 for Q8_0) and 0
// for unsupported types.
func (t Type) BlockLen() int { return int(typeTraits[t].blockLen) }

// RowBytes returns the bytes one row of n values takes in type t. It fails for unsupported types
// and for n that is not a whole number of blocks.
func (t Type) RowBytes(n uint64) (uint64, error) {
	tr, ok := typeTraits[t]
	if !ok {
		return 0, fmt.Errorf("%w: tensor type %s", ErrUnsupported, t)
	}
	if n%tr.blockLen != 0 {
		return 0, fmt.Errorf("%w: row of %d values is not a multiple of the %s block size %d", ErrFormat, n, t, tr.blockLen)
	}
	return n / tr.blockLen * tr.blockBytes, nil
}

// dataSize returns the byte size of a tensor of type t and dims, checking for overflow against
// limit. dims[0] is the row length (ggml's ne[0], the fastest-varying index).
func dataSize(t Type, dims []uint64, limit uint64) (uint64, error) {
	if len(dims) == 0 {
		return 0, fmt.Errorf("%w: no dimensions", ErrFormat)
	}
	row, err := t.RowBytes(dims[0])
	if err != nil {
		return 0, err
	}
	size := row
	for _, d := range dims[1:] {
		if d != 0 && size > limit/d {
			return 0, fmt.Errorf("%w: tensor size overflows (dims %v)", ErrFormat, dims)
		}
		size *= d
	}
	if size > limit {
		return 0, fmt.Errorf("%w: tensor size %d exceeds %d (dims %v)", ErrFormat, size, limit, dims)
	}
	return size, nil
}

// ValueType is a GGUF metadata value type.
type ValueType uint32

// The GGUF metadata value types.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
	"bool", "string", "array", "uint64", "int64", "float64"}

// String returns the spec's name of the value type ("uint32", "array").
func (v ValueType) String() string {
	if int(v) < len(valueTypeNames) {
		return valueTypeNames[v]
	}
	return fmt.Sprintf("value_type(%d)", uint32(v))
}

// fixedSize returns the encoded size of a scalar value type, 0 for string and array.
func (v ValueType) fixedSize() int {
	switch v {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// Value is one metadata value. Data holds, by Type: uint8, int8, uint16, int16, uint32, int32,
// float32, bool, string, uint64, int64, float64; for TypeArray, Elem is the element type and
// Data a slice of the element's Go type ([]uint8 ... []string), or []Value when the elements are
// arrays themselves. Values returned by the reader are owned by the caller (copied out of the
// file); the writer only reads them.
type Value struct {
	Type ValueType
	Elem ValueType // element type when Type == TypeArray
	Data any
}

// KV is one metadata key-value pair.
type KV struct {
	Key   string
	Value Value
}

// Constructors for metadata values.
func Uint8(v uint8) Value     { return Value{Type: TypeUint8, Data: v} }
func Int8(v int8) Value       { return Value{Type: TypeInt8, Data: v} }
func Uint16(v uint16) Value   { return Value{Type: TypeUint16, Data: v} }
func Int16(v int16) Value     { return Value{Type: TypeInt16, Data: v} }
func Uint32(v uint32) Value   { return Value{Type: TypeUint32, Data: v} }
func Int32(v int32) Value     { return Value{Type: TypeInt32, Data: v} }
func Float32(v float32) Value { return Value{Type: TypeFloat32, Data: v} }
func Bool(v bool) Value       { return Value{Type: TypeBool, Data: v} }
func String(v string) Value   { return Value{Type: TypeString, Data: v} }
func Uint64(v uint64) Value   { return Value{Type: TypeUint64, Data: v} }
func Int64(v int64) Value     { return Value{Type: TypeInt64, Data: v} }
func Float64(v float64) Value { return Value{Type: TypeFloat64, Data: v} }

// Array returns an array value; data must be a slice of the Go type matching elem (see Value).
func Array(elem ValueType, data any) Value { return Value{Type: TypeArray, Elem: elem, Data: data} }

// Strings, Float32s and Int32s are shorthands for the common array types.
func Strings(v []string) Value   { return Array(TypeString, v) }
func Float32s(v []float32) Value { return Array(TypeFloat32, v) }
func Int32s(v []int32) Value     { return Array(TypeInt32, v) }

// Uint returns an integer value of any integer type as a uint64; ok is false for other types
// and for negative values.
func (v Value) Uint() (uint64, bool) {
	switch x := v.Data.(type) {
	case uint8:
		return uint64(x), v.Type == TypeUint8
	case uint16:
		return uint64(x), v.Type == TypeUint16
	case uint32:
		return uint64(x), v.Type == TypeUint32
	case uint64:
		return x, v.Type == TypeUint64
	case int8:
		return uint64(x), v.Type == TypeInt8 && x >= 0
	case int16:
		return uint64(x), v.Type == TypeInt16 && x >= 0
	case int32:
		return uint64(x), v.Type == TypeInt32 && x >= 0
	case int64:
		return uint64(x), v.Type == TypeInt64 && x >= 0
	}
	return 0, false
}

// Float returns a float32 or float64 value as a float64.
func (v Value) Float() (float64, bool) {
	switch x := v.Data.(type) {
	case float32:
		return float64(x), v.Type == TypeFloat32
	case float64:
		return x, v.Type == TypeFloat64
	}
	return 0, false
}

// Str returns a string value.
func (v Value) Str() (string, bool) {
	s, ok := v.Data.(string)
	return s, ok && v.Type == TypeString
}

// Len returns the number of elements of an array value, 0 for scalars.
func (v Value) Len() int {
	if v.Type != TypeArray {
		return 0
	}
	switch x := v.Data.(type) {
	case []uint8:
		return len(x)
	case []int8:
		return len(x)
	case []uint16:
		return len(x)
	case []int16:
		return len(x)
	case []uint32:
		return len(x)
	case []int32:
		return len(x)
	case []float32:
		return len(x)
	case []bool:
		return len(x)
	case []string:
		return len(x)
	case []uint64:
		return len(x)
	case []int64:
		return len(x)
	case []float64:
		return len(x)
	case []Value:
		return len(x)
	}
	return 0
}

// String renders a value briefly for humans: arrays show their type and length.
func (v Value) String() string {
	if v.Type == TypeArray {
		return fmt.Sprintf("[%d × %s]", v.Len(), v.Elem)
	}
	switch x := v.Data.(type) {
	case string:
		if len(x) > 80 {
			return fmt.Sprintf("%q…", x[:80])
		}
		return fmt.Sprintf("%q", x)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	}
	return fmt.Sprint(v.Data)
}

// f32 returns the float32 for a float value, NaN otherwise.
func (v Value) f32() float32 {
	if f, ok := v.Float(); ok {
		return float32(f)
	}
	return float32(math.NaN())
}
