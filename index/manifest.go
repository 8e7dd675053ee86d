package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"unicode/utf8"
	"unsafe"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/internal/prefix"
)

// ID names a manifest: the BLAKE3-256 of its canonical encoding. It is the same type as a chunk
// digest; the zero ID names nothing ("no parent").
type ID = cas.Digest

// Manifest encoding, version 1. All integers are unsigned LEB128 varints in their shortest form
// unless said otherwise; "str" is a uvarint length followed by that many bytes of valid UTF-8.
//
//	magic    "DSM" 0x01                     (4 bytes; the last byte is the format version)
//	kind     str                            [a-z0-9._-], 1..64 bytes
//	parent   32 bytes                       zero: no parent
//	nregions uvarint                        0..MaxRegions
//	region   name str (1..256 bytes, unique within the manifest), nchunks uvarint,
//	         then nchunks × (digest 32 bytes, length uvarint 1..MaxChunkLength)
//	nmeta    uvarint                        0..MaxMetaEntries
//	meta     key str (1..256 bytes; keys strictly ascending bytewise), type byte, value:
//	           1 string  str
//	           2 int64   zig-zag varint
//	           3 uint64  uvarint
//	           4 bytes   uvarint length + bytes (at most MaxValueBytes)
//	           5 bool    one byte, 0 or 1
//	           6 float64 8 bytes, little-endian IEEE 754 bits (NaN refused)
//	           7 digest  32 bytes
//
// Regions keep the order the writer gave them; metadata is sorted by key. Nothing may follow the
// last entry. The encoding is canonical: Decode accepts only bytes that Encode would produce from
// the decoded manifest, so a manifest has exactly one byte form and one ID.
const (
	manifestMagic   = "DSM\x01"
	MaxManifestSize = 64 << 20 // largest manifest Decode accepts, in bytes
	MaxKindLen      = 64
	MaxNameLen      = 256      // region names and metadata keys
	MaxRegions      = 1 << 16  // regions per manifest
	MaxMetaEntries  = 1 << 12  // metadata entries per manifest
	MaxValueBytes   = 16 << 20 // one string or bytes metadata value
	MaxChunkLength  = 1 << 30  // one chunk's length
)

// ErrBadManifest is returned (wrapped, with the reason) when manifest bytes or a Manifest value
// break the encoding's rules.
var ErrBadManifest = errors.New("bad manifest")

// Manifest is the decoded form of a manifest. A Manifest read from the index is the caller's to
// keep and modify; it shares no memory with the index.
type Manifest struct {
	Kind    string // what the manifest describes: "file", "checkpoint", ...
	Parent  ID     // the manifest this one follows; zero for none
	Regions []Region
	Meta    map[string]Value // free-form typed metadata; nil and empty encode the same
}

// Region is a named byte stream: the concatenation of its chunks, in order.
type Region struct {
	Name   string
	Chunks []ChunkRef
}

// ChunkRef is one chunk of a region: its digest and uncompressed length.
type ChunkRef struct {
	Digest cas.Digest
	Length int64
}

// commonRefs returns the length of the longest common prefix of a and b, comparing runs of
// references as bytes (a checkpoint's lists share thousands with its parent's).
func commonRefs(a, b []ChunkRef) int { return prefix.Common(a, b) }

// A ChunkRef has no padding, so its bytes are equal exactly when the references are (what
// prefix.Common needs).
var _ [0]struct{} = [unsafe.Sizeof(ChunkRef{}) - unsafe.Sizeof(cas.Digest{}) - 8]struct{}{}

// Size is the region's length in bytes.
func (r Region) Size() int64 {
	var n int64
	for _, c := range r.Chunks {
		n += c.Length
	}
	return n
}

// Size is the total length of all regions.
func (m *Manifest) Size() int64 {
	var n int64
	for _, r := range m.Regions {
		n += r.Size()
	}
	return n
}

// Digests returns every distinct chunk digest the manifest names, in first-seen order.
func (m *Manifest) Digests() []cas.Digest {
	seen := make(map[cas.Digest]struct{})
	var out []cas.Digest
	for _, r := range m.Regions {
		for _, c := range r.Chunks {
			if _, ok := seen[c.Digest]; !ok {
				seen[c.Digest] = struct{}{}
				out = append(out, c.Digest)
			}
		}
	}
	return out
}

