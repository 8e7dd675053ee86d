package main

import (
	"errors"

	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

func init() {
	register(&command{
		name:    "fork",
		args:    "--session NEW --from CHECKPOINT [--server URL]",
		summary: "start a new session from any checkpoint (ID, unique prefix, tag, or another session's name for its head)",
		run:     runFork,
	})
}

func runFork(c *cli, args []string) error {
	fs := c.flagSet()
	name := fs.String("session", "", "name of the new session")
	from := fs.String("from", "", "checkpoint to start from: ID, unique ID prefix, tag, or a session name (its head)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if *name == "" || *from == "" || len(fs.Args()) > 0 {
		return usageError("want --session NEW --from CHECKPOINT")
	}
	if c.globals.server != "" {
		return runForkRemote(c, *name, *from)
	}
	env, err := c.openSessions(1, 0, "")
	if err != nil {
		return err
	}
	defer env.Close()
	id, err := env.repo.Resolve(*from)
	if errors.Is(err, repo.ErrUnknownName) && index.ValidRefName(*from) == nil {
		if hid, herr := env.repo.Index().Ref(index.RefSession, *from); herr == nil {
			id, err = hid, nil
		}
	}
	if err != nil {
		return err
	}
	s, err := env.mgr.Fork(c.ctx, *name, id)
	if err != nil {
		return err
	}
	head, err := s.Head()
	if err != nil {
		return err
	}
	return c.printFork(*name, id.String(), head.Position)
}

func (c *cli) printFork(name, id string, position int) error {
	if c.globals.json {
		return c.printJSON(map[string]any{"session": name, "checkpoint": id, "position": position})
	}
	c.printf("session %s starts at checkpoint %s (%d tokens); continue it with: driftstore run --session %s -n N\n", name, id, position, name)
	return nil
}
