package main

import (
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/repo"
)

func init() {
	register(&command{
		name:    "get",
		args:    "ID|TAG -o FILE [--region NAME]",
		summary: "reassemble a manifest's content, verify every chunk, write it atomically",
		run:     runGet,
	})
}

func runGet(c *cli, args []string) error {
	fs := c.flagSet()
	out := fs.String("o", "", "output file (written to a temporary file, then renamed); - for stdout")
	region := fs.String("region", "", "write only this region (default: all regions, concatenated)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError("get takes one ID or TAG")
	}
	if *out == "" {
		return usageError("get needs -o FILE")
	}
	if *out == "-" && c.globals.json {
		return usageError("-o - and --json both want stdout")
	}
	r, err := c.openStorage(false)
	if err != nil {
		return err
	}
	defer r.Close()
	id, err := r.Resolve(fs.Arg(0))
	if err != nil {
		return err
	}
	var total int64
	if in, err := r.Inspect(id); err == nil {
		total = in.Size
	}
	bar := progress.New(c.stderr, "get", total)
	opts := repo.GetOptions{Region: *region, Progress: bar.Add}
	var n int64
	if *out == "-" {
		n, err = r.Get(c.ctx, id, c.stdout, opts)
	} else {
		n, err = r.GetFile(c.ctx, id, *out, opts)
	}
	bar.Finish()
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(map[string]any{"id": id, "file": *out, "bytes": n})
	}
	if *out != "-" {
		c.printf("wrote %s (%s, %d bytes) from %s\n", *out, progress.Bytes(n), n, id)
	}
	return nil
}
