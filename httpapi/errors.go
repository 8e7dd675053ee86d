package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/httpapi/ingest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/session"
)

// Errors the handlers raise themselves; the store's and index's sentinels are used as they come.
var (
	// errDigestMismatch: a body does not hash (or decode) to the digest it was sent under.
	errDigestMismatch = errors.New("content does not match its digest")
	// errBadRequest: a request that is malformed in a way no other sentinel names.
	errBadRequest = errors.New("bad request")
	// errUnauthorized: no bearer token, or the wrong one.
	errUnauthorized = errors.New("missing or wrong bearer token")
	// errShuttingDown: the server is draining and takes no new writes.
	errShuttingDown = errors.New("server is shutting down")
)

// apiError is the one place where an error becomes an HTTP status and a stable code. Order
// matters: the handler's own classification (digest mismatch) wins over the store error it
// wraps. Unknown errors are 500 "internal" and their message is not shown to the client.
func apiError(err error) (status int, body wire.ErrorDetail) {
	detail := func(code string) wire.ErrorDetail { return wire.ErrorDetail{Code: code, Message: err.Error()} }
	var (
		mismatch *checkpoint.MismatchError
		he       *echo.HTTPError
		maxErr   *http.MaxBytesError
		missing  *index.MissingChunksError
	)
	switch {
	case errors.As(err, &maxErr), errors.Is(err, wire.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, detail(wire.CodeTooLarge)
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized, detail(wire.CodeUnauthorized)
	case errors.Is(err, errDigestMismatch), errors.Is(err, ingest.ErrMismatch):
		return http.StatusBadRequest, detail(wire.CodeDigestMismatch)
	case errors.Is(err, ingest.ErrUnsupportedCodec):
		return http.StatusUnsupportedMediaType, detail(wire.CodeUnsupported)
	case errors.Is(err, cas.ErrBadDigest):
		return http.StatusBadRequest, detail(wire.CodeBadDigest)
	case errors.Is(err, errSessionsDisabled):
		return http.StatusNotImplemented, detail(wire.CodeSessionsDisabled)
	case errors.Is(err, errBadToken):
		return http.StatusBadRequest, detail(wire.CodeBadToken)
	case errors.Is(err, errTokenLimit):
		return http.StatusBadRequest, detail(wire.CodeTokenLimit)
	case errors.Is(err, errBadModel):
		return http.StatusBadRequest, detail(wire.CodeBadModel)
	case errors.Is(err, session.ErrNotFound):
		return http.StatusNotFound, detail(wire.CodeSessionNotFound)
	case errors.Is(err, session.ErrExists):
		return http.StatusConflict, detail(wire.CodeSessionExists)
	case errors.Is(err, session.ErrModel), errors.As(err, &mismatch):
		return http.StatusConflict, detail(wire.CodeModelMismatch)
	case errors.Is(err, session.ErrClosed):
		return http.StatusServiceUnavailable, detail(wire.CodeUnavailable)
	case errors.Is(err, index.ErrBadRefName):
		return http.StatusBadRequest, detail(wire.CodeBadName)
	case errors.Is(err, index.ErrBadManifest):
		return http.StatusBadRequest, detail(wire.CodeBadManifest)
	case errors.Is(err, wire.ErrMalformed), errors.Is(err, errBadRequest), errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, detail(wire.CodeBadRequest)
	case errors.As(err, &missing):
		d := detail(wire.CodeMissingChunks)
		d.Missing = missing.Missing
		return http.StatusConflict, d
	case errors.Is(err, index.ErrMissingParent):
		return http.StatusConflict, detail(wire.CodeMissingParent)
	case errors.Is(err, index.ErrConflict):
		return http.StatusConflict, detail(wire.CodeConflict)
	case errors.Is(err, cas.ErrNotFound), errors.Is(err, index.ErrChunkNotRecorded):
		return http.StatusNotFound, detail(wire.CodeChunkNotFound)
	case errors.Is(err, index.ErrManifestNotFound):
		return http.StatusNotFound, detail(wire.CodeManifestNotFound)
	case errors.Is(err, index.ErrRefNotFound):
		return http.StatusNotFound, detail(wire.CodeRefNotFound)
	case errors.Is(err, repo.ErrUnknownName):
		return http.StatusNotFound, detail(wire.CodeUnknownName)
	case errors.Is(err, repo.ErrAmbiguous):
		return http.StatusConflict, detail(wire.CodeAmbiguous)
	case errors.Is(err, repo.ErrNoSuchRegion):
		return http.StatusNotFound, detail(wire.CodeNotFound)
	case errors.Is(err, errShuttingDown):
		return http.StatusServiceUnavailable, detail(wire.CodeUnavailable)
	case errors.Is(err, cas.ErrCorrupt), errors.Is(err, index.ErrCorruptIndex):
		return http.StatusInternalServerError, detail(wire.CodeCorrupt)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, detail(wire.CodeUnavailable)
	case errors.As(err, &he):
		switch he.Code {
		case http.StatusNotFound:
			return he.Code, wire.ErrorDetail{Code: wire.CodeNotFound, Message: "no such route"}
		case http.StatusMethodNotAllowed:
			return he.Code, wire.ErrorDetail{Code: wire.CodeMethodNotAllowed, Message: "method not allowed on this route"}
		case http.StatusRequestEntityTooLarge:
			return he.Code, wire.ErrorDetail{Code: wire.CodeTooLarge, Message: "request body too large"}
		case http.StatusUnauthorized:
			return he.Code, wire.ErrorDetail{Code: wire.CodeUnauthorized, Message: "missing or wrong bearer token"}
		}
		if he.Code >= 400 && he.Code < 500 {
			return he.Code, wire.ErrorDetail{Code: wire.CodeBadRequest, Message: http.StatusText(he.Code)}
		}
	}
	return http.StatusInternalServerError, wire.ErrorDetail{Code: wire.CodeInternal, Message: "internal error"}
}

// handleError is echo's HTTPErrorHandler: it writes the JSON error body, unless the response
// has already begun (a stream that failed midway), in which case it only logs.
func (s *Server) handleError(err error, c echo.Context) {
	status, detail := apiError(err)
	req := c.Request()
	if status >= 500 {
		s.log.Error("request failed", "method", req.Method, "path", req.URL.Path, "status", status, "err", err)
	} else {
		s.log.Debug("request refused", "method", req.Method, "path", req.URL.Path, "status", status, "err", err)
	}
	if c.Response().Committed {
		return
	}
	if status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="driftstore"`)
	}
	if req.Method == http.MethodHead {
		_ = c.NoContent(status)
		return
	}
	_ = c.JSON(status, wire.ErrorBody{Error: detail})
}
