// Package benchpush measures replication over loopback between two real daemons (httpapi
// servers over their own data directories on 127.0.0.1): a push and a pull of a checkpoint-shaped
// float16 session next to a plain HTTP copy of the same stored bytes, the bytes an incremental
// push puts on the wire, and the rate of the missing-set call. `driftstore bench push` prints its
// results; replicate's go-test benchmarks run the same code.
//
// Throughputs are MB/s (10^6 bytes per second) of the session's stored (compressed) bytes, the
// bytes every transfer actually moves. Each is the best of Config.Reps repetitions, because the
// machines are shared and noisy.
package benchpush

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/repo/benchstore"
)

// ChunkSize is the fixed chunk size of the benchmark session, as a checkpoint's KV pages.
const ChunkSize = 32 << 10

// SessionName is the session ref the benchmark pushes and pulls.
const SessionName = "bench"

// Goals from the project's numbers: push and pull reach at least PushGoal of a plain HTTP copy's
// rate, and an incremental push sends at most WireGoal times its new stored bytes plus a fixed
// overhead.
const (
	PushGoal = 0.8
	WireGoal = 1.05
)

// Config says what to measure. The zero value is completed by defaults.
type Config struct {
	Size int64  // uncompressed bytes of the session; default 32 MiB
	Reps int    // repetitions of each timed transfer; default 3
	Dir  string // where temporary data directories go; default os.TempDir()
	// NoSync makes the receiving data directories skip fsync. The zero value syncs chunk files,
	// directories and index commits as a real daemon does, and the baseline copy fsyncs its
	// file and directory.
	NoSync bool
	// AppendBytes is what the incremental push adds to the session; default 256 KiB.
	AppendBytes int64
	// MissingDigests is how many digests one missing-set request names (default and at most
	// wire.MaxMissingDigests); half of them, at most, are chunks the daemon has.
	MissingDigests int
	// MissingTime is how long missing-set requests are sent, per repetition; default 500ms.
	MissingTime time.Duration
	// Log, when set, receives one line per finished measurement.
	Log io.Writer
}

