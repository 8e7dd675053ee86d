// Package replicate moves checkpoints between driftstore data directories and daemons: a typed
// client for the HTTP API (Client), and push, pull and replicate built on it, which ask the
// other side what it lacks and send only that.
//
// A transfer goes chunks first, then manifests (parents before children), then the ref, moved
// with compare-and-swap. Each step is idempotent, so an interrupted transfer is resumed by
// running it again: the missing-set call sees what already arrived, and nothing is sent twice.
package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

// Client talks to one driftstore daemon. It is safe for concurrent use.
type Client struct {
	base    string // scheme://host[:port][/prefix], no trailing slash
	token   string
	hc      *http.Client
	retries int
	backoff time.Duration
}

// ClientOptions configure NewClient. The zero value is usable.
type ClientOptions struct {
	// Token is sent as "Authorization: Bearer TOKEN" when not empty.
	Token string
	// HTTPClient makes the requests; nil means a client with a transport tuned for many
	// parallel requests to one host.
	HTTPClient *http.Client
	// Retries is how often an idempotent request is retried after a network error or a 5xx
	// answer (default 4; negative means none).
	Retries int
	// Backoff is the first retry's delay, doubled for each further one (default 100ms).
	Backoff time.Duration
}

// NewClient returns a client for the daemon at baseURL ("http://host:port").
func NewClient(baseURL string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http://HOST:PORT or https://HOST:PORT", baseURL)
	}
	hc := opts.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 32
		tr.DisableCompression = true // chunks are compressed already
		hc = &http.Client{Transport: tr}
	}
	c := &Client{base: strings.TrimSuffix(u.String(), "/"), token: opts.Token, hc: hc, retries: opts.Retries, backoff: opts.Backoff}
	if c.retries == 0 {
		c.retries = 4
	} else if c.retries < 0 {
		c.retries = 0
	}
	if c.backoff <= 0 {
		c.backoff = 100 * time.Millisecond
	}
	return c, nil
}

// URL returns the daemon's base URL.
func (c *Client) URL() string { return c.base }

// Error is an error answer from the daemon, parsed from its JSON error body (or made up from
// the status when the body is not one). errors.Is matches it against the local store's and
// index's sentinels with the same meaning, so callers treat local and remote failures alike.
type Error struct {
	Method  string
	URL     string
	Status  int
	Code    string       // stable code, one of wire.Code*
	Message string       // the server's message
	Missing []cas.Digest // with wire.CodeMissingChunks or a download's wire.CodeChunkNotFound
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Status, e.Code, e.Message)
}

// Is maps codes to sentinels: chunk_not_found ↔ cas.ErrNotFound, manifest_not_found ↔
// index.ErrManifestNotFound, ref_not_found ↔ index.ErrRefNotFound, conflict ↔
// index.ErrConflict, missing_chunks ↔ index.ErrMissingChunks, missing_parent ↔
// index.ErrMissingParent, bad_digest ↔ cas.ErrBadDigest, bad_name ↔ index.ErrBadRefName,
// bad_manifest ↔ index.ErrBadManifest, unknown_name ↔ repo.ErrUnknownName, ambiguous ↔
// repo.ErrAmbiguous, unauthorized ↔ ErrUnauthorized.
func (e *Error) Is(target error) bool {
	switch target {
	case cas.ErrNotFound:
		return e.Code == wire.CodeChunkNotFound
	case index.ErrManifestNotFound:
		return e.Code == wire.CodeManifestNotFound
	case index.ErrRefNotFound:
		return e.Code == wire.CodeRefNotFound
	case index.ErrConflict:
		return e.Code == wire.CodeConflict
	case index.ErrMissingChunks:
		return e.Code == wire.CodeMissingChunks
	case index.ErrMissingParent:
		return e.Code == wire.CodeMissingParent
	case cas.ErrBadDigest:
		return e.Code == wire.CodeBadDigest
	case index.ErrBadRefName:
		return e.Code == wire.CodeBadName
	case index.ErrBadManifest:
		return e.Code == wire.CodeBadManifest
	case repo.ErrUnknownName:
		return e.Code == wire.CodeUnknownName
	case repo.ErrAmbiguous:
		return e.Code == wire.CodeAmbiguous
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	}
	return false
}

