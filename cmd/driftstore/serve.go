package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/repo"
)

func init() {
	register(&command{
		name:    "serve",
		args:    "--addr HOST:PORT [--data DIR] [--token-file FILE] [--model FILE] [--backend auto|cpu|cuda|metal]",
		summary: "run the daemon: the HTTP API over the data directory (see httpapi)",
		run:     runServe,
	})
}

func runServe(c *cli, args []string) error {
	fs := c.flagSet()
	addr := fs.String("addr", "127.0.0.1:7700", "address to listen on (HOST:PORT; port 0 picks a free one)")
	model := fs.String("model", "", "model for live sessions (GGUF file)")
	backend := fs.String("backend", "auto", "compute backend for live sessions: auto, cpu, cuda or metal")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	var maxChunk sizeFlag
	fs.Var(&maxChunk, "max-chunk", "largest chunk accepted, uncompressed (default 64MiB)")
	grace := fs.Duration("shutdown-grace", 30*time.Second, "how long shutdown waits for requests in flight")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("serve takes no arguments, got %q", fs.Arg(0))
	}
	switch *backend {
	case "auto", "cpu", "cuda", "metal":
	default:
		return usageError("--backend %q: want auto, cpu, cuda or metal", *backend)
	}
	if *model != "" {
		if _, err := os.Stat(*model); err != nil {
			return fmt.Errorf("--model: %w", err)
		}
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
	cfg := httpapi.Config{Repo: r, Token: token, Logger: logger}
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
	if *model != "" {
		logger.Info("live sessions are not served yet; --model and --backend are kept for them", "model", *model, "backend", *backend)
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
