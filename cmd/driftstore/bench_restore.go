package main

import (
	"context"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/internal/progress"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/restore"
	"github.com/driftstore/driftstore/session"
)

func init() {
	registerBench(&benchmark{
		name:    "restore",
		args:    "[--models tiny,llama-3.2-1b] [--contexts 24,128,512,2048,4096] [--type q8_0] [--kv f16] [--threads N] [--reps 3] [--turns 8] [--kv-codec float|raw] [--reserve=true|false] [--huge-pages] [--reprefill=true|false] [--keep-logits] [--verify sealed|full]",
		summary: "checkpoint (full, incremental), restore, first token after restore vs re-prefill, stored bytes, restore over the verify-and-copy floor",
		run:     runBenchRestore,
	})
}

type benchRestoreRow struct {
	Model          string  `json:"model"`
	Context        int     `json:"context"`
	KVBytes        int64   `json:"kv_bytes"`
	FullMS         float64 `json:"checkpoint_full_ms"`
	IncrMS         float64 `json:"checkpoint_incr16_ms"`
	IncrBlocks     int     `json:"checkpoint_incr16_blocks"`
	IncrCommitMS   float64 `json:"checkpoint_incr16_commit_ms"`   // of IncrMS: recording the chunks and committing the manifest
	IncrSyncMS     float64 `json:"checkpoint_incr16_sync_ms"`     // of IncrMS: the commit after the puts (the chunks' write and barrier, see checkpoint.Result)
	IncrIndexMS    float64 `json:"checkpoint_incr16_index_ms"`    // of IncrMS: the index transaction, its syncs included
	IncrFloorMS    float64 `json:"incr16_hash_store_blocks_ms"`   // hashing and storing those blocks alone
	IncrSnapMS     float64 `json:"checkpoint_incr16_snapshot_ms"` // its turn latency when deferred (serve --defer-checkpoints): the snapshot
	InstanceMS     float64 `json:"new_instance_ms"`               // making a fresh instance (excluded from restore and re-prefill)
	RestoreMS      float64 `json:"restore_ms"`                    // into a ready fresh instance
	RestoreAllocMS float64 `json:"restore_alloc_ms"`
	RestoreDecMS   float64 `json:"restore_decode_ms"`
	RestoreLoadMS  float64 `json:"restore_load_state_ms"`
	TTFTRestoreMS  float64 `json:"ttft_restore_ms"`
	SampleMS       float64 `json:"ttft_restore_sample_ms"` // of TTFTRestoreMS: the first Sample after the restore
	PrefillMS      float64 `json:"reprefill_ms"`
	TTFTPrefillMS  float64 `json:"ttft_reprefill_ms"`
	TTFTSpeedup    float64 `json:"ttft_speedup"`
	RestoreSpeedup float64 `json:"restore_speedup"` // re-prefill / restore
	StoredPerToken float64 `json:"stored_bytes_per_token"`
	FloorMS        float64 `json:"floor_ms"` // KV bytes ÷ verify-and-copy speed
	OverFloor      float64 `json:"restore_over_floor"`
	Identical      bool    `json:"continuation_identical"`
}

type benchRestoreConv struct {
	Model       string  `json:"model"`
	Turns       int     `json:"turns"`
	Position    int     `json:"position"`
	KVBytes     int64   `json:"final_kv_bytes"`
	StoredBytes int64   `json:"stored_bytes"`
	Ratio       float64 `json:"stored_over_kv"`
}

type benchRestoreResult struct {
	Backend       string             `json:"backend"`
	Threads       int                `json:"threads"`
	Workers       int                `json:"workers"`
	KV            string             `json:"kv"`
	KVCodec       string             `json:"kv_codec"`
	Verify        string             `json:"verify"`      // how restores check chunks: sealed or full (the floor checks the same way)
	KeepLogits    bool               `json:"keep_logits"` // checkpoints keep the whole logits vector, not the best 64
	Reserve       bool               `json:"reserve"`     // instances made for the context (KV memory resident at creation)
	HugePages     bool               `json:"huge_pages"`
	CopyVerifyGBs float64            `json:"verify_copy_gb_s"`
	Rows          []benchRestoreRow  `json:"rows"`
	Conversations []benchRestoreConv `json:"conversations"`
}

