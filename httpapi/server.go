// Package httpapi is driftstore's HTTP server: a versioned API under /v1/ over one data
// directory's chunk store and index, for the replication client (package replicate) and for CLI
// commands run with --server.
//
// # Routes (API version 1)
//
//	GET  /healthz                       200 {"status":"ok"}
//	GET  /metrics                       Prometheus text exposition format
//	HEAD /v1/chunks/{digest}            200 with Driftstore-Size and Driftstore-Codec, or 404
//	GET  /v1/chunks/{digest}            the decoded bytes; with "Accept: application/vnd.driftstore.chunk-stored"
//	                                    or ?stored=1, the stored form with its codec in Driftstore-Codec
//	PUT  /v1/chunks/{digest}            the decoded bytes (verified), or with Driftstore-Codec the stored
//	                                    form (decoded and verified); 201 new, 200 already present
//	POST /v1/chunks/missing             {"digests":[...]} → {"missing":[...]}, at most 10000 digests
//	POST /v1/chunks/upload              a chunk stream (see package wire) → wire.BatchResult
//	POST /v1/chunks/download            {"digests":[...]} → a chunk stream
//	HEAD /v1/manifests/{id}             200 or 404
//	GET  /v1/manifests/{id}             canonical manifest bytes
//	PUT  /v1/manifests/{id}             canonical manifest bytes; id must be their BLAKE3; 409
//	                                    missing_chunks (with the list) or missing_parent until ready
//	GET  /v1/manifests[?ref=KIND/NAME]  all manifest IDs, or a ref's chain newest first
//	GET  /v1/refs[?kind=session|tag]    wire.RefList
//	GET  /v1/refs/{kind}/{name}         wire.Ref
//	PUT  /v1/refs/{kind}/{name}         wire.RefUpdate {"old","new"}: compare-and-swap; 409 conflict
//	GET  /v1/refs/{kind}/{name}/history the ref's changes, oldest first
//
// Every error is JSON {"error":{"code","message"}} with a stable code (see wire.Code*), made in
// one function, apiError. When a token is configured every request needs "Authorization: Bearer
// TOKEN"; without it the answer is 401 and nothing is read or written.
//
// # Durability and shutdown
//
// A chunk is recorded in the index only after the store has it durably and verified; a manifest
// is committed only when every chunk it names is recorded; a ref moves in one index transaction.
// So a request cut off at any point leaves nothing half-committed: at worst chunks without a
// manifest, which garbage collection removes after its grace period. Shutdown stops accepting
// connections and waits for requests in flight to finish.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/session"
)

// Config configures a Server. Index is required; the zero value of every other field is a
// usable default.
type Config struct {
	// Index is the data directory's index; its Store is the chunk store served.
	Index *index.Index
	// Repo, when set, is the whole data directory (Index is then Repo.Index() when left nil),
	// and the routes for --server's ls, inspect, gc and fsck are served (see admin.go).
	Repo *repo.Repo
	// Token, when not empty, is the bearer token every request must carry.
	Token string
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxChunkSize is the largest chunk accepted, uncompressed (default 64 MiB).
	MaxChunkSize int64
	// MaxManifestSize is the largest manifest body accepted (default 16 MiB).
	MaxManifestSize int64
	// MaxUploadSize bounds one upload stream's body (default 4 GiB).
	MaxUploadSize int64
	// MaxJSONSize bounds other JSON bodies (default 1 MiB; the missing-set call has its own).
	MaxJSONSize int64
	// Sessions, when set, serves live sessions (sessions.go) with this manager, which must be
	// over Index. The caller closes it after Shutdown, which suspends the live sessions.
	Sessions *session.Manager
	// OpenSessions, when Sessions is nil, opens the manager on the first session request (an
	// engine compiles its guest: seconds a daemon that only moves checkpoints need not spend).
	// The caller closes what it opened after Shutdown.
	OpenSessions func() (*session.Manager, error)
	// Model is the model source new live sessions use by default: the daemon's --model path,
	// or "" for the built-in tiny model.
	Model string
	// MaxTokens bounds n in one generate request (default wire.MaxGenerateTokens).
	MaxTokens int
	// RecordBatch is how many chunks of an upload stream are stored through one cas batch (one
	// durability barrier) and then recorded in one index transaction (default 256; a group also
	// ends at 64 MiB of stored bytes). Groups are committed behind the stream, in order, while
	// the next one arrives (see package ingest).
	RecordBatch int
	// StoreWorkers is how many chunks of one upload stream are verified and written at once, as
	// they arrive (default GOMAXPROCS, at most 8).
	StoreWorkers int
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxChunkSize <= 0 {
		c.MaxChunkSize = 64 << 20
	}
	if c.MaxManifestSize <= 0 {
		c.MaxManifestSize = 16 << 20
	}
	if c.MaxUploadSize <= 0 {
		c.MaxUploadSize = 4 << 30
	}
	if c.MaxJSONSize <= 0 {
		c.MaxJSONSize = 1 << 20
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = wire.MaxGenerateTokens
	}
	if c.RecordBatch <= 0 {
		c.RecordBatch = 256
	}
	if c.StoreWorkers <= 0 {
		c.StoreWorkers = min(runtime.GOMAXPROCS(0), 8)
	}
}

