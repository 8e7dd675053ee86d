package wire

// Live sessions (API version 1): a daemon started with a session manager keeps named sessions
// live in memory between requests.
//
//	GET    /v1/sessions                    SessionList
//	POST   /v1/sessions                    CreateSession → 201 SessionInfo
//	GET    /v1/sessions/{name}             SessionInfo
//	DELETE /v1/sessions/{name}             suspend: checkpoint if changed, leave memory → SessionInfo
//	POST   /v1/sessions/{name}/generate    Generate → text/event-stream of "token" events, then "done"
//	POST   /v1/sessions/{name}/checkpoint  → CheckpointSummary
//	POST   /v1/sessions/{name}/restore     RestoreRequest → RestoreSummary
const (
	PathSessions = "/v1/sessions" // GET list, POST create; + "/" + name [+ "/generate" | "/checkpoint" | "/restore"]
)

// Default limits of the session routes.
const (
	// MaxGenerateTokens is the most tokens one generate request may ask for (n).
	MaxGenerateTokens = 4096
	// MaxPromptTokens is the most prompt tokens one request may carry.
	MaxPromptTokens = 32768
	// MaxPromptText is the longest prompt text one request may carry, in bytes.
	MaxPromptText = 128 << 10
)

// Model names a request may use; the daemon never opens a file a client names.
const (
	// ModelDefault is the daemon's --model, or the built-in model when it has none ("" means
	// the same).
	ModelDefault = "default"
	// ModelBuiltin is the built-in tiny model.
	ModelBuiltin = "builtin"
)

// Error codes of the session routes.
const (
	CodeBadToken         = "bad_token"         // a token id outside the model's vocabulary
	CodeTokenLimit       = "token_limit"       // n, the prompt or the context over its limit
	CodeBadModel         = "bad_model"         // a model name the daemon does not serve
	CodeSessionNotFound  = "session_not_found" // no session of that name
	CodeSessionExists    = "session_exists"    // create or fork of a name in use
	CodeModelMismatch    = "model_mismatch"    // a checkpoint for another model, guest or layout
	CodeSessionsDisabled = "sessions_disabled" // the daemon serves no live sessions
	CodeCanceled         = "canceled"          // generation stopped (stream "error" event only)
	CodeGenerateFailed   = "generate_failed"   // generation failed midway (stream "error" event only)
)

// Sampler settings. A nil field keeps the current value (for a new session: the engine's
// default: temp 0 (greedy), top_k 0 (all), top_p 1, seed 0). Setting any field of an existing
// session reseeds its RNG (from seed, or the session's seed when seed is not given).
type Sampler struct {
	Temp *float32 `json:"temp,omitempty"`
	TopK *int     `json:"top_k,omitempty"`
	TopP *float32 `json:"top_p,omitempty"`
	Seed *uint64  `json:"seed,omitempty"`
}

// SamplerValues is a session's full sampler settings.
type SamplerValues struct {
	Temp float32 `json:"temp"`
	TopK int     `json:"top_k"`
	TopP float32 `json:"top_p"`
	Seed uint64  `json:"seed"`
}

// CreateSession is the body of POST /v1/sessions.
//
// With From, the session is forked from that checkpoint (an ID, a unique ID prefix, a tag, or a
// session's name for its head) and the other fields must be empty. Otherwise, with a prompt
// (Prompt or Text) the session is created at once: the prompt is fed and checkpointed. Without
// one it is created pending: its settings are kept in the daemon's memory until the first
// generate, which must bring the prompt.
type CreateSession struct {
	Name      string   `json:"name"`
	Model     string   `json:"model,omitempty"` // "", ModelDefault, ModelBuiltin or the daemon's --model path
	Sampler   *Sampler `json:"sampler,omitempty"`
	KV        string   `json:"kv,omitempty"`         // f16 (default) or f32
	BlockSize int      `json:"block_size,omitempty"` // KV block positions, default 16
	Prompt    []int32  `json:"prompt,omitempty"`     // token ids
	Text      string   `json:"text,omitempty"`       // prompt text, tokenized by the model (BOS first)
	From      string   `json:"from,omitempty"`
}

// Generate is the body of POST /v1/sessions/{name}/generate: feed the prompt (if any),
// generate N tokens, checkpoint. A session that does not exist yet is created by it (Model,
// Sampler, KV and BlockSize then apply, and a prompt is required); for an existing one Model,
// when given, must be a model with the session's fingerprint, and KV and BlockSize must be
// empty or equal to the session's.
type Generate struct {
	Prompt       []int32  `json:"prompt,omitempty"`
	Text         string   `json:"text,omitempty"` // tokenized by the model; BOS first for a new session
	N            int      `json:"n"`
	Sampler      *Sampler `json:"sampler,omitempty"`
	Model        string   `json:"model,omitempty"`
	KV           string   `json:"kv,omitempty"`
	BlockSize    int      `json:"block_size,omitempty"`
	NoCheckpoint bool     `json:"no_checkpoint,omitempty"`
}