func runBenchRestore(c *cli, args []string) error {
	fs := c.flagSet()
	models := fs.String("models", "tiny,llama-3.2-1b", "synthetic presets to run (generated into DATA/models on first use)")
	ctxList := fs.String("contexts", "24,128,512,2048,4096", "context lengths")
	typ := fs.String("type", "q8_0", "weight type of the synthetic models")
	kvFlag := fs.String("kv", "f16", "KV cache element type")
	threads := fs.Int("threads", runtime.NumCPU(), "host threads for the compute ops")
	reps := fs.Int("reps", 3, "repetitions of each restore and re-prefill (best is reported)")
	incrReps := fs.Int("incr-reps", 9, "incremental checkpoints of 16 new tokens per context, each beside storing its blocks alone (medians are reported: a barrier's time is long-tailed)")
	turns := fs.Int("turns", 8, "turns of the stored-bytes conversation (0: skip)")
	codecFlag := fs.String("kv-codec", "float", "how checkpoints store KV blocks: float (the float16 byte-plane codec for f16 KV) or raw (no hint: raw, zstd only where it pays)")
	plain := fs.Bool("plain-kv", false, "the same as --kv-codec raw")
	reserve := fs.Bool("reserve", true, "make restore and re-prefill instances for the context (engine.InstanceOptions.Context: KV memory allocated and resident at creation, paid in inst)")
	huge := fs.Bool("huge-pages", false, "restore with transparent huge pages under the fresh KV blocks (restore.IntoOptions.HugePages)")
	reprefill := fs.Bool("reprefill", true, "measure re-prefill into a fresh instance (false: skip it, the slow part at long contexts; its columns read 0)")
	keepLogits := fs.Bool("keep-logits", false, "checkpoints keep the whole logits vector (by default the greedy sampler's checkpoints keep the best 64 logits)")
	verify := verifyFlag(fs)
	if err := c.parse(fs, args); err != nil {
		return err
	}
	var err error
	if benchVerify, err = verify(); err != nil {
		return err
	}
	codec, err := checkpoint.ParseKVCodec(*codecFlag)
	if err != nil {
		return usageError("--kv-codec: %v", err)
	}
	if *plain {
		codec = checkpoint.KVCodecRaw
	}
	if codec == checkpoint.KVCodecDefault {
		codec = checkpoint.KVCodecFloat
	}
	benchKVCodec, benchHugePages, benchReserve, benchReprefill, benchKeepLogits = codec, *huge, *reserve, *reprefill, *keepLogits
	contexts, err := parseInts(*ctxList, "contexts")
	if err != nil {
		return err
	}
	slices.Sort(contexts)
	t, err := gguf.ParseType(*typ)
	if err != nil {
		return usageError("--type: %v", err)
	}
	kv, err := engine.ParseKVType(*kvFlag)
	if err != nil {
		return usageError("--kv: %v", err)
	}
	if *reps < 1 || *threads < 1 || *incrReps < 1 {
		return usageError("--reps, --incr-reps and --threads must be positive")
	}
	eng, err := engine.New(engine.Options{CacheDir: engine.ModuleCacheDir(c.globals.data)})
	if err != nil {
		return err
	}
	defer eng.Close()
	tmp, err := os.MkdirTemp("", "driftstore-bench-restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	workers := runtime.GOMAXPROCS(0)
	res := benchRestoreResult{Backend: eng.Backend().Name(), Threads: *threads, Workers: workers, KV: kv.String(), KVCodec: string(codec), Reserve: *reserve, HugePages: *huge, KeepLogits: *keepLogits,
		Verify: benchVerify.String()}
	ctx := c.ctx

	for _, preset := range splitList(*models) {
		c.logf("model %s %s: generating or opening...\n", preset, t)
		path, err := engine.SynthModelPath(c.globals.data, preset, t, 1, nil)
		if err != nil {
			return err
		}
		model, err := eng.LoadModel(path)
		if err != nil {
			return err
		}
		model.Fingerprint()
		rows, conv, gbs, err := benchRestoreModel(ctx, c, model, path, preset, tmp, contexts, kv, *threads, workers, *reps, *incrReps, *turns)
		model.Close()
		if err != nil {
			return err
		}
		res.CopyVerifyGBs = gbs
		res.Rows = append(res.Rows, rows...)
		if conv != nil {
			res.Conversations = append(res.Conversations, *conv)
		}
	}
	if c.globals.json {
		return c.printJSON(res)
	}
	logits := "the best 64 logits (greedy)"
	if res.KeepLogits {
		logits = "the whole logits vector"
	}
	c.printf("driftstore bench restore: backend %s, %d threads, %d workers, KV %s stored %s, checkpoints keep %s, instances made for the context %v, huge pages %v, %s/%s, %d CPUs; restores verify %s; verify-and-copy (%s) %.2f GB/s\n",
		res.Backend, res.Threads, res.Workers, res.KV, res.KVCodec, logits, res.Reserve, res.HugePages, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), res.Verify, verifyHashName(benchVerify), res.CopyVerifyGBs)
	c.printf("times in ms (restore, and re-prefill up to 1024 tokens: best of %d; incr16, isync, iindex, isnap, store16 and incr ×: medians of %d); restore and re-prefill into a ready fresh instance (making one: inst, which with --reserve includes making the context's KV memory resident); incr16: checkpoint after 16 new tokens, the session head moved with it (of which isync: the commit after the chunks are hashed — with a pack store's journal, writing them and the one barrier of them and the journal entry, the manifest encoded and checked beside it; iindex: waiting for an index transaction, 0 with the journal), isnap: the turn latency of the same checkpoint deferred (the snapshot: state and those blocks copied), store16: hashing and storing those blocks alone (each with a byte changed: new chunks) into the same store\n", *reps, *incrReps)
	c.printf("%-13s %5s %9s %8s %7s %6s %6s %6s %7s %6s %6s %8s %7s %6s %8s %9s %9s %7s %7s %8s %7s %6s\n",
		"model", "ctx", "KV", "ckpt", "incr16", "isync", "iindex", "isnap", "store16", "incr ×", "inst", "restore", "decode", "load", "TTFT rst", "reprefill", "TTFT pref", "TTFT ×", "rst ×", "B/token", "floor", "×floor")
	for _, r := range res.Rows {
		incrX := 0.0
		if r.IncrFloorMS > 0 {
			incrX = r.IncrMS / r.IncrFloorMS
		}
		c.printf("%-13s %5d %9s %8.1f %7.1f %6.1f %6.1f %6.2f %7.1f %6.2f %6.2f %8.2f %7.2f %6.2f %8.2f %9.1f %9.1f %7.1f %7.1f %8.0f %7.2f %6.2f%s\n",
			r.Model, r.Context, progress.Bytes(r.KVBytes), r.FullMS, r.IncrMS, r.IncrSyncMS, r.IncrIndexMS, r.IncrSnapMS, r.IncrFloorMS, incrX, r.InstanceMS, r.RestoreMS, r.RestoreDecMS, r.RestoreLoadMS, r.TTFTRestoreMS,
			r.PrefillMS, r.TTFTPrefillMS, r.TTFTSpeedup, r.RestoreSpeedup, r.StoredPerToken, r.FloorMS, r.OverFloor,
			map[bool]string{true: "", false: "  CONTINUATION DIFFERS"}[r.Identical])
	}
	for _, cv := range res.Conversations {
		c.printf("%s: %d-turn conversation to %d tokens: stored %s at rest for %s of final KV (%.2f×)\n",
			cv.Model, cv.Turns, cv.Position, progress.Bytes(cv.StoredBytes), progress.Bytes(cv.KVBytes), cv.Ratio)
	}
	return nil
}

