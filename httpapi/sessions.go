package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
	"github.com/driftstore/driftstore/session"
)

// Live sessions (see wire/sessions.go for the routes and bodies).
//
// A session lives in the daemon between requests: the first turn after the daemon starts (or
// after a suspend) restores its head, later turns continue the live instance. Requests on one
// session run one at a time, in arrival order of their turn at the session's lock (a waiting
// request whose client goes away stops waiting); different sessions run in parallel.
//
// A turn that fails or is cancelled midway (the client disconnected from its event stream)
// puts the session back at its last checkpoint: the live instance is replaced by a restore of
// the head, so the next turn never continues from tokens its client did not receive. A new
// session's prompt is checkpointed before its first token is generated, so even the first turn
// has a checkpoint to return to.

// Sentinels of the session routes.
var (
	errBadToken         = errors.New("token id outside the model's vocabulary")
	errTokenLimit       = errors.New("token limit")
	errBadModel         = errors.New("model not served by this daemon")
	errSessionsDisabled = errors.New("this daemon serves no live sessions (start it with a session manager)")
)

// live is the server's state for live sessions.
type live struct {
	mu      sync.Mutex
	mgr     *session.Manager // nil until the first session request (or Config.Sessions)
	locks   map[string]*nameLock
	pending map[string]wire.CreateSession // sessions created without a prompt, by name
	touched map[string]bool               // names that may have a live instance
}

// nameLock is a lock that a waiter can give up on.
type nameLock struct {
	ch   chan struct{}
	refs int
}

func newLive() *live {
	return &live{locks: map[string]*nameLock{}, pending: map[string]wire.CreateSession{}, touched: map[string]bool{}}
}

// lock takes name's lock, or gives up when ctx ends. The returned function releases it.
func (l *live) lock(ctx context.Context, name string) (func(), error) {
	l.mu.Lock()
	nl := l.locks[name]
	if nl == nil {
		nl = &nameLock{ch: make(chan struct{}, 1)}
		l.locks[name] = nl
	}
	nl.refs++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		nl.refs--
		if nl.refs == 0 {
			delete(l.locks, name)
		}
		l.mu.Unlock()
	}
	select {
	case nl.ch <- struct{}{}:
		return func() { <-nl.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

func (s *Server) registerSessionRoutes(e *echo.Echo) {
	e.GET(wire.PathSessions, s.listSessions)
	e.POST(wire.PathSessions, s.createSession)
	e.GET(wire.PathSessions+"/:name", s.getSession)
	e.DELETE(wire.PathSessions+"/:name", s.deleteSession)
	e.POST(wire.PathSessions+"/:name/generate", s.generate)
	e.POST(wire.PathSessions+"/:name/checkpoint", s.checkpointSession)
	e.POST(wire.PathSessions+"/:name/restore", s.restoreSession)
}

// sessionName validates a session name (ref name rules).
func sessionName(name string) error {
	if err := index.ValidRefName(name); err != nil {
		return fmt.Errorf("session name: %w", err)
	}
	return nil
}

// sessionsOn makes sure the session manager is there, opening it on first use with
// Config.OpenSessions (a failure is returned, and the next request tries again).
func (s *Server) sessionsOn() error {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	if s.live.mgr != nil {
		return nil
	}
	if s.cfg.Sessions != nil {
		s.live.mgr = s.cfg.Sessions
		return nil
	}
	if s.cfg.OpenSessions == nil {
		return errSessionsDisabled
	}
	m, err := s.cfg.OpenSessions()
	if err != nil {
		return fmt.Errorf("open live sessions: %w", err)
	}
	s.live.mgr = m
	return nil
}

// sessions returns the manager sessionsOn made available (nil before).
func (s *Server) sessions() *session.Manager {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	return s.live.mgr
}

// decodeJSON reads a JSON body of at most max bytes into v, refusing unknown fields (a
// misspelt option must not be ignored: "dryrun" is not "dry_run") and trailing data. An empty
// body leaves v as it is.
func decodeJSON(c echo.Context, max int64, v any) error {
	body, err := readBody(c, max)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	return unmarshalStrict(body, v)
}

// unmarshalStrict decodes the one JSON value in body into v, refusing unknown fields and
// trailing data (errBadRequest). An empty body is refused too.
func unmarshalStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return fmt.Errorf("%w: data after the JSON value", errBadRequest)
	}
	return nil
}

