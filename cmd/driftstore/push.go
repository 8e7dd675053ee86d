package main

import (
	"github.com/driftstore/driftstore/replicate"
)

func init() {
	register(&command{
		name:    "push",
		args:    "(--session NAME | --tag NAME)... --to URL [--force] [--concurrency N]",
		summary: "send sessions or tags to another daemon: only the chunks it lacks, then manifests, then the head",
		run:     func(c *cli, args []string) error { return runMove(c, args, true) },
	})
	register(&command{
		name:    "pull",
		args:    "(--session NAME | --tag NAME)... --from URL [--force] [--concurrency N]",
		summary: "fetch sessions or tags from a daemon into the data directory (or the --server daemon)",
		run:     func(c *cli, args []string) error { return runMove(c, args, false) },
	})
}

// runMove is push (local or --server → --to) and pull (--from → local or --server).
func runMove(c *cli, args []string, push bool) error {
	fs := c.flagSet()
	var tf transferFlags
	tf.register(fs)
	flagName, verb := "to", "pushed"
	if !push {
		flagName, verb = "from", "pulled"
	}
	peerURL := fs.String(flagName, "", "URL of the other daemon")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("unexpected argument %q", fs.Arg(0))
	}
	if *peerURL == "" {
		return usageError("%s needs --%s URL", c.command.name, flagName)
	}
	refs, err := tf.refs()
	if err != nil {
		return err
	}
	if len(refs) == 0 {
		return usageError("name at least one --session or --tag")
	}
	peer, err := c.newClient(*peerURL, c.peerTokenFile(&tf))
	if err != nil {
		return err
	}
	local, closeLocal, err := c.localOrServer(push)
	if err != nil {
		return err
	}
	defer closeLocal()
	src, dst := local, replicate.Peer(peer)
	if !push {
		src, dst = peer, local
	}
	opts, bar := tf.options(c, verb[:4])
	var out []transferJSON
	failed := false
	for _, r := range refs {
		st, err := replicate.Copy(c.ctx, src, dst, r.Kind, r.Name, opts)
		bar.Finish()
		c.report(verb, r, st, err)
		j := transferJSON{Ref: r.String(), Stats: st}
		if err != nil {
			failed = true
			j.Error = err.Error()
		}
		out = append(out, j)
	}
	if c.globals.json {
		if err := c.printJSON(map[string]any{"results": out}); err != nil {
			return err
		}
	}
	if failed {
		return errSilentFailure
	}
	return nil
}