// ErrUnauthorized matches a 401 answer: no token or the wrong one.
var ErrUnauthorized = errors.New("unauthorized")

// retryable reports whether a failed attempt may succeed if repeated.
func retryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Status >= 500 || e.Status == http.StatusTooManyRequests
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// checkResponse is the one place where a response becomes an error: any status >= 400 is read
// as a JSON error body (at most 1 MiB) and returned as *Error. The body is closed on error.
func checkResponse(resp *http.Response) error {
	if resp.StatusCode < 400 {
		return nil
	}
	defer resp.Body.Close()
	e := &Error{Method: resp.Request.Method, URL: resp.Request.URL.String(), Status: resp.StatusCode}
	var body wire.ErrorBody
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(raw, &body); err == nil && body.Error.Code != "" {
		e.Code, e.Message, e.Missing = body.Error.Code, body.Error.Message, body.Error.Missing
	} else {
		e.Code = "http_" + strconv.Itoa(resp.StatusCode)
		e.Message = strings.TrimSpace(string(raw))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	return e
}

// request describes one call. body, when set, is sent again on each retry.
type request struct {
	method  string
	path    string // under base, with query
	body    []byte
	ctype   string
	headers map[string]string
	retry   bool // idempotent: retry on network errors and 5xx
}

// do sends r, retrying as configured, and returns the response of the first attempt that got
// an answer below 400. The caller closes the body.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	attempts := 1
	if r.retry {
		attempts += c.retries
	}
	delay := c.backoff
	var lastErr error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			delay *= 2
		}
		resp, err := c.once(ctx, r.method, r.path, r.body, r.ctype, r.headers)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if !retryable(err) {
			break
		}
	}
	return nil, lastErr
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, ctype string, headers map[string]string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = int64(len(body))
	}
	c.prepare(req, ctype, headers)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err // a *url.Error, which names the method and URL
	}
	if err := checkResponse(resp); err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *Client) prepare(req *http.Request, ctype string, headers map[string]string) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
}

// drain reads the rest of a body so the connection can be reused, then closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: path, retry: true})
	if err != nil {
		return err
	}
	defer drain(resp)
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decode answer: %w", path, err)
	}
	return nil
}

func (c *Client) sendJSON(ctx context.Context, method, path string, in, out any, retry bool) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, request{method: method, path: path, body: body, ctype: "application/json", retry: retry})
	if err != nil {
		return err
	}
	defer drain(resp)
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Health checks that the daemon answers and is not shutting down.
func (c *Client) Health(ctx context.Context) error {
	var v map[string]string
	return c.getJSON(ctx, wire.PathHealth, &v)
}

// HasChunk reports whether the daemon has chunk d recorded.
func (c *Client) HasChunk(ctx context.Context, d cas.Digest) (bool, error) {
	resp, err := c.do(ctx, request{method: http.MethodHead, path: wire.PathChunks + d.String(), retry: true})
	if err != nil {
		if errors.Is(err, cas.ErrNotFound) || isStatus(err, http.StatusNotFound) {
			return false, nil
		}
		return false, err
	}
	drain(resp)
	return true, nil
}

func isStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// GetChunk fetches chunk d's decoded bytes and verifies them against d. It appends to dst[:0]
// (see cas.Store.Get for the buffer contract). A body that does not hash to d gives a
// *cas.CorruptError; one longer than cas.MaxChunkSize is read no further and gives an error
// wrapping wire.ErrTooLarge.
func (c *Client) GetChunk(ctx context.Context, d cas.Digest, dst []byte) ([]byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: wire.PathChunks + d.String(), retry: true})
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	b, err := readLimited(resp, dst[:0], cas.MaxChunkSize)
	if err != nil {
		return nil, fmt.Errorf("get chunk %s: %w", d, err)
	}
	if cas.Sum(b) != d {
		return nil, &cas.CorruptError{Digest: d, Reason: "the daemon's bytes hash to " + cas.Sum(b).String()}
	}
	return b, nil
}

// maxStoredSize bounds the stored form of a chunk a daemon may send: a codec may expand
// incompressible data a little (the bound the daemon applies to what it receives).
const maxStoredSize = cas.MaxChunkSize + cas.MaxChunkSize/8 + 4096

// readLimited appends resp's body to dst. A body longer than max bytes (read no further than
// that) gives an error wrapping wire.ErrTooLarge.
func readLimited(resp *http.Response, dst []byte, max int64) ([]byte, error) {
	buf := bytes.NewBuffer(dst)
	if n := resp.ContentLength; n > max {
		return nil, fmt.Errorf("%w: the daemon sends %d bytes, at most %d expected", wire.ErrTooLarge, n, max)
	} else if n > 0 {
		buf.Grow(int(n))
	}
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("%w: the daemon sent more than %d bytes", wire.ErrTooLarge, max)
	}
	return buf.Bytes(), nil
}

// GetStored fetches chunk d as the daemon keeps it: its codec and stored bytes, in a new slice.
// The stored form is not verified here; cas stores verify it when it is put (PutStored). A
// body longer than any chunk's stored form can be is read no further and gives an error
// wrapping wire.ErrTooLarge.
func (c *Client) GetStored(ctx context.Context, d cas.Digest) (cas.Codec, []byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: wire.PathChunks + d.String(),
		headers: map[string]string{"Accept": wire.MediaTypeStored}, retry: true})
	if err != nil {
		return 0, nil, err
	}
	defer drain(resp)
	n, err := strconv.ParseUint(resp.Header.Get(wire.HeaderCodec), 10, 8)
	if err != nil || n == 0 {
		return 0, nil, fmt.Errorf("get stored chunk %s: bad %s header %q", d, wire.HeaderCodec, resp.Header.Get(wire.HeaderCodec))
	}
	b, err := readLimited(resp, nil, maxStoredSize)
	if err != nil {
		return 0, nil, fmt.Errorf("get stored chunk %s: %w", d, err)
	}
	return cas.Codec(n), b, nil
}

// PutChunk uploads data as a chunk; the daemon verifies it and stores it with hint. It reports
// whether the chunk was new there. data is only read during the call.
func (c *Client) PutChunk(ctx context.Context, data []byte, hint cas.Hint) (cas.Digest, bool, error) {
	d := cas.Sum(data)
	h := map[string]string{}
	if hint != cas.HintNone {
		h["Driftstore-Hint"] = strconv.Itoa(int(hint))
	}
	created, err := c.putChunk(ctx, d, data, h)
	return d, created, err
}

// PutStored uploads a chunk in its stored form; the daemon decodes and verifies it before
// committing. It reports whether the chunk was new there.
func (c *Client) PutStored(ctx context.Context, d cas.Digest, codec cas.Codec, stored []byte) (bool, error) {
	return c.putChunk(ctx, d, stored, map[string]string{wire.HeaderCodec: strconv.Itoa(int(codec))})
}

func (c *Client) putChunk(ctx context.Context, d cas.Digest, body []byte, h map[string]string) (bool, error) {
	if body == nil {
		body = []byte{}
	}
	resp, err := c.do(ctx, request{method: http.MethodPut, path: wire.PathChunks + d.String(), body: body,
		ctype: "application/octet-stream", headers: h, retry: true})
	if err != nil {
		return false, err
	}
	drain(resp)
	return resp.StatusCode == http.StatusCreated, nil
}

