package main

import (
	"time"

	"github.com/driftstore/driftstore/replicate"
)

func init() {
	register(&command{
		name:    "replicate",
		args:    "--to URL [--session NAME... | --tag NAME... | --all] [--watch [--interval D]]",
		summary: "keep another daemon up to date with sessions and tags of the data directory (or the --server daemon)",
		run:     runReplicate,
	})
}

func runReplicate(c *cli, args []string) error {
	fs := c.flagSet()
	var tf transferFlags
	tf.register(fs)
	to := fs.String("to", "", "URL of the daemon to replicate to")
	all := fs.Bool("all", false, "every session and tag (also those created while --watch runs)")
	watch := fs.Bool("watch", false, "keep replicating until interrupted")
	interval := fs.Duration("interval", 2*time.Second, "with --watch, how often to look for changes")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if *to == "" {
		return usageError("replicate needs --to URL")
	}
	refs, err := tf.refs()
	if err != nil {
		return err
	}
	if *all == (len(refs) > 0) {
		return usageError("name refs with --session/--tag, or give --all (not both)")
	}
	if *interval <= 0 {
		return usageError("--interval must be positive")
	}
	dst, err := c.newClient(*to, c.peerTokenFile(&tf))
	if err != nil {
		return err
	}
	opts, bar := tf.options(c, "replicate")

	// One round: open the source (a local data directory is opened read-only and only for the
	// round, so other commands can use it in between), copy every ref, close.
	round := func() ([]replicate.Result, error) {
		src, closeSrc, err := c.localOrServer(true)
		if err != nil {
			return nil, err
		}
		defer closeSrc()
		res, err := replicate.Replicate(c.ctx, src, dst, refs, opts)
		bar.Finish()
		return res, err
	}
	failed := false
	show := func(res []replicate.Result, err error) {
		if err != nil {
			c.logf("replicate: %v\n", err)
			failed = true
		}
		var out []transferJSON
		for _, r := range res {
			if r.Err != nil {
				failed = true
			}
			if *watch && r.Err == nil && r.Stats.UpToDate {
				continue // quiet while nothing changes
			}
			c.report("replicated", r.Ref, r.Stats, r.Err)
			j := transferJSON{Ref: r.Ref.String(), Stats: r.Stats}
			if r.Err != nil {
				j.Error = r.Err.Error()
			}
			out = append(out, j)
		}
		if c.globals.json && (len(out) > 0 || !*watch) {
			_ = c.printJSON(map[string]any{"time": time.Now().UTC(), "results": out})
		}
	}
	if !*watch {
		show(round())
		if failed {
			return errSilentFailure
		}
		return nil
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		show(round())
		select {
		case <-c.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
