// Package session keeps named, persistent conversations: a session is a model, an engine
// instance when live, and a head checkpoint, named by the index ref of kind index.RefSession
// and the session's name (ref name rules: 1..128 of [A-Za-z0-9._-], not starting with a dot).
//
// A turn (Session.Run) restores the head checkpoint into a fresh instance when the session is
// not live, feeds the new prompt tokens, generates, and checkpoints at the end (capture of the
// blocks the turn touched, manifest commit, then a compare-and-swap of the ref). Everything a
// session needs to continue lives in its head checkpoint: the model (fingerprint and source),
// the KV layout, the token history, the sampler settings and the RNG state.
//
// A new session whose prompt starts with full KV blocks already stored for the same model,
// guest and layout restores them from the prefix cache (checkpoint.PrefixTable, a bbolt file
// at DATA/cache/prefix.db) instead of computing them.
//
// Concurrency: a Manager and its Sessions are safe for concurrent use; operations on one
// session are serialized, distinct sessions run in parallel. Every long operation takes a
// context.
//
// # Deferred checkpoints
//
// With Config.DeferCheckpoints, a turn's end-of-turn checkpoint is split in two
// (checkpoint.TakeSnapshot, checkpoint.Snapshot.Commit): the turn waits only for the snapshot
// (the state and the KV blocks the turn touched, copied out of the instance; well under a
// millisecond for 16 tokens of a 1B model), and the rest (hashing, encoding, the durability
// barrier, the manifest and index commit, and then the head's compare-and-swap) runs on a
// goroutine while the reply goes out. The turn's result says so (TurnResult.Pending). Every
// later operation on the session (Run, Checkpoint, Restore, Head, Suspend, Manager.Fork of its
// name, Manager.Close) first waits for that commit, so operations keep their order; a commit
// that failed is logged at once and returned by the next operation (wrapping
// ErrDeferredCheckpoint), which then does nothing else: the session stays live with its state,
// its head where it was, and the next checkpoint stores everything since that head again.
//
// The trade: a crash (of the process or the machine) after a turn's reply and before its
// commit finished loses that turn's checkpoint; the previous checkpoint stays restorable (the
// store and index are never left inconsistent, at worst with garbage for GC). Synchronous
// checkpoints (the default) never reply before the checkpoint is durable.
package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
)

// Sentinel errors.
var (
	// ErrNotFound: no session of that name.
	ErrNotFound = errors.New("session not found")
	// ErrExists: a session of that name exists already (fork).
	ErrExists = errors.New("session exists")
	// ErrModel: the model given does not match the session's.
	ErrModel = errors.New("model does not match the session")
	// ErrClosed: the manager was closed.
	ErrClosed = errors.New("session manager closed")
	// ErrDeferredCheckpoint: a turn's checkpoint committed in the background failed (see
	// Config.DeferCheckpoints); the operation that reports it did nothing else.
	ErrDeferredCheckpoint = errors.New("deferred checkpoint failed")
)

// BuiltinSource is the model source recorded for the built-in tiny model.
const BuiltinSource = "builtin"

