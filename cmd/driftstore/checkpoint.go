package main

import (
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/session"
)

func init() {
	register(&command{
		name:    "checkpoint",
		args:    "--session NAME [--server URL]",
		summary: "checkpoint a session (every run turn checkpoints itself; this reports or writes the head)",
		run:     runCheckpoint,
	})
}

type checkpointOut struct {
	Session       string  `json:"session"`
	Checkpoint    string  `json:"checkpoint"`
	Parent        string  `json:"parent,omitempty"`
	Position      int     `json:"position"`
	Blocks        int     `json:"blocks"`
	BlocksWritten int     `json:"blocks_written"`
	KVBytes       int64   `json:"kv_bytes"`
	StoredNew     int64   `json:"stored_new_bytes"`
	MS            float64 `json:"ms"`
}

func runCheckpoint(c *cli, args []string) error {
	fs := c.flagSet()
	name := fs.String("session", "", "session name")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *name == "" || len(fs.Args()) > 0 {
		return usageError("want --session NAME and nothing else")
	}
	if c.globals.server != "" {
		return runCheckpointRemote(c, *name)
	}
	env, err := c.openSessions(session.Config{Threads: 1}, "")
	if err != nil {
		return err
	}
	defer env.Close()
	s, err := env.mgr.Session(*name)
	if err != nil {
		return usageError("%v", err)
	}
	// A session is live only inside the process that runs it (a daemon, or one run command,
	// which checkpoints at the end of its turn); here Checkpoint finds nothing newer than the
	// head and reports it without writing.
	r, err := s.Checkpoint(c.ctx)
	if err != nil {
		return err
	}
	cp := r.Checkpoint
	out := checkpointOut{Session: *name, Checkpoint: cp.ID.String(), Position: r.Position, Blocks: r.Blocks,
		BlocksWritten: r.BlocksWritten, KVBytes: r.KVBytes, StoredNew: r.StoredNew, MS: ms(r.Duration)}
	if !cp.Parent.IsZero() {
		out.Parent = cp.Parent.String()
	}
	return c.printCheckpoint(out)
}

func (c *cli) printCheckpoint(out checkpointOut) error {
	if c.globals.json {
		return c.printJSON(out)
	}
	c.printf("session    %s\n", out.Session)
	c.printf("checkpoint %s\n", out.Checkpoint)
	if out.Parent != "" {
		c.printf("parent     %s\n", out.Parent)
	}
	c.printf("position   %d tokens, %d KV blocks (%s)\n", out.Position, out.Blocks, progress.Bytes(out.KVBytes))
	if out.BlocksWritten == 0 && out.MS == 0 {
		c.printf("written    nothing: the session has not changed since this checkpoint\n")
	} else {
		c.printf("written    %d blocks, %s new at rest, in %.1f ms\n", out.BlocksWritten, progress.Bytes(out.StoredNew), out.MS)
	}
	return nil
}