// benchKVCodec is --kv-codec, benchHugePages --huge-pages, benchReserve --reserve,
// benchReprefill --reprefill, benchKeepLogits --keep-logits, benchVerify --verify.
var (
	benchVerify                                                   restore.Verify
	benchKVCodec                                                  checkpoint.KVCodec
	benchHugePages, benchReserve, benchReprefill, benchKeepLogits bool
)

// benchTokens is a deterministic prompt of n ids below vocab.
func benchTokens(n, vocab int, salt uint32) []int32 {
	out := make([]int32, n)
	x := 2166136261 ^ salt
	for i := range out {
		x ^= uint32(i)
		x *= 16777619
		out[i] = int32(x % uint32(vocab))
	}
	return out
}

func storedBytes(ctx context.Context, s cas.Store) (int64, error) {
	var n int64
	err := s.Walk(ctx, func(in cas.Info) error { n += in.StoredSize; return nil })
	return n, err
}

// verifyCopySpeed measures copying data into a destination while hashing it with BLAKE3,
// blockLen bytes at a time on workers goroutines: what a restore of raw chunks must at least do.
func verifyCopySpeed(data []byte, blockLen, workers int) float64 {
	hash := func(b []byte) { _ = cas.Sum(b) }
	if benchVerify == restore.VerifySealed {
		hash = func(b []byte) { _ = crc32.Checksum(b, castagnoliTable) }
	}
	dst := make([]byte, len(data))
	copy(dst, data) // fault the pages in
	best := time.Duration(1 << 62)
	for rep := 0; rep < 3; rep++ {
		t0 := time.Now()
		var wg sync.WaitGroup
		n := (len(data) + blockLen - 1) / blockLen
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += workers {
					lo, hi := i*blockLen, min((i+1)*blockLen, len(data))
					copy(dst[lo:hi], data[lo:hi])
					hash(dst[lo:hi])
				}
			}()
		}
		wg.Wait()
		best = min(best, time.Since(t0))
	}
	return float64(len(data)) / best.Seconds()
}

