package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/driftstore/driftstore/cas"
)

// Chunk stream, version 1: many chunks in their stored form in one HTTP body.
//
//	stream  = magic frame* trailer
//	magic   = "DSCS" 0x01                         (5 bytes; the last byte is the version)
//	frame   = 0x01 digest[32] codec[1] size:uvarint storedLen:uvarint stored[storedLen]
//	trailer = 0x00 count:uvarint                   (count = number of frames; nothing follows)
//
// size is the chunk's uncompressed length, stored its bytes as the codec keeps them. Chunks
// travel as stored: the sender does not recompress and the receiver verifies each one against
// its digest before committing it. A stream that ends before its trailer is truncated; the frames
// read whole before the cut are still good, each on its own.
const streamMagic = "DSCS\x01"

const (
	tagFrame   = 0x01
	tagTrailer = 0x00
)

// StoredChunk is one chunk in its stored form as it travels in a chunk stream.
type StoredChunk struct {
	Digest cas.Digest
	Codec  cas.Codec
	Size   int64  // uncompressed length
	Stored []byte // the bytes as the codec keeps them
}

// streamBuffer is the buffer of a stream writer and reader: frames go to and come from the
// connection in writes and reads of this size (an HTTP chunk each on a chunked body, three
// system calls per chunk on the client's side), not one per frame.
const streamBuffer = 256 << 10

// ChunkStreamWriter writes a chunk stream. It is not safe for concurrent use.
type ChunkStreamWriter struct {
	w       *bufio.Writer
	started bool
	count   uint64
	err     error // sticky: after a failed write the writer refuses further use
	scratch [1 + 32 + 1 + 2*binary.MaxVarintLen64]byte
}

// NewChunkStreamWriter returns a writer that frames chunks onto w. Call Close to write the
// trailer; Close does not close w.
func NewChunkStreamWriter(w io.Writer) *ChunkStreamWriter {
	return &ChunkStreamWriter{w: bufio.NewWriterSize(w, streamBuffer)}
}

// WriteChunk appends one frame. stored is only read during the call. It returns the number of
// bytes written for the frame.
func (sw *ChunkStreamWriter) WriteChunk(c StoredChunk) (int, error) {
	if sw.err != nil {
		return 0, sw.err
	}
	n := 0
	if !sw.started {
		sw.started = true
		m, err := sw.w.WriteString(streamMagic)
		n += m
		if err != nil {
			sw.err = err
			return n, err
		}
	}
	h := sw.scratch[:0]
	h = append(h, tagFrame)
	h = append(h, c.Digest[:]...)
	h = append(h, byte(c.Codec))
	h = binary.AppendUvarint(h, uint64(c.Size))
	h = binary.AppendUvarint(h, uint64(len(c.Stored)))
	m, err := sw.w.Write(h)
	n += m
	if err == nil {
		m, err = sw.w.Write(c.Stored)
		n += m
	}
	if err != nil {
		sw.err = err
		return n, err
	}
	sw.count++
	return n, nil
}

// Flush sends buffered frames on to the underlying writer.
func (sw *ChunkStreamWriter) Flush() error {
	if sw.err != nil {
		return sw.err
	}
	if err := sw.w.Flush(); err != nil {
		sw.err = err
	}
	return sw.err
}

// Close writes the trailer and flushes. The writer cannot be used afterwards.
func (sw *ChunkStreamWriter) Close() error {
	if sw.err != nil {
		return sw.err
	}
	if !sw.started {
		if _, err := sw.w.WriteString(streamMagic); err != nil {
			sw.err = err
			return err
		}
	}
	t := binary.AppendUvarint([]byte{tagTrailer}, sw.count)
	if _, err := sw.w.Write(t); err != nil {
		sw.err = err
		return err
	}
	err := sw.w.Flush()
	sw.err = errors.New("chunk stream writer closed")
	return err
}

// StreamLimits bound what a ChunkStreamReader accepts.
type StreamLimits struct {
	MaxChunkSize  int64 // largest uncompressed size a frame may declare
	MaxStoredSize int64 // largest stored form a frame may carry
	MaxChunks     int64 // most frames in one stream (0: no limit)
}

