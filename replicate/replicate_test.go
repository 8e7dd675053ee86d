package replicate_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/httpapi/apitest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/repo"
)

// kvLike returns bytes shaped like a KV cache: float16-ish values, compressible but not
// trivially.
func kvLike(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := 0; i+1 < n; i += 2 {
		b[i] = byte(r.IntN(256))
		b[i+1] = byte(0x38 + r.IntN(8))
	}
	return b
}

func openLocal(t testing.TB) *repo.Repo {
	t.Helper()
	r, err := repo.Open(t.TempDir(), repo.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// putSession stores data as a new checkpoint-like manifest following parent and points
// session name at it.
func putSession(t testing.TB, r *repo.Repo, name string, parent index.ID, data []byte) index.ID {
	t.Helper()
	ctx := context.Background()
	res, err := r.PutReader(ctx, "kv", bytes.NewReader(data), repo.PutOptions{Parent: parent, Kind: "checkpoint", Hint: cas.HintFloat16,
		Chunker: repo.ChunkerSpec{Method: repo.ChunkFixed, Size: 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Index().CompareAndSwapRef(ctx, index.RefSession, name, parent, res.ID); err != nil {
		t.Fatal(err)
	}
	return res.ID
}

func content(t testing.TB, r *repo.Repo, id index.ID) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := r.Get(context.Background(), id, &buf, repo.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fsckClean(t testing.TB, r *repo.Repo) {
	t.Helper()
	res, err := r.Fsck(context.Background(), index.FsckOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("fsck: %v", res.Problems)
	}
}

// wireCounter is an http.RoundTripper that counts the bytes of request and response bodies
// and can run a hook on the request body.
type wireCounter struct {
	up, down atomic.Int64
	requests atomic.Int64
	// onUpload, when set, wraps the body of upload requests.
	onUpload func(io.ReadCloser) io.ReadCloser
	base     http.RoundTripper
}

func newCounter() *wireCounter {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	return &wireCounter{base: tr}
}

func (w *wireCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	w.requests.Add(1)
	if req.Body != nil {
		body := req.Body
		if w.onUpload != nil && req.URL.Path == wire.PathUpload {
			body = w.onUpload(body)
		}
		req = req.Clone(req.Context())
		req.Body = &countReader{r: body, n: &w.up}
	}
	resp, err := w.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &countReader{r: resp.Body, n: &w.down}
	return resp, nil
}

type countReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
func (c *countReader) Close() error { return c.r.Close() }

func client(t testing.TB, url string, rt http.RoundTripper, token string) *replicate.Client {
	t.Helper()
	var hc *http.Client
	if rt != nil {
		hc = &http.Client{Transport: rt}
	}
	c, err := replicate.NewClient(url, replicate.ClientOptions{HTTPClient: hc, Token: token, Backoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var fast = replicate.Options{Backoff: 5 * time.Millisecond}

func TestPushPullByteExact(t *testing.T) {
	ctx := context.Background()
	local := openLocal(t)
	data := kvLike(1, 3<<20)
	id := putSession(t, local, "s", index.ID{}, data)

	b := apitest.Start(t, t.TempDir(), httpapi.Config{})
	st, err := replicate.Push(ctx, local.Index(), client(t, b.URL, nil, ""), index.RefSession, "s", fast)
	if err != nil {
		t.Fatal(err)
	}
	if st.Head != id || st.Manifests != 1 || st.ChunksSent != st.Chunks || st.Chunks != 48 {
		t.Fatalf("push stats %+v", st)
	}
	if got := content(t, b.Repo, id); !bytes.Equal(got, data) {
		t.Fatal("pushed content differs")
	}
	// Chunks travel as stored: the daemon keeps the very bytes (and codec) the source kept.
	m, _ := local.Index().Manifest(id)
	for _, d := range m.Digests() {
		c1, s1, err1 := cas.ReadStored(ctx, local.Store(), d, cas.HintNone)
		c2, s2, err2 := cas.ReadStored(ctx, b.Repo.Store(), d, cas.HintNone)
		if err1 != nil || err2 != nil || c1 != c2 || !bytes.Equal(s1, s2) {
			t.Fatalf("chunk %s: stored form changed in transit (codec %d → %d; %v %v)", d, c1, c2, err1, err2)
		}
		if c1 != cas.CodecF16Planes {
			t.Fatalf("chunk %s kept with codec %d; the test means to move float16 planes", d, c1)
		}
	}
	// Pushing again sends nothing.
	st, err = replicate.Push(ctx, local.Index(), client(t, b.URL, nil, ""), index.RefSession, "s", fast)
	if err != nil || !st.UpToDate || st.ChunksSent != 0 {
		t.Fatalf("second push: %+v %v", st, err)
	}
	// Pull into a third, empty directory.
	other := openLocal(t)
	st, err = replicate.Pull(ctx, client(t, b.URL, nil, ""), other.Index(), index.RefSession, "s", fast)
	if err != nil || st.ChunksSent != 48 {
		t.Fatalf("pull: %+v %v", st, err)
	}
	if got := content(t, other, id); !bytes.Equal(got, data) {
		t.Fatal("pulled content differs")
	}
	fsckClean(t, b.Repo)
	fsckClean(t, other)
}

func TestReplicateChain(t *testing.T) {
	ctx := context.Background()
	a := apitest.Start(t, t.TempDir(), httpapi.Config{Token: "ta"})
	b := apitest.Start(t, t.TempDir(), httpapi.Config{Token: "tb"})
	c := apitest.Start(t, t.TempDir(), httpapi.Config{Token: "tc"})
	base := kvLike(2, 1<<20)
	id1 := putSession(t, a.Repo, "chat", index.ID{}, base)
	more := append(bytes.Clone(base), kvLike(3, 256<<10)...)
	id2 := putSession(t, a.Repo, "chat", id1, more)

	// A → B (A's data directory pushes to daemon B), then B → C.
	if _, err := replicate.Push(ctx, a.Repo.Index(), client(t, b.URL, nil, "tb"), index.RefSession, "chat", fast); err != nil {
		t.Fatal(err)
	}
	st, err := replicate.Push(ctx, b.Repo.Index(), client(t, c.URL, nil, "tc"), index.RefSession, "chat", fast)
	if err != nil || st.Manifests != 2 {
		t.Fatalf("B→C: %+v %v", st, err)
	}
	for _, d := range []*apitest.Daemon{b, c} {
		if got := content(t, d.Repo, id2); !bytes.Equal(got, more) {
			t.Fatal("replicated content differs")
		}
		if got := content(t, d.Repo, id1); !bytes.Equal(got, base) {
			t.Fatal("replicated parent differs")
		}
		head, err := d.Repo.Index().Ref(index.RefSession, "chat")
		if err != nil || head != id2 {
			t.Fatalf("head %s %v", head, err)
		}
		fsckClean(t, d.Repo)
	}
	// A wrong token is refused and changes nothing.
	_, err = replicate.Push(ctx, a.Repo.Index(), client(t, c.URL, nil, "tb"), index.RefSession, "chat", fast)
	if !errors.Is(err, replicate.ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestIncrementalPushSendsOnlyNewChunks(t *testing.T) {
	ctx := context.Background()
	local := openLocal(t)
	b := apitest.Start(t, t.TempDir(), httpapi.Config{})
	base := kvLike(4, 4<<20)
	id1 := putSession(t, local, "s", index.ID{}, base)
	if _, err := replicate.Push(ctx, local.Index(), client(t, b.URL, nil, ""), index.RefSession, "s", fast); err != nil {
		t.Fatal(err)
	}
	// One more "turn": 256 KiB appended.
	more := append(bytes.Clone(base), kvLike(5, 256<<10)...)
	res, err := local.PutReader(ctx, "kv", bytes.NewReader(more), repo.PutOptions{Parent: id1, Kind: "checkpoint", Hint: cas.HintFloat16,
		Chunker: repo.ChunkerSpec{Method: repo.ChunkFixed, Size: 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := local.Index().CompareAndSwapRef(ctx, index.RefSession, "s", id1, res.ID); err != nil {
		t.Fatal(err)
	}
	wc := newCounter()
	st, err := replicate.Push(ctx, local.Index(), client(t, b.URL, wc, ""), index.RefSession, "s", fast)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksSent != res.UniqueNew || st.Bytes != res.NewBytes {
		t.Fatalf("sent %d chunks / %d bytes, the put stored %d new chunks / %d bytes", st.ChunksSent, st.Bytes, res.UniqueNew, res.NewBytes)
	}
	up := wc.up.Load()
	// Request bodies: the new chunks' stored bytes, plus framing, the missing-set question
	// (64 chunks named) and the manifest.
	mb, _ := local.Index().ManifestBytes(res.ID)
	overhead := up - res.NewBytes
	t.Logf("incremental push: %d new stored bytes, %d request body bytes (overhead %d, manifest %d), %d requests",
		res.NewBytes, up, overhead, len(mb), wc.requests.Load())
	if float64(up) > 1.05*float64(res.NewBytes)+float64(len(mb))+8192 {
		t.Fatalf("incremental push sent %d body bytes for %d new stored bytes", up, res.NewBytes)
	}
	if got := content(t, b.Repo, res.ID); !bytes.Equal(got, more) {
		t.Fatal("content differs")
	}
}

func TestInterruptedPushResumes(t *testing.T) {
	ctx := context.Background()
	local := openLocal(t)
	data := kvLike(6, 4<<20)
	id := putSession(t, local, "s", index.ID{}, data)
	dir := t.TempDir()
	b := apitest.Start(t, dir, httpapi.Config{})

	// Kill daemon B once about half of the upload bytes have gone out.
	wc := newCounter()
	var once sync.Once
	killed := make(chan struct{})
	var sent atomic.Int64
	wc.onUpload = func(body io.ReadCloser) io.ReadCloser {
		return &hookReader{r: body, fn: func(n int) {
			if sent.Add(int64(n)) > 2<<20 {
				once.Do(func() { go func() { b.Stop(); close(killed) }() })
			}
		}}
	}
	opts := fast
	opts.Concurrency = 1
	opts.BatchBytes = 512 << 10
	opts.Retries = 1
	_, err := replicate.Push(ctx, local.Index(), client(t, b.URL, wc, ""), index.RefSession, "s", opts)
	if err == nil {
		t.Fatal("push to a daemon killed midway succeeded")
	}
	<-killed
	b.Restart()
	arrived := 64 - mustMissing(t, b, local, id)
	if arrived == 0 || arrived == 64 {
		t.Fatalf("%d of 64 chunks arrived before the kill; the test needs a partial transfer", arrived)
	}
	if _, err := b.Repo.Index().Ref(index.RefSession, "s"); !errors.Is(err, index.ErrRefNotFound) {
		t.Fatalf("the ref moved although the push failed: %v", err)
	}
	fsckClean(t, b.Repo)

	wc2 := newCounter()
	st, err := replicate.Push(ctx, local.Index(), client(t, b.URL, wc2, ""), index.RefSession, "s", fast)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChunksSent != 64-arrived {
		t.Fatalf("re-push sent %d chunks; %d had arrived, so %d were missing", st.ChunksSent, arrived, 64-arrived)
	}
	t.Logf("first push delivered %d of 64 chunks; the re-push sent %d (%d body bytes)", arrived, st.ChunksSent, wc2.up.Load())
	if got := content(t, b.Repo, id); !bytes.Equal(got, data) {
		t.Fatal("content differs after the resumed push")
	}
	fsckClean(t, b.Repo)
}

func mustMissing(t *testing.T, d *apitest.Daemon, local *repo.Repo, id index.ID) int {
	t.Helper()
	m, err := local.Index().Manifest(id)
	if err != nil {
		t.Fatal(err)
	}
	miss, err := d.Repo.Index().MissingChunks(m.Digests())
	if err != nil {
		t.Fatal(err)
	}
	return len(miss)
}

type hookReader struct {
	r  io.ReadCloser
	fn func(int)
}

func (h *hookReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.fn(n)
	return n, err
}
func (h *hookReader) Close() error { return h.r.Close() }

// flipReader flips one bit of the byte at offset at.
type flipReader struct {
	r   io.ReadCloser
	at  int64
	pos int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.pos && f.at < f.pos+int64(n) {
		p[f.at-f.pos] ^= 0x10
	}
	f.pos += int64(n)
	return n, err
}
func (f *flipReader) Close() error { return f.r.Close() }

func TestFlippedByteInTransitIsRefused(t *testing.T) {
	ctx := context.Background()
	local := openLocal(t)
	data := kvLike(8, 64<<10) // one chunk
	id := putSession(t, local, "s", index.ID{}, data)
	b := apitest.Start(t, t.TempDir(), httpapi.Config{})
	for _, at := range []int64{10, 60, 1000, 30000} { // digest, frame header, payload
		wc := newCounter()
		wc.onUpload = func(body io.ReadCloser) io.ReadCloser { return &flipReader{r: body, at: at} }
		_, err := replicate.Push(ctx, local.Index(), client(t, b.URL, wc, ""), index.RefSession, "s", fast)
		if err == nil {
			t.Fatalf("flip at %d: push succeeded", at)
		}
		var e *replicate.Error
		if !errors.As(err, &e) || e.Status != 400 && e.Status != 413 {
			t.Fatalf("flip at %d: %v", at, err)
		}
		n := 0
		b.Repo.Store().Walk(ctx, func(cas.Info) error { n++; return nil })
		if n != 0 || mustMissing(t, b, local, id) != 1 {
			t.Fatalf("flip at %d: %d chunks committed", at, n)
		}
		if ok, _ := b.Repo.Index().HasManifest(id); ok {
			t.Fatalf("flip at %d: manifest committed", at)
		}
	}
	// Without the proxy the push goes through.
	if _, err := replicate.Push(ctx, local.Index(), client(t, b.URL, nil, ""), index.RefSession, "s", fast); err != nil {
		t.Fatal(err)
	}
	fsckClean(t, b.Repo)
}

func TestConcurrentPushesOneWins(t *testing.T) {
	ctx := context.Background()
	b := apitest.Start(t, t.TempDir(), httpapi.Config{})
	const n = 4
	var locals [n]*repo.Repo
	var heads [n]index.ID
	for i := range locals {
		locals[i] = openLocal(t)
		heads[i] = putSession(t, locals[i], "s", index.ID{}, kvLike(uint64(20+i), 512<<10))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range locals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = replicate.Push(ctx, locals[i].Index(), client(t, b.URL, nil, ""), index.RefSession, "s", fast)
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("pushes %d and %d both moved the ref", winner, i)
			}
			winner = i
		case errors.Is(err, index.ErrConflict), errors.Is(err, replicate.ErrDiverged):
		default:
			t.Fatalf("push %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no push won")
	}
	head, err := b.Repo.Index().Ref(index.RefSession, "s")
	if err != nil || head != heads[winner] {
		t.Fatalf("head %s, winner's %s (%v)", head, heads[winner], err)
	}
	fsckClean(t, b.Repo)
}

func TestDivergedRefIsNotOverwritten(t *testing.T) {
	ctx := context.Background()
	b := apitest.Start(t, t.TempDir(), httpapi.Config{})
	l1, l2 := openLocal(t), openLocal(t)
	putSession(t, l1, "s", index.ID{}, kvLike(30, 100<<10))
	h2 := putSession(t, l2, "s", index.ID{}, kvLike(31, 100<<10))
	if _, err := replicate.Push(ctx, l1.Index(), client(t, b.URL, nil, ""), index.RefSession, "s", fast); err != nil {
		t.Fatal(err)
	}
	wc := newCounter()
	if _, err := replicate.Push(ctx, l2.Index(), client(t, b.URL, wc, ""), index.RefSession, "s", fast); !errors.Is(err, replicate.ErrDiverged) {
		t.Fatalf("diverged push: %v", err)
	}
	if wc.up.Load() != 0 {
		t.Fatalf("a refused diverged push sent %d body bytes", wc.up.Load())
	}
	opts := fast
	opts.Force = true
	if _, err := replicate.Push(ctx, l2.Index(), client(t, b.URL, nil, ""), index.RefSession, "s", opts); err != nil {
		t.Fatal(err)
	}
	if head, _ := b.Repo.Index().Ref(index.RefSession, "s"); head != h2 {
		t.Fatal("forced push did not move the ref")
	}
}

// A peer that answers a chunk GET with more bytes than any chunk can have is cut off at the
// limit, not read into memory to the end.
func TestClientRefusesOversizedChunkBody(t *testing.T) {
	const over = cas.MaxChunkSize + cas.MaxChunkSize/4 // past the stored-form bound too
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(wire.HeaderCodec, "1")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // no Content-Length: the body is chunked
		buf := make([]byte, 1<<20)
		for sent := 0; sent < over; sent += len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	c, err := replicate.NewClient(srv.URL, replicate.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := cas.Sum([]byte("x"))
	if _, err := c.GetChunk(context.Background(), d, nil); !errors.Is(err, wire.ErrTooLarge) {
		t.Fatalf("GetChunk of an oversized body: %v", err)
	}
	if _, _, err := c.GetStored(context.Background(), d); !errors.Is(err, wire.ErrTooLarge) {
		t.Fatalf("GetStored of an oversized body: %v", err)
	}
}

// Client.GetFile writes the whole content under the final name, or leaves the directory as it
// was.
func TestClientGetFile(t *testing.T) {
	ctx := context.Background()
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	c, err := replicate.NewClient(d.URL, replicate.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "in.bin")
	data := kvLike(5, 300_000)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err := c.PutFiles(ctx, []string{src}, repo.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	out := filepath.Join(outDir, "out.bin")
	if n, err := c.GetFile(ctx, res.ID, out, repo.GetOptions{}); err != nil || n != int64(len(data)) {
		t.Fatalf("GetFile: %d bytes, %v", n, err)
	}
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetFile wrote other bytes: %v", err)
	}
	other := filepath.Join(outDir, "other.bin")
	if _, err := c.GetFile(ctx, cas.Sum([]byte("no such manifest")), other, repo.GetOptions{}); !errors.Is(err, index.ErrManifestNotFound) {
		t.Fatalf("GetFile of a missing manifest: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(outDir, "*")); len(left) != 1 {
		t.Fatalf("a failed GetFile left files: %v", left)
	}
}

// Upload returns only after its write function has: a writer still running could otherwise
// count chunks as sent after the caller has read the counts.
func TestUploadWaitsForTheWriter(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{MaxUploadSize: 64 << 10})
	// The standard transport writes the body through its WriteTo; one that only reads it
	// makes Upload feed a pipe instead. Both must wait for the writer.
	for name, hc := range map[string]*http.Client{"write-to": nil, "read": {Transport: readOnlyBody{http.DefaultTransport}}} {
		c, err := replicate.NewClient(d.URL, replicate.ClientOptions{HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		var returned atomic.Bool
		_, err = c.Upload(context.Background(), func(sw *wire.ChunkStreamWriter) error {
			defer returned.Store(true)
			for i := 0; ; i++ {
				data := kvLike(uint64(i), 16<<10)
				if _, err := sw.WriteChunk(wire.StoredChunk{Digest: cas.Sum(data), Codec: cas.CodecRaw, Size: int64(len(data)), Stored: data}); err != nil {
					time.Sleep(20 * time.Millisecond) // a writer slow to wind down
					return err
				}
			}
		})
		if err == nil {
			t.Fatalf("%s: an upload over the daemon's limit succeeded", name)
		}
		if !returned.Load() {
			t.Fatalf("%s: Upload returned while its writer was still running", name)
		}
	}
}

// readOnlyBody hides every capability of a request body but Read and Close.
type readOnlyBody struct{ base http.RoundTripper }

func (r readOnlyBody) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		req = req.Clone(req.Context())
		req.Body = struct{ io.ReadCloser }{req.Body}
	}
	return r.base.RoundTrip(req)
}

// pathLog records each request's method and path; with oldDaemon set it answers 404 (no API
// error body) for ref commits, as a daemon without that route does.
type pathLog struct {
	mu        sync.Mutex
	calls     []string
	oldDaemon bool
	base      http.RoundTripper
}

func (p *pathLog) RoundTrip(req *http.Request) (*http.Response, error) {
	p.mu.Lock()
	p.calls = append(p.calls, req.Method+" "+req.URL.Path)
	p.mu.Unlock()
	if p.oldDaemon && strings.HasSuffix(req.URL.Path, wire.PathCommitSuffix) {
		if req.Body != nil {
			req.Body.Close()
		}
		return &http.Response{StatusCode: http.StatusNotFound, Status: "404 Not Found", Request: req, Header: http.Header{},
			Body: io.NopCloser(strings.NewReader("404 page not found"))}, nil
	}
	return p.base.RoundTrip(req)
}

func (p *pathLog) count(prefix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// TestPushCommitsManifestsWithTheRef: a push of a three-checkpoint session sends its manifests
// and the head move in one ref commit; against a daemon without that route it falls back to a
// put per manifest and a compare-and-swap, with the same result.
func TestPushCommitsManifestsWithTheRef(t *testing.T) {
	ctx := context.Background()
	local := openLocal(t)
	var head index.ID
	data := kvLike(11, 1<<20)
	for turn := range 3 {
		data = append(data, kvLike(uint64(12+turn), 64<<10)...)
		head = putSession(t, local, "s", head, data)
	}
	for _, old := range []bool{false, true} {
		d := apitest.Start(t, t.TempDir(), httpapi.Config{})
		log := &pathLog{oldDaemon: old, base: http.DefaultTransport}
		st, err := replicate.Push(ctx, local.Index(), client(t, d.URL, log, ""), index.RefSession, "s", fast)
		if err != nil {
			t.Fatalf("old daemon %v: %v", old, err)
		}
		if st.Manifests != 3 || st.Head != head {
			t.Fatalf("old daemon %v: %+v", old, st)
		}
		commits, puts, moves := log.count("POST "+wire.PathRefs), log.count("PUT "+wire.PathManifests), log.count("PUT "+wire.PathRefs)
		if want := [3]int{1, 0, 0}; old {
			if want = [3]int{1, 3, 1}; [3]int{commits, puts, moves} != want {
				t.Fatalf("old daemon: %d commits, %d manifest puts, %d ref moves; want %v", commits, puts, moves, want)
			}
		} else if [3]int{commits, puts, moves} != want {
			t.Fatalf("%d commits, %d manifest puts, %d ref moves; want %v", commits, puts, moves, want)
		}
		if got, err := d.Repo.Index().Ref(index.RefSession, "s"); err != nil || got != head {
			t.Fatalf("old daemon %v: head %s, %v", old, got, err)
		}
		if got := content(t, d.Repo, head); !bytes.Equal(got, data) {
			t.Fatalf("old daemon %v: content differs", old)
		}
		fsckClean(t, d.Repo)
	}
}

// TestPushSpreadsOverStreams: a 16 MiB push goes as two 8 MiB upload streams (the transfer is
// cut into Concurrency batches of at least 8 MiB), a 1 MiB one as one.
func TestPushSpreadsOverStreams(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		size    int
		uploads int
	}{{16 << 20, 2}, {1 << 20, 1}} {
		local := openLocal(t)
		data := kvLike(uint64(20+c.size), c.size)
		head := putSession(t, local, "s", index.ID{}, data)
		d := apitest.Start(t, t.TempDir(), httpapi.Config{})
		log := &pathLog{base: http.DefaultTransport}
		if _, err := replicate.Push(ctx, local.Index(), client(t, d.URL, log, ""), index.RefSession, "s", fast); err != nil {
			t.Fatal(err)
		}
		if got := log.count("POST " + wire.PathUpload); got != c.uploads {
			t.Fatalf("%d MiB push: %d upload streams, want %d", c.size>>20, got, c.uploads)
		}
		if got := content(t, d.Repo, head); !bytes.Equal(got, data) {
			t.Fatal("content differs")
		}
	}
}