func benchRestoreModel(ctx context.Context, c *cli, model *engine.Model, path, name, tmp string, contexts []int, kv engine.KVType,
	threads, workers, reps, incrReps, turns int) ([]benchRestoreRow, *benchRestoreConv, float64, error) {
	vocab := model.Hyper().Vocab
	for len(contexts) > 0 && contexts[len(contexts)-1] > model.Hyper().CtxMax {
		c.logf("  %s: skipping context %d, beyond its context length %d\n", name, contexts[len(contexts)-1], model.Hyper().CtxMax)
		contexts = contexts[:len(contexts)-1]
	}
	if len(contexts) == 0 {
		return nil, nil, 0, nil
	}
	maxCtx := contexts[len(contexts)-1]
	prompt := benchTokens(maxCtx, vocab, 1)
	iopts := engine.InstanceOptions{KVType: kv, Threads: threads}
	live, err := model.NewInstance(iopts)
	if err != nil {
		return nil, nil, 0, err
	}
	defer live.Close()
	var rows []benchRestoreRow
	var gbs float64
	fed := 0
	for _, n := range contexts {
		c.logf("  %s: context %d...\n", name, n)
		if err := live.Prefill(prompt[fed:n]); err != nil {
			return nil, nil, 0, err
		}
		fed = n
		row := benchRestoreRow{Model: name, Context: n}
		// Full checkpoint into an empty store.
		r, err := repo.Open(filepath.Join(tmp, fmt.Sprintf("%s-%d", name, n)), repo.Options{})
		if err != nil {
			return nil, nil, 0, err
		}
		// Checkpoints move a session's head in their own transaction, as a session's do.
		full, err := checkpoint.Capture(ctx, r.Index(), model, live, checkpoint.CaptureOptions{Workers: workers, KVCodec: benchKVCodec, KeepLogits: benchKeepLogits,
			MoveRef: &index.RefMove{Kind: index.RefSession, Name: "bench"}})
		if err != nil {
			r.Close()
			return nil, nil, 0, err
		}
		cp := full.Checkpoint
		row.FullMS, row.KVBytes = ms(full.Duration), cp.KVBytes()
		sb, err := storedBytes(ctx, r.Store())
		if err != nil {
			r.Close()
			return nil, nil, 0, err
		}
		row.StoredPerToken = float64(sb) / float64(n)

		// The floor: verify-and-copy speed over this checkpoint's KV bytes, measured for each
		// context over its own bytes, now and again beside each restore below (the best of
		// all: on a shared machine one measurement may land in a busy moment).
		var floorBuf []byte
		{
			regs, err := live.KVRegions()
			if err != nil {
				r.Close()
				return nil, nil, 0, err
			}
			mem := live.Memory()
			floorBuf = make([]byte, 0, cp.KVBytes())
			for _, rg := range regs {
				floorBuf = append(floorBuf, mem[rg.Offset:rg.Offset+rg.Length]...)
			}
			gbs = verifyCopySpeed(floorBuf, cp.Layout.BlockBytes, workers) / 1e9
		}
		// Restore and re-prefill instances: made for this context with --reserve (their KV
		// memory resident before the clock starts, as llama.cpp's context is), else bare.
		niopts := iopts
		if benchReserve {
			niopts.Context = n
		}

		// Restore into a ready fresh instance (best of reps), first token, and the continuation
		// against the live instance.
		for i := 0; i < reps; i++ {
			gbs = max(gbs, verifyCopySpeed(floorBuf, cp.Layout.BlockBytes, workers)/1e9)
			t0 := time.Now()
			in, err := model.NewInstance(niopts)
			if err != nil {
				r.Close()
				return nil, nil, 0, err
			}
			inst := time.Since(t0)
			t1 := time.Now()
			rr, err := restore.IntoWith(ctx, r.Store(), in, cp, restore.IntoOptions{Workers: workers, HugePages: benchHugePages, Verify: benchVerify})
			d := time.Since(t1)
			if err == nil {
				_, err = in.Sample()
			}
			ttft := time.Since(t1)
			if err == nil && i == 0 {
				// What the restore gave the instance equals the live instance's, which is
				// exactly in the captured state (it is rewound below): the best logits the
				// checkpoint keeps (ids and value bits), or the whole vector. Then continue
				// 4 tokens from both; at the context limit, compare the whole logits instead
				// (the restored ones recomputed where the checkpoint keeps only the best).
				row.Identical, err = sameTopLogits(in, live, cp.TopLogits)
				k := min(4, model.Hyper().CtxMax-n)
				var got, want []int32
				if err == nil {
					if got, err = in.Generate(k, nil); err == nil {
						want, err = live.Generate(k, nil)
						row.Identical = row.Identical && slices.Equal(got, want)
					}
				}
				if err == nil && k == 0 {
					var a, b []float32
					if a, err = in.Logits(); err == nil {
						b, err = live.Logits()
						row.Identical = row.Identical && slices.Equal(a, b)
					}
				}
			}
			in.Close()
			if err != nil {
				r.Close()
				return nil, nil, 0, err
			}
			if i == 0 || ms(d) < row.RestoreMS {
				row.RestoreMS, row.RestoreAllocMS, row.RestoreDecMS, row.RestoreLoadMS = ms(d), ms(rr.Alloc), ms(rr.Decode), ms(rr.Load)
			}
			if i == 0 || ms(ttft) < row.TTFTRestoreMS {
				row.TTFTRestoreMS, row.SampleMS = ms(ttft), ms(ttft-d)
			}
			if i == 0 || ms(inst) < row.InstanceMS {
				row.InstanceMS = ms(inst)
			}
		}
		floorBuf = nil
		row.FloorMS = float64(cp.KVBytes()) / (gbs * 1e9) * 1e3
		row.OverFloor = row.RestoreMS / row.FloorMS

		// Re-prefill (best of reps; one rep above 1024 tokens, where it is slow and stable).
		pr := reps
		if n > 1024 {
			pr = 1
		}
		if !benchReprefill {
			pr = 0
		}
		for i := 0; i < pr; i++ {
			in, err := model.NewInstance(niopts)
			if err != nil {
				r.Close()
				return nil, nil, 0, err
			}
			t0 := time.Now()
			err = in.Prefill(prompt[:n])
			d := time.Since(t0)
			if err == nil {
				_, err = in.Sample()
			}
			ttft := time.Since(t0)
			in.Close()
			if err != nil {
				r.Close()
				return nil, nil, 0, err
			}
			if i == 0 || ms(d) < row.PrefillMS {
				row.PrefillMS = ms(d)
			}
			if i == 0 || ms(ttft) < row.TTFTPrefillMS {
				row.TTFTPrefillMS = ms(ttft)
			}
		}
		if pr > 0 {
			row.TTFTSpeedup = row.TTFTPrefillMS / row.TTFTRestoreMS
			row.RestoreSpeedup = row.PrefillMS / row.RestoreMS
		}

		if n+16*incrReps <= model.Hyper().CtxMax {
			// Incremental (medians of incrReps): rewind the live instance to the checkpoint, then
			// incrReps times feed 16 new tokens and checkpoint with the previous checkpoint as
			// parent; each beside the same blocks hashed and stored alone into the same store (so
			// into the same pack file, in the same state), each with its first and last byte
			// changed so that they are new chunks of the same size, before or after the
			// checkpoint in turn.
			in, _, err := restore.Restore(ctx, r.Store(), model, cp, restore.Options{Instance: iopts, Workers: workers, HugePages: benchHugePages, Verify: benchVerify})
			if err != nil {
				r.Close()
				return nil, nil, 0, err
			}
			live.Close()
			live = in
			parent := cp
			var incrs, syncs, indexes, commits, snaps, floors []time.Duration
			for rep := 0; rep < incrReps; rep++ {
				pos0 := n + 16*rep // the position before this rep's tokens
				if err := live.Prefill(benchTokens(16, vocab, uint32(1000+rep))); err != nil {
					r.Close()
					return nil, nil, 0, err
				}
				// The blocks the 16 tokens touched (from pos0's block on), copied with a byte
				// changed at each end: new chunks of the same size.
				var blocks [][]byte
				regs, err := live.KVRegions()
				if err != nil {
					r.Close()
					return nil, nil, 0, err
				}
				mem := live.Memory()
				bs := live.Layout().BlockSize
				for _, rg := range regs {
					if rg.Block >= pos0/bs {
						bl := slices.Clone(mem[rg.Offset : rg.Offset+rg.Length])
						bl[0] ^= 0x5a
						bl[len(bl)-1] ^= byte(rep + 1)
						blocks = append(blocks, bl)
					}
				}
				hint := benchKVCodec.Hint(checkpoint.LayoutOf(live.Layout()))
				store16 := func() error {
					t0 := time.Now()
					_, err := cas.PutAll(ctx, r.Store(), workers, blocks, hint)
					floors = append(floors, time.Since(t0))
					return err
				}
				// Which goes first alternates: right after a prefill, the second of the two
				// has run faster here (the floor, always second before, by up to ≈ 1 ms at
				// 4096 positions of the 1B shape; the cause was not measured).
				if rep%2 == 1 {
					if err := store16(); err != nil {
						r.Close()
						return nil, nil, 0, err
					}
				}
				// The turn latency of this checkpoint deferred: the snapshot alone (released: the
				// Capture below stores the same checkpoint).
				snap, err := checkpoint.TakeSnapshot(model, live, checkpoint.CaptureOptions{Parent: parent, Workers: workers, KVCodec: benchKVCodec, KeepLogits: benchKeepLogits})
				if err != nil {
					r.Close()
					return nil, nil, 0, err
				}
				snap.Release()
				snaps = append(snaps, snap.Duration())
				incr, err := checkpoint.Capture(ctx, r.Index(), model, live, checkpoint.CaptureOptions{Parent: parent, Workers: workers, KVCodec: benchKVCodec, KeepLogits: benchKeepLogits,
					MoveRef: &index.RefMove{Kind: index.RefSession, Name: "bench", Expected: parent.ID}})
				if err != nil {
					r.Close()
					return nil, nil, 0, err
				}
				if incr.BlocksWritten != len(blocks) {
					r.Close()
					return nil, nil, 0, fmt.Errorf("bench: %d blocks touched by 16 tokens at %d, the checkpoint wrote %d", len(blocks), pos0, incr.BlocksWritten)
				}
				// The checkpoint applied to the index file first (a read waits for that), so
				// that its background transaction does not share the disk with the store.
				if _, err := r.Index().HasManifest(incr.Checkpoint.ID); err != nil {
					r.Close()
					return nil, nil, 0, err
				}
				if rep%2 == 0 {
					if err := store16(); err != nil {
						r.Close()
						return nil, nil, 0, err
					}
				}
				incrs, syncs, indexes = append(incrs, incr.Duration), append(syncs, incr.Sync), append(indexes, incr.Index)
				commits, row.IncrBlocks = append(commits, incr.Commit), incr.BlocksWritten
				parent = incr.Checkpoint
			}
			row.IncrMS, row.IncrSyncMS, row.IncrIndexMS = ms(medianDuration(incrs)), ms(medianDuration(syncs)), ms(medianDuration(indexes))
			row.IncrSnapMS, row.IncrFloorMS, row.IncrCommitMS = ms(medianDuration(snaps)), ms(medianDuration(floors)), ms(medianDuration(commits))
		}
		// Back to n tokens for the next context: restore the full checkpoint into the live slot.
		in, _, err := restore.Restore(ctx, r.Store(), model, cp, restore.Options{Instance: iopts, Workers: workers, HugePages: benchHugePages, Verify: benchVerify})
		if err != nil {
			r.Close()
			return nil, nil, 0, err
		}
		live.Close()
		live = in
		r.Close()
		rows = append(rows, row)
	}
	var conv *benchRestoreConv
	if turns > 0 {
		cv, err := benchConversation(ctx, c, model, path, name, tmp, turns, kv, threads, workers)
		if err != nil {
			return nil, nil, 0, err
		}
		conv = cv
	}
	return rows, conv, gbs, nil
}

