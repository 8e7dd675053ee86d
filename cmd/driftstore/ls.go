package main

import (
	"strings"
	"text/tabwriter"

	"github.com/driftstore/driftstore/internal/progress"
)

func init() {
	register(&command{
		name:    "ls",
		summary: "list manifests with their kind, size and tags, newest first",
		run:     runLs,
	})
}

func runLs(c *cli, args []string) error {
	fs := c.flagSet()
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("ls takes no arguments")
	}
	r, err := c.openStorage(false)
	if err != nil {
		return err
	}
	defer r.Close()
	entries, err := r.List()
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(map[string]any{"manifests": entries})
	}
	if len(entries) == 0 {
		c.printf("no manifests in %s\n", r.Dir())
		return nil
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	tw.Write([]byte("ID\tKIND\tSIZE\tREGIONS\tCHUNKS\tPUT\tREFS\n"))
	for _, e := range entries {
		refs := append(append([]string(nil), e.Tags...), prefixAll("session:", e.Sessions)...)
		kind := e.Kind
		if e.Error != "" {
			kind = "DAMAGED"
		}
		tw.Write([]byte(strings.Join([]string{
			e.ID.Hex()[:16], kind, progress.Bytes(e.Size), itoa(e.Regions), itoa(e.Chunks),
			e.Put.Local().Format("2006-01-02 15:04:05"), strings.Join(refs, ","),
		}, "\t") + "\n"))
	}
	return tw.Flush()
}

func prefixAll(p string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = p + s
	}
	return out
}
