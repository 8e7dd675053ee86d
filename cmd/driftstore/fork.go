package main

import (
	"errors"

	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/session"
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
	if err := index.ValidRefName(*name); err != nil {
		return usageError("--session: %v", err)
	}
	if c.globals.server != "" {
		return runForkRemote(c, *name, *from)
	}
	env, err := c.openSessions(session.Config{Threads: 1}, "")
	if err != nil {
		return err
	}
	defer env.Close()
	id, err := resolveOrSession(env.repo, *from)
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

// resolveOrSession resolves s as st.Resolve does (an ID, a unique ID prefix or a tag) and,
// when that names nothing, as a session name: the session's head.
func resolveOrSession(st storage, s string) (index.ID, error) {
	id, err := st.Resolve(s)
	if !errors.Is(err, repo.ErrUnknownName) || index.ValidRefName(s) != nil {
		return id, err
	}
	var hid index.ID
	var herr error
	switch st := st.(type) {
	case *repo.Repo:
		hid, herr = st.Index().Ref(index.RefSession, s)
	case remoteStorage:
		hid, herr = st.c.Ref(st.ctx, index.RefSession, s)
	default:
		return id, err
	}
	if herr != nil || hid.IsZero() {
		return id, err
	}
	return hid, nil
}