// Config configures a Manager.
type Config struct {
	Index   *index.Index   // the index, bound to the chunk store
	Engine  *engine.Engine // the engine instances run on
	DataDir string         // the data directory: built-in model and prefix cache live under it
	// Threads, Batch: instance options for every instance the manager makes (0: defaults).
	Threads, Batch int
	// Workers bounds chunks stored or decoded at once; 0 means GOMAXPROCS.
	Workers int
	// NoPrefixCache turns the prefix cache off.
	NoPrefixCache bool
	// HugePages asks for transparent huge pages under the KV blocks of restores and of
	// instances made for a Context (restore.Options.HugePages): for long-lived processes such
	// as a daemon.
	HugePages bool
	// Verify says how restores check the chunks they read (restore.Options.Verify; the default
	// checks a pack store's seals).
	Verify restore.Verify
	// Context is the number of positions every instance is made for
	// (engine.InstanceOptions.Context: their KV memory allocated and resident at creation); 0
	// for none. A restore makes its instance for at least the checkpoint's position anyway.
	Context int
	// KVCodec selects how checkpoints store KV blocks (checkpoint.CaptureOptions.KVCodec);
	// the default is checkpoint.KVCodecFloat. NewManager refuses an unknown value.
	KVCodec checkpoint.KVCodec
	// KeepLogits makes every checkpoint keep the whole logits vector
	// (checkpoint.CaptureOptions.KeepLogits); by default one whose sampler reads only the best
	// few logits (greedy, top-k) keeps those (checkpoint.CaptureOptions.TopLogits).
	KeepLogits bool
	// DeferCheckpoints makes Run's end-of-turn checkpoint a snapshot taken during the turn and
	// committed in the background (see the package doc, "Deferred checkpoints"): the turn
	// pays for copying the bytes it changed, not for the durability barrier and the index
	// commit; a crash before the commit finished loses that one checkpoint. Checkpoint and
	// Suspend stay synchronous.
	DeferCheckpoints bool
	// Log receives the failures of background commits (nil: slog.Default()).
	Log *slog.Logger
	// AdjustCapture, when set, is called with the options of every checkpoint a session is
	// about to take (synchronous or deferred), under the session's lock; tests use it to set
	// the checkpoint.CaptureOptions hooks.
	AdjustCapture func(session string, opts *checkpoint.CaptureOptions)
}

// Manager owns the sessions of one data directory, the models they use and the prefix cache.
type Manager struct {
	cfg    Config
	prefix *checkpoint.PrefixTable

	mu       sync.Mutex
	models   map[string]*engine.Model // by resolved file path
	sessions map[string]*Session
	closed   bool
}

// NewManager makes a manager. Close it before the engine and the index.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.Index == nil || cfg.Engine == nil || cfg.DataDir == "" {
		return nil, errors.New("session: NewManager needs an index, an engine and a data directory")
	}
	if _, err := checkpoint.ParseKVCodec(string(cfg.KVCodec)); err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	if cfg.Context < 0 {
		return nil, fmt.Errorf("session: context of %d positions", cfg.Context)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Manager{cfg: cfg, models: map[string]*engine.Model{}, sessions: map[string]*Session{}}
	if !cfg.NoPrefixCache {
		t, err := checkpoint.OpenPrefixTable(filepath.Join(cfg.DataDir, "cache", "prefix.db"))
		if err != nil {
			return nil, fmt.Errorf("session: %w", err)
		}
		m.prefix = t
	}
	return m, nil
}

// Close closes every live instance, the models and the prefix cache. Live sessions are not
// checkpointed: call Suspend first to keep their last state. Checkpoints being committed in
// the background are waited for; their failures are returned.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	sessions := m.sessions
	m.mu.Unlock()
	var errs []error
	for _, s := range sessions {
		s.mu.Lock()
		errs = append(errs, s.settle(context.Background()))
		s.drop()
		s.mu.Unlock()
	}
	m.mu.Lock()
	for _, md := range m.models {
		errs = append(errs, md.Close())
	}
	m.models = nil
	m.mu.Unlock()
	if m.prefix != nil {
		errs = append(errs, m.prefix.Close())
	}
	return errors.Join(errs...)
}

// Index returns the manager's index.
func (m *Manager) Index() *index.Index { return m.cfg.Index }

// Model loads (once; later calls share it) the model named by source: "" or BuiltinSource for
// the built-in tiny model (written under the data directory on first use), else a GGUF file
// path. It returns the canonical source to record: BuiltinSource or the absolute path.
func (m *Manager) Model(source string) (*engine.Model, string, error) {
	var path string
	if source == "" || source == BuiltinSource {
		p, err := engine.BuiltinModelPath(m.cfg.DataDir)
		if err != nil {
			return nil, "", err
		}
		path, source = p, BuiltinSource
	} else {
		p, err := filepath.Abs(source)
		if err != nil {
			return nil, "", fmt.Errorf("session: model %s: %w", source, err)
		}
		path, source = p, p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, "", ErrClosed
	}
	if md, ok := m.models[path]; ok {
		return md, source, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, "", fmt.Errorf("session: model: %w", err)
	}
	md, err := m.cfg.Engine.LoadModel(path)
	if err != nil {
		return nil, "", err
	}
	md.Fingerprint() // hash the weights once, now, rather than inside the first checkpoint
	m.models[path] = md
	return md, source, nil
}