// resolveModel turns a request's model name into a session model source. Clients never name
// files: only the daemon's default model and the built-in one are served.
func (s *Server) resolveModel(name string) (string, error) {
	switch {
	case name == "" || name == wire.ModelDefault:
		if s.cfg.Model != "" {
			return s.cfg.Model, nil
		}
		return session.BuiltinSource, nil
	case name == wire.ModelBuiltin || name == session.BuiltinSource:
		return session.BuiltinSource, nil
	case s.cfg.Model != "" && name == s.cfg.Model:
		return s.cfg.Model, nil
	}
	return "", fmt.Errorf("%w: %q (want %q or %q)", errBadModel, name, wire.ModelDefault, wire.ModelBuiltin)
}

// modelFor returns the model source to run checkpoint cp with here: the recorded one when this
// daemon serves it, else whichever served model has cp's fingerprint (a session pushed from
// another machine records that machine's path), else "" (the recorded source, which may fail).
func (s *Server) modelFor(cp *checkpoint.Checkpoint) string {
	mgr := s.sessions()
	if cp.ModelSource == session.BuiltinSource || (s.cfg.Model != "" && cp.ModelSource == s.cfg.Model) {
		return cp.ModelSource
	}
	for _, src := range []string{s.cfg.Model, session.BuiltinSource} {
		if src == "" {
			continue
		}
		if md, _, err := mgr.Model(src); err == nil && md.Fingerprint() == cp.Model {
			return src
		}
	}
	return ""
}

// sampler merges the settings given over base and validates them.
func sampler(base engine.Sampler, w *wire.Sampler) (engine.Sampler, error) {
	if w == nil {
		return base, nil
	}
	if w.Temp != nil {
		base.Temp = *w.Temp
	}
	if w.TopK != nil {
		base.TopK = *w.TopK
	}
	if w.TopP != nil {
		base.TopP = *w.TopP
	}
	if w.Seed != nil {
		base.Seed = *w.Seed
	}
	if !(base.Temp >= 0 && base.Temp <= 100) || base.TopK < 0 || base.TopK > 1<<20 || !(base.TopP >= 0 && base.TopP <= 1) {
		return base, fmt.Errorf("%w: sampler wants temp in [0, 100], top_k >= 0 and top_p in [0, 1]", errBadRequest)
	}
	return base, nil
}

// layoutOpts validates a new session's KV type and block size.
func layoutOpts(kv string, block int) (engine.KVType, int, error) {
	var t engine.KVType
	if kv != "" {
		var err error
		if t, err = engine.ParseKVType(kv); err != nil {
			return 0, 0, fmt.Errorf("%w: kv: %v", errBadRequest, err)
		}
	}
	if block < 0 || block > 4096 {
		return 0, 0, fmt.Errorf("%w: block_size %d: want 1..4096", errBadRequest, block)
	}
	return t, block, nil
}

// prompt returns a request's prompt tokens, validated against the model's vocabulary.
func prompt(md *engine.Model, ids []int32, text string, bos bool) ([]int32, *gguf.Tokenizer, error) {
	tok, tokErr := md.GGUF().Tokenizer()
	if tokErr != nil {
		tok = nil
	}
	if len(ids) > 0 && text != "" {
		return nil, tok, fmt.Errorf("%w: give prompt or text, not both", errBadRequest)
	}
	if len(text) > wire.MaxPromptText {
		return nil, tok, fmt.Errorf("%w: prompt text of %d bytes, limit %d", errTokenLimit, len(text), wire.MaxPromptText)
	}
	if text != "" {
		if tok == nil {
			return nil, nil, fmt.Errorf("%w: text needs the model's tokenizer: %v", errBadRequest, tokErr)
		}
		ids = tok.Encode(text, bos)
	}
	if len(ids) > wire.MaxPromptTokens {
		return nil, tok, fmt.Errorf("%w: prompt of %d tokens, limit %d", errTokenLimit, len(ids), wire.MaxPromptTokens)
	}
	vocab := md.Hyper().Vocab
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			return nil, tok, fmt.Errorf("%w: prompt token %d is %d, vocabulary is [0, %d)", errBadToken, i, id, vocab)
		}
	}
	return ids, tok, nil
}