// Missing returns the digests among ds that the daemon lacks, in the order given, without
// duplicates (a daemon answers one request so; across the batches of a long list, asked
// wire.MaxMissingDigests at a time, they are removed here).
func (c *Client) Missing(ctx context.Context, ds []cas.Digest) ([]cas.Digest, error) {
	var out []cas.Digest
	var seen map[cas.Digest]struct{} // across requests; one answer has no duplicates
	if len(ds) > wire.MaxMissingDigests {
		seen = make(map[cas.Digest]struct{}, len(ds))
	}
	for len(ds) > 0 {
		n := min(len(ds), wire.MaxMissingDigests)
		resp, err := c.do(ctx, request{method: http.MethodPost, path: wire.PathMissing, body: wire.AppendDigestList(nil, ds[:n]),
			ctype: wire.MediaTypeDigests, headers: map[string]string{"Accept": wire.MediaTypeDigests}, retry: true})
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxDigestListBody+1))
		drain(resp)
		if err != nil {
			return nil, fmt.Errorf("missing chunks: read answer: %w", err)
		}
		miss, err := wire.ParseDigestList(body, n)
		if err != nil {
			return nil, fmt.Errorf("missing chunks: answer: %w", err)
		}
		if seen == nil {
			return miss, nil
		}
		for _, d := range miss {
			if _, dup := seen[d]; !dup {
				seen[d] = struct{}{}
				out = append(out, d)
			}
		}
		ds = ds[n:]
	}
	return out, nil
}

// Upload sends one chunk stream: write is called with a stream writer (from another goroutine
// than the caller's) and should write the chunks; the daemon verifies and commits them as they
// arrive. Once the daemon has answered, the stream's writes fail; Upload returns only after
// write has returned (or without calling it, when the request fails before its body is sent).
// Upload is not retried: when it fails, the chunks that arrived whole are committed, and the
// caller asks Missing again before resending.
//
// With the standard HTTP/1 transport, the frames go straight from write to the connection (the
// request body's WriteTo); other transports read the body, which is then fed through a pipe.
func (c *Client) Upload(ctx context.Context, write func(sw *wire.ChunkStreamWriter) error) (wire.BatchResult, error) {
	body := &uploadBody{write: write, done: make(chan struct{})}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+wire.PathUpload, body)
	if err != nil {
		return wire.BatchResult{}, err
	}
	c.prepare(req, wire.MediaTypeChunkStream, nil)
	resp, err := c.hc.Do(req)
	body.stop()
	if err != nil {
		return wire.BatchResult{}, fmt.Errorf("POST %s: %w", c.base+wire.PathUpload, err)
	}
	if err := checkResponse(resp); err != nil {
		return wire.BatchResult{}, err
	}
	defer drain(resp)
	var res wire.BatchResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return res, fmt.Errorf("upload: decode answer: %w", err)
	}
	return res, nil
}

// errUploadOver is what the stream's writes fail with once the upload request has finished.
var errUploadOver = errors.New("upload request finished")

// uploadBody is an upload request's body. The transport either calls WriteTo, which runs write
// on the transport's goroutine straight onto the connection, or Read, which starts write on a
// goroutine of its own feeding a pipe. stop, after the request, makes further writes fail and
// waits for write to return.
type uploadBody struct {
	write func(sw *wire.ChunkStreamWriter) error

	mu      sync.Mutex // guards started, stopped, pr
	started bool       // write has been or is being called
	stopped bool       // the request is over: write must not start
	pr      *io.PipeReader
	over    atomic.Bool   // set by stop: the stream's writes fail
	done    chan struct{} // closed when write (and the stream's Close) has returned
}

// begin reports whether write may start now, marking it started.
func (b *uploadBody) begin() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.stopped {
		return false
	}
	b.started = true
	return true
}

