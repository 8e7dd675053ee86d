package cas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"

	"github.com/klauspost/compress/huff0"
	"github.com/klauspost/compress/zstd"
)

// MaxChunkSize is the largest chunk any store accepts (64 MiB). Every chunker output fits.
const MaxChunkSize = 64 << 20

// ErrTooLarge is returned (wrapped) by Put for data longer than MaxChunkSize.
var ErrTooLarge = errors.New("chunk too large")

// MinSavings is the compression threshold: a chunk is stored compressed only when that saves
// at least this fraction of its size (3%); otherwise it is stored raw, which reads back at
// memmove speed.
const MinSavings = 0.03

// String names the codec as it appears in CLI output and JSON.
func (c Codec) String() string {
	switch c {
	case CodecRaw:
		return "raw"
	case CodecZstd:
		return "zstd"
	case CodecF16Planes:
		return "f16planes"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// Valid reports whether c is a codec this package can decode.
func (c Codec) Valid() bool { return c == CodecRaw || c == CodecZstd || c == CodecF16Planes }

// errPayload marks a stored form that does not decode; stores turn it into a *CorruptError
// naming the chunk.
var errPayload = errors.New("stored form does not decode")

// The stored forms ("payloads"), one per codec. A local chunk file is a 16-byte header (see
// local.go) followed by the payload; GetStored and PutStored move payloads.
//
//	CodecRaw        the chunk's bytes.
//	CodecZstd       one zstd frame (RFC 8878) that declares its content size; no checksum
//	                (every read is verified against the BLAKE3 name instead).
//	CodecF16Planes  the chunk split into byte planes, each kept in its own way. For a chunk
//	                of n bytes read as little-endian float16 values, the low plane is bytes
//	                0, 2, 4, … (ceil(n/2) bytes: an odd trailing byte belongs to it) and the
//	                high plane is bytes 1, 3, 5, … (floor(n/2) bytes). Two layouts exist;
//	                the first four bytes tell them apart. Encode writes version 2; Decode
//	                reads both.
//
// CodecF16Planes version 2 (all integers little-endian):
//
//	bytes 0-3   the tag 02 00 16 f1 (as a u32, 0xf1160002: no version 1 payload starts so,
//	            since its first u32 is a frame length below 2^26)
//	byte  4     flags: bit 0 set = the low plane is a zstd frame, else raw; bit 1 set = the
//	            high plane is a zstd frame, else Huffman blocks; other bits 0
//	bytes 5-8   n, the chunk's size (at most MaxChunkSize)
//	bytes 9-12  L, the length of the low plane's section, which follows
//	then        the low plane's section (L bytes): the plane itself (L = ceil(n/2)), or a
//	            zstd frame of it
//	then        the high plane's section (the rest): a zstd frame of the plane, or Huffman
//	            blocks: the plane cut into blocks of 64 KiB (the last one shorter; none when
//	            the plane is empty), each a kind byte followed by
//	              0 raw:     the block's bytes
//	              1 rle:     one byte, repeated for the whole block
//	              2 huffman: u32 length, then that many bytes: a huff0 table and four
//	                         interleaved streams (klauspost/compress/huff0 Compress4X, the
//	                         format of zstd's literals section)
//
// Version 1 (written before version 2; still read): u32 L, then a zstd frame of L bytes
// holding the low plane, then a zstd frame (the rest) holding the high plane; both frames
// declare their content size.
//
// Why version 2: the low plane of float16 data is nearly random and is kept raw, so encoding
// writes it straight from the split into the payload and decoding interleaves it straight from
// the payload, with no frame to build or parse; the high plane goes through huff0 directly,
// without zstd's match search (which finds nothing in such planes) and block framing.
//
// Splitting float16 values into planes puts the sign, exponent and top mantissa bits (high
// bytes, low entropy in real activations and KV caches) apart from the low mantissa bits (nearly
// random), so entropy coding of the high plane pays where a plain zstd pass over interleaved
// bytes finds nothing.

// codecs holds the shared zstd state. Encoders and decoder are safe for concurrent EncodeAll
// and DecodeAll calls; each allows GOMAXPROCS of them at once and queues the rest.
type codecs struct {
	// fast is zstd's fastest level with its default literal handling: when a block has no
	// matches it is stored raw, skipping Huffman coding. Random-like data goes through at
	// memory speed.
	fast *zstd.Encoder
	// entropy is the fastest level with entropy coding of literals even in blocks without
	// matches (WithAllLitEntropyCompression). It is what makes float16 high-byte planes shrink.
	entropy *zstd.Encoder
	dec     *zstd.Decoder
}

var sharedCodecs = sync.OnceValue(func() *codecs {
	n := runtime.GOMAXPROCS(0)
	common := []zstd.EOption{
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(n),
		zstd.WithEncoderCRC(false),
		zstd.WithZeroFrames(true),
		// Single segment: every frame declares its content size, which a receiver of the
		// stored form needs (left alone, the encoder omits it below 256 bytes).
		zstd.WithSingleSegment(true),
	}
	fast, err := zstd.NewWriter(nil, append(common, zstd.WithAllLitEntropyCompression(false))...)
	if err != nil {
		panic(fmt.Sprintf("cas: zstd encoder: %v", err)) // only on invalid options: a bug here
	}
	entropy, err := zstd.NewWriter(nil, append(common, zstd.WithAllLitEntropyCompression(true))...)
	if err != nil {
		panic(fmt.Sprintf("cas: zstd encoder: %v", err))
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(n),
		zstd.WithDecoderMaxMemory(MaxChunkSize),
		zstd.WithDecoderMaxWindow(MaxChunkSize),
		zstd.WithDecodeAllCapLimit(true),
		zstd.IgnoreChecksum(true),
	)
	if err != nil {
		panic(fmt.Sprintf("cas: zstd decoder: %v", err))
	}
	return &codecs{fast: fast, entropy: entropy, dec: dec}
})

// zstdLiteralEntropy selects the encoder for CodecZstd chunks (data without a float16 hint).
// Measured on this project's benchmarks (see BenchmarkCodec): with literal entropy coding on,
// float16 KV-like data not split into planes goes from ratio 1.00 to about 1.09, at about a
// fifth of the encode speed, and random data pays the failed Huffman attempt. Hinted float16
// data takes the plane codec instead, so plain zstd keeps the fast default.
const zstdLiteralEntropy = false

// buffer pool for stored forms and planes. Buffers larger than maxPooled are not kept, so a
// rare huge chunk does not pin memory.
const maxPooled = 4 << 20

var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// getBuf returns a pooled buffer with capacity at least n and length 0.
func getBuf(n int) *[]byte {
	p := bufPool.Get().(*[]byte)
	if cap(*p) < n {
		*p = make([]byte, 0, n)
	}
	*p = (*p)[:0]
	return p
}

func putBuf(p *[]byte) {
	if cap(*p) > maxPooled {
		return
	}
	bufPool.Put(p)
}

// Encode chooses a codec for data and appends data's stored form to dst, returning the codec
// and the extended slice. With HintFloat16 it tries the float16 plane codec, otherwise zstd; it
// falls back to CodecRaw (the stored form is then data itself, appended) when compression saves
// less than MinSavings. Encode only reads data. Safe for concurrent use.
func Encode(dst, data []byte, hint Hint) (Codec, []byte) {
	codec, out := encode(dst, data, hint)
	if codec == CodecRaw {
		out = append(out, data...)
	}
	return codec, out
}

// encode is Encode, except that for CodecRaw it appends nothing and returns dst: the stored
// form is then data itself, which the caller writes or copies as it sees fit.
func encode(dst, data []byte, hint Hint) (Codec, []byte) {
	if len(data) == 0 {
		return CodecRaw, dst
	}
	start := len(dst)
	codec := CodecZstd
	if hint == HintFloat16 && len(data) >= 2 {
		codec = CodecF16Planes
	}
	if codec == CodecZstd && !zstdLiteralEntropy && !fastZstdMayMatch(data) {
		// The fast encoder would find no match, so it would store every block raw (its
		// literals are entropy-coded only in blocks with matches): raw is what pays.
		return CodecRaw, dst
	}
	if need := start + len(data) + len(data)>>7 + 64; codec == CodecZstd && cap(dst) < need {
		// Room for zstd's worst case (raw blocks and their headers) up front: growing the
		// output block by block costs more than the encoding of data without matches.
		grown := make([]byte, start, need)
		copy(grown, dst)
		dst = grown
	}
	out, err := EncodeWith(dst, data, codec)
	if err == nil && float64(len(out)-start) <= float64(len(data))*(1-MinSavings) {
		return codec, out
	}
	return CodecRaw, dst[:start]
}

// The fast zstd level's match search, as klauspost/compress (the version in go.mod) runs it
// for EncodeWith(CodecZstd) with zstdLiteralEntropy off. Its encoder cuts the input into
// blocks of fastZstdBlock bytes. In each block it looks for a match at positions s = b, then
// s += 2 + (s-b)>>5 (b the block's start: the search skips ahead faster the longer it finds
// nothing) while s < end-8 (end the block's end): at s it compares the 4 bytes at s and at s+1
// with those of one earlier position each, taken from a hash table of the positions it looked
// at before (in this block and the chunk's earlier ones; none from other chunks). Until its
// first match the positions it looks at depend only on the block bounds. A block in which it
// finds no match is stored raw (literal entropy coding is off for blocks without matches), so
// a chunk in which it finds none is stored raw whole, and encode keeps it raw.
//
// TestFastZstdProbe checks, on the real encoder, that every chunk fastZstdMayMatch clears is
// stored in raw blocks only, including matches placed just after a block boundary.
const (
	fastZstdBlock      = 64 << 10 // SpeedFastest's block size (the options leave it alone)
	fastZstdProbeLimit = 512 << 10
	// fastZstdVisits is how many positions the search looks at in a block of fastZstdBlock
	// bytes without a match (234), rounded up; two values each.
	fastZstdVisits = 240
	probeTableBits = 14 // 2^14 slots: load under 1/2 for fastZstdProbeLimit
)

// probeTable is an open-addressing set of 32-bit values, reused across probes: a slot holds
// gen<<32 | value, and only slots of the current generation count. A probe uses the first
// 2^bits slots, bits chosen for a load of at most 1/4 (16 KiB for a 64 KiB chunk), so that the
// table stays in cache next to the chunk.
type probeTable struct {
	slot [1 << probeTableBits]uint64
	gen  uint64
}

var probeTables = sync.Pool{New: func() any { return new(probeTable) }}

// fastZstdMayMatch reports whether the fast zstd encoder might find a match in data. false
// is a proof that it finds none (see above): fastZstdMayMatch looks at the same positions as
// the encoder does before its first match and answers true as soon as any two of the 4-byte
// values read there are equal, a superset of the encoder's hash-table hits. For data without
// repeats that costs a few hundred table probes per 64 KiB block, against a full pass of
// copies for the encoder's raw blocks. Chunks over fastZstdProbeLimit answer true (not probed).
func fastZstdMayMatch(data []byte) bool {
	if len(data) > fastZstdProbeLimit {
		return true
	}
	t := probeTables.Get().(*probeTable)
	defer probeTables.Put(t)
	t.gen++
	if t.gen >= 1<<32 {
		clear(t.slot[:])
		t.gen = 1
	}
	tag := t.gen << 32
	values := max(1, (len(data)+fastZstdBlock-1)/fastZstdBlock) * 2 * fastZstdVisits
	nb := min(max(11, bits.Len(uint(4*values-1))), probeTableBits)
	mask := uint32(1)<<nb - 1
	shift := 64 - nb
	seen := func(v uint32) bool {
		i := uint32(uint64(v)*0x9e3779b97f4a7c15>>shift) & mask
		for {
			e := t.slot[i]
			if e&^0xffffffff != tag {
				t.slot[i] = tag | uint64(v)
				return false
			}
			if uint32(e) == v {
				return true
			}
			i = (i + 1) & mask
		}
	}
	for b := 0; b < len(data); b += fastZstdBlock {
		blk := data[b:min(b+fastZstdBlock, len(data))]
		limit := len(blk) - 8
		if limit < 2 { // the encoder keeps blocks under 10 bytes as literals
			continue
		}
		for s := 0; s < limit; s += 2 + s>>5 {
			w := binary.LittleEndian.Uint64(blk[s:])
			if seen(uint32(w)) || seen(uint32(w>>8)) {
				return true
			}
		}
	}
	return false
}

// encodeVerified is encode followed by a check that the stored form decodes back to data, so
// that a codec bug can never commit a chunk that does not match its name. For CodecRaw it
// appends nothing (see encode). A float16 plane payload is checked by decoding its planes and
// comparing them, interleaved on the fly, with data (the same check as a full decode and
// compare, without writing the decoded chunk anywhere).
func encodeVerified(dst, data []byte, hint Hint) (Codec, []byte, error) {
	codec, out := encode(dst, data, hint)
	stored := out[len(dst):]
	switch {
	case codec == CodecF16Planes && len(stored) >= 4 && binary.LittleEndian.Uint32(stored) == planesV2Tag:
		err := withPlanesV2(stored, len(data), func(n int, lo, hi []byte) error {
			if !joinedEqual(data, lo, hi) {
				return errors.New("decodes to other bytes")
			}
			return nil
		})
		if err != nil {
			return 0, nil, fmt.Errorf("%s stored form: %v", codec, err)
		}
	case codec != CodecRaw:
		if err := verifyEncoded(stored, codec, data); err != nil {
			return 0, nil, err
		}
	}
	return codec, out, nil
}

// EncodeWith appends data's stored form under the given codec to dst, whatever it saves.
// It fails only for an unknown codec.
func EncodeWith(dst, data []byte, codec Codec) ([]byte, error) {
	c := sharedCodecs()
	switch codec {
	case CodecRaw:
		return append(dst, data...), nil
	case CodecZstd:
		enc := c.fast
		if zstdLiteralEntropy {
			enc = c.entropy
		}
		return enc.EncodeAll(data, dst), nil
	case CodecF16Planes:
		return encodePlanes(dst, data), nil
	}
	return dst, fmt.Errorf("encode: unknown codec %d", codec)
}

// Version 2 of the CodecF16Planes stored form (see the stored forms above).
const (
	planesV2Tag    = 0xf1160002
	planesV2Header = 13
	planesLoZstd   = 1 << 0
	planesHiZstd   = 1 << 1
	hiBlockSize    = 64 << 10
	hiBlockRaw     = 0
	hiBlockRLE     = 1
	hiBlockHuff    = 2
)

// huffScratch pools huff0 state (tables and buffers; a Scratch is not safe for concurrent use).
var huffScratch = sync.Pool{New: func() any { return new(huff0.Scratch) }}

// encodePlanes appends the CodecF16Planes payload (version 2) of data to dst. The low plane is
// split straight into the payload; when a sample of it shows structure (zero runs, skewed
// bytes) the fast zstd encoder gets a try and is kept if smaller. The high plane takes Huffman
// blocks, or a zstd frame with literal entropy coding when one byte value dominates a sample
// (runs that matches shrink far below Huffman's one bit per byte).
func encodePlanes(dst, data []byte) []byte {
	c := sharedCodecs()
	n := len(data)
	loLen, hiLen := (n+1)/2, n/2
	at := len(dst)
	if need := at + planesV2Header + loLen + hiLen + 16 + 5*(hiLen/hiBlockSize+1); cap(dst) < need {
		grown := make([]byte, at, need)
		copy(grown, dst)
		dst = grown
	}
	dst = binary.LittleEndian.AppendUint32(dst, planesV2Tag)
	dst = append(dst, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, 0, 0, 0, 0) // L, below
	loAt := len(dst)
	dst = dst[:loAt+loLen]
	hiBuf := getBuf(hiLen)
	defer putBuf(hiBuf)
	hi := (*hiBuf)[:hiLen]
	splitPlanes(dst[loAt:], hi, data)
	var flags byte
	if !looksUniform(dst[loAt:]) {
		tmp := getBuf(loLen)
		lo := append((*tmp)[:0], dst[loAt:]...)
		z := c.fast.EncodeAll(lo, dst[:loAt])
		if len(z)-loAt < loLen {
			dst, flags = z, flags|planesLoZstd
		} else {
			dst = append(z[:loAt], lo...)
		}
		putBuf(tmp)
	}
	binary.LittleEndian.PutUint32(dst[at+9:], uint32(len(dst)-loAt))
	if dominated(hi) {
		dst, flags = c.entropy.EncodeAll(hi, dst), flags|planesHiZstd
	} else {
		dst = appendHuffBlocks(dst, hi)
	}
	dst[at+4] = flags
	return dst
}

// appendHuffBlocks appends the Huffman blocks of plane p (see the stored forms) to dst.
func appendHuffBlocks(dst, p []byte) []byte {
	s := huffScratch.Get().(*huff0.Scratch)
	defer huffScratch.Put(s)
	for len(p) > 0 {
		b := p[:min(len(p), hiBlockSize)]
		p = p[len(b):]
		s.Reuse = huff0.ReusePolicyNone // every block carries its own table
		out, _, err := huff0.Compress4X(b, s)
		switch {
		case err == nil:
			dst = append(dst, hiBlockHuff)
			dst = binary.LittleEndian.AppendUint32(dst, uint32(len(out)))
			dst = append(dst, out...)
		case errors.Is(err, huff0.ErrUseRLE):
			dst = append(dst, hiBlockRLE, b[0])
		default: // ErrIncompressible, or anything else: keep the bytes
			dst = append(dst, hiBlockRaw)
			dst = append(dst, b...)
		}
	}
	return dst
}

// decodeHuffBlocks decodes Huffman blocks (see the stored forms) into all of p, which must be
// exactly the plane's size; every byte of in must be used.
func decodeHuffBlocks(p, in []byte) error {
	s := huffScratch.Get().(*huff0.Scratch)
	defer huffScratch.Put(s)
	for off := 0; off < len(p); {
		bs := min(hiBlockSize, len(p)-off)
		blk := p[off : off+bs : off+bs]
		if len(in) == 0 {
			return fmt.Errorf("%w: high plane ends at block %d", errPayload, off/hiBlockSize)
		}
		kind := in[0]
		in = in[1:]
		switch kind {
		case hiBlockRaw:
			if len(in) < bs {
				return fmt.Errorf("%w: raw high-plane block truncated", errPayload)
			}
			copy(blk, in[:bs])
			in = in[bs:]
		case hiBlockRLE:
			if len(in) < 1 {
				return fmt.Errorf("%w: rle high-plane block truncated", errPayload)
			}
			for i := range blk {
				blk[i] = in[0]
			}
			in = in[1:]
		case hiBlockHuff:
			if len(in) < 4 {
				return fmt.Errorf("%w: huffman high-plane block truncated", errPayload)
			}
			l := binary.LittleEndian.Uint32(in)
			in = in[4:]
			if uint64(l) > uint64(len(in)) {
				return fmt.Errorf("%w: huffman block of %d bytes exceeds the payload", errPayload, l)
			}
			s2, rest, err := huff0.ReadTable(in[:l], s)
			if err != nil {
				return fmt.Errorf("%w: huffman table: %v", errPayload, err)
			}
			s = s2
			out, err := s.Decoder().Decompress4X(blk[:0], rest)
			if err != nil {
				return fmt.Errorf("%w: huffman block: %v", errPayload, err)
			}
			if len(out) != bs {
				return fmt.Errorf("%w: huffman block decoded to %d bytes, want %d", errPayload, len(out), bs)
			}
			in = in[l:]
		default:
			return fmt.Errorf("%w: unknown high-plane block kind %d", errPayload, kind)
		}
		off += bs
	}
	if len(in) != 0 {
		return fmt.Errorf("%w: %d bytes after the high plane", errPayload, len(in))
	}
	return nil
}

// Decode appends the decoded chunk of the stored form to dst[:0] and returns it. When size ≥ 0
// the chunk must decode to exactly size bytes; with size < 0 any size up to MaxChunkSize is
// accepted. When cap(dst) is at least the decoded size, Decode allocates nothing for the output
// and the result shares dst's backing array (for CodecRaw and CodecZstd the bytes are written
// there directly; CodecF16Planes decodes its planes into pooled scratch and interleaves into
// dst). Decode never writes past the decoded size within dst. It does not verify a digest.
// Errors wrap an internal payload error that stores report as a *CorruptError. Safe for
// concurrent use.
func Decode(dst []byte, codec Codec, stored []byte, size int) ([]byte, error) {
	switch codec {
	case CodecRaw:
		if size >= 0 && len(stored) != size {
			return dst[:0], fmt.Errorf("%w: raw payload is %d bytes, want %d", errPayload, len(stored), size)
		}
		if len(stored) > MaxChunkSize {
			return dst[:0], fmt.Errorf("%w: raw payload of %d bytes exceeds the chunk limit", errPayload, len(stored))
		}
		return append(dst[:0], stored...), nil
	case CodecZstd:
		return decodeFrame(dst[:0], stored, size)
	case CodecF16Planes:
		return decodePlanes(dst, stored, size)
	}
	return dst[:0], fmt.Errorf("%w: unknown codec %d", errPayload, codec)
}

// frameSize reads a zstd frame header and returns its declared content size.
func frameSize(frame []byte) (int, error) {
	var h zstd.Header
	if err := h.Decode(frame); err != nil {
		return 0, fmt.Errorf("%w: zstd frame header: %v", errPayload, err)
	}
	if h.Skippable || h.DictionaryID != 0 {
		return 0, fmt.Errorf("%w: skippable or dictionary zstd frame", errPayload)
	}
	if !h.HasFCS {
		// The encoder leaves the size out of frames of small inputs; the caller then relies
		// on the size it knows from the chunk header.
		return -1, nil
	}
	if h.FrameContentSize > MaxChunkSize {
		return 0, fmt.Errorf("%w: zstd frame declares %d bytes, over the chunk limit", errPayload, h.FrameContentSize)
	}
	return int(h.FrameContentSize), nil
}

// decodeFrame appends the content of one zstd frame to dst (len(dst) is 0).
func decodeFrame(dst, frame []byte, size int) ([]byte, error) {
	n, err := frameSize(frame)
	if err != nil {
		return dst, err
	}
	if n < 0 {
		if size < 0 {
			return dst, fmt.Errorf("%w: zstd frame without content size", errPayload)
		}
		n = size
	}
	if size >= 0 && n != size {
		return dst, fmt.Errorf("%w: zstd frame declares %d bytes, want %d", errPayload, n, size)
	}
	if cap(dst) < n {
		dst = make([]byte, 0, n)
	}
	// The decoder may not write past n: limit the capacity it sees.
	out, err := sharedCodecs().dec.DecodeAll(frame, dst[:0:n])
	if err != nil {
		return dst[:0], fmt.Errorf("%w: zstd: %v", errPayload, err)
	}
	if len(out) != n {
		return dst[:0], fmt.Errorf("%w: zstd frame decoded to %d bytes, declared %d", errPayload, len(out), n)
	}
	return dst[:n], nil
}

// decodePlanes decodes a CodecF16Planes payload of either version.
func decodePlanes(dst, stored []byte, size int) ([]byte, error) {
	if len(stored) >= 4 && binary.LittleEndian.Uint32(stored) == planesV2Tag {
		return decodePlanesV2(dst, stored, size)
	}
	return decodePlanesV1(dst, stored, size)
}

func decodePlanesV2(dst, stored []byte, size int) ([]byte, error) {
	var out []byte
	err := withPlanesV2(stored, size, func(n int, lo, hi []byte) error {
		if cap(dst) < n {
			dst = make([]byte, n)
		}
		out = dst[:n]
		joinPlanes(out, lo, hi)
		return nil
	})
	if err != nil {
		return dst[:0], err
	}
	return out, nil
}

// withPlanesV2 decodes the planes of a version 2 payload and calls fn with the chunk's size and
// the planes, which are valid only during the call (lo may alias stored). When size ≥ 0 the
// payload must declare that size. Errors wrap errPayload, or are fn's.
func withPlanesV2(stored []byte, size int, fn func(n int, lo, hi []byte) error) error {
	if len(stored) < planesV2Header {
		return fmt.Errorf("%w: plane payload of %d bytes is truncated", errPayload, len(stored))
	}
	flags := stored[4]
	if flags&^(planesLoZstd|planesHiZstd) != 0 {
		return fmt.Errorf("%w: unknown plane flags %#x", errPayload, flags)
	}
	n := int(binary.LittleEndian.Uint32(stored[5:]))
	if n > MaxChunkSize || (size >= 0 && n != size) {
		return fmt.Errorf("%w: plane payload declares %d bytes, want %d", errPayload, n, size)
	}
	l := binary.LittleEndian.Uint32(stored[9:])
	if uint64(l) > uint64(len(stored)-planesV2Header) {
		return fmt.Errorf("%w: low plane length %d exceeds the payload", errPayload, l)
	}
	loStored, hiStored := stored[planesV2Header:planesV2Header+l], stored[planesV2Header+l:]
	loLen, hiLen := (n+1)/2, n/2
	// Check what the sections declare before allocating for n: a few bytes of garbage must not
	// cost a 64 MiB buffer.
	for _, sec := range []struct {
		zstd bool
		data []byte
		want int
	}{{flags&planesLoZstd != 0, loStored, loLen}, {flags&planesHiZstd != 0, hiStored, hiLen}} {
		if !sec.zstd {
			continue
		}
		if got, err := frameSize(sec.data); err != nil {
			return err
		} else if got >= 0 && got != sec.want {
			return fmt.Errorf("%w: plane frame declares %d bytes, want %d", errPayload, got, sec.want)
		}
	}
	if flags&planesHiZstd == 0 && len(hiStored) < 2*((hiLen+hiBlockSize-1)/hiBlockSize) {
		return fmt.Errorf("%w: %d bytes cannot hold the Huffman blocks of a %d-byte plane", errPayload, len(hiStored), hiLen)
	}
	lo := loStored
	if flags&planesLoZstd == 0 {
		if len(lo) != loLen {
			return fmt.Errorf("%w: raw low plane is %d bytes, want %d", errPayload, len(lo), loLen)
		}
	} else {
		loBuf := getBuf(loLen)
		defer putBuf(loBuf)
		var err error
		if lo, err = decodeFrame((*loBuf)[:0:loLen], loStored, loLen); err != nil {
			return err
		}
	}
	hiBuf := getBuf(hiLen)
	defer putBuf(hiBuf)
	hi := (*hiBuf)[:hiLen]
	if flags&planesHiZstd != 0 {
		if _, err := decodeFrame(hi[:0:hiLen], hiStored, hiLen); err != nil {
			return err
		}
	} else if err := decodeHuffBlocks(hi, hiStored); err != nil {
		return err
	}
	return fn(n, lo, hi)
}

func decodePlanesV1(dst, stored []byte, size int) ([]byte, error) {
	if len(stored) < 4 {
		return dst[:0], fmt.Errorf("%w: plane payload of %d bytes is truncated", errPayload, len(stored))
	}
	l := binary.LittleEndian.Uint32(stored)
	if uint64(l) > uint64(len(stored)-4) {
		return dst[:0], fmt.Errorf("%w: low plane length %d exceeds the payload", errPayload, l)
	}
	loFrame, hiFrame := stored[4:4+l], stored[4+l:]
	loLen, err := frameSize(loFrame)
	if err != nil {
		return dst[:0], err
	}
	hiLen, err := frameSize(hiFrame)
	if err != nil {
		return dst[:0], err
	}
	if loLen < 0 || hiLen < 0 {
		// A frame of a small plane carries no size: derive both from the chunk's size.
		if size < 0 {
			return dst[:0], fmt.Errorf("%w: plane frame without content size", errPayload)
		}
		if loLen < 0 {
			loLen = (size + 1) / 2
		}
		if hiLen < 0 {
			hiLen = size / 2
		}
	}
	n := loLen + hiLen
	if loLen != hiLen && loLen != hiLen+1 || n > MaxChunkSize || (size >= 0 && n != size) {
		return dst[:0], fmt.Errorf("%w: planes of %d and %d bytes do not make a %d-byte chunk", errPayload, loLen, hiLen, size)
	}
	scratch := getBuf(n)
	defer putBuf(scratch)
	p := (*scratch)[:n]
	if _, err := decodeFrame(p[:0:loLen], loFrame, loLen); err != nil {
		return dst[:0], err
	}
	if _, err := decodeFrame(p[loLen:loLen:n], hiFrame, hiLen); err != nil {
		return dst[:0], err
	}
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	joinPlanes(dst, p[:loLen], p[loLen:])
	return dst, nil
}

// joinedEqual reports whether data equals lo and hi interleaved (data[2k] = lo[k],
// data[2k+1] = hi[k]), with len(lo) = ceil(len(data)/2) and len(hi) = floor(len(data)/2).
func joinedEqual(data, lo, hi []byte) bool {
	if len(lo) != (len(data)+1)/2 || len(hi) != len(data)/2 {
		return false
	}
	i, ok := joinedEqualFast(data, lo, hi)
	if !ok {
		return false
	}
	for ; i+1 < len(data); i += 2 {
		if data[i] != lo[i/2] || data[i+1] != hi[i/2] {
			return false
		}
	}
	return i == len(data) || data[i] == lo[i/2]
}

// splitPlanes writes the even bytes of src to lo and the odd bytes to hi;
// len(lo) = ceil(len(src)/2), len(hi) = floor(len(src)/2). Where the platform has a vector
// version (amd64: SSE2, 32 bytes a step) it does the bulk; splitPlanesGo does the rest.
func splitPlanes(lo, hi, src []byte) {
	i := splitPlanesFast(lo, hi, src)
	splitPlanesGo(lo[i/2:], hi[i/2:], src[i:])
}

// splitPlanesGo is splitPlanes in portable Go, sixteen bytes a step.
func splitPlanesGo(lo, hi, src []byte) {
	const m1, m2, m3 = 0x00ff00ff00ff00ff, 0x0000ffff0000ffff, 0x00000000ffffffff
	i := 0
	// Sixteen source bytes at a time: in each 64-bit word gather the even bytes into the low 32
	// bits and the odd bytes into the high 32 bits; two words make one 8-byte store per plane.
	for ; i+16 <= len(src); i += 16 {
		s := src[i : i+16 : i+16]
		w0 := binary.LittleEndian.Uint64(s)
		w1 := binary.LittleEndian.Uint64(s[8:])
		e0, o0 := w0&m1, (w0>>8)&m1
		e1, o1 := w1&m1, (w1>>8)&m1
		e0 = (e0 | e0>>8) & m2
		o0 = (o0 | o0>>8) & m2
		e1 = (e1 | e1>>8) & m2
		o1 = (o1 | o1>>8) & m2
		e0 = (e0 | e0>>16) & m3
		o0 = (o0 | o0>>16) & m3
		e1 = (e1 | e1>>16) << 32
		o1 = (o1 | o1>>16) << 32
		binary.LittleEndian.PutUint64(lo[i/2:i/2+8], e0|e1)
		binary.LittleEndian.PutUint64(hi[i/2:i/2+8], o0|o1)
	}
	for ; i+1 < len(src); i += 2 {
		lo[i/2], hi[i/2] = src[i], src[i+1]
	}
	if i < len(src) {
		lo[i/2] = src[i]
	}
}

// joinPlanes is the inverse of splitPlanes: dst[2k] = lo[k], dst[2k+1] = hi[k]. Where the
// platform has a vector version it does the bulk; joinPlanesGo does the rest.
func joinPlanes(dst, lo, hi []byte) {
	i := joinPlanesFast(dst, lo, hi)
	joinPlanesGo(dst[i:], lo[i/2:], hi[i/2:])
}

// joinPlanesGo is joinPlanes in portable Go, sixteen bytes a step.
func joinPlanesGo(dst, lo, hi []byte) {
	const m1, m2 = 0x00ff00ff00ff00ff, 0x0000ffff0000ffff
	i := 0
	for ; i+16 <= len(dst); i += 16 {
		l := binary.LittleEndian.Uint64(lo[i/2 : i/2+8])
		h := binary.LittleEndian.Uint64(hi[i/2 : i/2+8])
		e0, o0 := l&0xffffffff, h&0xffffffff
		e1, o1 := l>>32, h>>32
		e0 = (e0 | e0<<16) & m2
		o0 = (o0 | o0<<16) & m2
		e1 = (e1 | e1<<16) & m2
		o1 = (o1 | o1<<16) & m2
		e0 = (e0 | e0<<8) & m1
		o0 = (o0 | o0<<8) & m1
		e1 = (e1 | e1<<8) & m1
		o1 = (o1 | o1<<8) & m1
		d := dst[i : i+16 : i+16]
		binary.LittleEndian.PutUint64(d, e0|o0<<8)
		binary.LittleEndian.PutUint64(d[8:], e1|o1<<8)
	}
	for ; i+1 < len(dst); i += 2 {
		dst[i], dst[i+1] = lo[i/2], hi[i/2]
	}
	if i < len(dst) {
		dst[i] = lo[i/2]
	}
}

// looksUniform reports whether a sample of p looks like bytes without structure: no byte value
// takes more than four times its share of 4 KiB sampled in 8 spread windows. Runs (zero
// padding, repeats of a byte) and skewed distributions fail it. It costs about 1/8 of a pass
// over p, where a zstd match search costs several.
func looksUniform(p []byte) bool {
	const windows, win = 8, 512
	if len(p) < 4*windows*win {
		return false // small: let zstd look
	}
	var hist [256]uint16
	step := len(p) / windows
	for w := 0; w < windows; w++ {
		for _, c := range p[w*step : w*step+win] {
			hist[c]++
		}
	}
	const limit = 4 * windows * win / 256
	for _, n := range hist {
		if n > limit {
			return false
		}
	}
	return true
}

// dominated reports whether one byte value takes more than 3/8 of a sample of p (8 spread
// windows of 512 bytes; all of p when smaller): a plane with long runs, for which a zstd
// frame (matches, then Huffman) beats Huffman alone.
func dominated(p []byte) bool {
	const windows, win = 8, 512
	var hist [256]uint32
	total := 0
	if len(p) <= windows*win {
		for _, c := range p {
			hist[c]++
		}
		total = len(p)
	} else {
		step := len(p) / windows
		for w := 0; w < windows; w++ {
			for _, c := range p[w*step : w*step+win] {
				hist[c]++
			}
		}
		total = windows * win
	}
	for _, n := range hist {
		if int(n)*8 > total*3 {
			return true
		}
	}
	return false
}