func (s *Server) listSessions(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	infos, err := s.sessions().List()
	if err != nil {
		return err
	}
	out := wire.SessionList{Sessions: []wire.SessionInfo{}}
	for _, in := range infos {
		out.Sessions = append(out.Sessions, wire.SessionInfo{Name: in.Name, Head: in.Head.String(), Position: in.Position, Model: in.Model, Live: in.Live})
	}
	s.live.mu.Lock()
	for name, p := range s.live.pending {
		out.Sessions = append(out.Sessions, wire.SessionInfo{Name: name, Model: p.Model, Pending: true})
	}
	s.live.mu.Unlock()
	sort.Slice(out.Sessions, func(i, j int) bool { return out.Sessions[i].Name < out.Sessions[j].Name })
	return c.JSON(http.StatusOK, out)
}

// sessionInfo describes session name; session.ErrNotFound when it has neither a head nor a
// pending creation.
func (s *Server) sessionInfo(name string) (wire.SessionInfo, error) {
	info := wire.SessionInfo{Name: name}
	if _, err := s.ix.Ref(index.RefSession, name); errors.Is(err, index.ErrRefNotFound) {
		s.live.mu.Lock()
		p, ok := s.live.pending[name]
		s.live.mu.Unlock()
		if !ok {
			return info, fmt.Errorf("%w: %s", session.ErrNotFound, name)
		}
		info.Pending, info.Model, info.KV, info.Block = true, p.Model, p.KV, p.BlockSize
		return info, nil
	} else if err != nil {
		return info, err
	}
	ss, err := s.sessions().Session(name)
	if err != nil {
		return info, err
	}
	head, err := ss.Head()
	if err != nil {
		return info, err
	}
	if head == nil {
		return info, fmt.Errorf("%w: %s", session.ErrNotFound, name)
	}
	info.Head, info.Position, info.Model, info.Live = head.ID.String(), head.Position, head.ModelSource, ss.Live()
	info.Sampler = &wire.SamplerValues{Temp: head.Sampler.Temp, TopK: head.Sampler.TopK, TopP: head.Sampler.TopP, Seed: head.Sampler.Seed}
	info.KV, info.Block = head.Layout.DType, head.Layout.BlockSize
	return info, nil
}

func (s *Server) getSession(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	name := c.Param("name")
	if err := sessionName(name); err != nil {
		return err
	}
	info, err := s.sessionInfo(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, info)
}

// createSession creates (with a prompt), forks (with from) or registers as pending (neither).
func (s *Server) createSession(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	var req wire.CreateSession
	if err := decodeJSON(c, s.cfg.MaxJSONSize, &req); err != nil {
		return err
	}
	if err := sessionName(req.Name); err != nil {
		return err
	}
	ctx := c.Request().Context()
	unlock, err := s.live.lock(ctx, req.Name)
	if err != nil {
		return err
	}
	defer unlock()
	mgr := s.sessions()
	exists := fmt.Errorf("%w: %s", session.ErrExists, req.Name)
	if _, err := s.sessionInfo(req.Name); err == nil {
		return exists
	} else if !errors.Is(err, session.ErrNotFound) {
		return err
	}
	if req.From != "" {
		if req.Model != "" || req.Sampler != nil || req.KV != "" || req.BlockSize != 0 || len(req.Prompt) > 0 || req.Text != "" {
			return fmt.Errorf("%w: a fork takes only name and from", errBadRequest)
		}
		id, err := s.resolveCheckpoint(req.From, true)
		if err != nil {
			return err
		}
		if _, err := mgr.Fork(ctx, req.Name, id); err != nil {
			return err
		}
		s.touch(req.Name)
		return s.sessionCreated(c, req.Name)
	}
	src, err := s.resolveModel(req.Model)
	if err != nil {
		return err
	}
	smp, err := sampler(engine.Sampler{}, req.Sampler)
	if err != nil {
		return err
	}
	kv, block, err := layoutOpts(req.KV, req.BlockSize)
	if err != nil {
		return err
	}
	md, _, err := mgr.Model(src)
	if err != nil {
		return err
	}
	toks, _, err := prompt(md, req.Prompt, req.Text, true)
	if err != nil {
		return err
	}
	if len(toks) == 0 {
		req.Model = src
		s.live.mu.Lock()
		s.live.pending[req.Name] = req
		s.live.mu.Unlock()
		return s.sessionCreated(c, req.Name)
	}
	if len(toks) > md.Hyper().CtxMax {
		return fmt.Errorf("%w: prompt of %d tokens, the model's context is %d", errTokenLimit, len(toks), md.Hyper().CtxMax)
	}
	ss, err := mgr.Session(req.Name)
	if err != nil {
		return err
	}
	s.touch(req.Name)
	res, err := ss.Run(ctx, session.Turn{Model: src, Prompt: toks, Sampler: &smp, KVType: kv, BlockSize: block})
	s.observeTurn(res)
	if err != nil {
		return err
	}
	return s.sessionCreated(c, req.Name)
}