// ValueType says which field of a Value holds its content.
type ValueType uint8

const (
	TypeString  ValueType = 1
	TypeInt64   ValueType = 2
	TypeUint64  ValueType = 3
	TypeBytes   ValueType = 4
	TypeBool    ValueType = 5
	TypeFloat64 ValueType = 6
	TypeDigest  ValueType = 7
)

var typeNames = map[ValueType]string{
	TypeString: "string", TypeInt64: "int64", TypeUint64: "uint64", TypeBytes: "bytes",
	TypeBool: "bool", TypeFloat64: "float64", TypeDigest: "digest",
}

func (t ValueType) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Value is one typed metadata value. Build it with String, Int64, Uint64, Bytes, Bool, Float64
// or DigestValue; read it with the matching accessor, which reports whether the type matched.
type Value struct {
	typ ValueType
	s   string // TypeString
	b   []byte // TypeBytes
	u   uint64 // TypeInt64 (two's complement), TypeUint64, TypeBool, TypeFloat64 (bits)
	d   cas.Digest
}

func String(s string) Value          { return Value{typ: TypeString, s: s} }
func Int64(i int64) Value            { return Value{typ: TypeInt64, u: uint64(i)} }
func Uint64(u uint64) Value          { return Value{typ: TypeUint64, u: u} }
func Float64(f float64) Value        { return Value{typ: TypeFloat64, u: math.Float64bits(f)} }
func DigestValue(d cas.Digest) Value { return Value{typ: TypeDigest, d: d} }

// Bytes returns a bytes Value. It keeps b; the caller must not modify b afterwards.
func Bytes(b []byte) Value { return Value{typ: TypeBytes, b: b} }

// Bool returns a bool Value.
func Bool(v bool) Value {
	if v {
		return Value{typ: TypeBool, u: 1}
	}
	return Value{typ: TypeBool}
}

// Type returns the value's type; zero for the zero Value, which cannot be encoded.
func (v Value) Type() ValueType { return v.typ }

func (v Value) AsString() (string, bool)     { return v.s, v.typ == TypeString }
func (v Value) AsInt64() (int64, bool)       { return int64(v.u), v.typ == TypeInt64 }
func (v Value) AsUint64() (uint64, bool)     { return v.u, v.typ == TypeUint64 }
func (v Value) AsBool() (bool, bool)         { return v.u == 1, v.typ == TypeBool }
func (v Value) AsFloat64() (float64, bool)   { return math.Float64frombits(v.u), v.typ == TypeFloat64 }
func (v Value) AsDigest() (cas.Digest, bool) { return v.d, v.typ == TypeDigest }

// AsBytes returns the bytes of a bytes Value. The slice is shared with the Value; do not modify it.
func (v Value) AsBytes() ([]byte, bool) { return v.b, v.typ == TypeBytes }

// Interface returns the value as a plain Go value (string, int64, uint64, []byte, bool, float64
// or cas.Digest), for printing.
func (v Value) Interface() any {
	switch v.typ {
	case TypeString:
		return v.s
	case TypeInt64:
		return int64(v.u)
	case TypeUint64:
		return v.u
	case TypeBytes:
		return v.b
	case TypeBool:
		return v.u == 1
	case TypeFloat64:
		return math.Float64frombits(v.u)
	case TypeDigest:
		return v.d
	}
	return nil
}

// Equal reports whether two values have the same type and content.
func (v Value) Equal(w Value) bool {
	return v.typ == w.typ && v.s == w.s && bytes.Equal(v.b, w.b) && v.u == w.u && v.d == w.d
}

// validKind reports whether s is a valid manifest kind.
func validKind(s string) bool {
	if len(s) == 0 || len(s) > MaxKindLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validName(s string) bool {
	return len(s) > 0 && len(s) <= MaxNameLen && utf8.ValidString(s)
}

func badf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadManifest, fmt.Sprintf(format, a...))
}

// Validate checks m against the encoding's rules without encoding it.
func (m *Manifest) Validate() error {
	_, err := m.encode(nil)
	return err
}

// Encode returns the canonical encoding of m and its ID. It refuses (ErrBadManifest) a manifest
// that breaks the rules: bad kind, empty or duplicate region names, chunk lengths out of range,
// bad metadata keys or values, or an encoding larger than MaxManifestSize.
func (m *Manifest) Encode() ([]byte, ID, error) {
	b, err := m.encode(make([]byte, 0, m.sizeHint()))
	if err != nil {
		return nil, ID{}, err
	}
	return b, cas.Sum(b), nil
}