func (c *Config) setDefaults() {
	if c.Size <= 0 {
		c.Size = 32 << 20
	}
	if c.Reps <= 0 {
		c.Reps = 3
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.AppendBytes <= 0 {
		c.AppendBytes = 256 << 10
	}
	if c.MissingDigests <= 0 || c.MissingDigests > wire.MaxMissingDigests {
		c.MissingDigests = wire.MaxMissingDigests
	}
	if c.MissingTime <= 0 {
		c.MissingTime = 500 * time.Millisecond
	}
}

// Rate is one timed transfer, best of the repetitions.
type Rate struct {
	Bytes   int64   `json:"bytes"`   // stored bytes moved
	Seconds float64 `json:"seconds"` // of the best repetition
	MBps    float64 `json:"mb_per_s"`
	// Baseline is MBps over the plain HTTP copy's (zero for the baseline itself).
	Baseline float64 `json:"vs_baseline,omitempty"`
	// CPUSeconds is the least CPU time (user and system, both ends: they share this process)
	// one repetition took, a fresh receiver's setup and removal included; 0 where unknown. On
	// a busy machine it varies less than the wall time, so it shows the direction of a change.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// Incremental is one push of a session after a turn appended to it.
type Incremental struct {
	AppendedBytes int64   `json:"appended_bytes"` // uncompressed bytes added
	NewChunks     int     `json:"new_chunks"`
	NewBytes      int64   `json:"new_bytes"`      // stored bytes of the chunks the receiver lacked
	WireBytes     int64   `json:"wire_bytes"`     // request bodies sent, all requests
	UploadBytes   int64   `json:"upload_bytes"`   // of them, the chunk upload streams' bodies
	MissingBytes  int64   `json:"missing_bytes"`  // of them, the missing-set requests' bodies
	ManifestBytes int64   `json:"manifest_bytes"` // of the new manifest, part of WireBytes
	Overhead      int64   `json:"overhead_bytes"` // WireBytes − NewBytes
	Requests      int     `json:"requests"`
	WireOverNew   float64 `json:"wire_over_new"` // WireBytes ÷ NewBytes
	// WireOverNewNet is (WireBytes − ManifestBytes) ÷ NewBytes: the cost once the manifest,
	// an overhead of the push that does not depend on what is new, is left out.
	WireOverNewNet float64 `json:"wire_over_new_net"`
	// UploadOverNew is UploadBytes ÷ NewBytes: the chunk stream's framing alone.
	UploadOverNew float64 `json:"upload_over_new"`
}

// Missing is the missing-set call's rate.
type Missing struct {
	Digests  int     `json:"digests"` // per request
	Known    int     `json:"known"`   // of them, chunks the daemon has
	Requests int     `json:"requests"`
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"requests_per_s"` // best repetition
}

// Result is everything one Run measured.
type Result struct {
	GoMaxProcs  int         `json:"gomaxprocs"`
	CPUs        int         `json:"cpus"`
	Sync        bool        `json:"sync"` // receivers sync as a real daemon does
	Reps        int         `json:"reps"`
	Size        int64       `json:"size"`         // uncompressed bytes of the session
	StoredBytes int64       `json:"stored_bytes"` // its chunks' stored bytes
	Chunks      int         `json:"chunks"`
	ChunkSize   int         `json:"chunk_size"`
	PlainHTTP   Rate        `json:"plain_http"`
	Push        Rate        `json:"push"`
	Pull        Rate        `json:"pull"`
	Incremental Incremental `json:"incremental"`
	Missing     Missing     `json:"missing"`
	PushGoal    float64     `json:"push_goal"`
	WireGoal    float64     `json:"wire_goal"`
}

// Run sets up an Env, measures everything and removes what it created.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.setDefaults()
	env, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	res, err := env.measure(ctx)
	if cerr := env.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return res, err
}

func (e *Env) measure(ctx context.Context) (*Result, error) {
	res := &Result{GoMaxProcs: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(), Sync: !e.cfg.NoSync, Reps: e.cfg.Reps,
		Size: e.cfg.Size, StoredBytes: e.Stored, Chunks: e.Chunks, ChunkSize: ChunkSize, PushGoal: PushGoal, WireGoal: WireGoal}
	// The three transfers take turns, round by round (plain, push, pull, plain, ...), so that
	// the machine's drift (it is shared and noisy) falls on all three alike; each reports its
	// best round.
	kinds := []struct {
		name string
		f    func(context.Context) (time.Duration, error)
		r    *Rate
	}{{"plain-http", e.PlainCopy, &res.PlainHTTP}, {"push", e.PushOnce, &res.Push}, {"pull", e.PullOnce, &res.Pull}}
	best := make([]struct{ d, cpu time.Duration }, len(kinds))
	for i := range e.cfg.Reps {
		for k, kd := range kinds {
			cpu0 := processCPU()
			d, err := kd.f(ctx)
			cpu := processCPU() - cpu0
			if err != nil {
				return nil, fmt.Errorf("%s: %w", kd.name, err)
			}
			if i == 0 || d < best[k].d {
				best[k].d = d
			}
			if i == 0 || cpu < best[k].cpu {
				best[k].cpu = cpu
			}
		}
	}
	for k, kd := range kinds {
		d := best[k].d
		*kd.r = Rate{Bytes: e.Stored, Seconds: d.Seconds(), MBps: float64(e.Stored) / 1e6 / d.Seconds(), CPUSeconds: best[k].cpu.Seconds()}
		e.logf("%-10s %8.1f MB/s (best of %d), %.0f ms CPU", kd.name, kd.r.MBps, e.cfg.Reps, 1000*kd.r.CPUSeconds)
	}
	res.Push.Baseline = res.Push.MBps / res.PlainHTTP.MBps
	res.Pull.Baseline = res.Pull.MBps / res.PlainHTTP.MBps
	var err error
	if res.Incremental, err = e.IncrementalPush(ctx); err != nil {
		return nil, err
	}
	e.logf("incremental %d B on the wire for %d new stored B", res.Incremental.WireBytes, res.Incremental.NewBytes)
	for i := range e.cfg.Reps {
		m, err := e.MissingRate(ctx, e.cfg.MissingTime)
		if err != nil {
			return nil, err
		}
		if i == 0 || m.PerSec > res.Missing.PerSec {
			res.Missing = m
		}
	}
	e.logf("missing    %8.0f requests/s of %d digests", res.Missing.PerSec, res.Missing.Digests)
	return res, nil
}

// Env is a sending daemon holding the benchmark session, and a temporary directory for the
// receivers. Its methods are not safe for concurrent use. Close it when done.
type Env struct {
	cfg    Config
	root   string
	sender *Daemon
	head   index.ID
	data   []byte // the session's content

	Stored int64 // stored bytes of the session's chunks
	Chunks int   // distinct chunks of the session
	// Payload is the session's chunks in stored form, one after another: what the plain copy
	// sends.
	Payload []byte
	n       int // receivers made so far, for directory names
}

// Start makes a temporary directory under cfg.Dir, starts the sending daemon (NoSync: it is
// only read during the measurements) and stores the session in it.
func Start(ctx context.Context, cfg Config) (*Env, error) {
	cfg.setDefaults()
	root, err := os.MkdirTemp(cfg.Dir, "driftstore-bench-push-")
	if err != nil {
		return nil, fmt.Errorf("bench push: %w", err)
	}
	e := &Env{cfg: cfg, root: root}
	if e.sender, err = StartDaemon(filepath.Join(root, "sender"), true); err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	e.data = KVLike(99, int(cfg.Size))
	if e.head, err = PutSession(ctx, e.sender.Repo, index.ID{}, e.data); err != nil {
		e.Close()
		return nil, err
	}
	m, err := e.sender.Repo.Index().Manifest(e.head)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("bench push: %w", err)
	}
	store := e.sender.Repo.Index().Store()
	ds := m.Digests()
	e.Chunks = len(ds)
	for _, d := range ds {
		_, stored, err := cas.ReadStored(ctx, store, d, cas.HintNone)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("bench push: read chunk %v: %w", d, err)
		}
		e.Payload = append(e.Payload, stored...)
	}
	e.Stored = int64(len(e.Payload))
	return e, nil
}

// Close stops the sending daemon and removes every directory the Env made.
func (e *Env) Close() error {
	var err error
	if e.sender != nil {
		err = e.sender.Stop()
		e.sender = nil
	}
	if rerr := os.RemoveAll(e.root); err == nil && rerr != nil {
		err = fmt.Errorf("bench push: remove %s: %w", e.root, rerr)
	}
	return err
}

func (e *Env) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, format+"\n", args...)
	}
}

func (e *Env) newDir() string {
	e.n++
	return filepath.Join(e.root, fmt.Sprintf("recv-%d", e.n))
}

// SetNoSync changes Config.NoSync for the measurements that follow.
func (e *Env) SetNoSync(noSync bool) { e.cfg.NoSync = noSync }

// Head is the session's manifest on the sender.
func (e *Env) Head() index.ID { return e.head }

// Sender is the sending daemon, which holds the session. It stays the Env's: do not stop it.
func (e *Env) Sender() *Daemon { return e.sender }

// KVLike returns n bytes shaped like a KV cache: float16 values as benchstore.KVFloat16 makes
// them (normally distributed, per-channel scales), which compress as a model's KV blocks do
// (≈ 1.16× with the float16 plane codec). The same seed gives the same bytes.
func KVLike(seed uint64, n int) []byte {
	b := make([]byte, n)
	benchstore.KVFloat16(b, seed)
	return b
}

// PutSession stores data in r as a checkpoint following parent (ChunkSize fixed chunks, the
// float16 hint) and moves session SessionName from parent to it.
func PutSession(ctx context.Context, r *repo.Repo, parent index.ID, data []byte) (index.ID, error) {
	res, err := r.PutReader(ctx, "kv", bytes.NewReader(data), repo.PutOptions{Parent: parent, Kind: "checkpoint", Hint: cas.HintFloat16,
		Chunker: repo.ChunkerSpec{Method: repo.ChunkFixed, Size: ChunkSize}})
	if err != nil {
		return index.ID{}, fmt.Errorf("bench push: store session: %w", err)
	}
	if err := r.Index().CompareAndSwapRef(ctx, index.RefSession, SessionName, parent, res.ID); err != nil {
		return index.ID{}, fmt.Errorf("bench push: move session: %w", err)
	}
	return res.ID, nil
}

// Daemon is a real daemon: a data directory served by httpapi on a random port of 127.0.0.1.
type Daemon struct {
	Repo   *repo.Repo
	URL    string
	server *httpapi.Server
	done   chan error
}

// StartDaemon opens (creating) the data directory dir and serves it. noSync skips fsync, which
// a real daemon never does.
func StartDaemon(dir string, noSync bool) (*Daemon, error) {
	r, err := repo.Open(dir, repo.Options{NoSync: noSync, LockTimeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bench push: open %s: %w", dir, err)
	}
	srv, err := httpapi.New(httpapi.Config{Repo: r, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("bench push: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("bench push: listen: %w", err)
	}
	d := &Daemon{Repo: r, URL: "http://" + ln.Addr().String(), server: srv, done: make(chan error, 1)}
	go func() { d.done <- srv.Serve(ln) }()
	return d, nil
}

// Stop closes the server and its connections, waits for the handlers, and closes the data
// directory.
func (d *Daemon) Stop() error {
	err := d.server.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if serr := <-d.done; err == nil && serr != nil {
		err = serr
	}
	if cerr := d.Repo.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bench push: stop daemon: %w", err)
	}
	return nil
}

// Client returns a replication client for the daemon; rt nil means replicate's own transport.
func (d *Daemon) Client(rt http.RoundTripper) (*replicate.Client, error) {
	var hc *http.Client
	if rt != nil {
		hc = &http.Client{Transport: rt}
	}
	return replicate.NewClient(d.URL, replicate.ClientOptions{HTTPClient: hc})
}

// PlainCopy POSTs Payload to a plain net/http handler on 127.0.0.1 that writes it to one new
// file, and returns the time of the request. Unless NoSync the handler makes the copy durable
// as a receiving daemon makes what it stores: it fsyncs the file, then its directory (so that
// the new name survives a crash too, as a new pack file's does), before it answers. It is the
// floor for moving these bytes: the same stored bytes (read from memory, where a push reads
// them from the sender's store), one connection, one request with a known length, nothing
// verified, framed or indexed.
func (e *Env) PlainCopy(ctx context.Context) (time.Duration, error) {
	path := filepath.Join(e.root, "plain-copy")
	defer os.Remove(path)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Create(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, err = io.Copy(f, r.Body)
		if err == nil && !e.cfg.NoSync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil && !e.cfg.NoSync {
			err = syncDir(e.root)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+ln.Addr().String()+"/copy", bytes.NewReader(e.Payload))
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	el := time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("plain copy: %s", resp.Status)
	}
	return el, nil
}

// syncDir makes the entries of directory dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// PushOnce starts a fresh receiving daemon, pushes the session to it and returns the time of
// the push alone. The receiver is stopped and its directory removed.
func (e *Env) PushOnce(ctx context.Context) (time.Duration, error) {
	dir := e.newDir()
	defer os.RemoveAll(dir)
	d, err := StartDaemon(dir, e.cfg.NoSync)
	if err != nil {
		return 0, err
	}
	el, err := e.push(ctx, d)
	if serr := d.Stop(); err == nil {
		err = serr
	}
	return el, err
}

func (e *Env) push(ctx context.Context, d *Daemon) (time.Duration, error) {
	c, err := d.Client(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	st, err := replicate.Push(ctx, e.sender.Repo.Index(), c, index.RefSession, SessionName, replicate.Options{})
	el := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("push: %w", err)
	}
	if st.Head != e.head || st.Bytes != e.Stored {
		return 0, fmt.Errorf("push sent %d stored bytes to head %v, want %d to %v", st.Bytes, st.Head, e.Stored, e.head)
	}
	return el, nil
}

// PullOnce pulls the session from the sending daemon into a fresh data directory (syncing
// unless NoSync) and returns the time of the pull alone. The directory is removed.
func (e *Env) PullOnce(ctx context.Context) (time.Duration, error) {
	dir := e.newDir()
	defer os.RemoveAll(dir)
	r, err := repo.Open(dir, repo.Options{NoSync: e.cfg.NoSync})
	if err != nil {
		return 0, fmt.Errorf("pull: %w", err)
	}
	defer r.Close()
	c, err := e.sender.Client(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	st, err := replicate.Pull(ctx, c, r.Index(), index.RefSession, SessionName, replicate.Options{})
	el := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("pull: %w", err)
	}
	if st.Head != e.head || st.Bytes != e.Stored {
		return 0, fmt.Errorf("pull got %d stored bytes of head %v, want %d of %v", st.Bytes, st.Head, e.Stored, e.head)
	}
	return el, r.Close()
}

// IncrementalPush pushes the session to a fresh receiver, appends AppendBytes to it on the
// sender (a new checkpoint following the head, which becomes the Env's head), pushes again
// through a transport that counts request bodies, and reports the second push.
func (e *Env) IncrementalPush(ctx context.Context) (Incremental, error) {
	dir := e.newDir()
	defer os.RemoveAll(dir)
	d, err := StartDaemon(dir, e.cfg.NoSync)
	if err != nil {
		return Incremental{}, err
	}
	inc, err := e.incremental(ctx, d)
	if serr := d.Stop(); err == nil {
		err = serr
	}
	return inc, err
}

func (e *Env) incremental(ctx context.Context, d *Daemon) (Incremental, error) {
	if _, err := e.push(ctx, d); err != nil {
		return Incremental{}, err
	}
	more := append(bytes.Clone(e.data), KVLike(uint64(100+e.n), int(e.cfg.AppendBytes))...)
	res, err := e.sender.Repo.PutReader(ctx, "kv", bytes.NewReader(more), repo.PutOptions{Parent: e.head, Kind: "checkpoint", Hint: cas.HintFloat16,
		Chunker: repo.ChunkerSpec{Method: repo.ChunkFixed, Size: ChunkSize}})
	if err != nil {
		return Incremental{}, fmt.Errorf("incremental: store: %w", err)
	}
	ix := e.sender.Repo.Index()
	if err := ix.CompareAndSwapRef(ctx, index.RefSession, SessionName, e.head, res.ID); err != nil {
		return Incremental{}, fmt.Errorf("incremental: move session: %w", err)
	}
	mb, err := ix.ManifestBytes(res.ID)
	if err != nil {
		return Incremental{}, fmt.Errorf("incremental: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	defer tr.CloseIdleConnections()
	wc := &wireCounter{base: tr}
	c, err := d.Client(wc)
	if err != nil {
		return Incremental{}, err
	}
	st, err := replicate.Push(ctx, ix, c, index.RefSession, SessionName, replicate.Options{})
	if err != nil {
		return Incremental{}, fmt.Errorf("incremental push: %w", err)
	}
	if st.Head != res.ID || st.Bytes != res.NewBytes {
		return Incremental{}, fmt.Errorf("incremental push sent %d stored bytes to %v, want %d to %v", st.Bytes, st.Head, res.NewBytes, res.ID)
	}
	e.head, e.data = res.ID, more
	e.Stored += res.NewBytes
	e.Chunks += res.UniqueNew
	// The payload of the plain copy stays as it was: the incremental push comes last in Run.
	inc := Incremental{AppendedBytes: e.cfg.AppendBytes, NewChunks: res.UniqueNew, NewBytes: res.NewBytes,
		WireBytes: wc.up.Load(), UploadBytes: wc.upload.Load(), MissingBytes: wc.missing.Load(), ManifestBytes: int64(len(mb)),
		Requests: int(wc.requests.Load())}
	inc.Overhead = inc.WireBytes - inc.NewBytes
	if inc.NewBytes > 0 {
		inc.WireOverNew = float64(inc.WireBytes) / float64(inc.NewBytes)
		inc.WireOverNewNet = float64(inc.WireBytes-inc.ManifestBytes) / float64(inc.NewBytes)
		inc.UploadOverNew = float64(inc.UploadBytes) / float64(inc.NewBytes)
	}
	return inc, nil
}

// wireCounter counts requests and request body bytes: all, and those of the upload and
// missing-set paths.
type wireCounter struct {
	base                http.RoundTripper
	requests            atomic.Int64
	up, upload, missing atomic.Int64
}

func (w *wireCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	w.requests.Add(1)
	if req.Body != nil && req.Body != http.NoBody {
		var also *atomic.Int64
		switch req.URL.Path {
		case wire.PathUpload:
			also = &w.upload
		case wire.PathMissing:
			also = &w.missing
		}
		req = req.Clone(req.Context())
		req.Body = &countReader{r: req.Body, n: &w.up, also: also}
	}
	return w.base.RoundTrip(req)
}

type countReader struct {
	r       io.ReadCloser
	n, also *atomic.Int64 // also may be nil
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if c.also != nil {
		c.also.Add(int64(n))
	}
	return n, err
}

func (c *countReader) Close() error { return c.r.Close() }

// MissingRate starts a receiver holding the session (pushed to it), then sends missing-set
// requests of MissingDigests digests, at most half of them chunks it has, for about dur, and
// checks every answer. The receiver is stopped and its directory removed.
func (e *Env) MissingRate(ctx context.Context, dur time.Duration) (Missing, error) {
	dir := e.newDir()
	defer os.RemoveAll(dir)
	d, err := StartDaemon(dir, e.cfg.NoSync)
	if err != nil {
		return Missing{}, err
	}
	m, err := e.missing(ctx, d, dur)
	if serr := d.Stop(); err == nil {
		err = serr
	}
	return m, err
}

func (e *Env) missing(ctx context.Context, d *Daemon, dur time.Duration) (Missing, error) {
	if _, err := e.push(ctx, d); err != nil {
		return Missing{}, err
	}
	man, err := e.sender.Repo.Index().Manifest(e.head)
	if err != nil {
		return Missing{}, fmt.Errorf("missing: %w", err)
	}
	n := e.cfg.MissingDigests
	known := man.Digests()
	if len(known) > n/2 {
		known = known[:n/2]
	}
	ds := append([]cas.Digest(nil), known...)
	for i := 0; len(ds) < n; i++ {
		ds = append(ds, cas.Sum(fmt.Appendf(nil, "absent chunk %d", i)))
	}
	c, err := d.Client(nil)
	if err != nil {
		return Missing{}, err
	}
	m := Missing{Digests: n, Known: len(known)}
	start := time.Now()
	for m.Requests < 3 || time.Since(start) < dur {
		miss, err := c.Missing(ctx, ds)
		if err != nil {
			return Missing{}, fmt.Errorf("missing: %w", err)
		}
		if len(miss) != n-len(known) {
			return Missing{}, fmt.Errorf("missing: %d digests missing, want %d", len(miss), n-len(known))
		}
		m.Requests++
	}
	m.Seconds = time.Since(start).Seconds()
	m.PerSec = float64(m.Requests) / m.Seconds
	return m, nil
}

// WriteTable prints res for people.
func (res *Result) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "push benchmark: GOMAXPROCS %d, %d CPUs, receiver fsync %v; loopback between two daemons; best of %d\n", res.GoMaxProcs, res.CPUs, res.Sync, res.Reps)
	fmt.Fprintf(w, "session: %.1f MiB float16 checkpoint, %d chunks of %d KiB, %.1f MiB stored; MB/s of stored bytes\n\n",
		float64(res.Size)/(1<<20), res.Chunks, res.ChunkSize>>10, float64(res.StoredBytes)/(1<<20))
	fmt.Fprintf(w, "%-12s %10s %10s %8s %12s %10s\n", "transfer", "MB/s", "seconds", "CPU ms", "vs baseline", "goal")
	fmt.Fprintf(w, "%-12s %10.1f %10.3f %8.0f %12s %10s\n", "plain-http", res.PlainHTTP.MBps, res.PlainHTTP.Seconds, 1000*res.PlainHTTP.CPUSeconds, "1.00", "")
	for _, r := range []struct {
		name string
		r    Rate
	}{{"push", res.Push}, {"pull", res.Pull}} {
		fmt.Fprintf(w, "%-12s %10.1f %10.3f %8.0f %12.2f %10s\n", r.name, r.r.MBps, r.r.Seconds, 1000*r.r.CPUSeconds, r.r.Baseline, mark(r.r.Baseline >= res.PushGoal, fmt.Sprintf("≥%.2f", res.PushGoal)))
	}
	in := res.Incremental
	fmt.Fprintf(w, "\nincremental push (%d KiB appended): %d new chunks, %d new stored B, %d B on the wire in %d requests\n",
		in.AppendedBytes>>10, in.NewChunks, in.NewBytes, in.WireBytes, in.Requests)
	fmt.Fprintf(w, "  wire/new %.3f; overhead %d B: manifest %d B, missing-set %d B, upload framing %d B, other %d B\n",
		in.WireOverNew, in.Overhead, in.ManifestBytes, in.MissingBytes, in.UploadBytes-in.NewBytes, in.WireBytes-in.UploadBytes-in.ManifestBytes-in.MissingBytes)
	fmt.Fprintf(w, "  without the manifest wire/new %.3f %s; upload stream alone %.3f\n",
		in.WireOverNewNet, mark(in.WireOverNewNet <= res.WireGoal, fmt.Sprintf("≤%.2f", res.WireGoal)), in.UploadOverNew)
	m := res.Missing
	fmt.Fprintf(w, "\nmissing-set: %.0f requests/s of %d digests (%d known), %d requests in %.2fs\n", m.PerSec, m.Digests, m.Known, m.Requests, m.Seconds)
}

func mark(ok bool, goal string) string {
	if ok {
		return goal + " ok"
	}
	return goal + " MISS"
}