func (s *Server) sessionCreated(c echo.Context, name string) error {
	info, err := s.sessionInfo(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, info)
}

func (s *Server) touch(name string) {
	s.live.mu.Lock()
	s.live.touched[name] = true
	s.live.mu.Unlock()
}

// resolveCheckpoint resolves an ID, a unique ID prefix or a tag (with a Repo; else only a full
// ID), and with sessions also a session's name for its head.
func (s *Server) resolveCheckpoint(name string, sessions bool) (index.ID, error) {
	if len(name) > 200 {
		return index.ID{}, fmt.Errorf("%w: checkpoint name longer than 200 characters", errBadRequest)
	}
	var id index.ID
	var err error
	if s.cfg.Repo != nil {
		id, err = s.cfg.Repo.Resolve(name)
	} else {
		id, err = cas.ParseDigest(name)
	}
	if err != nil && sessions && index.ValidRefName(name) == nil {
		if hid, herr := s.ix.Ref(index.RefSession, name); herr == nil {
			return hid, nil
		}
	}
	return id, err
}

func (s *Server) deleteSession(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	name := c.Param("name")
	if err := sessionName(name); err != nil {
		return err
	}
	ctx := c.Request().Context()
	unlock, err := s.live.lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	s.live.mu.Lock()
	_, pending := s.live.pending[name]
	delete(s.live.pending, name)
	s.live.mu.Unlock()
	if pending {
		return c.JSON(http.StatusOK, wire.SessionInfo{Name: name, Pending: true})
	}
	if _, err := s.sessionInfo(name); err != nil {
		return err
	}
	ss, err := s.sessions().Session(name)
	if err != nil {
		return err
	}
	if err := ss.Suspend(ctx); err != nil {
		return err
	}
	info, err := s.sessionInfo(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, info)
}

func (s *Server) checkpointSession(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	name := c.Param("name")
	if err := sessionName(name); err != nil {
		return err
	}
	if err := decodeJSON(c, s.cfg.MaxJSONSize, &struct{}{}); err != nil {
		return err
	}
	ctx := c.Request().Context()
	unlock, err := s.live.lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.sessionInfo(name); err != nil {
		return err
	}
	ss, err := s.sessions().Session(name)
	if err != nil {
		return err
	}
	r, err := ss.Checkpoint(ctx)
	if err != nil {
		return err
	}
	s.observeCheckpoint(r)
	return c.JSON(http.StatusOK, checkpointSummary(name, r))
}

func (s *Server) restoreSession(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	name := c.Param("name")
	if err := sessionName(name); err != nil {
		return err
	}
	var req wire.RestoreRequest
	if err := decodeJSON(c, s.cfg.MaxJSONSize, &req); err != nil {
		return err
	}
	ctx := c.Request().Context()
	unlock, err := s.live.lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := s.sessionInfo(name); err != nil {
		return err
	}
	ss, err := s.sessions().Session(name)
	if err != nil {
		return err
	}
	head, err := ss.Head()
	if err != nil {
		return err
	}
	if head == nil {
		return fmt.Errorf("%w: session %s has no checkpoint yet", session.ErrNotFound, name)
	}
	var id index.ID
	if req.Checkpoint != "" {
		if id, err = s.resolveCheckpoint(req.Checkpoint, false); err != nil {
			return err
		}
	}
	target := head
	if !id.IsZero() && id != head.ID {
		if target, err = checkpoint.Load(s.ix, id); err != nil {
			return err
		}
	}
	s.touch(name)
	var r *restore.Result
	// A checkpoint whose recorded model source this daemon does not serve (a session pushed
	// from another machine) is restored with the served model of the same fingerprint: a turn
	// without tokens makes the session live with it from its head first.
	if src := s.modelFor(target); src != "" && src != target.ModelSource && !ss.Live() && target.Model == head.Model {
		res, err := ss.Run(ctx, session.Turn{Model: src, NoCheckpoint: true})
		s.observeTurn(res)
		if err != nil {
			return err
		}
		if target == head {
			r = res.Restored
		}
	}
	if r == nil {
		if r, err = ss.Restore(ctx, id); err != nil {
			return err
		}
		s.observeRestore(r)
	}
	return c.JSON(http.StatusOK, restoreSummary(name, head, r))
}

