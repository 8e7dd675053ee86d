package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/ingest"
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
	in := ingest.New(req.Context(), s.ix, s.ingestConfig(1, hint))
	err = in.Add(wire.StoredChunk{Digest: d, Codec: codec, Stored: body, Size: -1})
	res, cerr := in.Close()
	s.countIngest(res)
	if err = errors.Join(cerr, err); err != nil {
		return err
	}
	if res.Stored == 1 {
		return c.NoContent(http.StatusCreated)
	}
	return c.NoContent(http.StatusOK)
}

// ingestConfig is how this server's uploads are ingested (see package ingest): verified on
// workers goroutines as they arrive, committed and recorded RecordBatch chunks at a time.
func (s *Server) ingestConfig(workers int, hint cas.Hint) ingest.Config {
	return ingest.Config{Workers: workers, GroupChunks: s.cfg.RecordBatch, MaxChunkSize: s.cfg.MaxChunkSize, Hint: hint}
}

// countIngest adds an ingester's counts to the metrics.
func (s *Server) countIngest(res ingest.Result) {
	s.metrics.chunksRefused.Add(int64(res.Refused))
	s.metrics.chunksReceived.Add(int64(res.Chunks))
	s.metrics.chunksStored.Add(int64(res.Stored))
	s.metrics.chunksDeduped.Add(int64(res.Deduped))
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

// upload receives a chunk stream through an ingester (package ingest): this goroutine reads
// frames into pooled buffers while StoreWorkers goroutines verify and write them and the groups
// of RecordBatch chunks are committed and recorded behind them, so reading, verifying and
// committing overlap. A stream that breaks off, or a chunk that fails verification, ends the
// request with an error after the chunks that arrived whole and verified (up to the end of the
// failing chunk's group) have been committed.
func (s *Server) upload(c echo.Context) error {
	if err := s.writable(); err != nil {
		return err
	}
	if err := limitBody(c, s.cfg.MaxUploadSize); err != nil {
		return err
	}
	sr := wire.NewChunkStreamReader(c.Request().Body, wire.StreamLimits{
		MaxChunkSize:  s.cfg.MaxChunkSize,
		MaxStoredSize: s.cfg.maxStoredSize(),
	})
	in := ingest.New(c.Request().Context(), s.ix, s.ingestConfig(s.cfg.StoreWorkers, cas.HintNone))
	rerr := in.ReadStream(sr)
	res, err := in.Close()
	s.countIngest(res)
	if err != nil {
		return err
	}
	if rerr != nil {
		s.log.Warn("upload stream ended early", "err", rerr, "committed", res.Chunks)
		return fmt.Errorf("upload after %d chunks: %w", res.Chunks, rerr)
	}
	return c.JSON(http.StatusOK, wire.BatchResult{Chunks: res.Chunks, Stored: res.Stored, Deduped: res.Deduped, RawBytes: res.RawBytes, Bytes: res.Bytes})
}

// download streams the named chunks in their stored form. Every chunk is checked to be present
// before the response begins (404 with the missing list otherwise); a chunk that fails to read
// once streaming has begun cuts the stream off before its trailer, which the client detects.
func (s *Server) download(c echo.Context) error {
	ds, err := readDigests(c)
	if err != nil {
		return err
	}
	recs, err := s.ix.Chunks(ds) // one pass: the sizes to send, and whether any is missing
	if err != nil {
		return err
	}
	var miss []cas.Digest
	seen := map[cas.Digest]bool{}
	for i, r := range recs {
		if r.Codec == 0 && !seen[ds[i]] {
			seen[ds[i]] = true
			miss = append(miss, ds[i])
		}
	}
	if len(miss) > 0 {
		return c.JSON(http.StatusNotFound, wire.ErrorBody{Error: wire.ErrorDetail{
			Code: wire.CodeChunkNotFound, Message: fmt.Sprintf("%d of the requested chunks are not here", len(miss)), Missing: miss,
		}})
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
