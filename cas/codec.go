package cas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

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
//	CodecF16Planes  u32 little-endian L, then a zstd frame of L bytes holding the low-byte
//	                plane, then a zstd frame (the rest) holding the high-byte plane. For a chunk
//	                of n bytes read as little-endian float16 values, the low plane is bytes
//	                0, 2, 4, … (ceil(n/2) bytes: an odd trailing byte belongs to it) and the
//	                high plane is bytes 1, 3, 5, … (floor(n/2) bytes). Both frames declare
//	                their content size.
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
	out, err := EncodeWith(dst, data, codec)
	if err == nil && float64(len(out)-start) <= float64(len(data))*(1-MinSavings) {
		return codec, out
	}
	return CodecRaw, dst[:start]
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
		n := len(data)
		loLen := (n + 1) / 2
		planes := getBuf(n)
		p := (*planes)[:n]
		splitPlanes(p[:loLen], p[loLen:], data)
		at := len(dst)
		dst = append(dst, 0, 0, 0, 0)
		// The low plane is nearly random mantissa bits: the fast encoder stores it raw unless it
		// finds matches (zero runs, repeats). The high plane takes entropy coding.
		dst = c.fast.EncodeAll(p[:loLen], dst)
		binary.LittleEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
		dst = c.entropy.EncodeAll(p[loLen:], dst)
		putBuf(planes)
		return dst, nil
	}
	return dst, fmt.Errorf("encode: unknown codec %d", codec)
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
	if h.Skippable || !h.HasFCS || h.DictionaryID != 0 {
		return 0, fmt.Errorf("%w: zstd frame without content size", errPayload)
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

func decodePlanes(dst, stored []byte, size int) ([]byte, error) {
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

// splitPlanes writes the even bytes of src to lo and the odd bytes to hi;
// len(lo) = ceil(len(src)/2), len(hi) = floor(len(src)/2).
func splitPlanes(lo, hi, src []byte) {
	i := 0
	// Eight source bytes at a time: gather the even bytes of a 64-bit word into its low 32
	// bits and the odd bytes into its high 32 bits.
	for ; i+8 <= len(src); i += 8 {
		w := binary.LittleEndian.Uint64(src[i:])
		e := w & 0x00ff00ff00ff00ff
		o := (w >> 8) & 0x00ff00ff00ff00ff
		e = (e | e>>8) & 0x0000ffff0000ffff
		o = (o | o>>8) & 0x0000ffff0000ffff
		e = (e | e>>16) & 0x00000000ffffffff
		o = (o | o>>16) & 0x00000000ffffffff
		binary.LittleEndian.PutUint32(lo[i/2:], uint32(e))
		binary.LittleEndian.PutUint32(hi[i/2:], uint32(o))
	}
	for ; i+1 < len(src); i += 2 {
		lo[i/2], hi[i/2] = src[i], src[i+1]
	}
	if i < len(src) {
		lo[i/2] = src[i]
	}
}

// joinPlanes is the inverse of splitPlanes: dst[2k] = lo[k], dst[2k+1] = hi[k].
func joinPlanes(dst, lo, hi []byte) {
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		e := uint64(binary.LittleEndian.Uint32(lo[i/2:]))
		o := uint64(binary.LittleEndian.Uint32(hi[i/2:]))
		e = (e | e<<16) & 0x0000ffff0000ffff
		o = (o | o<<16) & 0x0000ffff0000ffff
		e = (e | e<<8) & 0x00ff00ff00ff00ff
		o = (o | o<<8) & 0x00ff00ff00ff00ff
		binary.LittleEndian.PutUint64(dst[i:], e|o<<8)
	}
	for ; i+1 < len(dst); i += 2 {
		dst[i], dst[i+1] = lo[i/2], hi[i/2]
	}
	if i < len(dst) {
		dst[i] = lo[i/2]
	}
}