func checkpointSummary(name string, r *checkpoint.Result) wire.CheckpointSummary {
	cp := r.Checkpoint
	out := wire.CheckpointSummary{Session: name, Checkpoint: cp.ID.String(), Position: r.Position, Blocks: r.Blocks,
		BlocksWritten: r.BlocksWritten, KVBytes: r.KVBytes, StoredNew: r.StoredNew, MS: ms(r.Duration)}
	if !cp.Parent.IsZero() {
		out.Parent = cp.Parent.String()
	}
	return out
}

// pendingSummary describes a turn's checkpoint still being committed (session.Config.
// DeferCheckpoints): no ID yet, the snapshot's time.
func pendingSummary(name string, p *session.PendingCheckpoint) *wire.CheckpointSummary {
	out := &wire.CheckpointSummary{Session: name, Position: p.Position, Blocks: p.Blocks, BlocksWritten: p.BlocksCopied,
		MS: ms(p.Snapshot), SnapshotMS: ms(p.Snapshot), Pending: true}
	if !p.Parent.IsZero() {
		out.Parent = p.Parent.String()
	}
	return out
}

func restoreSummary(name string, head *checkpoint.Checkpoint, r *restore.Result) wire.RestoreSummary {
	cp := r.Checkpoint
	return wire.RestoreSummary{Session: name, Checkpoint: cp.ID.String(), HeadMoved: head == nil || head.ID != cp.ID,
		Position: r.Position, Chunks: r.Chunks, KVBytes: r.KVBytes, StateBytes: r.StateBytes,
		InstanceMS: ms(r.NewInstance), AllocMS: ms(r.Alloc), DecodeMS: ms(r.Decode), LoadMS: ms(r.Load), TotalMS: ms(r.Total)}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// observeTurn records a turn's restore, checkpoint and tokens in the metrics.
func (s *Server) observeTurn(res *session.TurnResult) {
	if res == nil {
		return
	}
	s.metrics.tokensGenerated.Add(int64(len(res.Tokens)))
	s.metrics.promptTokens.Add(int64(res.PromptTokens))
	if res.Restored != nil {
		s.observeRestore(res.Restored)
	}
	if res.Checkpoint != nil {
		s.observeCheckpoint(res.Checkpoint)
	}
}

func (s *Server) observeCheckpoint(r *checkpoint.Result) {
	if r.Duration > 0 {
		s.metrics.checkpoints.observe(r.Duration)
	}
}

func (s *Server) observeRestore(r *restore.Result) { s.metrics.restores.observe(r.Total) }

// generate runs one turn and streams its tokens as server-sent events. Errors found before the
// first token are ordinary JSON errors; after it, an "error" event ends the stream.
func (s *Server) generate(c echo.Context) error {
	if err := s.sessionsOn(); err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	name := c.Param("name")
	if err := sessionName(name); err != nil {
		return err
	}
	var req wire.Generate
	if err := decodeJSON(c, s.cfg.MaxJSONSize, &req); err != nil {
		return err
	}
	if req.N < 0 {
		return fmt.Errorf("%w: n %d is negative", errBadRequest, req.N)
	}
	if req.N > s.cfg.MaxTokens {
		return fmt.Errorf("%w: n %d, at most %d tokens per request", errTokenLimit, req.N, s.cfg.MaxTokens)
	}
	ctx := c.Request().Context()
	unlock, err := s.live.lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	mgr := s.sessions()
	ss, err := mgr.Session(name)
	if err != nil {
		return err
	}
	head, err := ss.Head()
	if err != nil {
		return err
	}
	turn := session.Turn{N: req.N, NoCheckpoint: req.NoCheckpoint}
	var md *engine.Model
	pos := 0
	if head == nil {
		s.live.mu.Lock()
		p := s.live.pending[name]
		s.live.mu.Unlock()
		if req.Model == "" {
			req.Model = p.Model
		}
		if req.KV == "" {
			req.KV = p.KV
		}
		if req.BlockSize == 0 {
			req.BlockSize = p.BlockSize
		}
		base, err := sampler(engine.Sampler{}, p.Sampler)
		if err != nil {
			return err
		}
		smp, err := sampler(base, req.Sampler)
		if err != nil {
			return err
		}
		if turn.Model, err = s.resolveModel(req.Model); err != nil {
			return err
		}
		if turn.KVType, turn.BlockSize, err = layoutOpts(req.KV, req.BlockSize); err != nil {
			return err
		}
		turn.Sampler = &smp
	} else {
		if req.KV != "" && req.KV != head.Layout.DType || req.BlockSize != 0 && req.BlockSize != head.Layout.BlockSize {
			return fmt.Errorf("%w: session %s has KV %s with block size %d; kv and block_size apply to new sessions only",
				errBadRequest, name, head.Layout.DType, head.Layout.BlockSize)
		}
		if req.Model != "" {
			if turn.Model, err = s.resolveModel(req.Model); err != nil {
				return err
			}
		} else {
			turn.Model = s.modelFor(head)
		}
		if req.Sampler != nil {
			smp, err := sampler(head.Sampler, req.Sampler)
			if err != nil {
				return err
			}
			turn.Sampler = &smp
		}
		pos = head.Position
		if ss.Live() {
			_ = ss.Instance(func(in *engine.Instance) error {
				if in != nil {
					if p, err := in.Position(); err == nil {
						pos = p
					}
				}
				return nil
			})
		}
	}
	src := turn.Model
	if src == "" {
		src = head.ModelSource
	}
	if md, _, err = mgr.Model(src); err != nil {
		if turn.Model == "" {
			// The session records a model this daemon neither serves nor can open.
			return fmt.Errorf("%w: session %s needs model %s (%s), which this daemon does not serve: %v",
				session.ErrModel, name, head.Model, head.ModelSource, err)
		}
		return err
	}
	toks, tok, err := prompt(md, req.Prompt, req.Text, head == nil)
	if err != nil {
		return err
	}
	if head == nil && len(toks) == 0 {
		return fmt.Errorf("%w: session %s is new: its first turn needs a prompt", errBadRequest, name)
	}
	if ctxMax := md.Hyper().CtxMax; pos+len(toks)+req.N > ctxMax {
		return fmt.Errorf("%w: position %d + prompt %d + n %d exceeds the model's context of %d tokens",
			errTokenLimit, pos, len(toks), req.N, ctxMax)
	}
	turn.Prompt = toks
	s.touch(name)

	sum := wire.TurnSummary{Session: name, New: head == nil, HasText: tok != nil}
	// A new session's prompt is checkpointed before generating, so that a turn cut off midway
	// has a checkpoint to go back to.
	if head == nil && req.N > 0 {
		first := turn
		first.N, first.NoCheckpoint = 0, false
		res, err := ss.Run(ctx, first)
		s.observeTurn(res)
		if err != nil {
			return err
		}
		s.live.mu.Lock()
		delete(s.live.pending, name)
		s.live.mu.Unlock()
		sum.PromptTokens, sum.PrefixTokens = res.PromptTokens, res.PrefixTokens
		sum.PrefillMS, sum.PrefixMS = ms(res.Prefill), ms(res.PrefixLoad)
		turn = session.Turn{N: req.N, NoCheckpoint: req.NoCheckpoint}
	}

	st := &eventStream{c: c}
	dec := pieceDecoder{tok: tok}
	i := 0
	turn.OnToken = func(t int32) error {
		ev := wire.TokenEvent{Index: i, ID: t, Text: dec.next(t)}
		i++
		return st.send(wire.EventToken, fmt.Sprint(ev.Index), ev)
	}
	res, err := ss.Run(ctx, turn)
	s.observeTurn(res)
	if err != nil {
		s.rollback(ss, err)
		if !st.started {
			return err
		}
		status, body := apiError(err)
		if errors.Is(err, context.Canceled) {
			body.Code = wire.CodeCanceled
		} else if status >= 500 && body.Code == wire.CodeInternal {
			body.Code, body.Message = wire.CodeGenerateFailed, err.Error()
		}
		s.log.Info("generate stopped", "session", name, "tokens", i, "err", err)
		_ = st.send(wire.EventError, "", wire.ErrorBody{Error: body})
		return nil
	}
	if head == nil {
		s.live.mu.Lock()
		delete(s.live.pending, name)
		s.live.mu.Unlock()
	}
	if head != nil || req.N == 0 {
		sum.PromptTokens, sum.PrefixTokens = res.PromptTokens, res.PrefixTokens
		sum.PrefillMS, sum.PrefixMS = ms(res.Prefill), ms(res.PrefixLoad)
	}
	sum.Tokens, sum.Position, sum.Backend, sum.DecodeMS = res.Tokens, res.Position, res.Backend, ms(res.Decode)
	if sum.Tokens == nil {
		sum.Tokens = []int32{}
	}
	if tok != nil {
		sum.Text, _ = tok.Decode(res.Tokens)
	}
	if res.Restored != nil {
		r := restoreSummary(name, head, res.Restored)
		r.HeadMoved = false
		sum.Restored = &r
	}
	if res.Checkpoint != nil {
		cs := checkpointSummary(name, res.Checkpoint)
		sum.Checkpoint = &cs
	} else if p := res.Pending; p != nil {
		sum.Checkpoint = pendingSummary(name, p)
	}
	return st.send(wire.EventDone, "", sum)
}

// rollback puts a session whose turn failed back at its last checkpoint, so that no later turn
// continues from state its client never saw. Errors found before the session changed need
// nothing.
func (s *Server) rollback(ss *session.Session, cause error) {
	if errors.Is(cause, session.ErrModel) || errors.Is(cause, session.ErrNotFound) || errors.Is(cause, session.ErrClosed) || !ss.Live() {
		return
	}
	head, err := ss.Head()
	if err != nil || head == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := ss.Restore(ctx, index.ID{})
	if err != nil {
		s.log.Error("roll back to the last checkpoint", "session", ss.Name(), "err", err)
		return
	}
	s.observeRestore(r)
	s.metrics.rollbacks.Add(1)
}

// suspendAll checkpoints every live session that changed and closes its instance.
func (s *Server) suspendAll(ctx context.Context) error {
	mgr := s.sessions()
	if mgr == nil {
		return nil
	}
	s.live.mu.Lock()
	names := make([]string, 0, len(s.live.touched))
	for n := range s.live.touched {
		names = append(names, n)
	}
	s.live.mu.Unlock()
	var errs []error
	for _, n := range names {
		ss, err := mgr.Session(n)
		if err == nil {
			err = ss.Suspend(ctx)
		}
		if err != nil && !errors.Is(err, session.ErrNotFound) {
			errs = append(errs, fmt.Errorf("suspend %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// eventStream writes server-sent events; the response starts with the first event.
type eventStream struct {
	c       echo.Context
	started bool
}

func (e *eventStream) send(event, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w := e.c.Response()
	if !e.started {
		e.started = true
		h := w.Header()
		h.Set(echo.HeaderContentType, wire.MediaTypeEventStream)
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
	}
	var sb strings.Builder
	if id != "" {
		sb.WriteString("id: " + id + "\n")
	}
	sb.WriteString("event: " + event + "\ndata: ")
	sb.Write(b)
	sb.WriteString("\n\n")
	if _, err := w.Write([]byte(sb.String())); err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	w.Flush()
	return nil
}

// pieceDecoder turns tokens into text pieces, holding back the bytes of a UTF-8 sequence that
// a later token completes.
type pieceDecoder struct {
	tok  *gguf.Tokenizer
	hold []byte
}

func (d *pieceDecoder) next(t int32) string {
	if d.tok == nil {
		return ""
	}
	s, err := d.tok.Decode([]int32{t})
	if err != nil {
		return ""
	}
	b := append(d.hold, s...)
	// Keep back a trailing sequence that is not complete yet (at most 3 bytes).
	cut := len(b)
	for k := 1; k <= 3 && k <= len(b); k++ {
		c := b[len(b)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(b[len(b)-k:]) {
				cut = len(b) - k
			}
			break
		}
	}
	d.hold = append([]byte(nil), b[cut:]...)
	return strings.ToValidUTF8(string(b[:cut]), "\uFFFD")
}