// run calls write with a stream writer onto w, then writes the trailer.
func (b *uploadBody) run(w io.Writer) error {
	defer close(b.done)
	sw := wire.NewChunkStreamWriter(stoppableWriter{w: w, over: &b.over})
	err := b.write(sw)
	if err == nil {
		err = sw.Close()
	}
	return err
}

// WriteTo writes the whole stream to w (the transport's connection).
func (b *uploadBody) WriteTo(w io.Writer) (int64, error) {
	if !b.begin() {
		return 0, errors.New("upload body already sent or request over")
	}
	cw := &countWriter{w: w}
	err := b.run(cw)
	return cw.n, err
}

func (b *uploadBody) Read(p []byte) (int, error) {
	if b.begin() {
		pr, pw := io.Pipe()
		b.mu.Lock()
		b.pr = pr
		b.mu.Unlock()
		go func() { pw.CloseWithError(b.run(pw)) }()
	}
	b.mu.Lock()
	pr := b.pr
	b.mu.Unlock()
	if pr == nil {
		return 0, errors.New("upload body already sent or request over")
	}
	return pr.Read(p)
}

// Close is called by the transport when it is done with the body; stop does the waiting.
func (b *uploadBody) Close() error { return nil }

// stop ends the body after the request: a write not yet started never starts, one running
// fails at its next write and is waited for.
func (b *uploadBody) stop() {
	b.over.Store(true)
	b.mu.Lock()
	b.stopped = true
	started, pr := b.started, b.pr
	b.mu.Unlock()
	if pr != nil {
		pr.CloseWithError(errUploadOver)
	}
	if started {
		<-b.done
	}
}

// stoppableWriter fails every write once over is set.
type stoppableWriter struct {
	w    io.Writer
	over *atomic.Bool
}

func (s stoppableWriter) Write(p []byte) (int, error) {
	if s.over.Load() {
		return 0, errUploadOver
	}
	return s.w.Write(p)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Download asks for chunks ds (at most wire.MaxMissingDigests) and calls fn with each as it
// arrives, in order, from the caller's goroutine. The chunk's Stored slice is valid only during
// fn. A stream cut off before its end gives an error wrapping io.ErrUnexpectedEOF after fn has
// seen the chunks that arrived whole. Chunks are not verified here: put them into a store with
// PutStored, which does.
func (c *Client) Download(ctx context.Context, ds []cas.Digest, lim wire.StreamLimits, fn func(wire.StoredChunk) error) error {
	return c.download(ctx, ds, lim, func(sr *wire.ChunkStreamReader) error {
		for {
			ch, err := sr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("download: %w", err)
			}
			if err := fn(ch); err != nil {
				return err
			}
		}
	})
}

// download asks for chunks ds and hands the response's chunk stream to read, which reads it
// to its end (io.EOF) or fails.
func (c *Client) download(ctx context.Context, ds []cas.Digest, lim wire.StreamLimits, read func(*wire.ChunkStreamReader) error) error {
	resp, err := c.do(ctx, request{method: http.MethodPost, path: wire.PathDownload, body: wire.AppendDigestList(nil, ds),
		ctype: wire.MediaTypeDigests, retry: true})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if lim.MaxChunks == 0 {
		lim.MaxChunks = int64(len(ds))
	}
	return read(wire.NewChunkStreamReader(resp.Body, lim))
}

// HasManifest reports whether the daemon has manifest id.
func (c *Client) HasManifest(ctx context.Context, id index.ID) (bool, error) {
	resp, err := c.do(ctx, request{method: http.MethodHead, path: wire.PathManifests + id.String(), retry: true})
	if err != nil {
		if isStatus(err, http.StatusNotFound) {
			return false, nil
		}
		return false, err
	}
	drain(resp)
	return true, nil
}