// ChunkStreamReader reads a chunk stream. It is not safe for concurrent use.
type ChunkStreamReader struct {
	r      *bufio.Reader
	lim    StreamLimits
	buf    []byte
	count  uint64
	state  int // 0: before magic, 1: in frames, 2: done
	err    error
	nbytes int64
	hdr    [33]byte // a frame's digest and codec, read here rather than into a local that escapes
}

// NewChunkStreamReader reads frames from r under the given limits.
func NewChunkStreamReader(r io.Reader, lim StreamLimits) *ChunkStreamReader {
	return &ChunkStreamReader{r: bufio.NewReaderSize(r, streamBuffer), lim: lim}
}

// BytesRead is how many bytes of the stream have been consumed so far.
func (sr *ChunkStreamReader) BytesRead() int64 { return sr.nbytes }

// Next returns the next chunk. The returned StoredChunk's Stored slice belongs to the reader and
// is valid only until the next call to Next. At the trailer Next returns io.EOF; a stream cut off
// before its trailer gives an error wrapping io.ErrUnexpectedEOF; a malformed stream or one over
// the limits gives an error wrapping ErrMalformed or ErrTooLarge. Errors are sticky.
func (sr *ChunkStreamReader) Next() (StoredChunk, error) {
	c, _, err := sr.NextInto(nil)
	return c, err
}

// NextInto is Next, reading the frame's stored bytes straight into buf's spare capacity when
// they fit: the returned buf is then buf extended by them and the chunk's Stored is that
// extension (capacity limited to its length), owned by the caller. When they do not fit, buf
// is returned unchanged and Stored belongs to the reader, as with Next. Nothing is read into
// buf on an error.
func (sr *ChunkStreamReader) NextInto(buf []byte) (StoredChunk, []byte, error) {
	out := buf
	c, err := sr.NextWith(func(n int) []byte {
		if cap(buf)-len(buf) < n {
			return nil
		}
		out = buf[:len(buf)+n]
		return buf[len(buf):]
	})
	if err != nil || len(c.Stored) == 0 || len(out) == len(buf) {
		return c, buf, err
	}
	return c, out, nil
}

// NextWith is Next, letting the caller say where each frame's stored bytes go: get is called,
// from the caller's goroutine and before any of them are read, with the frame's stored length
// n (at least 1 and within the limits) and returns a slice of capacity at least n, whose first
// n bytes receive them (Stored is then that slice's [:n:n], owned by the caller), or nil to have
// them read into the reader's own buffer (Stored is then valid only until the next call, as
// with Next). get is not called for an empty frame or when the frame's header is bad. On an
// error, a slice get returned may hold part of the frame.
func (sr *ChunkStreamReader) NextWith(get func(n int) []byte) (StoredChunk, error) {
	if sr.err != nil {
		return StoredChunk{}, sr.err
	}
	c, err := sr.nextFrame(get)
	if err != nil {
		sr.err = err
		return StoredChunk{}, err
	}
	return c, nil
}

