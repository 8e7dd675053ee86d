package chunker

import (
	"errors"
	"fmt"
	"io"
)

// Stream chunks an io.Reader in bounded memory: one buffer, allocated once and reused for the
// life of the Stream (4 × Max bytes for FastCDC, the block size for fixed chunking). Its chunks
// are exactly those that Split (or FixedChunks) gives for the whole input, whatever sizes the
// reader's Read calls return.
//
// A Stream is not safe for concurrent use. A read error other than io.EOF is returned by Next,
// wrapped, and then again by every later call (the Stream stays broken until Reset).
type Stream struct {
	r     io.Reader
	cdc   *FastCDC // nil for fixed-size chunking
	fixed int      // block size for fixed-size chunking
	buf   []byte
	start int   // first unconsumed byte in buf
	end   int   // end of valid data in buf
	off   int64 // input offset of buf[start]
	eof   bool
	err   error
}

// NewStream returns a FastCDC Stream over r with parameters p.
func NewStream(r io.Reader, p Params) (*Stream, error) {
	c, err := NewFastCDC(p)
	if err != nil {
		return nil, err
	}
	return &Stream{r: r, cdc: c, buf: make([]byte, 4*p.Max)}, nil
}

// NewFixedStream returns a Stream over r that cuts every size bytes (the last chunk may be
// short). size must pass CheckFixedSize.
func NewFixedStream(r io.Reader, size int) (*Stream, error) {
	if err := CheckFixedSize(size); err != nil {
		return nil, err
	}
	return &Stream{r: r, fixed: size, buf: make([]byte, size)}, nil
}

// Reset makes s read a new input from r, keeping its buffer and parameters.
func (s *Stream) Reset(r io.Reader) {
	*s = Stream{r: r, cdc: s.cdc, fixed: s.fixed, buf: s.buf}
}

// Next returns the next chunk, or io.EOF (unwrapped) after the last one. The returned Chunk's
// Data aliases the Stream's buffer and is valid only until the next call to Next or Reset; copy
// it to keep it.
func (s *Stream) Next() (Chunk, error) {
	if s.err != nil {
		return Chunk{}, s.err
	}
	if s.cdc == nil {
		return s.nextFixed()
	}
	if err := s.fill(s.cdc.p.Max); err != nil {
		return Chunk{}, err
	}
	if s.start == s.end {
		return Chunk{}, io.EOF
	}
	n, fp := s.cdc.Cut(s.buf[s.start:s.end])
	ch := Chunk{Offset: s.off, Length: n, Fingerprint: fp, Data: s.buf[s.start : s.start+n : s.start+n]}
	s.start += n
	s.off += int64(n)
	return ch, nil
}

// fill makes at least need bytes available after s.start, unless the input ends first.
func (s *Stream) fill(need int) error {
	if s.end-s.start >= need || s.eof {
		return nil
	}
	if len(s.buf)-s.start < need {
		s.end = copy(s.buf, s.buf[s.start:s.end])
		s.start = 0
	}
	for s.end-s.start < need && !s.eof {
		n, err := read(s.r, s.buf[s.end:])
		s.end += n
		switch {
		case errors.Is(err, io.EOF):
			s.eof = true
		case err != nil:
			s.err = fmt.Errorf("chunker: read at offset %d: %w", s.off+int64(s.end-s.start), err)
			return s.err
		}
	}
	return nil
}

// maxEmptyReads is how many reads in a row may return 0, nil before the reader is deemed stuck
// (as bufio does).
const maxEmptyReads = 100

// read reads into p (not empty) from r, retrying a read that returns 0, nil (which io.Reader
// asks callers to treat as nothing happened) up to maxEmptyReads times; then it gives
// io.ErrNoProgress rather than spin forever.
func read(r io.Reader, p []byte) (int, error) {
	for range maxEmptyReads {
		if n, err := r.Read(p); n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

func (s *Stream) nextFixed() (Chunk, error) {
	if s.eof {
		return Chunk{}, io.EOF
	}
	n, err := s.readFull()
	switch {
	case err == io.EOF:
		s.eof = true
		return Chunk{}, io.EOF
	case err == io.ErrUnexpectedEOF:
		s.eof = true
	case err != nil:
		s.err = fmt.Errorf("chunker: read at offset %d: %w", s.off+int64(n), err)
		return Chunk{}, s.err
	}
	ch := Chunk{Offset: s.off, Length: n, Data: s.buf[:n:n]}
	s.off += int64(n)
	return ch, nil
}

// readFull fills s.buf as io.ReadFull does, but through read: io.EOF when nothing was read,
// io.ErrUnexpectedEOF when the input ended partway.
func (s *Stream) readFull() (int, error) {
	n := 0
	for n < len(s.buf) {
		k, err := read(s.r, s.buf[n:])
		n += k
		switch {
		case err == nil || n == len(s.buf):
		case err == io.EOF && n == 0:
			return 0, io.EOF
		case err == io.EOF:
			return n, io.ErrUnexpectedEOF
		default:
			return n, err
		}
	}
	return n, nil
}