// maxStoredSize bounds a chunk's stored form: a codec may expand incompressible data a little.
func (c *Config) maxStoredSize() int64 { return c.MaxChunkSize + c.MaxChunkSize/8 + 4096 }

// Server serves the API for one index. It is safe for concurrent use.
type Server struct {
	cfg     Config
	ix      *index.Index
	store   cas.Store
	log     *slog.Logger
	e       *echo.Echo
	metrics *metrics
	live    *live
	token   [32]byte // SHA-256 of the configured token, compared in constant time

	inflight sync.WaitGroup // requests being handled
	closing  atomic.Bool    // set by Shutdown and Close: new writes get 503

	mu sync.Mutex   // guards hs
	hs *http.Server // the server Serve runs, nil before
}

// New returns a server for cfg.Index.
func New(cfg Config) (*Server, error) {
	if cfg.Index == nil && cfg.Repo != nil {
		cfg.Index = cfg.Repo.Index()
	}
	if cfg.Index == nil {
		return nil, errors.New("httpapi: Config.Index or Config.Repo is required")
	}
	cfg.setDefaults()
	s := &Server{cfg: cfg, ix: cfg.Index, store: cfg.Index.Store(), log: cfg.Logger, metrics: newMetrics(), live: newLive()}
	if cfg.Token != "" {
		s.token = sha256.Sum256([]byte(cfg.Token))
	}
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = s.handleError
	e.Use(s.observe, s.auth)
	e.GET(wire.PathHealth, s.health)
	e.GET(wire.PathMetrics, s.serveMetrics)

	e.POST(wire.PathMissing, s.missing)
	e.POST(wire.PathUpload, s.upload)
	e.POST(wire.PathDownload, s.download)
	e.HEAD(wire.PathChunks+":digest", s.headChunk)
	e.GET(wire.PathChunks+":digest", s.getChunk)
	e.PUT(wire.PathChunks+":digest", s.putChunk)

	e.GET(strings.TrimSuffix(wire.PathManifests, "/"), s.listManifests)
	e.HEAD(wire.PathManifests+":id", s.headManifest)
	e.GET(wire.PathManifests+":id", s.getManifest)
	e.PUT(wire.PathManifests+":id", s.putManifest)

	e.GET(wire.PathRefs, s.listRefs)
	e.GET(wire.PathRefs+"/:kind/:name", s.getRef)
	e.PUT(wire.PathRefs+"/:kind/:name", s.putRef)
	e.POST(wire.PathRefs+"/:kind/:name"+wire.PathCommitSuffix, s.commitRef)
	e.GET(wire.PathRefs+"/:kind/:name/history", s.refHistory)
	if cfg.Repo != nil {
		s.registerRepoRoutes(e)
	}
	s.registerSessionRoutes(e)
	s.e = e
	return s, nil
}

// Handler returns the server as an http.Handler, for tests and for embedding.
func (s *Server) Handler() http.Handler { return s.e }

