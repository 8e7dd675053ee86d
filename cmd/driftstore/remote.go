package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/repo"
)

// Helpers shared by push, pull and replicate: the daemon client, the ref flags and the
// transfer options.

// newClient returns a client for url with the bearer token from tokenFile ("" for none).
func (c *cli) newClient(url, tokenFile string) (*replicate.Client, error) {
	tok := ""
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	cl, err := replicate.NewClient(url, replicate.ClientOptions{Token: tok})
	if err != nil {
		return nil, usageError("%v", err)
	}
	return cl, nil
}

// peer is one end of a transfer as the CLI opens it: the daemon named by --server when set,
// else the local data directory.
func (c *cli) localOrServer(readOnly bool) (replicate.Peer, func(), error) {
	if c.globals.server != "" {
		cl, err := c.newClient(c.globals.server, c.globals.tokenFile)
		if err != nil {
			return nil, nil, err
		}
		return cl, func() {}, nil
	}
	if c.globals.data == "" {
		return nil, nil, usageError("no data directory: set --data or $DRIFTSTORE_DATA")
	}
	r, err := repo.Open(c.globals.data, repo.Options{ReadOnly: readOnly})
	if err != nil {
		return nil, nil, err
	}
	return replicate.NewLocal(r.Index()), func() { r.Close() }, nil
}

// listFlag collects a repeatable flag; each use may also hold a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, splitList(v)...)
	return nil
}

// transferFlags are the flags push, pull and replicate share.
type transferFlags struct {
	sessions, tags listFlag
	peerToken      string
	concurrency    int
	force          bool
}

func (t *transferFlags) register(fs *flag.FlagSet) {
	fs.Var(&t.sessions, "session", "session to move (repeatable, or a comma-separated list)")
	fs.Var(&t.tags, "tag", "tag to move (repeatable, or a comma-separated list)")
	fs.StringVar(&t.peerToken, "peer-token-file", "", "file holding the other daemon's bearer token (default: --token-file)")
	fs.IntVar(&t.concurrency, "concurrency", 4, "chunk batches in flight at once")
	fs.BoolVar(&t.force, "force", false, "move the other side's ref even when it is not an ancestor (loses its newer manifests)")
}

// refs returns the named refs, validated.
func (t *transferFlags) refs() ([]replicate.RefName, error) {
	var out []replicate.RefName
	for _, n := range t.sessions {
		if err := index.ValidRefName(n); err != nil {
			return nil, usageError("--session: %v", err)
		}
		out = append(out, replicate.RefName{Kind: index.RefSession, Name: n})
	}
	for _, n := range t.tags {
		if err := index.ValidRefName(n); err != nil {
			return nil, usageError("--tag: %v", err)
		}
		out = append(out, replicate.RefName{Kind: index.RefTag, Name: n})
	}
	return out, nil
}

func (c *cli) peerTokenFile(t *transferFlags) string {
	if t.peerToken != "" {
		return t.peerToken
	}
	return c.globals.tokenFile
}

// options returns transfer options with a progress bar on stderr when it is a terminal.
func (t *transferFlags) options(c *cli, label string) (replicate.Options, *progress.Bar) {
	bar := progress.New(c.stderr, label, 0)
	return replicate.Options{Concurrency: t.concurrency, Force: t.force, Progress: bar.Set}, bar
}

// transferJSON is one ref's result in --json output.
type transferJSON struct {
	Ref string `json:"ref"`
	replicate.Stats
	Error string `json:"error,omitempty"`
}

// report prints one ref's transfer for people.
func (c *cli) report(verb string, r replicate.RefName, st replicate.Stats, err error) {
	switch {
	case err != nil:
		c.logf("%s: not %s: %v\n", r, verb, err)
	case st.UpToDate:
		c.printf("%s: up to date at %s\n", r, st.Head)
	default:
		c.printf("%s: %s %d manifests, %d of %d chunks (%s stored, %s raw) → %s\n", r, verb, st.Manifests,
			st.ChunksSent, st.Chunks, progress.Bytes(st.Bytes), progress.Bytes(st.RawBytes), st.Head)
	}
}