// ManifestBytes fetches manifest id's canonical bytes and checks that they hash to id.
func (c *Client) ManifestBytes(ctx context.Context, id index.ID) ([]byte, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: wire.PathManifests + id.String(), retry: true})
	if err != nil {
		return nil, err
	}
	defer drain(resp)
	b, err := io.ReadAll(io.LimitReader(resp.Body, index.MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("get manifest %s: %w", id, err)
	}
	if cas.Sum(b) != id {
		return nil, fmt.Errorf("get manifest %s: %w: the daemon's bytes hash to %s", id, index.ErrCorruptIndex, cas.Sum(b))
	}
	return b, nil
}

// Manifest fetches and strictly decodes manifest id.
func (c *Client) Manifest(ctx context.Context, id index.ID) (*index.Manifest, error) {
	b, err := c.ManifestBytes(ctx, id)
	if err != nil {
		return nil, err
	}
	return index.Decode(b)
}

// PutManifestBytes uploads an encoded manifest and returns its ID. It is refused with an *Error
// matching index.ErrMissingChunks (Missing lists them) or index.ErrMissingParent until the
// daemon has everything the manifest names.
func (c *Client) PutManifestBytes(ctx context.Context, data []byte) (index.ID, error) {
	id := cas.Sum(data)
	resp, err := c.do(ctx, request{method: http.MethodPut, path: wire.PathManifests + id.String(), body: data,
		ctype: wire.MediaTypeManifest, retry: true})
	if err != nil {
		return id, err
	}
	drain(resp)
	return id, nil
}

// Chain returns a ref's manifests from its head back to the first, newest first.
func (c *Client) Chain(ctx context.Context, kind index.RefKind, name string) ([]index.ID, error) {
	var res wire.ManifestList
	if err := c.getJSON(ctx, strings.TrimSuffix(wire.PathManifests, "/")+"?ref="+url.QueryEscape(kind.String()+"/"+name), &res); err != nil {
		return nil, err
	}
	out := make([]index.ID, 0, len(res.Manifests))
	for _, s := range res.Manifests {
		id, err := cas.ParseDigest(s)
		if err != nil {
			return nil, fmt.Errorf("chain of %s %q: %w", kind, name, err)
		}
		out = append(out, id)
	}
	return out, nil
}

// Refs lists the daemon's refs of one kind (0: all).
func (c *Client) Refs(ctx context.Context, kind index.RefKind) ([]index.Ref, error) {
	path := wire.PathRefs
	if kind != 0 {
		path += "?kind=" + kind.String()
	}
	var res wire.RefList
	if err := c.getJSON(ctx, path, &res); err != nil {
		return nil, err
	}
	out := make([]index.Ref, 0, len(res.Refs))
	for _, r := range res.Refs {
		k, err := parseKind(r.Kind)
		if err != nil {
			return nil, err
		}
		id, err := cas.ParseDigest(r.Head)
		if err != nil {
			return nil, fmt.Errorf("ref %s %q: %w", r.Kind, r.Name, err)
		}
		out = append(out, index.Ref{Kind: k, Name: r.Name, Target: id})
	}
	return out, nil
}

func refPath(kind index.RefKind, name string) string {
	return wire.PathRefs + "/" + kind.String() + "/" + url.PathEscape(name)
}

// Ref returns the manifest a ref points at, or an error matching index.ErrRefNotFound.
func (c *Client) Ref(ctx context.Context, kind index.RefKind, name string) (index.ID, error) {
	if err := index.ValidRefName(name); err != nil {
		return index.ID{}, err
	}
	var r wire.Ref
	if err := c.getJSON(ctx, refPath(kind, name), &r); err != nil {
		return index.ID{}, err
	}
	return cas.ParseDigest(r.Head)
}