// Serve accepts connections on ln until Shutdown or Close, then returns nil.
func (s *Server) Serve(ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.e,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.hs = hs
	s.mu.Unlock()
	s.log.Info("serving", "addr", ln.Addr().String(), "auth", s.cfg.Token != "")
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and requests and waits, up to ctx's deadline, for the
// requests in flight to finish; writes among them complete. If ctx ends first, the remaining
// connections are closed; a write cut off that way commits nothing partial (see the package
// doc). Shutdown returns once every handler has returned, after suspending the live sessions
// (each checkpointed if it changed since its head).
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.mu.Lock()
	hs := s.hs
	s.mu.Unlock()
	var err error
	if hs != nil {
		err = hs.Shutdown(ctx)
		if err != nil {
			hs.Close()
		}
	}
	s.inflight.Wait()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if serr := s.suspendAll(sctx); serr != nil {
		s.log.Error("suspending live sessions", "err", serr)
		if err == nil {
			err = serr
		}
	}
	return err
}

// Close closes the listener and every connection at once, like a crash of the network side,
// then waits for the handlers that were running to return. It is for tests of interrupted
// transfers and for a second signal after Shutdown.
func (s *Server) Close() error {
	s.closing.Store(true)
	s.mu.Lock()
	hs := s.hs
	s.mu.Unlock()
	var err error
	if hs != nil {
		err = hs.Close()
	}
	s.inflight.Wait()
	return err
}

// observe counts, times and logs every request, and tracks it for Shutdown and Close.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		s.inflight.Add(1)
		defer s.inflight.Done()
		s.metrics.inflight.Add(1)
		defer s.metrics.inflight.Add(-1)
		start := time.Now()
		req := c.Request()
		cr := &countingReader{r: req.Body}
		req.Body = cr
		err := next(c)
		if err != nil {
			// Write the error now so the status below is the one the client saw.
			s.handleError(err, c)
		}
		res := c.Response()
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		d := time.Since(start)
		s.metrics.observe(route, req.Method, res.Status, d)
		s.metrics.bytesIn.Add(cr.n)
		s.metrics.bytesOut.Add(res.Size)
		level := slog.LevelInfo
		if route == wire.PathHealth || route == wire.PathMetrics {
			level = slog.LevelDebug
		}
		s.log.Log(req.Context(), level, "request", "method", req.Method, "path", req.URL.Path, "route", route,
			"status", res.Status, "in", cr.n, "out", res.Size, "dur", d, "remote", req.RemoteAddr)
		return nil
	}
}

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// auth requires the bearer token, when one is configured, before anything else runs. The
// comparison is of SHA-256 digests in constant time, so it reveals neither the token nor its
// length.
func (s *Server) auth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.cfg.Token == "" {
			return next(c)
		}
		h := c.Request().Header.Get(echo.HeaderAuthorization)
		tok, ok := strings.CutPrefix(h, "Bearer ")
		got := sha256.Sum256([]byte(tok))
		if subtle.ConstantTimeCompare(got[:], s.token[:]) != 1 || !ok {
			return errUnauthorized
		}
		return next(c)
	}
}

func (s *Server) health(c echo.Context) error {
	if s.closing.Load() {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "shutting down"})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) serveMetrics(c echo.Context) error {
	c.Response().Header().Set(echo.HeaderContentType, "text/plain; version=0.0.4; charset=utf-8")
	c.Response().WriteHeader(http.StatusOK)
	return s.metrics.write(c.Response())
}

// limitBody caps the request body at max bytes: a declared Content-Length over it is refused at
// once, and a body that turns out longer fails its read with *http.MaxBytesError (413).
func limitBody(c echo.Context, max int64) error {
	req := c.Request()
	if req.ContentLength > max {
		return fmt.Errorf("%w: body of %d bytes, limit %d", wire.ErrTooLarge, req.ContentLength, max)
	}
	req.Body = http.MaxBytesReader(c.Response(), req.Body, max)
	return nil
}

// readBody reads the whole body under a limit.
func readBody(c echo.Context, max int64) ([]byte, error) {
	if err := limitBody(c, max); err != nil {
		return nil, err
	}
	req := c.Request()
	var buf []byte
	if req.ContentLength > 0 {
		buf = make([]byte, 0, req.ContentLength)
	}
	w := &appendWriter{b: buf}
	if _, err := io.Copy(w, req.Body); err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return w.b, nil
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// writable refuses writes once shutdown has begun.
func (s *Server) writable() error {
	if s.closing.Load() {
		return errShuttingDown
	}
	return nil
}
