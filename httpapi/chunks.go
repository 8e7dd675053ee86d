package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/wire"
)

// bufPool holds chunk-sized buffers for decoded reads. Buffers grown past 2*MaxChunkSize are
// dropped rather than returned.
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

func digestParam(c echo.Context) (cas.Digest, error) {
	return cas.ParseDigest(c.Param("digest"))
}

// headChunk answers whether a chunk is recorded, with its size and codec.
func (s *Server) headChunk(c echo.Context) error {
	d, err := digestParam(c)
	if err != nil {
		return err
	}
	rec, err := s.ix.Chunk(d)
	if err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set(wire.HeaderSize, strconv.FormatInt(rec.Size, 10))
	h.Set(wire.HeaderCodec, strconv.Itoa(int(rec.Codec)))
	return c.NoContent(http.StatusOK)
}

// wantsStored reports whether a GET asks for the stored form.
func wantsStored(c echo.Context) bool {
	return c.QueryParam("stored") == "1" || c.Request().Header.Get(echo.HeaderAccept) == wire.MediaTypeStored
}

// getStored returns the chunk as kept at rest (see cas.ReadStored). The slice is the caller's.
func (s *Server) getStored(ctx context.Context, d cas.Digest) (cas.Codec, []byte, error) {
	return cas.ReadStored(ctx, s.store, d, cas.HintNone)
}

func (s *Server) getChunk(c echo.Context) error {
	d, err := digestParam(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	h := c.Response().Header()
	if wantsStored(c) {
		codec, stored, err := s.getStored(ctx, d)
		if err != nil {
			return err
		}
		info, err := s.store.Stat(ctx, d)
		if err != nil {
			return err
		}
		h.Set(wire.HeaderCodec, strconv.Itoa(int(codec)))
		h.Set(wire.HeaderSize, strconv.FormatInt(info.Size, 10))
		s.metrics.chunksSent.Add(1)
		return c.Blob(http.StatusOK, wire.MediaTypeStored, stored)
	}
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= int(2*s.cfg.MaxChunkSize) {
			bufPool.Put(bp)
		}
	}()
	b, err := s.store.Get(ctx, d, *bp)
	if err != nil {
		return err
	}
	*bp = b[:0]
	h.Set(wire.HeaderSize, strconv.Itoa(len(b)))
	s.metrics.chunksSent.Add(1)
	return c.Blob(http.StatusOK, echo.MIMEOctetStream, b)
}

// putChunk stores one chunk: the decoded bytes, or with a Driftstore-Codec header its stored
// form. Either way the content is verified against the digest in the URL before anything is
// committed. 201 when the chunk is new, 200 when it was already recorded.
func (s *Server) putChunk(c echo.Context) error {
	d, err := digestParam(c)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	req := c.Request()
	codecHdr := req.Header.Get(wire.HeaderCodec)
	limit := s.cfg.MaxChunkSize
	if codecHdr != "" {
		limit = s.cfg.maxStoredSize()
	}
	body, err := readBody(c, limit)
	if err != nil {
		return err
	}
	var hint cas.Hint
	if v := req.Header.Get("Driftstore-Hint"); v != "" {
		n, err := strconv.ParseUint(v, 10, 8)
		if err != nil {
			return fmt.Errorf("%w: Driftstore-Hint %q", errBadRequest, v)
		}
		hint = cas.Hint(n)
	}
	var codec cas.Codec // zero: the decoded bytes, stored with a codec the store picks
	if codecHdr != "" {
		n, err := strconv.ParseUint(codecHdr, 10, 8)
		if err != nil || n == 0 {
			return fmt.Errorf("%w: %s %q", errBadRequest, wire.HeaderCodec, codecHdr)
		}
		codec = cas.Codec(n)
	}
	res, err := s.storeChunks(req.Context(), []wire.StoredChunk{{Digest: d, Codec: codec, Stored: body, Size: -1}}, hint)
	if err != nil {
		return err
	}
	if res.Stored == 1 {
		return c.NoContent(http.StatusCreated)
	}
	return c.NoContent(http.StatusOK)
}

