package main

import (
	"time"

	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
)

func init() {
	register(&command{
		name:    "gc",
		args:    "[--grace DURATION] [--dry-run]",
		summary: "delete manifests and chunks no tag or session reaches (keeping parents and recent uploads)",
		run:     runGC,
	})
}

func runGC(c *cli, args []string) error {
	fs := c.flagSet()
	grace := fs.Duration("grace", index.DefaultGrace, "leave unreferenced things younger than this (uploads in flight); 0 collects everything unreferenced")
	dry := fs.Bool("dry-run", false, "report what would be deleted, delete nothing")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("gc takes no arguments")
	}
	if *grace < 0 {
		return usageError("--grace must not be negative")
	}
	g := *grace
	if g == 0 {
		g = -1 // index: negative means no grace
	}
	r, err := c.openStorage(false)
	if err != nil {
		return err
	}
	defer r.Close()
	start := time.Now()
	res, err := r.GC(c.ctx, index.GCOptions{Grace: g, DryRun: *dry})
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(res)
	}
	verb := "deleted"
	if *dry {
		verb = "would delete"
	}
	c.printf("manifests: %d kept, %s %d\n", res.ManifestsKept, verb, res.ManifestsDeleted)
	c.printf("chunks:    %d kept, %s %d recorded and %d unrecorded\n", res.ChunksKept, verb, res.ChunksDeleted, res.UnrecordedChunks)
	c.printf("freed:     %s (grace %v, %v)\n", progress.Bytes(res.BytesFreed), *grace, time.Since(start).Round(time.Millisecond))
	if res.PacksCompacted > 0 || res.TempFiles > 0 {
		c.printf("store:     %d pack files compacted (%s reclaimed), %d temporary files removed\n",
			res.PacksCompacted, progress.Bytes(res.BytesReclaimed), res.TempFiles)
	}
	return nil
}
