package main

import (
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
)

func init() {
	register(&command{
		name:    "fsck",
		summary: "re-hash every chunk and check the index against the store; exit 1 on any problem",
		run:     runFsck,
	})
}

func runFsck(c *cli, args []string) error {
	fs := c.flagSet()
	workers := fs.Int("workers", 0, "chunks verified at once (default: number of CPUs)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("fsck takes no arguments")
	}
	r, err := c.openStorage(false)
	if err != nil {
		return err
	}
	defer r.Close()
	bar := progress.New(c.stderr, "fsck", 0)
	res, err := r.Fsck(c.ctx, index.FsckOptions{Workers: *workers, Progress: bar.Set})
	bar.Finish()
	if err != nil {
		return err
	}
	if c.globals.json {
		if res.Problems == nil {
			res.Problems = []index.Problem{}
		}
		if err := c.printJSON(res); err != nil {
			return err
		}
	} else {
		for _, p := range res.Problems {
			c.printf("PROBLEM %s\n", p)
		}
		c.printf("checked %d chunks (%s), %d records, %d manifests, %d refs; %d unrecorded chunks (garbage for gc)\n",
			res.Chunks, progress.Bytes(res.Bytes), res.Records, res.Manifests, res.Refs, res.Unrecorded)
		if res.OK() {
			c.printf("no problems\n")
		} else {
			c.printf("%d problems\n", len(res.Problems))
		}
	}
	if !res.OK() {
		c.logf("driftstore: fsck found %d problems\n", len(res.Problems))
		return errSilentFailure
	}
	return nil
}