// nextFrame reads one frame; its stored bytes go where get says (see NextWith), otherwise to
// sr.buf.
func (sr *ChunkStreamReader) nextFrame(get func(n int) []byte) (StoredChunk, error) {
	if sr.state == 0 {
		var m [len(streamMagic)]byte
		if _, err := sr.readFull(m[:]); err != nil {
			return StoredChunk{}, err
		}
		if string(m[:]) != streamMagic {
			return StoredChunk{}, fmt.Errorf("%w: not a version 1 chunk stream", ErrMalformed)
		}
		sr.state = 1
	}
	if sr.state == 2 {
		return StoredChunk{}, io.EOF
	}
	tag, err := sr.readByte()
	if err != nil {
		return StoredChunk{}, err
	}
	switch tag {
	case tagTrailer:
		n, err := sr.uvarint()
		if err != nil {
			return StoredChunk{}, err
		}
		if n != sr.count {
			return StoredChunk{}, fmt.Errorf("%w: trailer counts %d chunks, stream had %d", ErrMalformed, n, sr.count)
		}
		// Nothing may follow the trailer.
		if _, err := sr.r.ReadByte(); err != io.EOF {
			if err != nil {
				return StoredChunk{}, err
			}
			return StoredChunk{}, fmt.Errorf("%w: data after the trailer", ErrMalformed)
		}
		sr.state = 2
		return StoredChunk{}, io.EOF
	case tagFrame:
	default:
		return StoredChunk{}, fmt.Errorf("%w: unknown frame tag %#x", ErrMalformed, tag)
	}
	if sr.lim.MaxChunks > 0 && sr.count >= uint64(sr.lim.MaxChunks) {
		return StoredChunk{}, fmt.Errorf("%w: more than %d chunks in one stream", ErrTooLarge, sr.lim.MaxChunks)
	}
	hdr := sr.hdr[:]
	if _, err := sr.readFull(hdr); err != nil {
		return StoredChunk{}, err
	}
	var c StoredChunk
	copy(c.Digest[:], hdr[:32])
	c.Codec = cas.Codec(hdr[32])
	size, err := sr.uvarint()
	if err != nil {
		return StoredChunk{}, err
	}
	storedLen, err := sr.uvarint()
	if err != nil {
		return StoredChunk{}, err
	}
	if size > uint64(sr.lim.MaxChunkSize) {
		return StoredChunk{}, fmt.Errorf("%w: chunk %s declares %d bytes, limit %d", ErrTooLarge, c.Digest, size, sr.lim.MaxChunkSize)
	}
	if storedLen > uint64(sr.lim.MaxStoredSize) {
		return StoredChunk{}, fmt.Errorf("%w: chunk %s carries %d stored bytes, limit %d", ErrTooLarge, c.Digest, storedLen, sr.lim.MaxStoredSize)
	}
	c.Size = int64(size)
	n := int(storedLen)
	if n > 0 && get != nil {
		if d := get(n); d != nil {
			if cap(d) < n {
				return StoredChunk{}, fmt.Errorf("chunk stream: the buffer for chunk %s holds %d bytes, %d needed", c.Digest, cap(d), n)
			}
			d = d[:n:n]
			if _, err := sr.readFull(d); err != nil {
				return StoredChunk{}, err
			}
			c.Stored = d
			sr.count++
			return c, nil
		}
	}
	// Grow the buffer with the bytes that actually arrive, so that a frame that lies about its
	// length costs no more memory than the bytes sent.
	sr.buf = sr.buf[:0]
	for len(sr.buf) < n {
		step := n - len(sr.buf)
		if step > 1<<20 {
			step = 1 << 20
		}
		if cap(sr.buf)-len(sr.buf) < step {
			nb := make([]byte, len(sr.buf), min(n, max(2*cap(sr.buf), len(sr.buf)+step)))
			copy(nb, sr.buf)
			sr.buf = nb
		}
		start := len(sr.buf)
		sr.buf = sr.buf[:start+step]
		if _, err := sr.readFull(sr.buf[start:]); err != nil {
			return StoredChunk{}, err
		}
	}
	c.Stored = sr.buf[:n]
	sr.count++
	return c, nil
}

func (sr *ChunkStreamReader) readFull(p []byte) (int, error) {
	n, err := io.ReadFull(sr.r, p)
	sr.nbytes += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return n, fmt.Errorf("chunk stream cut off after %d chunks: %w", sr.count, io.ErrUnexpectedEOF)
	}
	return n, err
}

func (sr *ChunkStreamReader) uvarint() (uint64, error) {
	var v uint64
	for i := 0; i < binary.MaxVarintLen64; i++ {
		b, err := sr.readByte()
		if err != nil {
			return 0, err
		}
		if i == binary.MaxVarintLen64-1 && b > 1 {
			return 0, fmt.Errorf("%w: varint overflows 64 bits", ErrMalformed)
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			if i > 0 && b == 0 {
				return 0, fmt.Errorf("%w: varint not in shortest form", ErrMalformed)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: varint too long", ErrMalformed)
}

// readByte reads one byte (without allocating, unlike readFull of a local array), with
// readFull's accounting and errors.
func (sr *ChunkStreamReader) readByte() (byte, error) {
	b, err := sr.r.ReadByte()
	if err != nil {
		if err == io.EOF {
			err = fmt.Errorf("chunk stream cut off after %d chunks: %w", sr.count, io.ErrUnexpectedEOF)
		}
		return 0, err
	}
	sr.nbytes++
	return b, nil
}