// medianDuration returns the median of ds (the upper one of an even count); ds is sorted.
func medianDuration(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// sameTopLogits reports whether in's and live's best k logits are the same ids with the same
// value bits (k 0: the whole vectors), reading what in holds without a recompute.
func sameTopLogits(in, live *engine.Instance, k int) (bool, error) {
	if k == 0 {
		a, err := in.Logits()
		if err != nil {
			return false, err
		}
		b, err := live.Logits()
		return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }), err
	}
	ai, av, bi, bv := make([]int32, k), make([]float32, k), make([]int32, k), make([]float32, k)
	if err := in.TopLogits(ai, av); err != nil {
		return false, err
	}
	if err := live.TopLogits(bi, bv); err != nil {
		return false, err
	}
	return slices.Equal(ai, bi) && slices.EqualFunc(av, bv, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) }), nil
}

// benchConversation runs a session of turns turns (128 prompt tokens and 8 generated each) and
// compares the bytes at rest with the final KV bytes.
func benchConversation(ctx context.Context, c *cli, model *engine.Model, path, name, tmp string, turns int, kv engine.KVType, threads, workers int) (*benchRestoreConv, error) {
	c.logf("  %s: %d-turn conversation...\n", name, turns)
	dir := filepath.Join(tmp, name+"-conv")
	r, err := repo.Open(dir, repo.Options{})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	mgr, err := session.NewManager(session.Config{Index: r.Index(), Engine: model.Engine(), DataDir: dir, Threads: threads, Workers: workers, NoPrefixCache: true, KVCodec: benchKVCodec, KeepLogits: benchKeepLogits})
	if err != nil {
		return nil, err
	}
	defer mgr.Close()
	s, err := mgr.Session("conv")
	if err != nil {
		return nil, err
	}
	var last *checkpoint.Checkpoint
	for i := 0; i < turns; i++ {
		tr, err := s.Run(ctx, session.Turn{Model: path, Prompt: benchTokens(120, model.Hyper().Vocab, uint32(100+i)), N: 8, KVType: kv})
		if err != nil {
			return nil, err
		}
		last = tr.Checkpoint.Checkpoint
	}
	sb, err := storedBytes(ctx, r.Store())
	if err != nil {
		return nil, err
	}
	return &benchRestoreConv{Model: name, Turns: turns, Position: last.Position, KVBytes: last.KVBytes(), StoredBytes: sb,
		Ratio: float64(sb) / float64(last.KVBytes())}, nil
}

// castagnoliTable is the CRC-32C table of the sealed floor (cas.Pack's seals).
var castagnoliTable = crc32.MakeTable(crc32.Castagnoli)

// verifyHashName names what the floor hashes under v.
func verifyHashName(v restore.Verify) string {
	if v == restore.VerifySealed {
		return "CRC-32C, as the pack store's seals"
	}
	return "BLAKE3"
}