// storeChunks verifies, stores and records chunks, and counts what it did. A chunk with Codec
// zero carries its decoded bytes, which the store puts with hint and a codec of its choice; any
// other codec means the stored form, committed as is once it decodes to the digest (see
// cas.Batch.PutStored). Decoded bytes are always verified; a chunk already recorded is
// otherwise skipped without decoding. A chunk whose size is known (Size >= 0) must decode to
// that size, and no chunk may decode to more than MaxChunkSize bytes (one that does is not
// recorded). A codec this package cannot decode is refused (errUnsupportedCodec), also for a
// chunk already recorded.
//
// The chunks not yet recorded go through one cas batch, verified and written on up to
// StoreWorkers goroutines, then committed with one durability barrier, and only then recorded
// in one index transaction: a chunk is recorded only once durable and verified. Every chunk
// that verifies is committed and recorded, also when another chunk of the list fails; the
// error names the first failing chunk in order, and a chunk that fails is never committed.
// The work is not cut short when ctx ends (the bytes have arrived whole): the context's values
// are kept, its cancellation is not.
func (s *Server) storeChunks(ctx context.Context, chunks []wire.StoredChunk, hint cas.Hint) (wire.BatchResult, error) {
	var res wire.BatchResult
	recs, err := s.ix.Chunks(digestsOf(chunks))
	if err != nil {
		return res, err
	}
	release := s.ix.HoldGC()
	defer release()
	ctx = context.WithoutCancel(ctx)
	infos := make([]cas.Info, len(chunks))
	errs := make([]error, len(chunks))
	var todo []int // chunks to store, in order
	for i, ch := range chunks {
		if ch.Codec != 0 && !ch.Codec.Valid() {
			errs[i] = fmt.Errorf("%w: chunk %s: codec %d", errUnsupportedCodec, ch.Digest, ch.Codec)
			continue
		}
		if ch.Codec == 0 || ch.Codec == cas.CodecRaw {
			if got := cas.Sum(ch.Stored); got != ch.Digest {
				errs[i] = fmt.Errorf("%w: chunk %s: the bytes hash to %s", errDigestMismatch, ch.Digest, got)
				continue
			}
		}
		if recs[i].Codec == 0 {
			todo = append(todo, i)
		}
	}
	batch := cas.NewBatch(s.store)
	defer batch.Discard()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, min(s.cfg.StoreWorkers, len(todo))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(todo) {
					return
				}
				i := todo[k]
				ch := chunks[i]
				var info cas.Info
				var err error
				if ch.Codec == 0 {
					info, err = batch.Put(ctx, ch.Stored, hint)
				} else {
					info, err = batch.PutStored(ctx, ch.Digest, ch.Codec, ch.Stored)
				}
				switch {
				case errors.Is(err, cas.ErrCorrupt):
					errs[i] = fmt.Errorf("%w: %w", errDigestMismatch, err)
				case err != nil:
					errs[i] = fmt.Errorf("store chunk %s: %w", ch.Digest, err)
				default:
					infos[i] = info
				}
			}
		}()
	}
	wg.Wait()
	if len(todo) > 0 {
		if err := batch.Commit(ctx); err != nil {
			return res, fmt.Errorf("store %d chunks: %w", len(todo), err)
		}
	}
	var firstErr error
	stored := make([]cas.Info, 0, len(todo))
	for i, ch := range chunks {
		if errs[i] != nil {
			if errors.Is(errs[i], errDigestMismatch) {
				s.metrics.chunksRefused.Add(1)
			}
			if firstErr == nil {
				firstErr = errs[i]
			}
			continue
		}
		if recs[i].Codec == 0 && infos[i].Size > s.cfg.MaxChunkSize {
			// A stored form that decodes past the limit (verified, so committed, but never
			// recorded: garbage for GC).
			if firstErr == nil {
				firstErr = fmt.Errorf("%w: chunk %s is %d bytes, limit %d", wire.ErrTooLarge, ch.Digest, infos[i].Size, s.cfg.MaxChunkSize)
			}
			continue
		}
		res.Chunks++
		res.Bytes += int64(len(ch.Stored))
		if recs[i].Codec != 0 {
			res.Deduped++
			res.RawBytes += recs[i].Size
			continue
		}
		info := infos[i]
		if ch.Size >= 0 && info.Size != ch.Size && firstErr == nil {
			// The content is valid for its digest (verified), only the frame's size was wrong:
			// keep the chunk but refuse the rest of the stream.
			firstErr = fmt.Errorf("%w: chunk %s declared %d bytes, has %d", errBadRequest, ch.Digest, ch.Size, info.Size)
		}
		stored = append(stored, info)
		res.Stored++
		res.RawBytes += info.Size
	}
	if len(stored) > 0 {
		if err := s.ix.RecordChunks(ctx, stored); err != nil {
			return res, fmt.Errorf("record %d chunks: %w", len(stored), err)
		}
	}
	s.metrics.chunksReceived.Add(int64(res.Chunks))
	s.metrics.chunksStored.Add(int64(res.Stored))
	s.metrics.chunksDeduped.Add(int64(res.Deduped))
	return res, firstErr
}