// sizeHint is an upper bound of m's encoded size, for a buffer to encode it into in one
// allocation; for a manifest that may be larger than MaxManifestSize (to be refused) it is
// small, and the encoding grows its buffer until it refuses.
func (m *Manifest) sizeHint() int {
	const small = 256
	n := len(manifestMagic) + 2*binary.MaxVarintLen64 + len(m.Kind) + len(m.Parent)
	for _, r := range m.Regions {
		n += 2*binary.MaxVarintLen64 + len(r.Name) + len(r.Chunks)*(len(cas.Digest{})+binary.MaxVarintLen64)
		if n > MaxManifestSize {
			return small
		}
	}
	n += binary.MaxVarintLen64
	for k, v := range m.Meta {
		n += 3*binary.MaxVarintLen64 + len(k) + len(v.s) + len(v.b) + len(v.d)
		if n > MaxManifestSize {
			return small
		}
	}
	return n
}

func (m *Manifest) encode(b []byte) ([]byte, error) {
	return m.encodeKeeping(append(b, manifestMagic...), nil)
}

// encodeKeeping appends m's encoding after the magic to b, checking the encoding's rules (see
// Encode). With keep nil that is the canonical encoding; otherwise each region's chunk list is
// written as keep[i] (the number of its first references that the kept form takes from its
// base: see kept.go), the count of the rest, then the rest. Only the rest is checked: the first
// keep[i] references are the base's, checked when it was encoded.
func (m *Manifest) encodeKeeping(b []byte, keep []int) ([]byte, error) {
	if !validKind(m.Kind) {
		return nil, badf("kind %q: want 1..%d characters of [a-z0-9._-]", trunc(m.Kind), MaxKindLen)
	}
	if len(m.Regions) > MaxRegions {
		return nil, badf("%d regions, at most %d", len(m.Regions), MaxRegions)
	}
	if len(m.Meta) > MaxMetaEntries {
		return nil, badf("%d metadata entries, at most %d", len(m.Meta), MaxMetaEntries)
	}
	size := 0 // running size, checked against MaxManifestSize as we go (cheap, no overflow)
	b = appendStr(b, m.Kind)
	b = append(b, m.Parent[:]...)
	b = binary.AppendUvarint(b, uint64(len(m.Regions)))
	names := make(map[string]struct{}, len(m.Regions))
	for i, r := range m.Regions {
		if !validName(r.Name) {
			return nil, badf("region %d: name %q: want 1..%d bytes of UTF-8", i, trunc(r.Name), MaxNameLen)
		}
		if _, dup := names[r.Name]; dup {
			return nil, badf("region name %q appears twice", trunc(r.Name))
		}
		names[r.Name] = struct{}{}
		size += len(r.Name) + 8 + len(r.Chunks)*(32+5)
		if size > MaxManifestSize {
			return nil, badf("larger than %d bytes", MaxManifestSize)
		}
		b = appendStr(b, r.Name)
		chunks := r.Chunks
		if keep != nil {
			b = binary.AppendUvarint(b, uint64(keep[i]))
			chunks = chunks[keep[i]:]
		}
		b = binary.AppendUvarint(b, uint64(len(chunks)))
		// Written in place (thousands of references: append's checks and a memmove call for
		// each digest cost more than the bytes): the digest as one 32-byte store, the length.
		b = slices.Grow(b, len(chunks)*(len(cas.Digest{})+binary.MaxVarintLen64))
		out, w := b[len(b):cap(b)], 0
		for j := range chunks {
			c := &chunks[j]
			if c.Length < 1 || c.Length > MaxChunkLength {
				return nil, badf("region %q chunk %d (%s): length %d out of range 1..%d", trunc(r.Name), len(r.Chunks)-len(chunks)+j, c.Digest, c.Length, MaxChunkLength)
			}
			*(*cas.Digest)(out[w:]) = c.Digest
			w += len(c.Digest)
			w += binary.PutUvarint(out[w:], uint64(c.Length))
		}
		b = b[:len(b)+w]
	}
	keys := make([]string, 0, len(m.Meta))
	for k := range m.Meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		v := m.Meta[k]
		if !validName(k) {
			return nil, badf("metadata key %q: want 1..%d bytes of UTF-8", trunc(k), MaxNameLen)
		}
		size += len(k) + len(v.s) + len(v.b) + 48
		if size > MaxManifestSize {
			return nil, badf("larger than %d bytes", MaxManifestSize)
		}
		b = appendStr(b, k)
		b = append(b, byte(v.typ))
		switch v.typ {
		case TypeString:
			if len(v.s) > MaxValueBytes || !utf8.ValidString(v.s) {
				return nil, badf("metadata %q: string value must be valid UTF-8 of at most %d bytes", trunc(k), MaxValueBytes)
			}
			b = appendStr(b, v.s)
		case TypeInt64:
			b = binary.AppendVarint(b, int64(v.u))
		case TypeUint64:
			b = binary.AppendUvarint(b, v.u)
		case TypeBytes:
			if len(v.b) > MaxValueBytes {
				return nil, badf("metadata %q: bytes value of %d bytes, at most %d", trunc(k), len(v.b), MaxValueBytes)
			}
			b = binary.AppendUvarint(b, uint64(len(v.b)))
			b = append(b, v.b...)
		case TypeBool:
			b = append(b, byte(v.u))
		case TypeFloat64:
			if math.IsNaN(math.Float64frombits(v.u)) {
				return nil, badf("metadata %q: NaN has no canonical form", trunc(k))
			}
			b = binary.LittleEndian.AppendUint64(b, v.u)
		case TypeDigest:
			b = append(b, v.d[:]...)
		default:
			return nil, badf("metadata %q: value has no type", trunc(k))
		}
	}
	if len(b) > MaxManifestSize {
		return nil, badf("%d bytes, larger than %d", len(b), MaxManifestSize)
	}
	return b, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Decode parses manifest bytes from any source, trusted or not. It never panics, bounds every
