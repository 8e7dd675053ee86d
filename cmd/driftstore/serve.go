package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/driftstore/driftstore/backends"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/session"
)

func init() {
	register(&command{
		name:    "serve",
		args:    "--addr HOST:PORT [--data DIR] [--token-file FILE] [--model FILE] [--backend auto|cpu|cuda|metal] [--threads N] [--max-tokens N]",
		summary: "run the daemon: the HTTP API over the data directory, live sessions included (see docs/http.md)",
		run:     runServe,
	})
}

func runServe(c *cli, args []string) error {
	fs := c.flagSet()
	addr := fs.String("addr", "127.0.0.1:7700", "address to listen on (HOST:PORT; port 0 picks a free one)")
	model := fs.String("model", "", "default model of live sessions (GGUF file; default: the built-in tiny model); clients may ask for it or the built-in one, never for other files")
	backend := backends.Flag(fs)
	threads := fs.Int("threads", runtime.NumCPU(), "host threads per live session instance")
	maxTokens := fs.Int("max-tokens", wire.MaxGenerateTokens, "most tokens one generate request may ask for")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	kvCodec := kvCodecFlag(fs)
	keepLogits := keepLogitsFlag(fs)
	verify := verifyFlag(fs)
	var maxChunk sizeFlag
	fs.Var(&maxChunk, "max-chunk", "largest chunk accepted, uncompressed (default 64MiB)")
	deferCkpt := fs.Bool("defer-checkpoints", false, "reply to a generate request once the end-of-turn checkpoint is snapshotted (the turn's KV blocks and state copied, under a millisecond for a few tokens) and make it durable in the background; trades: a crash before that commit finishes loses the turn's checkpoint (the previous one stays restorable). Default: reply only after the checkpoint is durable")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long shutdown waits for requests in flight")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("serve takes no arguments, got %q", fs.Arg(0))
	}
	if err := backends.Check(*backend); err != nil {
		return usageError("--backend: %v", err)
	}
	if *threads < 1 || *maxTokens < 1 {
		return usageError("--threads and --max-tokens must be positive")
	}
	if *model != "" {
		if _, err := os.Stat(*model); err != nil {
			return fmt.Errorf("--model: %w", err)
		}
		abs, err := filepath.Abs(*model)
		if err != nil {
			return fmt.Errorf("--model: %w", err)
		}
		*model = abs
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var logger *slog.Logger
	switch *logFormat {
	case "text":
		logger = slog.New(slog.NewTextHandler(c.stderr, hopts))
	case "json":
		logger = slog.New(slog.NewJSONHandler(c.stderr, hopts))
	default:
		return usageError("--log-format %q: want text or json", *logFormat)
	}
	if c.globals.server != "" {
		return usageError("serve runs the daemon itself; --server is for talking to one")
	}
	codec, err := kvCodec()
	if err != nil {
		return err
	}
	ver, err := verify()
	if err != nil {
		return err
	}
	token, err := c.readToken()
	if err != nil {
		return err
	}
	if c.globals.data == "" {
		return usageError("no data directory: set --data or $DRIFTSTORE_DATA")
	}
	r, err := repo.Open(c.globals.data, repo.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	// Live sessions: the backend is opened now (an explicit GPU backend that does not work is
	// an error at once), the engine and the session manager on the first session request.
	sel, err := backends.Open(*backend, backends.Options{})
	if err != nil {
		return err
	}
	defer sel.Close()
	var live sessionEnv
	defer live.Close() // after the server's shutdown, which suspends the live sessions
	open := func() (*session.Manager, error) {
		eng, err := engine.New(engine.Options{CacheDir: engine.ModuleCacheDir(c.globals.data), Backend: sel.Backend})
		if err != nil {
			return nil, err
		}
		mgr, err := session.NewManager(session.Config{Index: r.Index(), Engine: eng, DataDir: c.globals.data, Threads: *threads, KVCodec: resolveKVCodec(codec, sel.Name()),
			DeferCheckpoints: *deferCkpt, KeepLogits: *keepLogits, Verify: ver, Log: logger})
		if err != nil {
			eng.Close()
			return nil, err
		}
		live.eng, live.mgr = eng, mgr
		logger.Info("live sessions ready", "backend", sel.String(), "model", modelName(*model), "module_from_cache", eng.ModuleLoad().FromCache,
			"defer_checkpoints", *deferCkpt, "kv_codec", string(resolveKVCodec(codec, sel.Name())))
		return mgr, nil
	}
	cfg := httpapi.Config{Repo: r, Token: token, Logger: logger, OpenSessions: open, Model: *model, MaxTokens: *maxTokens}
	if maxChunk.set {
		cfg.MaxChunkSize = maxChunk.n
	}
	srv, err := httpapi.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if token == "" && !isLoopback(ln.Addr()) {
		logger.Warn("serving without a token on a non-loopback address: anyone who reaches it can write", "addr", ln.Addr().String())
	}
	url := "http://" + ln.Addr().String()
	if c.globals.json {
		if err := c.printJSON(map[string]string{"url": url, "data": c.globals.data}); err != nil {
			return err
		}
	}
	c.printf("driftstore serving %s on %s\n", c.globals.data, url)

	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-c.ctx.Done():
	}
	logger.Info("shutting down", "grace", *grace)
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	err = srv.Shutdown(ctx)
	if serr := <-done; serr != nil && err == nil {
		err = serr
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: requests still running after %v were cut off", *grace)
	}
	return err
}

func modelName(m string) string {
	if m == "" {
		return session.BuiltinSource
	}
	return m
}

func isLoopback(a net.Addr) bool {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.IsLoopback()
	}
	return false
}

// readToken reads the bearer token from --token-file: the file's content without surrounding
// white space. No file gives "" (no token).
func (c *cli) readToken() (string, error) {
	if c.globals.tokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.globals.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", c.globals.tokenFile)
	}
	return tok, nil
}
