package main

import (
	"sort"

	"github.com/driftstore/driftstore/internal/progress"
)

func init() {
	register(&command{
		name:    "inspect",
		args:    "ID|TAG|SESSION [--chunks]",
		summary: "show a manifest: regions, chunks (digest, length, stored size, codec), metadata, refs",
		run:     runInspect,
	})
}

func runInspect(c *cli, args []string) error {
	fs := c.flagSet()
	chunks := fs.Bool("chunks", false, "list every chunk in human output (--json always does)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError("inspect takes one ID or TAG (or a session name: its head)")
	}
	r, err := c.openStorage(false)
	if err != nil {
		return err
	}
	defer r.Close()
	id, err := resolveOrSession(r, fs.Arg(0))
	if err != nil {
		return err
	}
	in, err := r.Inspect(id)
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(in)
	}
	c.printf("manifest   %s\nkind       %s\n", in.ID, in.Kind)
	if !in.Parent.IsZero() {
		c.printf("parent     %s\n", in.Parent)
	}
	c.printf("size       %s (%d bytes)\n", progress.Bytes(in.Size), in.Size)
	c.printf("chunks     %d distinct, %s stored\n", in.UniqueChunks, progress.Bytes(in.StoredBytes))
	for _, t := range in.Tags {
		c.printf("tag        %s\n", t)
	}
	for _, s := range in.Sessions {
		c.printf("session    %s\n", s)
	}
	keys := make([]string, 0, len(in.Meta))
	for k := range in.Meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := in.Meta[k]
		if b, ok := v.([]byte); ok {
			c.printf("meta       %s = <%d bytes>\n", k, len(b))
			continue
		}
		c.printf("meta       %s = %v\n", k, v)
	}
	for _, reg := range in.Regions {
		c.printf("region     %q: %s in %d chunks\n", reg.Name, progress.Bytes(reg.Size), len(reg.Chunks))
		if *chunks {
			for _, ch := range reg.Chunks {
				c.printf("  %s  off %d  len %d  stored %d  %s\n", ch.Digest, ch.Offset, ch.Length, ch.StoredSize, ch.Codec)
			}
		}
	}
	return nil
}