// Server-sent event names of a generate stream. Each event's data is one line of JSON:
// "token" a TokenEvent (its SSE id is the token's index in the turn), "done" a TurnSummary (the
// last event of a successful turn), "error" an ErrorBody (the last event of a failed one; the
// session is then back at its last checkpoint).
const (
	EventToken = "token"
	EventDone  = "done"
	EventError = "error"
)

// MediaTypeEventStream is the content type of a generate stream.
const MediaTypeEventStream = "text/event-stream"

// TokenEvent is one generated token.
type TokenEvent struct {
	Index int    `json:"i"`    // 0 for the turn's first token
	ID    int32  `json:"id"`   // the token id
	Text  string `json:"text"` // the text it completes: UTF-8 held back until whole; "" without a tokenizer
}

// TurnSummary is the "done" event of a generate stream.
type TurnSummary struct {
	Session      string             `json:"session"`
	New          bool               `json:"new"` // the turn created the session
	Tokens       []int32            `json:"tokens"`
	Text         string             `json:"text,omitempty"` // decoded tokens, when the model has a tokenizer
	HasText      bool               `json:"has_text"`       // the model has a tokenizer
	PromptTokens int                `json:"prompt_tokens"`
	PrefixTokens int                `json:"prefix_cache_tokens"`
	Position     int                `json:"position"`
	Backend      string             `json:"backend"`
	PrefillMS    float64            `json:"prefill_ms"`
	PrefixMS     float64            `json:"prefix_cache_ms,omitempty"`
	DecodeMS     float64            `json:"decode_ms"`
	Restored     *RestoreSummary    `json:"restored,omitempty"`   // the restore of a session that was not live
	Checkpoint   *CheckpointSummary `json:"checkpoint,omitempty"` // nil with NoCheckpoint
}

// CheckpointSummary describes a checkpoint written (or, with BlocksWritten 0 and MS 0, the
// head reported because nothing changed).
//
// In a generate's summary from a daemon that defers checkpoints (serve --defer-checkpoints),
// Pending says the turn's checkpoint was snapshotted but is not durable yet: Checkpoint is
// empty (its ID is known only once its chunks are hashed), BlocksWritten is the blocks it will
// store, StoredNew is 0, and MS and SnapshotMS are the snapshot's time (what the turn waited).
// The session's head moves when the commit succeeds; the session's next request waits for it.
type CheckpointSummary struct {
	Session       string  `json:"session"`
	Checkpoint    string  `json:"checkpoint"`
	Parent        string  `json:"parent,omitempty"`
	Position      int     `json:"position"`
	Blocks        int     `json:"blocks"`
	BlocksWritten int     `json:"blocks_written"`
	KVBytes       int64   `json:"kv_bytes"`
	StoredNew     int64   `json:"stored_new_bytes"`
	MS            float64 `json:"ms"`
	Pending       bool    `json:"pending,omitempty"`
	SnapshotMS    float64 `json:"snapshot_ms,omitempty"`
}

// RestoreRequest is the body of POST /v1/sessions/{name}/restore. Checkpoint (an ID, unique
// prefix or tag) defaults to the session's head; another checkpoint becomes the head.
type RestoreRequest struct {
	Checkpoint string `json:"checkpoint,omitempty"`
}

// RestoreSummary describes a restore into a fresh instance.
type RestoreSummary struct {
	Session    string  `json:"session"`
	Checkpoint string  `json:"checkpoint"`
	HeadMoved  bool    `json:"head_moved"`
	Position   int     `json:"position"`
	Chunks     int     `json:"chunks"`
	KVBytes    int64   `json:"kv_bytes"`
	StateBytes int64   `json:"state_bytes"`
	InstanceMS float64 `json:"instance_ms"`
	AllocMS    float64 `json:"alloc_ms"`
	DecodeMS   float64 `json:"decode_ms"`
	LoadMS     float64 `json:"load_state_ms"`
	TotalMS    float64 `json:"restore_ms"`
}

// SessionInfo describes one session.
type SessionInfo struct {
	Name     string         `json:"name"`
	Head     string         `json:"head,omitempty"` // "" for a pending session
	Position int            `json:"position"`
	Model    string         `json:"model,omitempty"` // the model source recorded
	Live     bool           `json:"live"`            // has an instance in the daemon's memory
	Pending  bool           `json:"pending,omitempty"`
	Sampler  *SamplerValues `json:"sampler,omitempty"` // GET of one session only
	KV       string         `json:"kv,omitempty"`
	Block    int            `json:"block_size,omitempty"`
}

// SessionList is the body of GET /v1/sessions.
type SessionList struct {
	Sessions []SessionInfo `json:"sessions"`
}
