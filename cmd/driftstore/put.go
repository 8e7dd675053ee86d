package main

import (
	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/chunker"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/repo"
)

func init() {
	register(&command{
		name:    "put",
		args:    "FILE... [--tag NAME] [--chunker fastcdc|fixed] [--chunk-min N --chunk-avg N --chunk-max N | --chunk-size N] [--hint none|f16|f32]",
		summary: "store files as one manifest (a region per file) and print its ID last",
		run:     runPut,
	})
}

func runPut(c *cli, args []string) error {
	fs := c.flagSet()
	tag := fs.String("tag", "", "point this tag at the new manifest")
	method := fs.String("chunker", repo.ChunkFastCDC, "chunking: fastcdc (content-defined) or fixed")
	var cmin, cavg, cmax, csize sizeFlag
	fs.Var(&cmin, "chunk-min", "FastCDC minimum chunk size (default 16KiB)")
	fs.Var(&cavg, "chunk-avg", "FastCDC average chunk size (default 64KiB)")
	fs.Var(&cmax, "chunk-max", "FastCDC maximum chunk size (default 256KiB)")
	fs.Var(&csize, "chunk-size", "fixed chunk size (default 64KiB)")
	workers := fs.Int("workers", 0, "chunks stored at once (default: number of CPUs)")
	hintName := fs.String("hint", "none", "what the bytes are, for the codec choice: none, f16 (little-endian float16) or f32")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	files := fs.Args()
	if len(files) == 0 {
		return usageError("put needs at least one FILE")
	}
	spec := repo.ChunkerSpec{Method: *method}
	switch *method {
	case repo.ChunkFastCDC:
		if csize.set {
			return usageError("--chunk-size is for --chunker fixed; FastCDC takes --chunk-min/--chunk-avg/--chunk-max")
		}
		p := chunker.DefaultParams()
		if cmin.set {
			p.Min = int(cmin.n)
		}
		if cavg.set {
			p.Avg = int(cavg.n)
		}
		if cmax.set {
			p.Max = int(cmax.n)
		}
		if err := p.Validate(); err != nil {
			return usageError("%v", err)
		}
		spec.Params = p
	case repo.ChunkFixed:
		if cmin.set || cavg.set || cmax.set {
			return usageError("--chunk-min/--chunk-avg/--chunk-max are for --chunker fastcdc; fixed takes --chunk-size")
		}
		spec.Size = chunker.DefaultBlockSize
		if csize.set {
			spec.Size = int(csize.n)
		}
		if err := chunker.CheckFixedSize(spec.Size); err != nil {
			return usageError("%v", err)
		}
	default:
		return usageError("--chunker %q: want fastcdc or fixed", *method)
	}
	hint, ok := map[string]cas.Hint{"none": cas.HintNone, "f16": cas.HintFloat16, "f32": cas.HintFloat32}[*hintName]
	if !ok {
		return usageError("--hint %q: want none, f16 or f32", *hintName)
	}
	if *tag != "" {
		if err := index.ValidRefName(*tag); err != nil {
			return usageError("--tag: %v", err)
		}
	}
	r, err := c.openStorage(false)
	if err != nil {
		return err
	}
	defer r.Close()
	var total int64
	for _, f := range files {
		if st, err := statSize(f); err == nil {
			total += st
		}
	}
	bar := progress.New(c.stderr, "put", total)
	res, err := r.PutFiles(c.ctx, files, repo.PutOptions{Chunker: spec, Tag: *tag, Workers: *workers, Hint: hint, Progress: bar.Add})
	bar.Finish()
	if err != nil {
		return err
	}
	if c.globals.json {
		return c.printJSON(struct {
			repo.PutResult
			Chunker    string   `json:"chunker"`
			DedupRatio *float64 `json:"dedup_ratio"` // null when nothing new was stored
			Tag        string   `json:"tag,omitempty"`
		}{res, spec.String(), jsonRatio(res.DedupRatio()), *tag})
	}
	c.printf("bytes in:     %s (%d bytes, %d chunks, %s)\n", progress.Bytes(res.BytesIn), res.BytesIn, res.Chunks, spec)
	c.printf("new stored:   %s (%d bytes in %d new chunks)\n", progress.Bytes(res.NewBytes), res.NewBytes, res.UniqueNew)
	c.printf("dedup ratio:  %s\n", fmtRatio(res.DedupRatio()))
	if *tag != "" {
		c.printf("tag:          %s\n", *tag)
	}
	c.printf("%s\n", res.ID)
	return nil
}