// CommitRef commits manifests (canonical bytes, parents first) and moves ref kind/name from
// expected to target on the daemon, in one request and one index transaction (POST
// .../commit): all of it or nothing. Older manifests beyond what one request carries
// (wire.MaxCommitManifests, MaxCommitBytes) are put one by one first. A daemon without the
// route (404 or 405 without an API error, or 413) gets puts and a compare-and-swap instead. A
// lost answer is resolved as CompareAndSwapRef does.
func (c *Client) CommitRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID, manifests [][]byte) error {
	if err := index.ValidRefName(name); err != nil {
		return err
	}
	first := len(manifests) // manifests[first:] travel in the commit
	size := 0
	for first > 0 && len(manifests)-first < wire.MaxCommitManifests && size+len(manifests[first-1]) <= MaxCommitBytes {
		first--
		size += len(manifests[first])
	}
	if err := c.putManifests(ctx, manifests[:first]); err != nil {
		return err
	}
	body := wire.AppendRefCommit(nil, &wire.RefCommit{Old: expected, New: target, Manifests: manifests[first:]})
	path := refPath(kind, name) + wire.PathCommitSuffix
	send := func() error {
		resp, err := c.do(ctx, request{method: http.MethodPost, path: path, body: body, ctype: wire.MediaTypeRefCommit})
		if err == nil {
			drain(resp)
		}
		return err
	}
	err := c.moveRef(ctx, kind, name, expected, target, send)
	var e *Error
	if errors.As(err, &e) && (e.Code == "http_404" || e.Code == "http_405" || e.Status == http.StatusRequestEntityTooLarge) {
		// An older daemon, or a smaller limit: the manifests one by one, then the move.
		if err := c.putManifests(ctx, manifests[first:]); err != nil {
			return err
		}
		return c.CompareAndSwapRef(ctx, kind, name, expected, target)
	}
	return err
}

// MaxCommitBytes is the most manifest bytes CommitRef sends in one commit request (a daemon's
// default manifest limit, which bounds the body).
const MaxCommitBytes = 16 << 20

func (c *Client) putManifests(ctx context.Context, manifests [][]byte) error {
	for _, m := range manifests {
		if _, err := c.PutManifestBytes(ctx, m); err != nil {
			return fmt.Errorf("put manifest %s: %w", cas.Sum(m), err)
		}
	}
	return nil
}

// CompareAndSwapRef moves a ref from expected (zero: must not exist) to target (zero: delete)
// atomically on the daemon; a ref not at expected gives an error matching index.ErrConflict
// and nothing changes. A request whose answer was lost is retried; when the retry finds the
// ref already at target, that counts as success.
func (c *Client) CompareAndSwapRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID) error {
	if err := index.ValidRefName(name); err != nil {
		return err
	}
	u := wire.RefUpdate{Old: idText(expected), New: idText(target)}
	return c.moveRef(ctx, kind, name, expected, target, func() error {
		return c.sendJSON(ctx, http.MethodPut, refPath(kind, name), u, nil, false)
	})
}

// moveRef runs send, a request that moves ref kind/name from expected to target, and resolves a
// lost answer (a network error after which the move may or may not have happened) by reading
// the ref: at target, done; at expected, send again; elsewhere, a conflict.
func (c *Client) moveRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID, send func() error) error {
	err := send()
	var e *Error
	if err != nil && !errors.As(err, &e) && retryable(err) {
		for i := 0; i < c.retries; i++ {
			cur, rerr := c.Ref(ctx, kind, name)
			if rerr == nil || errors.Is(rerr, index.ErrRefNotFound) {
				if cur == target {
					return nil
				}
				if cur != expected {
					return fmt.Errorf("%w: %s %q is at %s after a lost answer (%v)", index.ErrConflict, kind, name, idText(cur), err)
				}
				if err = send(); err == nil || errors.As(err, &e) {
					break
				}
			}
		}
	}
	return err
}

func idText(id index.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

func parseKind(s string) (index.RefKind, error) {
	switch s {
	case "session":
		return index.RefSession, nil
	case "tag":
		return index.RefTag, nil
	}
	return 0, fmt.Errorf("%w: unknown ref kind %q", index.ErrBadRefName, s)
}