// Session returns the handle of session name, which need not exist yet (its first Run creates
// it). Handles are shared: every call for a name returns the same *Session.
func (m *Manager) Session(name string) (*Session, error) {
	if err := index.ValidRefName(name); err != nil {
		return nil, fmt.Errorf("session name: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if s, ok := m.sessions[name]; ok {
		return s, nil
	}
	s := &Session{m: m, name: name}
	m.sessions[name] = s
	return s, nil
}

// Info summarises a stored session.
type Info struct {
	Name     string   `json:"name"`
	Head     index.ID `json:"head"`
	Position int      `json:"position"`
	Model    string   `json:"model"`
	Live     bool     `json:"live"`
}

// List returns every stored session, by name.
func (m *Manager) List() ([]Info, error) {
	refs, err := m.cfg.Index.Refs(index.RefSession)
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, r := range refs {
		inf := Info{Name: r.Name, Head: r.Target}
		if cp, err := checkpoint.Load(m.cfg.Index, r.Target); err == nil {
			inf.Position, inf.Model = cp.Position, cp.ModelSource
		}
		m.mu.Lock()
		if s, ok := m.sessions[r.Name]; ok {
			s.mu.Lock()
			inf.Live = s.inst != nil
			s.mu.Unlock()
		}
		m.mu.Unlock()
		out = append(out, inf)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Fork creates session name at checkpoint from (any checkpoint, of any session). It fails with
// ErrExists when the session exists. The new session is not live; its first turn restores.
func (m *Manager) Fork(ctx context.Context, name string, from index.ID) (*Session, error) {
	cp, err := checkpoint.Load(m.cfg.Index, from)
	if err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	s, err := m.Session(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.settle(ctx); err != nil {
		return nil, fmt.Errorf("fork: %w", err)
	}
	if err := m.cfg.Index.CompareAndSwapRef(ctx, index.RefSession, name, index.ID{}, from); err != nil {
		if errors.Is(err, index.ErrConflict) {
			return nil, fmt.Errorf("fork: %w: %s", ErrExists, name)
		}
		return nil, fmt.Errorf("fork: %w", err)
	}
	s.drop()
	s.head, s.loaded = cp, true
	return s, nil
}

func (m *Manager) instanceOptions(kv engine.KVType, blockSize int, smp engine.Sampler) engine.InstanceOptions {
	return engine.InstanceOptions{KVType: kv, BlockSize: blockSize, Threads: m.cfg.Threads, Batch: m.cfg.Batch, Sampler: smp, Context: m.cfg.Context, HugePages: m.cfg.HugePages}
}

// Session is one named conversation. Its methods are safe for concurrent use and serialized.
type Session struct {
	m    *Manager
	name string

	mu     sync.Mutex
	loaded bool                   // head has been read from the ref
	head   *checkpoint.Checkpoint // head checkpoint; nil for a session not stored yet
	model  *engine.Model
	source string
	inst   *engine.Instance    // live instance; nil when not live
	dirty  bool                // inst holds state past head
	reuse  []checkpoint.Blocks // blocks known in inst besides head's (prefix cache)
	// pending is the checkpoint being committed in the background (DeferCheckpoints), nil
	// when none; every operation settles it first.
	pending *pendingCommit
}

// pendingCommit is a snapshot being committed by its goroutine. res and err are written by
// that goroutine before it closes done, and read only after done is closed.
type pendingCommit struct {
	done chan struct{}
	res  *checkpoint.Result
	err  error
}

// PendingCheckpoint describes an end-of-turn checkpoint taken as a snapshot and being committed
// in the background (Config.DeferCheckpoints). The session's head moves to it when the commit
// succeeds; the session's next operation waits for that.
type PendingCheckpoint struct {
	// Snapshot is the time the turn spent on its checkpoint: reading the guest's state and
	// copying the KV blocks it touched (checkpoint.Snapshot.Duration).
	Snapshot time.Duration
	// Position is the tokens the checkpoint holds; Parent the head it follows.
	Position int
	Parent   index.ID
	// Blocks is the KV block chunks the checkpoint names, BlocksCopied those the snapshot
	// copied to store (the rest are the parent's), BytesCopied those blocks' and the state's
	// bytes.
	Blocks, BlocksCopied int
	BytesCopied          int64

	c *pendingCommit
}

// Wait waits for the commit and returns its result: the durable checkpoint, with the head
// moved to it, or the error (which the session's next operation also reports). It does not
// take the session's lock; any number of goroutines may wait.
func (p *PendingCheckpoint) Wait(ctx context.Context) (*checkpoint.Result, error) {
	select {
	case <-p.c.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return p.c.res, p.c.err
}

// settle waits for the pending commit, if any, and applies its outcome: the head moves to its
// checkpoint, or its error is returned (once: the session forgets it) and the instance counts
// as changed since the head again. It returns ctx's error, keeping the commit pending, when
// ctx ends first. Callers hold s.mu.
func (s *Session) settle(ctx context.Context) error {
	c := s.pending
	if c == nil {
		return nil
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.pending = nil
	if c.err != nil {
		if s.inst != nil {
			s.dirty = true
		}
		return fmt.Errorf("%w: %w", ErrDeferredCheckpoint, c.err)
	}
	s.head, s.loaded = c.res.Checkpoint, true
	return nil
}

// Name returns the session's name.
func (s *Session) Name() string { return s.name }

// Head returns the session's head checkpoint (nil when the session has none yet).
//
// It waits for a checkpoint being committed in the background, and reports its failure.
func (s *Session) Head() (*checkpoint.Checkpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.settle(context.Background()); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s.head, nil
}

// Live reports whether the session has a live instance.
func (s *Session) Live() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inst != nil
}

// load reads the head from the ref, once, or again when not live (another writer may have
// moved it).
func (s *Session) load() error {
	if s.loaded && s.inst != nil {
		return nil
	}
	id, err := s.m.cfg.Index.Ref(index.RefSession, s.name)
	if errors.Is(err, index.ErrRefNotFound) {
		s.head, s.loaded = nil, true
		return nil
	}
	if err != nil {
		return fmt.Errorf("session %s: %w", s.name, err)
	}
	if s.head != nil && s.head.ID == id {
		s.loaded = true
		return nil
	}
	cp, err := checkpoint.Load(s.m.cfg.Index, id)
	if err != nil {
		return fmt.Errorf("session %s: %w", s.name, err)
	}
	s.head, s.loaded = cp, true
	return nil
}

// drop closes the live instance without checkpointing.
func (s *Session) drop() {
	if s.inst != nil {
		s.inst.Close()
	}
	s.inst, s.dirty, s.reuse = nil, false, nil
}

// Turn is one turn of a conversation.
type Turn struct {
	// Model is the model source for a new session ("" or BuiltinSource: the built-in model). For
	// an existing session it may be empty (use the session's) or must be a model with the same
	// fingerprint (ErrModel otherwise).
	Model string
	// Prompt are the tokens fed before generating (may be empty when continuing a session).
	Prompt []int32
	// N tokens are generated.
	N int
	// Sampler, when set, replaces the sampling settings (and reseeds the RNG); nil keeps the
	// session's (a new session: greedy, seed 0).
	Sampler *engine.Sampler
	// KVType and BlockSize configure a new session's instance (zero: f16, 16); they are ignored
	// for an existing session, whose layout its checkpoint fixes.
	KVType    engine.KVType
	BlockSize int
	// NoCheckpoint skips the checkpoint at the end of the turn.
	NoCheckpoint bool
	// OnToken, when set, is called with each generated token; an error from it stops the turn.
	OnToken func(tok int32) error
}

// TurnResult describes a turn.
type TurnResult struct {
	Tokens       []int32            // generated
	Position     int                // tokens in the history after the turn
	PromptTokens int                // tokens fed
	PrefixTokens int                // of those, restored from the prefix cache instead of computed
	Restored     *restore.Result    // the restore of the head, when the session was not live
	Prefill      time.Duration      // feeding the prompt (excluding prefix-cache restore)
	PrefixLoad   time.Duration      // restoring prefix-cache blocks
	Decode       time.Duration      // generating
	Checkpoint   *checkpoint.Result // the end-of-turn checkpoint, durable (nil with NoCheckpoint or Pending)
	// Pending is the end-of-turn checkpoint when it is being committed in the background
	// (Config.DeferCheckpoints; nil otherwise): not durable yet when Run returns.
	Pending *PendingCheckpoint
	Backend string
}

// Run runs one turn: makes the session live (restoring its head, or creating it), feeds
// t.Prompt, generates t.N tokens and, unless t.NoCheckpoint, checkpoints. If the checkpoint
// fails after generation, the result so far is returned with the error; the session stays live.
// With Config.DeferCheckpoints the checkpoint is a snapshot committed in the background
// (TurnResult.Pending).
func (s *Session) Run(ctx context.Context, t Turn) (*TurnResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	if t.N < 0 {
		return nil, fmt.Errorf("session %s: negative token count %d", s.name, t.N)
	}
	res := &TurnResult{Backend: s.m.cfg.Engine.Backend().Name()}
	if err := s.load(); err != nil {
		return nil, err
	}
	prompt := t.Prompt
	created := false
	if s.inst == nil {
		if s.head != nil {
			if err := s.useModel(t.Model); err != nil {
				return nil, err
			}
			r, err := s.restoreLocked(ctx, s.head)
			if err != nil {
				return nil, err
			}
			res.Restored = r
		} else {
			if len(prompt) == 0 {
				return nil, fmt.Errorf("session %s: a new session needs a prompt", s.name)
			}
			smp := engine.Sampler{}
			if t.Sampler != nil {
				smp = *t.Sampler
			}
			n, d, err := s.create(ctx, t, smp, prompt)
			if err != nil {
				return nil, err
			}
			res.PrefixTokens, res.PrefixLoad = n, d
			prompt = prompt[n:]
			created = true
		}
	} else if t.Model != "" {
		if err := s.useModel(t.Model); err != nil {
			return nil, err
		}
	}
	if t.Sampler != nil && !created {
		if err := s.inst.SetSampler(*t.Sampler); err != nil {
			return nil, fmt.Errorf("session %s: %w", s.name, err)
		}
		s.dirty = true
	}
	res.PromptTokens = len(t.Prompt)
	if len(prompt) > 0 {
		t0 := time.Now()
		err := s.inst.Prefill(prompt)
		res.Prefill = time.Since(t0)
		if err != nil {
			s.failed(err)
			return nil, fmt.Errorf("session %s: prefill: %w", s.name, err)
		}
		s.dirty = true
	}
	if t.N > 0 {
		t0 := time.Now()
		toks, err := s.inst.Generate(t.N, func(tok int32) error {
			if t.OnToken != nil {
				if err := t.OnToken(tok); err != nil {
					return err
				}
			}
			return ctx.Err()
		})
		res.Decode = time.Since(t0)
		res.Tokens = toks
		if len(toks) > 0 {
			s.dirty = true
		}
		if err != nil {
			s.failed(err)
			return res, fmt.Errorf("session %s: generate: %w", s.name, err)
		}
	}
	pos, err := s.inst.Position()
	if err != nil {
		s.failed(err)
		return res, fmt.Errorf("session %s: %w", s.name, err)
	}
	res.Position = pos
	if !t.NoCheckpoint && s.m.cfg.DeferCheckpoints && s.dirty {
		p, err := s.snapshotLocked(ctx)
		if err != nil {
			return res, err
		}
		res.Pending = p
	} else if !t.NoCheckpoint {
		cr, err := s.checkpointLocked(ctx)
		if err != nil {
			return res, err
		}
		res.Checkpoint = cr
	}
	return res, nil
}

// failed drops the instance when the guest trapped (it is dead).
func (s *Session) failed(err error) {
	if errors.Is(err, engine.ErrTrap) {
		s.drop()
	}
}

// useModel loads the model for the session: source when given (checked against the head's
// fingerprint), else the head's recorded source.
func (s *Session) useModel(source string) error {
	if source == "" && s.model != nil {
		return nil
	}
	if source == "" && s.head != nil {
		source = s.head.ModelSource
	}
	md, src, err := s.m.Model(source)
	if err != nil {
		return fmt.Errorf("session %s: %w", s.name, err)
	}
	if s.head != nil && md.Fingerprint() != s.head.Model {
		return fmt.Errorf("session %s: %w: the session's checkpoint is for model %s (%s), %s is %s",
			s.name, ErrModel, s.head.Model, s.head.ModelSource, src, md.Fingerprint())
	}
	if s.inst != nil && md != s.model {
		return fmt.Errorf("session %s: %w: the live session runs another model", s.name, ErrModel)
	}
	s.model, s.source = md, src
	return nil
}

// create makes the first instance of a new session and restores what the prefix cache has of
// prompt. It returns the number of prompt tokens restored and the time it took.
func (s *Session) create(ctx context.Context, t Turn, smp engine.Sampler, prompt []int32) (int, time.Duration, error) {
	if err := s.useModel(t.Model); err != nil {
		return 0, 0, err
	}
	opts := s.m.instanceOptions(t.KVType, t.BlockSize, smp)
	in, err := s.model.NewInstance(opts)
	if err != nil {
		return 0, 0, fmt.Errorf("session %s: %w", s.name, err)
	}
	s.inst, s.dirty = in, true
	if s.m.prefix == nil {
		return 0, 0, nil
	}
	t0 := time.Now()
	lay := in.Layout()
	key := checkpoint.PrefixKey{Model: s.model.Fingerprint(), Guest: restore.Target(s.model, lay).Guest, Layout: checkpoint.LayoutOf(lay)}
	blocks, err := s.m.prefix.Lookup(key, prompt, (len(prompt)-1)/lay.BlockSize)
	if err != nil || len(blocks.Tokens) == 0 {
		return 0, 0, nil // a cache: on any trouble, compute instead
	}
	var digests = make([]index.ChunkRef, 0)
	for _, l := range blocks.KV {
		digests = append(digests, l...)
	}
	if missing, err := s.missing(digests); err != nil || missing {
		return 0, 0, nil
	}
	if err := restore.Prefix(ctx, s.m.cfg.Index.Store(), in, blocks, s.m.cfg.Workers); err != nil {
		// Start over on a fresh instance and compute everything.
		in.Close()
		in, err2 := s.model.NewInstance(opts)
		if err2 != nil {
			s.inst = nil
			return 0, 0, fmt.Errorf("session %s: %w", s.name, err2)
		}
		s.inst = in
		return 0, 0, nil
	}
	s.reuse = []checkpoint.Blocks{blocks}
	return len(blocks.Tokens), time.Since(t0), nil
}

// missing reports whether any of the chunks lacks an index record.
func (s *Session) missing(refs []index.ChunkRef) (bool, error) {
	ds := make([]cas.Digest, 0, len(refs))
	for _, r := range refs {
		ds = append(ds, r.Digest)
	}
	miss, err := s.m.cfg.Index.MissingChunks(ds)
	return len(miss) > 0, err
}

// restoreLocked restores cp into a fresh instance and, on success only, makes it the live one.
func (s *Session) restoreLocked(ctx context.Context, cp *checkpoint.Checkpoint) (*restore.Result, error) {
	in, r, err := s.restoreInstance(ctx, cp)
	if err != nil {
		return nil, err
	}
	s.drop()
	s.inst = in
	return r, nil
}

// restoreInstance restores cp into a fresh instance of the session's model (loading cp's model
// first when it differs) and returns it; the live instance is not touched. On error the
// session's model and source are as they were.
func (s *Session) restoreInstance(ctx context.Context, cp *checkpoint.Checkpoint) (*engine.Instance, *restore.Result, error) {
	oldModel, oldSource := s.model, s.source
	if s.model == nil || s.model.Fingerprint() != cp.Model {
		if err := s.useModel(cp.ModelSource); err != nil {
			return nil, nil, err
		}
	}
	opts := restore.Options{Instance: s.m.instanceOptions(0, 0, engine.Sampler{}), Workers: s.m.cfg.Workers, HugePages: s.m.cfg.HugePages, Verify: s.m.cfg.Verify}
	in, r, err := restore.Restore(ctx, s.m.cfg.Index.Store(), s.model, cp, opts)
	if err != nil {
		if oldModel != nil {
			s.model, s.source = oldModel, oldSource
		}
		return nil, nil, fmt.Errorf("session %s: %w", s.name, err)
	}
	return in, r, nil
}

// Restore makes the session live from checkpoint id (zero: its head) in a fresh instance,
// replacing the live instance only on success. Restoring another checkpoint than the head
// moves the session's head there (compare-and-swap), so the next turn continues from it.
func (s *Session) Restore(ctx context.Context, id index.ID) (*restore.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	if id.IsZero() {
		if s.head == nil {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, s.name)
		}
		id = s.head.ID
	}
	cp := s.head
	if cp == nil || cp.ID != id {
		c, err := checkpoint.Load(s.m.cfg.Index, id)
		if err != nil {
			return nil, fmt.Errorf("session %s: %w", s.name, err)
		}
		cp = c
	}
	oldModel, oldSource := s.model, s.source
	in, r, err := s.restoreInstance(ctx, cp)
	if err != nil {
		return nil, err
	}
	if s.head == nil || s.head.ID != cp.ID {
		var expected index.ID
		if s.head != nil {
			expected = s.head.ID
		}
		if err := s.m.cfg.Index.CompareAndSwapRef(ctx, index.RefSession, s.name, expected, cp.ID); err != nil {
			// Someone else moved the head: keep the live session as it was.
			in.Close()
			if oldModel != nil {
				s.model, s.source = oldModel, oldSource
			}
			return nil, fmt.Errorf("session %s: move head to checkpoint %s: %w", s.name, cp.ID, err)
		}
		s.head = cp
	}
	s.drop()
	s.inst = in
	return r, nil
}

// Checkpoint captures the live session into a checkpoint whose parent is the head, then moves
// the head there (compare-and-swap: ErrConflict, wrapped, when someone else moved it). A
// session that is not live, or has not changed since its head, returns a Result for the head
// without writing anything (BlocksWritten 0).
func (s *Session) Checkpoint(ctx context.Context) (*checkpoint.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s.checkpointLocked(ctx)
}

func (s *Session) checkpointLocked(ctx context.Context) (*checkpoint.Result, error) {
	if s.inst == nil || !s.dirty {
		if s.head == nil {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, s.name)
		}
		return &checkpoint.Result{Checkpoint: s.head, Position: s.head.Position,
			Blocks: s.head.Layout.Layers * s.head.Layout.Blocks(s.head.Position), KVBytes: s.head.KVBytes()}, nil
	}
	opts := s.captureOptions()
	// The head moves in the checkpoint's own index transaction.
	var expected index.ID
	if s.head != nil {
		expected = s.head.ID
	}
	opts.MoveRef = &index.RefMove{Kind: index.RefSession, Name: s.name, Expected: expected}
	r, err := checkpoint.Capture(ctx, s.m.cfg.Index, s.model, s.inst, opts)
	if err != nil && len(s.reuse) > 0 && errors.Is(err, index.ErrMissingChunks) {
		opts.Reuse = nil // prefix chunks collected meanwhile: store them again
		r, err = checkpoint.Capture(ctx, s.m.cfg.Index, s.model, s.inst, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", s.name, err)
	}
	s.head, s.loaded, s.dirty, s.reuse = r.Checkpoint, true, false, nil
	if s.m.prefix != nil {
		s.m.prefix.Add(r.Checkpoint) // a cache: a failure costs only future prefix hits
	}
	return r, nil
}

func (s *Session) captureOptions() checkpoint.CaptureOptions {
	opts := checkpoint.CaptureOptions{Parent: s.head, Reuse: s.reuse, ModelSource: s.source, Workers: s.m.cfg.Workers, KVCodec: s.m.cfg.KVCodec,
		KeepLogits: s.m.cfg.KeepLogits}
	if s.m.cfg.AdjustCapture != nil {
		s.m.cfg.AdjustCapture(s.name, &opts)
	}
	return opts
}

// snapshotLocked takes the live, changed session's checkpoint as a snapshot and starts its
// commit on a goroutine (s.pending), whose index transaction also moves the head by
// compare-and-swap from the head the snapshot follows. The commit runs under ctx's values but not its cancellation (the
// turn's request may end first); Manager.Close waits for it.
func (s *Session) snapshotLocked(ctx context.Context) (*PendingCheckpoint, error) {
	opts := s.captureOptions()
	// The commit moves the head from the snapshot's parent in its own index transaction.
	var expected index.ID
	if opts.Parent != nil {
		expected = opts.Parent.ID
	}
	opts.MoveRef = &index.RefMove{Kind: index.RefSession, Name: s.name, Expected: expected}
	snap, err := checkpoint.TakeSnapshot(s.model, s.inst, opts)
	if err != nil {
		return nil, fmt.Errorf("session %s: %w", s.name, err)
	}
	c := &pendingCommit{done: make(chan struct{})}
	p := &PendingCheckpoint{Snapshot: snap.Duration(), Position: snap.Position(), Parent: snap.Parent(),
		Blocks: snap.Blocks(), BlocksCopied: snap.BlocksCopied(), BytesCopied: snap.BytesCopied(), c: c}
	// The snapshot holds everything since the head; if its commit fails, settle marks the
	// instance changed again, and the next checkpoint (reusing no prefix-cache blocks, which
	// may be what went missing) stores it all.
	s.pending, s.dirty, s.reuse = c, false, nil
	go s.commit(context.WithoutCancel(ctx), c, snap)
	return p, nil
}

// commit runs on its own goroutine: it commits snap, moving the head from snap's parent to it
// in the same transaction, and adds it to the prefix cache. It touches nothing of the session but its immutable fields.
func (s *Session) commit(ctx context.Context, c *pendingCommit, snap *checkpoint.Snapshot) {
	defer close(c.done)
	pos := snap.Position()
	r, err := snap.Commit(ctx, s.m.cfg.Index) // moves the head from parent too
	if err != nil {
		c.err = fmt.Errorf("session %s: checkpoint at position %d: %w", s.name, pos, err)
		s.m.cfg.Log.Error("deferred checkpoint failed; the session's head stays at its previous checkpoint",
			"session", s.name, "position", pos, "err", err)
		return
	}
	c.res = r
	if s.m.prefix != nil {
		s.m.prefix.Add(r.Checkpoint) // a cache: a failure costs only future prefix hits
	}
}

// Suspend checkpoints the session if it changed since its head and closes its instance. A
// failed deferred checkpoint is reported and the session left live (call Suspend again).
func (s *Session) Suspend(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.settle(ctx); err != nil {
		return err
	}
	if s.inst != nil && s.dirty {
		if _, err := s.checkpointLocked(ctx); err != nil {
			return err
		}
	}
	s.drop()
	return nil
}

// Instance calls fn with the live instance (nil when not live), holding the session's lock: fn
// must not keep the instance. For inspection (logits, tokens) by tests and daemons.
func (s *Session) Instance(fn func(in *engine.Instance) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(s.inst)
}
