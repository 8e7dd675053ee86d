package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/session"
)

// liveDaemon is a daemon with live sessions: a data directory, a session manager on the shared
// test engine, and the server on a random port of 127.0.0.1.
type liveDaemon struct {
	dir    string
	url    string
	repo   *repo.Repo
	mgr    *session.Manager
	srv    *httpapi.Server
	client *replicate.Client
	done   chan error
}

// smallModel is the small synthetic model, written once into the shared test cache directory
// (same seed, same bytes: a file another test run wrote is as good).
func smallModel(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(cptest.CacheDir(), "models")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := cptest.SmallModel(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startLive(t testing.TB, token string, adjust ...func(*session.Config)) *liveDaemon {
	t.Helper()
	dir := t.TempDir()
	r, err := repo.Open(dir, repo.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	e, err := cptest.Engine()
	if err != nil {
		t.Fatal(err)
	}
	cfg := session.Config{Index: r.Index(), Engine: e, DataDir: dir}
	for _, f := range adjust {
		f(&cfg)
	}
	mgr, err := session.NewManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := httpapi.New(httpapi.Config{Repo: r, Sessions: mgr, Model: smallModel(t), Token: token, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &liveDaemon{dir: dir, url: "http://" + ln.Addr().String(), repo: r, mgr: mgr, srv: srv, done: make(chan error, 1)}
	go func() { d.done <- srv.Serve(ln) }()
	d.client, err = replicate.NewClient(d.url, replicate.ClientOptions{Token: token, Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

func (d *liveDaemon) stop(t testing.TB) {
	if d.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	<-d.done
	d.mgr.Close()
	d.repo.Close()
	d.srv = nil
}

func f32(v float32) *float32 { return &v }
func u64(v uint64) *uint64   { return &v }
func intp(v int) *int        { return &v }

// sampled are sampler settings that make the RNG matter.
var sampled = &wire.Sampler{Temp: f32(0.9), TopK: intp(40), TopP: f32(0.95), Seed: u64(7)}

func gen(t testing.TB, d *liveDaemon, name string, req wire.Generate) *wire.TurnSummary {
	t.Helper()
	var streamed []int32
	sum, err := d.client.Generate(context.Background(), name, req, func(ev wire.TokenEvent) error {
		if ev.Index != len(streamed) {
			return fmt.Errorf("token event %d arrived as number %d", ev.Index, len(streamed))
		}
		streamed = append(streamed, ev.ID)
		return nil
	})
	if err != nil {
		t.Fatalf("generate %s on %s: %v", name, d.url, err)
	}
	if !slices.Equal(streamed, sum.Tokens) || len(sum.Tokens) != req.N {
		t.Fatalf("streamed %v, summary %v, asked for %d", streamed, sum.Tokens, req.N)
	}
	return sum
}

// TestLiveSessionResumesAcrossDaemons: a session created and run over HTTP on A, pushed to B,
// continues on B token for token as it continues on A; and A → B → C the same.
func TestLiveSessionResumesAcrossDaemons(t *testing.T) {
	ctx := context.Background()
	a, b, c := startLive(t, ""), startLive(t, ""), startLive(t, "")
	info, err := a.client.CreateSession(ctx, wire.CreateSession{Name: "s", Sampler: sampled, Prompt: cptest.Tokens(40, 512, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if info.Head == "" || info.Position != 40 || !info.Live {
		t.Fatalf("created: %+v", info)
	}
	first := gen(t, a, "s", wire.Generate{N: 12, Prompt: cptest.Tokens(5, 512, 2)})
	if first.New || first.Checkpoint == nil || first.Checkpoint.Parent != info.Head || first.Position != 57 || first.Restored != nil {
		t.Fatalf("turn on a live session: %+v", first)
	}
	cp, err := a.client.CheckpointSession(ctx, "s")
	if err != nil || cp.Checkpoint != first.Checkpoint.Checkpoint || cp.BlocksWritten != 0 {
		t.Fatalf("checkpoint of an unchanged session: %+v %v", cp, err)
	}
	st, err := replicate.Copy(ctx, a.client, b.client, index.RefSession, "s", replicate.Options{})
	if err != nil || st.Head.String() != first.Checkpoint.Checkpoint {
		t.Fatalf("push A→B: %+v %v", st, err)
	}
	if _, err := replicate.Copy(ctx, b.client, c.client, index.RefSession, "s", replicate.Options{}); err != nil {
		t.Fatalf("replicate B→C: %v", err)
	}
	// B restores explicitly, C on its first turn.
	r, err := b.client.RestoreSession(ctx, "s", "")
	if err != nil || r.Position != 57 || r.HeadMoved || r.Checkpoint != first.Checkpoint.Checkpoint {
		t.Fatalf("restore on B: %+v %v", r, err)
	}
	next := wire.Generate{N: 10, Prompt: cptest.Tokens(3, 512, 3)}
	onA := gen(t, a, "s", next)
	onB := gen(t, b, "s", next)
	onC := gen(t, c, "s", next)
	if onC.Restored == nil || onC.Restored.Position != 57 {
		t.Fatalf("C's first turn did not restore: %+v", onC.Restored)
	}
	if !slices.Equal(onA.Tokens, onB.Tokens) || !slices.Equal(onA.Tokens, onC.Tokens) {
		t.Fatalf("continued on A %v, on B %v, on C %v", onA.Tokens, onB.Tokens, onC.Tokens)
	}
	// The three checkpoints are the same manifest: same parent, same state.
	if onA.Checkpoint.Checkpoint != onB.Checkpoint.Checkpoint || onA.Checkpoint.Checkpoint != onC.Checkpoint.Checkpoint {
		t.Fatalf("checkpoints differ: %s %s %s", onA.Checkpoint.Checkpoint, onB.Checkpoint.Checkpoint, onC.Checkpoint.Checkpoint)
	}
	// Metrics saw the checkpoints, the restores and the tokens.
	m := metricsText(t, b.url, "")
	for _, want := range []string{"driftstore_restore_duration_seconds_count 1", "driftstore_checkpoint_duration_seconds_count 1", "driftstore_tokens_generated_total 10"} {
		if !strings.Contains(m, want) {
			t.Errorf("B's metrics lack %q", want)
		}
	}
}

func metricsText(t testing.TB, url, token string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestLiveSessionLifecycle: pending create, first generate, get, list, restore to an older
// checkpoint, suspend; serialized concurrent turns.
func TestLiveSessionLifecycle(t *testing.T) {
	ctx := context.Background()
	d := startLive(t, "")
	info, err := d.client.CreateSession(ctx, wire.CreateSession{Name: "p", Model: wire.ModelDefault, Sampler: sampled, KV: "f32", BlockSize: 8})
	if err != nil || !info.Pending || info.Head != "" {
		t.Fatalf("pending create: %+v %v", info, err)
	}
	if _, err := d.client.CreateSession(ctx, wire.CreateSession{Name: "p"}); !hasCode(err, wire.CodeSessionExists) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := d.client.Generate(ctx, "p", wire.Generate{N: 3}, nil); !hasCode(err, wire.CodeBadRequest) {
		t.Fatalf("first turn without a prompt: %v", err)
	}
	t1 := gen(t, d, "p", wire.Generate{N: 6, Prompt: cptest.Tokens(20, 512, 4)})
	if !t1.New || t1.Position != 26 || t1.PromptTokens != 20 {
		t.Fatalf("first turn: %+v", t1)
	}
	got, err := d.client.Session(ctx, "p")
	if err != nil || got.Pending || got.KV != "f32" || got.Block != 8 || got.Sampler == nil || got.Sampler.Seed != 7 || got.Head != t1.Checkpoint.Checkpoint {
		t.Fatalf("get: %+v %v", got, err)
	}

	// Two turns at once on one session run one after the other.
	var wg sync.WaitGroup
	res := make([]*wire.TurnSummary, 2)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], _ = d.client.Generate(ctx, "p", wire.Generate{N: 5}, nil)
		}()
	}
	wg.Wait()
	if res[0] == nil || res[1] == nil {
		t.Fatal("a concurrent turn failed")
	}
	lo, hi := res[0], res[1]
	if lo.Position > hi.Position {
		lo, hi = hi, lo
	}
	if lo.Position != 31 || hi.Position != 36 || hi.Checkpoint.Parent != lo.Checkpoint.Checkpoint {
		t.Fatalf("concurrent turns not serialized: %+v / %+v", lo.Checkpoint, hi.Checkpoint)
	}

	// Back to the first turn's checkpoint: the head moves there, and the same turn again gives
	// the same tokens as the first of the two turns that followed it.
	r, err := d.client.RestoreSession(ctx, "p", t1.Checkpoint.Checkpoint[:20])
	if err != nil || !r.HeadMoved || r.Position != 26 {
		t.Fatalf("restore to an older checkpoint: %+v %v", r, err)
	}
	again := gen(t, d, "p", wire.Generate{N: 5})
	if !slices.Equal(again.Tokens, lo.Tokens) {
		t.Fatalf("after restoring: %v, first time %v", again.Tokens, lo.Tokens)
	}
	list, err := d.client.Sessions(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "p" || !list[0].Live {
		t.Fatalf("list: %+v %v", list, err)
	}
	sus, err := d.client.SuspendSession(ctx, "p")
	if err != nil || sus.Live || sus.Head != again.Checkpoint.Checkpoint {
		t.Fatalf("suspend: %+v %v", sus, err)
	}
	// Suspended, the next turn restores.
	t4 := gen(t, d, "p", wire.Generate{N: 2})
	if t4.Restored == nil || t4.Restored.Position != 31 {
		t.Fatalf("turn after suspend: %+v", t4.Restored)
	}
	// A fork over HTTP starts at the named checkpoint.
	fk, err := d.client.CreateSession(ctx, wire.CreateSession{Name: "f", From: "p"})
	if err != nil || fk.Head != t4.Checkpoint.Checkpoint {
		t.Fatalf("fork: %+v %v", fk, err)
	}
}

func hasCode(err error, code string) bool {
	var e *replicate.Error
	return errors.As(err, &e) && e.Code == code
}

// TestGenerateDisconnect: a client that goes away mid-stream stops the turn; the session is back
// at its last checkpoint, and the same turn again gives the tokens the cut-off one began with.
func TestGenerateDisconnect(t *testing.T) {
	ctx := context.Background()
	d := startLive(t, "")
	if _, err := d.client.CreateSession(ctx, wire.CreateSession{Name: "s", Sampler: sampled, Prompt: cptest.Tokens(30, 512, 5)}); err != nil {
		t.Fatal(err)
	}
	before, _ := d.client.Session(ctx, "s")
	cctx, cancel := context.WithCancel(ctx)
	var seen []int32
	stop := errors.New("enough")
	_, err := d.client.Generate(cctx, "s", wire.Generate{N: 4000}, func(ev wire.TokenEvent) error {
		seen = append(seen, ev.ID)
		if len(seen) == 4 {
			cancel()
			return stop
		}
		return nil
	})
	cancel()
	if !errors.Is(err, stop) {
		t.Fatalf("generate: %v", err)
	}
	// The next request on the session waits for the cut-off turn to end and roll back.
	after, err := d.client.CheckpointSession(ctx, "s")
	if err != nil || after.Checkpoint != before.Head || after.Position != 30 {
		t.Fatalf("after the disconnect: %+v %v (head was %s)", after, err, before.Head)
	}
	if m := metricsText(t, d.url, ""); !strings.Contains(m, "driftstore_turns_rolled_back_total 1") {
		t.Fatalf("no rollback counted")
	}
	again := gen(t, d, "s", wire.Generate{N: 4})
	if !slices.Equal(again.Tokens, seen) {
		t.Fatalf("after the rollback: %v, the cut-off turn began %v", again.Tokens, seen)
	}
}

// TestSessionBadRequests: validation answers 400 with stable codes, and nothing is written.
func TestSessionBadRequests(t *testing.T) {
	ctx := context.Background()
	d := startLive(t, "tok")
	if _, err := d.client.CreateSession(ctx, wire.CreateSession{Name: "ok", Prompt: []int32{1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	post := func(path, body, token string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, d.url+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb wire.ErrorBody
		raw, _ := io.ReadAll(resp.Body)
		json.Unmarshal(raw, &eb)
		return resp.StatusCode, eb.Error.Code
	}
	big := `{"n":1,"prompt":[` + strings.Repeat("1,", wire.MaxPromptTokens) + `1]}`
	cases := []struct {
		path, body string
		status     int
		code       string
	}{
		{"/v1/sessions", `{"name":".hidden","prompt":[1]}`, 400, wire.CodeBadName},
		{"/v1/sessions", `{"name":"a/../b","prompt":[1]}`, 400, wire.CodeBadName},
		{"/v1/sessions", `{"name":"x","model":"/etc/passwd","prompt":[1]}`, 400, wire.CodeBadModel},
		{"/v1/sessions", `{"name":"x","prompt":[512]}`, 400, wire.CodeBadToken},
		{"/v1/sessions", `{"name":"x","prompt":[-1]}`, 400, wire.CodeBadToken},
		{"/v1/sessions", `{"name":"x","prompt":[1],"kv":"f8"}`, 400, wire.CodeBadRequest},
		{"/v1/sessions", `{"name":"x","prompt":[1],"sampler":{"top_p":2}}`, 400, wire.CodeBadRequest},
		{"/v1/sessions", `{"name":"x","prompt":[1],"bogus":1}`, 400, wire.CodeBadRequest},
		{"/v1/sessions", `{"name":"ok","prompt":[1]}`, 409, wire.CodeSessionExists},
		{"/v1/sessions", `{"name":"y","from":"no-such-checkpoint"}`, 404, wire.CodeUnknownName},
		{"/v1/sessions/ok/generate", `{"n":4097}`, 400, wire.CodeTokenLimit},
		{"/v1/sessions/ok/generate", `{"n":-1}`, 400, wire.CodeBadRequest},
		{"/v1/sessions/ok/generate", `{"n":1,"prompt":[1],"text":"a"}`, 400, wire.CodeBadRequest},
		{"/v1/sessions/ok/generate", `{"n":1,"prompt":[600]}`, 400, wire.CodeBadToken},
		{"/v1/sessions/ok/generate", big, 400, wire.CodeTokenLimit},
		{"/v1/sessions/ok/generate", `{"n":4095,"prompt":[1]}`, 400, wire.CodeTokenLimit}, // 3 + 1 + 4095 > 4096
		{"/v1/sessions/ok/generate", `{"n":1,"kv":"f32"}`, 400, wire.CodeBadRequest},
		{"/v1/sessions/ok/generate", `{"n":1,"model":"other.gguf"}`, 400, wire.CodeBadModel},
		{"/v1/sessions/new/generate", `{"n":1}`, 400, wire.CodeBadRequest},
		{"/v1/sessions/..%2F..%2Fetc/generate", `{"n":1,"prompt":[1]}`, 400, wire.CodeBadName},
		{"/v1/sessions/none/checkpoint", ``, 404, wire.CodeSessionNotFound},
		{"/v1/sessions/none/restore", `{}`, 404, wire.CodeSessionNotFound},
		{"/v1/sessions/ok/restore", `{"checkpoint":"blake3:00"}`, 404, wire.CodeUnknownName},
	}
	for _, tc := range cases {
		status, code := post(tc.path, tc.body, "tok")
		if status != tc.status || code != tc.code {
			b := tc.body
			if len(b) > 80 {
				b = b[:80] + "…"
			}
			t.Errorf("POST %s %s: %d %s, want %d %s", tc.path, b, status, code, tc.status, tc.code)
		}
	}
	// No token, or the wrong one: 401, and nothing is created.
	for _, tok := range []string{"", "wrong"} {
		if status, code := post("/v1/sessions", `{"name":"z","prompt":[1,2]}`, tok); status != 401 || code != wire.CodeUnauthorized {
			t.Errorf("create with token %q: %d %s", tok, status, code)
		}
		if status, _ := post("/v1/sessions/ok/generate", `{"n":2}`, tok); status != 401 {
			t.Errorf("generate with token %q: %d", tok, status)
		}
	}
	if _, err := d.repo.Index().Ref(index.RefSession, "z"); !errors.Is(err, index.ErrRefNotFound) {
		t.Fatalf("an unauthorized create left a ref: %v", err)
	}
	list, err := d.client.Sessions(ctx)
	if err != nil || len(list) != 1 || list[0].Position != 3 {
		t.Fatalf("after the refusals: %+v %v", list, err)
	}
	// A daemon without live sessions says so.
	plain := startPlain(t)
	req, _ := http.NewRequest(http.MethodGet, plain+"/v1/sessions", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotImplemented || !bytes.Contains(raw, []byte(wire.CodeSessionsDisabled)) {
		t.Fatalf("sessions on a daemon without them: %d %s", resp.StatusCode, raw)
	}
}

func startPlain(t testing.TB) string {
	dir := t.TempDir()
	r, err := repo.Open(dir, repo.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := httpapi.New(httpapi.Config{Repo: r, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() { srv.Shutdown(context.Background()); <-done; r.Close() })
	return "http://" + ln.Addr().String()
}

// TestGenerateDeferredCheckpoint: with deferred checkpoints the done event says the turn's
// checkpoint is pending (no ID yet, the snapshot's time); the session's next request sees it
// committed as its head, and the next turn's checkpoint follows it.
func TestGenerateDeferredCheckpoint(t *testing.T) {
	ctx := context.Background()
	d := startLive(t, "", func(c *session.Config) { c.DeferCheckpoints = true })
	t1 := gen(t, d, "d", wire.Generate{N: 4, Prompt: cptest.Tokens(20, 512, 8), Sampler: sampled})
	cp := t1.Checkpoint
	if cp == nil || !cp.Pending || cp.Checkpoint != "" || cp.Position != 24 || cp.Parent == "" || cp.SnapshotMS <= 0 || cp.BlocksWritten == 0 {
		t.Fatalf("first turn's checkpoint: %+v", cp)
	}
	got, err := d.client.Session(ctx, "d")
	if err != nil || got.Head == "" || got.Head == cp.Parent || got.Position != 24 {
		t.Fatalf("session after a deferred turn: %+v %v", got, err)
	}
	t2 := gen(t, d, "d", wire.Generate{N: 3})
	if t2.Checkpoint == nil || !t2.Checkpoint.Pending || t2.Checkpoint.Parent != got.Head {
		t.Fatalf("second turn's checkpoint: %+v, head was %s", t2.Checkpoint, got.Head)
	}
	cr, err := d.client.CheckpointSession(ctx, "d")
	if err != nil || cr.BlocksWritten != 0 || cr.Position != 27 || cr.Parent != got.Head {
		t.Fatalf("explicit checkpoint after the pending one: %+v %v", cr, err)
	}
}
