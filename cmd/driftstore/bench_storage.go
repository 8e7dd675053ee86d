package main

import (
	"io"
	"strconv"

	"github.com/driftstore/driftstore/repo/benchstore"
)

func init() {
	registerBench(&benchmark{
		name:    "storage",
		args:    "[--size N] [--workers 1,2] [--dedup=false] [--sync] [--dir DIR[,DIR...]]",
		summary: "ingest and read-back throughput next to stage limits; dedup of a growing KV series",
		run:     runBenchStorage,
	})
}

func runBenchStorage(c *cli, args []string) error {
	fs := c.flagSet()
	size := sizeFlag{n: 256 << 20, set: true}
	fs.Var(&size, "size", "bytes per ingest/read-back case (default 256MiB)")
	workers := fs.String("workers", "1,2", "comma-separated worker counts")
	dedup := fs.Bool("dedup", true, "also run the growing-KV dedup series (6 GiB of ingest over 6 variants)")
	sync := fs.Bool("sync", false, "fsync chunks and index commits during ingest, as put does")
	dir := fs.String("dir", "", "comma-separated directories for temporary data directories, each measured (default: the system temp dir and /dev/shm)")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("bench storage takes no arguments")
	}
	var ws []int
	for _, s := range splitList(*workers) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 256 {
			return usageError("--workers %q: want comma-separated counts between 1 and 256", *workers)
		}
		ws = append(ws, n)
	}
	if size.n < 1<<20 {
		return usageError("--size must be at least 1MiB")
	}
	var log io.Writer
	if !c.globals.json {
		log = c.stderr
	}
	res, err := benchstore.Run(c.ctx, benchstore.Config{Size: size.n, Workers: ws, Dirs: splitList(*dir), Dedup: *dedup, Sync: *sync, Log: log})
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(res)
	}
	res.WriteTable(c.stdout)
	return nil
}