// allocation by the input's length, and accepts only the canonical encoding: after parsing it
// re-encodes the manifest and refuses the input unless the bytes are identical. Every refusal
// wraps ErrBadManifest. The returned Manifest shares no memory with data.
func Decode(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, badf("%d bytes, larger than %d", len(data), MaxManifestSize)
	}
	d := decoder{buf: data}
	m, err := d.manifest()
	if err != nil {
		return nil, err
	}
	again, err := m.encode(make([]byte, 0, len(data)))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, badf("not in canonical form")
	}
	return m, nil
}

// decoder reads the encoding; every method checks bounds and returns ErrBadManifest errors.
type decoder struct {
	buf []byte
	off int
}

func (d *decoder) errf(format string, a ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrBadManifest, d.off, fmt.Sprintf(format, a...))
}

func (d *decoder) uvarint(what string) (uint64, error) {
	v, n := binary.Uvarint(d.buf[d.off:])
	if n <= 0 {
		return 0, d.errf("%s: truncated or overlong varint", what)
	}
	d.off += n
	return v, nil
}

func (d *decoder) bytes(n uint64, what string) ([]byte, error) {
	if n > uint64(len(d.buf)-d.off) {
		return nil, d.errf("%s: %d bytes wanted, %d left", what, n, len(d.buf)-d.off)
	}
	b := d.buf[d.off : d.off+int(n)]
	d.off += int(n)
	return b, nil
}

func (d *decoder) str(what string, max int) (string, error) {
	n, err := d.uvarint(what)
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", d.errf("%s: %d bytes, at most %d", what, n, max)
	}
	b, err := d.bytes(n, what)
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", d.errf("%s: not valid UTF-8", what)
	}
	return string(b), nil
}

// count reads a count of items that each take at least minBytes, refusing counts the remaining
// input cannot hold (so a tiny input cannot make Decode allocate much).
func (d *decoder) count(what string, max uint64, minBytes int) (int, error) {
	n, err := d.uvarint(what)
	if err != nil {
		return 0, err
	}
	if n > max {
		return 0, d.errf("%s: %d, at most %d", what, n, max)
	}
	if n*uint64(minBytes) > uint64(len(d.buf)-d.off) {
		return 0, d.errf("%s: %d does not fit in the %d bytes left", what, n, len(d.buf)-d.off)
	}
	return int(n), nil
}

