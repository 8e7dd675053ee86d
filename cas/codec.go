package cas

import (
	"bytes"
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
	out, err := EncodeWith(dst, data, codec)
	if err == nil && float64(len(out)-start) <= float64(len(data))*(1-MinSavings) {
		return codec, out
	}
	return CodecRaw, dst[:start]
}

// encodeVerified is encode followed by a check that the stored form decodes back to data, so
// that a codec bug can never commit a chunk that does not match its name. For CodecRaw it
// appends nothing (see encode). The float16 plane codec checks each plane against its frame,
// straight from the planes it encoded, without interleaving them back.
func encodeVerified(dst, data []byte, hint Hint) (Codec, []byte, error) {
	if !(hint == HintFloat16 && len(data) >= 2) {
		codec, out := encode(dst, data, hint)
		if codec != CodecRaw {
			if err := verifyEncoded(out[len(dst):], codec, data); err != nil {
				return 0, nil, err
			}
		}
		return codec, out, nil
	}
	n := len(data)
	loLen := (n + 1) / 2
	planes := getBuf(n)
	defer putBuf(planes)
	p := (*planes)[:n]
	splitPlanes(p[:loLen], p[loLen:], data)
	start := len(dst)
	out := encodePlanes(dst, p[:loLen], p[loLen:])
	if float64(len(out)-start) > float64(n)*(1-MinSavings) {
		return CodecRaw, dst[:start], nil
	}
	if err := verifyPlanes(out[start:], p[:loLen], p[loLen:]); err != nil {
		return 0, nil, err
	}
	return CodecF16Planes, out, nil
}

// verifyPlanes checks that a CodecF16Planes payload holds exactly the planes lo and hi.
func verifyPlanes(stored, lo, hi []byte) error {
	if len(stored) < 4 {
		return fmt.Errorf("f16planes stored form is truncated")
	}
	l := binary.LittleEndian.Uint32(stored)
	if uint64(l) > uint64(len(stored)-4) {
		return fmt.Errorf("f16planes stored form: low plane length %d exceeds the payload", l)
	}
	scratch := getBuf(len(lo))
	defer putBuf(scratch)
	for i, pl := range []struct {
		frame, want []byte
	}{{stored[4 : 4+l], lo}, {stored[4+l:], hi}} {
		got, err := decodeFrame((*scratch)[:0], pl.frame, len(pl.want))
		if err != nil {
			return fmt.Errorf("f16planes stored form: plane %d does not decode: %v", i, err)
		}
		if !bytes.Equal(got, pl.want) {
			return fmt.Errorf("f16planes stored form: plane %d decodes to other bytes", i)
		}
	}
	return nil
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
		dst = encodePlanes(dst, p[:loLen], p[loLen:])
		putBuf(planes)
		return dst, nil
	}
	return dst, fmt.Errorf("encode: unknown codec %d", codec)
}

// encodePlanes appends the CodecF16Planes payload of the planes lo and hi to dst.
func encodePlanes(dst, lo, hi []byte) []byte {
	c := sharedCodecs()
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	// The low plane is nearly random mantissa bits: a zstd frame of raw blocks, written
	// directly when a sample finds no structure; otherwise the fast encoder, which finds matches
	// (zero runs, repeats) and stores the rest raw. The high plane takes entropy coding.
	if looksUniform(lo) {
		dst = appendRawFrame(dst, lo)
	} else {
		dst = c.fast.EncodeAll(lo, dst)
	}
	binary.LittleEndian.PutUint32(dst[at:], uint32(len(dst)-at-4))
	return c.entropy.EncodeAll(hi, dst)
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

// appendRawFrame appends a zstd frame (RFC 8878) that holds p in raw (stored) blocks and
// declares its content size: what a zstd encoder emits for incompressible input, without the
// match search. Any zstd decoder reads it.
func appendRawFrame(dst, p []byte) []byte {
	dst = append(dst, 0x28, 0xb5, 0x2f, 0xfd) // magic
	n := len(p)
	// Frame header descriptor: Single_Segment_Flag (bit 5) and Frame_Content_Size_Flag
	// (bits 7-6); no checksum, no dictionary. Single segment: the window is the content.
	switch {
	case n < 256:
		dst = append(dst, 0<<6|1<<5, byte(n))
	case n < 256+1<<16:
		dst = append(dst, 1<<6|1<<5)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(n-256))
	default:
		dst = append(dst, 2<<6|1<<5)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	}
	const maxBlock = 128 << 10
	off := 0
	for {
		sz := min(maxBlock, n-off)
		last := uint32(0)
		if off+sz == n {
			last = 1
		}
		h := uint32(sz)<<3 | 0<<1 | last // Block_Size, Block_Type 0 (raw), Last_Block
		dst = append(dst, byte(h), byte(h>>8), byte(h>>16))
		dst = append(dst, p[off:off+sz]...)
		off += sz
		if last == 1 {
			return dst
		}
	}
}
