package main

import (
	"errors"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/replicate"
)

// The session commands (run, checkpoint, restore, fork) with --server: the session lives in the
// daemon (see httpapi/sessions.go), and the output is the local command's.

// sessionClient is the --server daemon's client.
func (c *cli) sessionClient() (*replicate.Client, error) {
	return c.newClient(c.globals.server, c.globals.tokenFile)
}

// remoteTurn is what run sends for one turn.
type remoteTurn struct {
	name, model, prompt, tokens string
	n                           int
	smp                         engine.Sampler
	set                         map[string]bool
	kv                          string
	blockSize                   int
	noCheckpoint                bool
}

func runRunRemote(c *cli, rt remoteTurn) error {
	cl, err := c.sessionClient()
	if err != nil {
		return err
	}
	_, err = cl.Session(c.ctx, rt.name)
	isNew := false
	var apiErr *replicate.Error
	switch {
	case errors.As(err, &apiErr) && apiErr.Code == wire.CodeSessionNotFound:
		isNew = true
	case err != nil:
		return err
	}
	req := wire.Generate{N: rt.n, Model: rt.model, NoCheckpoint: rt.noCheckpoint, Text: rt.prompt}
	if rt.tokens != "" {
		if req.Prompt, err = parseTokenList(rt.tokens); err != nil {
			return usageError("--tokens: %v", err)
		}
	}
	if isNew && len(req.Prompt) == 0 && req.Text == "" {
		return usageError("session %s is new: give --prompt or --tokens", rt.name)
	}
	// A new session takes every sampling flag (their defaults included), an existing one only
	// those given, as locally.
	ws := &wire.Sampler{}
	if isNew || rt.set["temp"] {
		ws.Temp = &rt.smp.Temp
	}
	if isNew || rt.set["top-k"] {
		ws.TopK = &rt.smp.TopK
	}
	if isNew || rt.set["top-p"] {
		ws.TopP = &rt.smp.TopP
	}
	if isNew || rt.set["seed"] {
		ws.Seed = &rt.smp.Seed
	}
	if ws.Temp != nil || ws.TopK != nil || ws.TopP != nil || ws.Seed != nil {
		req.Sampler = ws
	}
	if isNew || rt.set["kv"] {
		req.KV = rt.kv
	}
	if isNew || rt.set["block-size"] {
		req.BlockSize = rt.blockSize
	}
	stream := !c.globals.json
	if stream {
		c.printf("tokens:")
	}
	sum, err := cl.Generate(c.ctx, rt.name, req, func(ev wire.TokenEvent) error {
		if stream {
			c.printf(" %d", ev.ID)
		}
		return nil
	})
	if stream {
		c.printf("\n")
	}
	if err != nil {
		return err
	}
	out := runResult{
		generateResult: generateResult{
			Tokens: sum.Tokens, PromptTokens: sum.PromptTokens, Backend: sum.Backend, Text: sum.Text,
			PrefillMS: sum.PrefillMS, DecodeMS: sum.DecodeMS,
			PrefillTokS: perSecMS(sum.PromptTokens-sum.PrefixTokens, sum.PrefillMS), DecodeTokS: perSecMS(len(sum.Tokens), sum.DecodeMS),
		},
		Session: rt.name, Position: sum.Position, New: sum.New, PrefixTokens: sum.PrefixTokens, PrefixMS: sum.PrefixMS,
	}
	restoredFrom := ""
	if r := sum.Restored; r != nil {
		out.RestoreMS, restoredFrom = r.TotalMS, r.Checkpoint
	}
	if cp := sum.Checkpoint; cp != nil {
		out.Checkpoint, out.Parent, out.CheckpointMS, out.CheckpointPending = cp.Checkpoint, cp.Parent, cp.MS, cp.Pending
		out.BlocksWritten, out.Blocks, out.StoredNew = cp.BlocksWritten, cp.Blocks, cp.StoredNew
	}
	return c.printRun(out, sum.HasText, restoredFrom)
}

// perSecMS is a rate from a count and milliseconds (0 for no time).
func perSecMS(n int, ms float64) float64 {
	if ms <= 0 {
		return 0
	}
	return float64(n) / (ms / 1000)
}

func runCheckpointRemote(c *cli, name string) error {
	cl, err := c.sessionClient()
	if err != nil {
		return err
	}
	r, err := cl.CheckpointSession(c.ctx, name)
	if err != nil {
		return err
	}
	return c.printCheckpoint(checkpointOut{Session: name, Checkpoint: r.Checkpoint, Parent: r.Parent, Position: r.Position,
		Blocks: r.Blocks, BlocksWritten: r.BlocksWritten, KVBytes: r.KVBytes, StoredNew: r.StoredNew, MS: r.MS})
}

func runForkRemote(c *cli, name, from string) error {
	cl, err := c.sessionClient()
	if err != nil {
		return err
	}
	info, err := cl.CreateSession(c.ctx, wire.CreateSession{Name: name, From: from})
	if err != nil {
		return err
	}
	return c.printFork(name, info.Head, info.Position)
}

// runRestoreRemote restores in the daemon, which keeps the session live there. Unlike the local
// command it draws no first token (that would advance the live session's RNG).
func runRestoreRemote(c *cli, name, checkpoint string) error {
	cl, err := c.sessionClient()
	if err != nil {
		return err
	}
	r, err := cl.RestoreSession(c.ctx, name, checkpoint)
	if err != nil {
		return err
	}
	out := restoreOut{Session: name, Checkpoint: r.Checkpoint, HeadMoved: r.HeadMoved, Position: r.Position,
		Chunks: r.Chunks, KVBytes: r.KVBytes, StateBytes: r.StateBytes,
		InstanceMS: r.InstanceMS, AllocMS: r.AllocMS, DecodeMS: r.DecodeMS, LoadMS: r.LoadMS, TotalMS: r.TotalMS}
	if c.globals.json {
		return c.printJSON(out)
	}
	c.printRestoreHead(out)
	c.printf("live        in the daemon at %s; its next turn continues from here\n", cl.URL())
	return nil
}