// decodeRegions reads the kind, parent and regions of data, not its metadata, and checks less
// than Decode (not the metadata, not canonical form): for bytes the index stored after Decode
// or Encode checked them.
func decodeRegions(data []byte) (*Manifest, error) {
	d := decoder{buf: data}
	magic, err := d.bytes(4, "magic")
	if err != nil {
		return nil, err
	}
	if string(magic) != manifestMagic {
		return nil, d.errf("not a driftstore manifest of format version %d (magic %q)", manifestMagic[3], magic)
	}
	m := &Manifest{}
	if err := d.headAndRegions(m); err != nil {
		return nil, err
	}
	return m, nil
}

func (d *decoder) manifest() (*Manifest, error) {
	magic, err := d.bytes(4, "magic")
	if err != nil {
		return nil, err
	}
	if string(magic[:3]) != manifestMagic[:3] {
		return nil, d.errf("not a driftstore manifest (magic %q)", magic)
	}
	if magic[3] != manifestMagic[3] {
		return nil, d.errf("manifest format version %d; this driftstore reads version %d", magic[3], manifestMagic[3])
	}
	m := &Manifest{}
	if err := d.headAndRegions(m); err != nil {
		return nil, err
	}
	return d.meta(m)
}

// headAndRegions reads the kind, parent and regions of m, after the magic.
func (d *decoder) headAndRegions(m *Manifest) error { return d.headAndRegionsKept(m, nil, false) }

// headAndRegionsKept is headAndRegions, and with kept set reads the kept form's chunk lists
// (see encodeKeeping), taking region i's first references from base[i], which must have the
// same name.
func (d *decoder) headAndRegionsKept(m *Manifest, base []Region, kept bool) error {
	var err error
	if m.Kind, err = d.str("kind", MaxKindLen); err != nil {
		return err
	}
	p, err := d.bytes(32, "parent")
	if err != nil {
		return err
	}
	copy(m.Parent[:], p)
	nr, err := d.count("region count", MaxRegions, 2)
	if err != nil {
		return err
	}
	if nr > 0 {
		m.Regions = make([]Region, nr)
	}
	for i := range m.Regions {
		r := &m.Regions[i]
		if r.Name, err = d.str("region name", MaxNameLen); err != nil {
			return err
		}
		var from []ChunkRef // the references taken from base
		if kept {
			k, err := d.uvarint("kept chunk count")
			if err != nil {
				return err
			}
			if k > 0 {
				if i >= len(base) || base[i].Name != r.Name {
					return d.errf("region %d (%q) keeps %d chunks of a base that has no such region", i, trunc(r.Name), k)
				}
				if k > uint64(len(base[i].Chunks)) {
					return d.errf("region %q keeps %d chunks of a base region of %d", trunc(r.Name), k, len(base[i].Chunks))
				}
				from = base[i].Chunks[:k]
			}
		}
		nc, err := d.count("chunk count", math.MaxInt32-uint64(len(from)), 33)
		if err != nil {
			return err
		}
		if n := len(from) + nc; n > 0 {
			r.Chunks = make([]ChunkRef, n)
		}
		copy(r.Chunks, from)
		for j := len(from); j < len(r.Chunks); j++ {
			dg, err := d.bytes(32, "chunk digest")
			if err != nil {
				return err
			}
			copy(r.Chunks[j].Digest[:], dg)
			l, err := d.uvarint("chunk length")
			if err != nil {
				return err
			}
			if l < 1 || l > MaxChunkLength {
				return d.errf("chunk length %d out of range 1..%d", l, MaxChunkLength)
			}
			r.Chunks[j].Length = int64(l)
		}
	}
	return nil
}