func digestsOf(chunks []wire.StoredChunk) []cas.Digest {
	ds := make([]cas.Digest, len(chunks))
	for i, c := range chunks {
		ds[i] = c.Digest
	}
	return ds
}

// readDigests reads the digest list of a missing-set or download request: JSON, or the
// compact binary list when the Content-Type is wire.MediaTypeDigests.
func readDigests(c echo.Context) ([]cas.Digest, error) {
	if c.Request().Header.Get(echo.HeaderContentType) == wire.MediaTypeDigests {
		body, err := readBody(c, wire.MaxDigestListBody)
		if err != nil {
			return nil, err
		}
		return wire.ParseDigestList(body, wire.MaxMissingDigests)
	}
	if err := limitBody(c, wire.MaxMissingBody); err != nil {
		return nil, err
	}
	return wire.ReadMissingRequest(c.Request().Body, wire.MaxMissingDigests)
}

// missing answers which of the given digests have no record here, as JSON or, when the
// request accepts it, as a binary digest list.
func (s *Server) missing(c echo.Context) error {
	ds, err := readDigests(c)
	if err != nil {
		return err
	}
	s.metrics.missingDigests.Add(int64(len(ds)))
	miss, err := s.ix.MissingChunks(ds)
	if err != nil {
		return err
	}
	if c.Request().Header.Get(echo.HeaderAccept) == wire.MediaTypeDigests {
		return c.Blob(http.StatusOK, wire.MediaTypeDigests, wire.AppendDigestList(make([]byte, 0, 32*len(miss)), miss))
	}
	if miss == nil {
		miss = []cas.Digest{}
	}
	return c.JSON(http.StatusOK, wire.MissingResponse{Missing: miss})
}

// arenaSize is the stored bytes one upload group holds at most: a group is committed when its
// arena is full (or at RecordBatch chunks), so memory per upload stays near arenaSize.
const arenaSize = 8 << 20

// arenas holds upload arenas (capacity arenaSize) between requests.
var arenas = sync.Pool{New: func() any { b := make([]byte, 0, arenaSize); return &b }}

