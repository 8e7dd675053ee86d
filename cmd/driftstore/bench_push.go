package main

import (
	"io"

	"github.com/driftstore/driftstore/replicate/benchpush"
)

func init() {
	registerBench(&benchmark{
		name:    "push",
		args:    "[--size N] [--sync=true] [--reps N] [--dir DIR]",
		summary: "push and pull between two loopback daemons vs a plain HTTP copy; incremental wire bytes; missing-set requests/s",
		run:     runBenchPush,
	})
}

func runBenchPush(c *cli, args []string) error {
	fs := c.flagSet()
	size := sizeFlag{n: 32 << 20, set: true}
	fs.Var(&size, "size", "uncompressed bytes of the benchmark session (default 32MiB)")
	sync := fs.Bool("sync", true, "receiving data directories fsync as a real daemon does (and the plain copy fsyncs its file and directory)")
	reps := fs.Int("reps", 3, "repetitions of each measurement; the best is reported")
	dir := fs.String("dir", "", "directory for temporary data directories (default: the system temp dir)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("bench push takes no arguments")
	}
	if size.n < 1<<20 || size.n > 16<<30 {
		return usageError("--size must be between 1MiB and 16GiB")
	}
	if *reps < 1 || *reps > 100 {
		return usageError("--reps must be between 1 and 100")
	}
	var log io.Writer
	if !c.globals.json {
		log = c.stderr
	}
	res, err := benchpush.Run(c.ctx, benchpush.Config{Size: size.n, Reps: *reps, Dir: *dir, NoSync: !*sync, Log: log})
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(res)
	}
	res.WriteTable(c.stdout)
	return nil
}