// meta reads the metadata of m and checks nothing follows it.
func (d *decoder) meta(m *Manifest) (*Manifest, error) {
	nm, err := d.count("metadata count", MaxMetaEntries, 3)
	if err != nil {
		return nil, err
	}
	if nm > 0 {
		m.Meta = make(map[string]Value, nm)
	}
	prev := ""
	for i := 0; i < nm; i++ {
		k, err := d.str("metadata key", MaxNameLen)
		if err != nil {
			return nil, err
		}
		if i > 0 && k <= prev {
			return nil, d.errf("metadata key %q not after %q", trunc(k), trunc(prev))
		}
		prev = k
		t, err := d.bytes(1, "value type")
		if err != nil {
			return nil, err
		}
		var v Value
		v.typ = ValueType(t[0])
		switch v.typ {
		case TypeString:
			if v.s, err = d.str("string value", MaxValueBytes); err != nil {
				return nil, err
			}
		case TypeInt64:
			x, n := binary.Varint(d.buf[d.off:])
			if n <= 0 {
				return nil, d.errf("int64 value: truncated or overlong varint")
			}
			d.off += n
			v.u = uint64(x)
		case TypeUint64:
			if v.u, err = d.uvarint("uint64 value"); err != nil {
				return nil, err
			}
		case TypeBytes:
			n, err := d.uvarint("bytes length")
			if err != nil {
				return nil, err
			}
			if n > MaxValueBytes {
				return nil, d.errf("bytes value of %d bytes, at most %d", n, MaxValueBytes)
			}
			b, err := d.bytes(n, "bytes value")
			if err != nil {
				return nil, err
			}
			v.b = bytes.Clone(b)
			if v.b == nil {
				v.b = []byte{}
			}
		case TypeBool:
			b, err := d.bytes(1, "bool value")
			if err != nil {
				return nil, err
			}
			if b[0] > 1 {
				return nil, d.errf("bool value %d", b[0])
			}
			v.u = uint64(b[0])
		case TypeFloat64:
			b, err := d.bytes(8, "float64 value")
			if err != nil {
				return nil, err
			}
			v.u = binary.LittleEndian.Uint64(b)
		case TypeDigest:
			b, err := d.bytes(32, "digest value")
			if err != nil {
				return nil, err
			}
			copy(v.d[:], b)
		default:
			return nil, d.errf("metadata %q: unknown value type %d", trunc(k), t[0])
		}
		m.Meta[k] = v
	}
	if d.off != len(d.buf) {
		return nil, d.errf("%d bytes of trailing garbage", len(d.buf)-d.off)
	}
	return m, nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Encoded is a manifest together with its canonical encoding and ID, made by
// Manifest.Encoded, for callers that encode a manifest apart from committing it (to overlap
// the encoding with other work, or to learn the ID first). An Encoded is immutable and safe for
// concurrent use.
type Encoded struct {
	m    *Manifest
	data []byte
	id   ID
}

// Encoded encodes m (see Encode) and keeps the result with a copy of m's kind, parent and
// regions (the index's commit needs nothing else), so that later changes to m do not affect
// it. m is only read.
func (m *Manifest) Encoded() (*Encoded, error) {
	data, id, err := m.Encode()
	if err != nil {
		return nil, err
	}
	c := &Manifest{Kind: m.Kind, Parent: m.Parent, Regions: make([]Region, len(m.Regions))}
	n := 0
	for _, r := range m.Regions {
		n += len(r.Chunks)
	}
	refs := make([]ChunkRef, 0, n) // one allocation for every region's chunks
	for i, r := range m.Regions {
		refs = append(refs, r.Chunks...)
		c.Regions[i] = Region{Name: r.Name, Chunks: refs[len(refs)-len(r.Chunks) : len(refs) : len(refs)]}
	}
	return &Encoded{m: c, data: data, id: id}, nil
}

// EncodedOwned is Encoded without the copy: the result keeps m's regions and their chunk
// lists, which nobody may modify afterwards (the index keeps them to check the commits of
// m's children). For a large manifest built to be committed once (a checkpoint's lists the
// whole context: 160 KB at 4096 positions of the Llama-3.2-1B shape), it saves a copy.
func (m *Manifest) EncodedOwned() (*Encoded, error) {
	data, id, err := m.Encode()
	if err != nil {
		return nil, err
	}
	return &Encoded{m: &Manifest{Kind: m.Kind, Parent: m.Parent, Regions: m.Regions}, data: data, id: id}, nil
}

// DecodeEncoded decodes data strictly (see Decode) into an Encoded manifest whose ID is the
// BLAKE3 of data. The result shares data: do not modify data while the result is in use.
func DecodeEncoded(data []byte) (*Encoded, error) {
	m, err := Decode(data)
	if err != nil {
		return nil, err
	}
	return &Encoded{m: m, data: data, id: cas.Sum(data)}, nil
}

// ID returns the manifest's ID (the BLAKE3 of Bytes).
func (e *Encoded) ID() ID { return e.id }

// Bytes returns the canonical encoding. The slice is shared: do not modify it.
func (e *Encoded) Bytes() []byte { return e.data }