// upload receives a chunk stream. Frames are read straight into the group's arena; each group
// (RecordBatch chunks or arenaSize stored bytes) is verified on StoreWorkers goroutines,
// committed through one cas batch and recorded in one index transaction (storeChunks). A
// stream that breaks off, or a chunk that fails verification, ends the request with an error
// after the chunks that arrived whole and verified have been committed.
func (s *Server) upload(c echo.Context) error {
	if err := s.writable(); err != nil {
		return err
	}
	if err := limitBody(c, s.cfg.MaxUploadSize); err != nil {
		return err
	}
	ctx := c.Request().Context()
	sr := wire.NewChunkStreamReader(c.Request().Body, wire.StreamLimits{
		MaxChunkSize:  s.cfg.MaxChunkSize,
		MaxStoredSize: s.cfg.maxStoredSize(),
	})
	var total wire.BatchResult
	group := make([]wire.StoredChunk, 0, s.cfg.RecordBatch)
	ap := arenas.Get().(*[]byte)
	defer arenas.Put(ap)
	arena := (*ap)[:0]
	flush := func() error {
		if len(group) == 0 {
			return nil
		}
		res, err := s.storeChunks(ctx, group, cas.HintNone)
		total.Chunks += res.Chunks
		total.Stored += res.Stored
		total.Deduped += res.Deduped
		total.RawBytes += res.RawBytes
		total.Bytes += res.Bytes
		clear(group) // let go of chunks cloned outside the arena
		group = group[:0]
		arena = arena[:0]
		return err
	}
	for {
		ch, grown, err := sr.NextInto(arena)
		if err == io.EOF {
			break
		}
		if err != nil {
			if ferr := flush(); ferr != nil {
				return ferr
			}
			s.log.Warn("upload stream ended early", "err", err, "committed", total.Chunks)
			return fmt.Errorf("upload after %d chunks: %w", total.Chunks, err)
		}
		if len(grown) > len(arena) || len(ch.Stored) == 0 {
			arena = grown // read into the arena
		} else {
			// The arena is full: commit the group, then move the frame (in the reader's
			// buffer until the next read) into the emptied arena.
			if err := flush(); err != nil {
				return err
			}
			if len(ch.Stored) <= cap(arena) {
				arena = append(arena, ch.Stored...)
				ch.Stored = arena[:len(arena):len(arena)]
			} else {
				ch.Stored = bytes.Clone(ch.Stored)
			}
		}
		group = append(group, ch)
		if len(group) >= s.cfg.RecordBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, total)
}

// download streams the named chunks in their stored form. Every chunk is checked to be present
// before the response begins (404 with the missing list otherwise); a chunk that fails to read
// once streaming has begun cuts the stream off before its trailer, which the client detects.
func (s *Server) download(c echo.Context) error {
	ds, err := readDigests(c)
	if err != nil {
		return err
	}
	miss, err := s.ix.MissingChunks(ds)
	if err != nil {
		return err
	}
	if len(miss) > 0 {
		return c.JSON(http.StatusNotFound, wire.ErrorBody{Error: wire.ErrorDetail{
			Code: wire.CodeChunkNotFound, Message: fmt.Sprintf("%d of the requested chunks are not here", len(miss)), Missing: miss,
		}})
	}
	recs, err := s.ix.Chunks(ds)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	res := c.Response()
	res.Header().Set(echo.HeaderContentType, wire.MediaTypeChunkStream)
	res.WriteHeader(http.StatusOK)
	sw := wire.NewChunkStreamWriter(res)
	var buf []byte // one buffer for every chunk's stored form: WriteChunk only reads it
	for i, d := range ds {
		codec, stored, err := cas.AppendStored(ctx, s.store, d, buf, cas.HintNone)
		buf = stored
		if err != nil {
			return fmt.Errorf("download: read chunk %s: %w", d, err)
		}
		if _, err := sw.WriteChunk(wire.StoredChunk{Digest: d, Codec: codec, Size: recs[i].Size, Stored: stored}); err != nil {
			return fmt.Errorf("download: send chunk %s: %w", d, err)
		}
		s.metrics.chunksSent.Add(1)
	}
	return sw.Close()
}
