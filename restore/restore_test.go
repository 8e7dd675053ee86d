package restore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/checkpoint"
	"github.com/driftstore/driftstore/checkpoint/cptest"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/restore"
)

type env struct {
	dir   string
	store *cas.Local
	ix    *index.Index
	model *engine.Model
	path  string
}

func openEnv(t testing.TB, dir string) *env {
	t.Helper()
	store, err := cas.OpenLocal(filepath.Join(dir, "chunks"), cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := index.Open(filepath.Join(dir, "index.db"), store, index.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	path, err := cptest.SmallModel(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	e, err := cptest.Engine()
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	en := &env{dir: dir, store: store, ix: ix, model: m, path: path}
	t.Cleanup(func() { en.close() })
	return en
}

func (e *env) close() {
	if e.ix != nil {
		e.ix.Close()
		e.ix = nil
	}
	if e.model != nil {
		e.model.Close()
		e.model = nil
	}
}

// trace is what a continuation produced: the logits before each step and the tokens.
type trace struct {
	Tokens []int32    `json:"tokens"`
	Logits [][]uint32 `json:"logits"` // float32 bits, before each step and after the last
	// Of a restore only (TestHelperRestoreProcess): the top logits it restored
	// (engine.Instance.LogitsTop, 0: the whole vector) and the tokens another restore of the
	// same checkpoint generated without reading its logits (no recompute).
	Top     int     `json:"top,omitempty"`
	Sampled []int32 `json:"sampled,omitempty"`
}

func continueTrace(in *engine.Instance, n int) (trace, error) {
	var tr trace
	for i := 0; i <= n; i++ {
		lg, err := in.Logits()
		if err != nil {
			return tr, err
		}
		bits := make([]uint32, len(lg))
		for j, f := range lg {
			bits[j] = math.Float32bits(f)
		}
		tr.Logits = append(tr.Logits, bits)
		if i == n {
			break
		}
		tok, err := in.Step()
		if err != nil {
			return tr, err
		}
		tr.Tokens = append(tr.Tokens, tok)
	}
	return tr, nil
}

const steps = 6

type helperSpec struct {
	Dir         string   `json:"dir"`
	Checkpoints []string `json:"checkpoints"`
	Out         string   `json:"out"`
}

// TestResumeEquivalence: uninterrupted generation equals checkpoint → restore in another
// process → continue, token for token and logit for logit, for contexts of 1, 15, 16, 17, 100
// and 1030 tokens and both KV dtypes, with samplers that keep the top logits (top-k 50 with
// the RNG; greedy at 15) and one that keeps the whole vector (top-k 0 at 17). Each restore
// continues twice: sampling from what it restored (the top logits as they are: token for
// token), and reading the logits before each step (which completes top logits by a
// recompute: logit for logit).
func TestResumeEquivalence(t *testing.T) {
	dir := t.TempDir()
	e := openEnv(t, dir)
	ctx := context.Background()
	type tcase struct {
		name string
		id   index.ID
		want trace
	}
	var cases []tcase
	for _, kv := range []engine.KVType{engine.KVF16, engine.KVF32} {
		for _, n := range []int{1, 15, 16, 17, 100, 1030} {
			smp := engine.Sampler{Temp: 1.1, TopK: 50, TopP: 0.95, Seed: uint64(n)}
			wantTop := checkpoint.DefaultTopLogits
			switch n {
			case 15:
				smp = engine.Sampler{Seed: 3}
			case 17:
				smp.TopK, wantTop = 0, 0
			}
			in, err := e.model.NewInstance(engine.InstanceOptions{KVType: kv, Sampler: smp})
			if err != nil {
				t.Fatal(err)
			}
			if err := in.Prefill(cptest.Tokens(n, 512, n)); err != nil {
				t.Fatal(err)
			}
			if n == 100 { // a context that is partly generated: RNG state moved
				if _, err := in.Generate(5, nil); err != nil {
					t.Fatal(err)
				}
			}
			r, err := checkpoint.Capture(ctx, e.ix, e.model, in, checkpoint.CaptureOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Checkpoint.TopLogits; got != wantTop {
				t.Fatalf("%s/%d: checkpoint keeps %d top logits, want %d", kv, n, got, wantTop)
			}
			want, err := continueTrace(in, steps)
			want.Top = wantTop
			in.Close()
			if err != nil {
				t.Fatal(err)
			}
			cases = append(cases, tcase{name: fmt.Sprintf("%s/%d", kv, n), id: r.Checkpoint.ID, want: want})
		}
	}
	spec := helperSpec{Dir: dir, Out: filepath.Join(dir, "traces.json")}
	for _, c := range cases {
		spec.Checkpoints = append(spec.Checkpoints, c.id.String())
	}
	e.close() // the other process opens the index
	specPath := filepath.Join(dir, "spec.json")
	b, _ := json.Marshal(spec)
	if err := os.WriteFile(specPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRestoreProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "DRIFTSTORE_RESTORE_HELPER="+specPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper process: %v\n%s", err, out)
	}
	data, err := os.ReadFile(spec.Out)
	if err != nil {
		t.Fatalf("helper wrote no traces: %v\n%s", err, out)
	}
	var got []trace
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(cases) {
		t.Fatalf("%d traces for %d cases", len(got), len(cases))
	}
	for i, c := range cases {
		if !slices.Equal(got[i].Tokens, c.want.Tokens) || !slices.Equal(got[i].Sampled, c.want.Tokens) {
			t.Errorf("%s: restored continuations %v and %v (sampled from what was restored), uninterrupted %v", c.name, got[i].Tokens, got[i].Sampled, c.want.Tokens)
			continue
		}
		if got[i].Top != c.want.Top {
			t.Errorf("%s: restored %d top logits, want %d", c.name, got[i].Top, c.want.Top)
		}
		for s := range c.want.Logits {
			if !slices.Equal(got[i].Logits[s], c.want.Logits[s]) {
				t.Errorf("%s: logits before step %d differ", c.name, s)
			}
		}
	}
}

// TestHelperRestoreProcess is the other process of TestResumeEquivalence.
func TestHelperRestoreProcess(t *testing.T) {
	specPath := os.Getenv("DRIFTSTORE_RESTORE_HELPER")
	if specPath == "" {
		t.Skip("helper process only")
	}
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	var spec helperSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	e := openEnv(t, spec.Dir)
	var out []trace
	for _, s := range spec.Checkpoints {
		id, err := cas.ParseDigest(s)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := checkpoint.Load(e.ix, id)
		if err != nil {
			t.Fatal(err)
		}
		in, res, err := restore.Restore(context.Background(), e.store, e.model, cp, restore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Position != cp.Position || res.KVBytes != cp.KVBytes() || in.Options().Context < cp.Position {
			t.Fatalf("restore result %+v", res)
		}
		top := in.LogitsTop()
		sampled, err := in.Generate(steps, nil)
		in.Close()
		if err != nil {
			t.Fatal(err)
		}
		if in, _, err = restore.Restore(context.Background(), e.store, e.model, cp, restore.Options{}); err != nil {
			t.Fatal(err)
		}
		tr, err := continueTrace(in, steps)
		in.Close()
		if err != nil {
			t.Fatal(err)
		}
		tr.Top, tr.Sampled = top, sampled
		out = append(out, tr)
	}
	data, _ := json.Marshal(out)
	if err := os.WriteFile(spec.Out, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// capture checkpoints n tokens fed to a greedy instance (the checkpoint keeps the top logits).
func capture(t *testing.T, e *env, kv engine.KVType, n int) *checkpoint.Checkpoint {
	t.Helper()
	return captureWith(t, e, kv, n, checkpoint.CaptureOptions{})
}

func captureWith(t *testing.T, e *env, kv engine.KVType, n int, opts checkpoint.CaptureOptions) *checkpoint.Checkpoint {
	t.Helper()
	in, err := e.model.NewInstance(engine.InstanceOptions{KVType: kv})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := in.Prefill(cptest.Tokens(n, 512, 5)); err != nil {
		t.Fatal(err)
	}
	r, err := checkpoint.Capture(context.Background(), e.ix, e.model, in, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r.Checkpoint
}

func TestCorruptAndMissingChunksAreNamed(t *testing.T) {
	e := openEnv(t, t.TempDir())
	ctx := context.Background()
	cp := capture(t, e, engine.KVF16, 60)
	bad := cp.KV[1][2]
	path := e.store.Path(bad.Digest)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Flip one payload byte.
	mod := bytes.Clone(orig)
	mod[len(mod)/2] ^= 0x40
	if err := os.WriteFile(path, mod, 0o644); err != nil {
		t.Fatal(err)
	}
	in, _, err := restore.Restore(ctx, e.store, e.model, cp, restore.Options{})
	if in != nil || err == nil {
		t.Fatal("restore of a corrupt chunk succeeded")
	}
	var ce *restore.ChunkError
	if !errors.As(err, &ce) || ce.Digest != bad.Digest || ce.Where != "layer 1 block 2" || !errors.Is(err, cas.ErrCorrupt) || !errors.Is(err, restore.ErrChunk) {
		t.Fatalf("corrupt chunk: %v", err)
	}
	if !strings.Contains(err.Error(), bad.Digest.String()) || !strings.Contains(err.Error(), cp.ID.String()) {
		t.Fatalf("error does not name the chunk and checkpoint: %v", err)
	}
	// Missing.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, _, err = restore.Restore(ctx, e.store, e.model, cp, restore.Options{Workers: 1})
	if !errors.As(err, &ce) || ce.Digest != bad.Digest || !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("missing chunk: %v", err)
	}
	// Back in place: restores.
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	in, _, err = restore.Restore(ctx, e.store, e.model, cp, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	in.Close()
	// A corrupt state chunk is named too.
	st := cp.State[0]
	sp := e.store.Path(st.Digest)
	sorig, _ := os.ReadFile(sp)
	smod := bytes.Clone(sorig)
	smod[len(smod)-3] ^= 1
	os.WriteFile(sp, smod, 0o644)
	_, _, err = restore.Restore(ctx, e.store, e.model, cp, restore.Options{})
	if !errors.As(err, &ce) || ce.Digest != st.Digest || ce.Where != "state chunk 0" {
		t.Fatalf("corrupt state: %v", err)
	}
}

func TestMismatchIsRefusedNamingWhatDiffers(t *testing.T) {
	dir := t.TempDir()
	e := openEnv(t, dir)
	ctx := context.Background()
	cp := capture(t, e, engine.KVF16, 20)

	// Another model (same shape, other weights).
	p2, err := cptest.SmallModel(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	eng, _ := cptest.Engine()
	m2, err := eng.LoadModel(p2)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	_, _, err = restore.Restore(ctx, e.store, m2, cp, restore.Options{})
	var me *checkpoint.MismatchError
	if !errors.As(err, &me) || len(me.Diffs) != 1 || !strings.HasPrefix(me.Diffs[0], "model fingerprint") {
		t.Fatalf("other model: %v", err)
	}

	// Another shape: 4 KV heads.
	h := cptest.SmallHyper
	h.KVHeads = 4
	p3 := filepath.Join(dir, "wide.gguf")
	if err := cptest.WriteModel(p3, h, 1); err != nil {
		t.Fatal(err)
	}
	m3, err := eng.LoadModel(p3)
	if err != nil {
		t.Fatal(err)
	}
	defer m3.Close()
	_, _, err = restore.Restore(ctx, e.store, m3, cp, restore.Options{})
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "model fingerprint") || !strings.Contains(err.Error(), "KV heads 2, instance has 4") {
		t.Fatalf("other shape: %v", err)
	}

	// Asking for another KV dtype or block size.
	_, _, err = restore.Restore(ctx, e.store, e.model, cp, restore.Options{Instance: engine.InstanceOptions{KVType: engine.KVF32}})
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "KV dtype f16, instance has f32") {
		t.Fatalf("other dtype: %v", err)
	}
	_, _, err = restore.Restore(ctx, e.store, e.model, cp, restore.Options{Instance: engine.InstanceOptions{BlockSize: 32}})
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "KV block size 16, instance has 32") {
		t.Fatalf("other block size: %v", err)
	}
	// Into an existing instance of another dtype.
	in, err := e.model.NewInstance(engine.InstanceOptions{KVType: engine.KVF32})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := restore.Into(ctx, e.store, in, cp, 0); !errors.As(err, &me) || !strings.Contains(err.Error(), "KV dtype") {
		t.Fatalf("into f32 instance: %v", err)
	}

	// A checkpoint made by another guest.
	other := *cp
	other.Guest[0] ^= 0xff
	other.Parent = cp.ID
	m, err := other.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	id, err := e.ix.PutManifest(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	ocp, err := checkpoint.Load(e.ix, id)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = restore.Restore(ctx, e.store, e.model, ocp, restore.Options{})
	if !errors.As(err, &me) || len(me.Diffs) != 1 || !strings.HasPrefix(me.Diffs[0], "guest fingerprint") || !errors.Is(err, checkpoint.ErrMismatch) {
		t.Fatalf("other guest: %v", err)
	}
}

// TestDecodeIntoPlace: chunks decode straight into the given slices of one buffer, in
// parallel; a chunk of the wrong size fails without writing outside its slice.
func TestDecodeIntoPlace(t *testing.T) {
	dir := t.TempDir()
	store, err := cas.OpenLocal(dir, cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	const n, size = 40, 4096
	var want []byte
	var jobs []restore.Job
	buf := make([]byte, n*size+size)
	for i := 0; i < n; i++ {
		chunk := make([]byte, size)
		for j := range chunk {
			if j%2 == 1 {
				chunk[j] = byte(rng.IntN(4)) // compressible high bytes (f16 planes)
			} else {
				chunk[j] = byte(rng.Uint32())
			}
		}
		info, err := store.Put(ctx, chunk, cas.HintFloat16)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, chunk...)
		jobs = append(jobs, restore.Job{Digest: info.Digest, Dst: buf[i*size : (i+1)*size], Layer: i})
	}
	for i := range buf {
		buf[i] = 0xEE
	}
	if err := restore.Decode(ctx, store, jobs, 3); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n*size], want) {
		t.Fatal("decoded bytes differ")
	}
	for _, b := range buf[n*size:] {
		if b != 0xEE {
			t.Fatal("wrote past the last job")
		}
	}
	// A destination one byte short: refused, nothing written past it.
	for i := range buf {
		buf[i] = 0xEE
	}
	bad := []restore.Job{{Digest: jobs[0].Digest, Dst: buf[:size-1]}}
	err = restore.Decode(ctx, store, bad, 1)
	if !errors.Is(err, cas.ErrSizeMismatch) && !errors.Is(err, restore.ErrChunk) {
		t.Fatalf("short destination: %v", err)
	}
	if buf[size-1] != 0xEE {
		t.Fatal("wrote past a short destination")
	}
}

// TestIntoNonFreshInstanceNamesCheckpoint: restoring into an instance that has already fed
// tokens is refused, and the error names the checkpoint.
func TestIntoNonFreshInstanceNamesCheckpoint(t *testing.T) {
	e := openEnv(t, t.TempDir())
	cp := capture(t, e, engine.KVDefault, 20)
	in, err := e.model.NewInstance(engine.InstanceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := in.Prefill(cptest.Tokens(3, 512, 1)); err != nil {
		t.Fatal(err)
	}
	_, err = restore.Into(context.Background(), e.store, in, cp, 0)
	if err == nil || !strings.Contains(err.Error(), "not fresh") || !strings.Contains(err.Error(), cp.ID.String()) {
		t.Fatalf("restore into a used instance: %v", err)
	}
}

// TestDecodeStats: the workers' account adds up (every chunk decoded by some active worker,
// starts and busy time within the call), the worker count is capped by the jobs, and Into
// reports its decode's account.
func TestDecodeStats(t *testing.T) {
	store, err := cas.OpenLocal(t.TempDir(), cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n, size = 64, 8192
	buf := make([]byte, n*size)
	var jobs []restore.Job
	for i := range n {
		chunk := bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, size/3+1)[:size]
		info, err := store.Put(ctx, chunk, cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, restore.Job{Digest: info.Digest, Dst: buf[i*size : (i+1)*size], Layer: i})
	}
	for _, workers := range []int{1, 3, 200} {
		st, err := restore.DecodeStats(ctx, store, jobs, workers)
		if err != nil {
			t.Fatal(err)
		}
		if want := min(workers, n); st.Workers != want {
			t.Errorf("workers %d: started %d, want %d", workers, st.Workers, want)
		}
		if st.Active < 1 || st.Active > st.Workers || st.MinChunks < 1 || st.MinChunks > st.MaxChunks ||
			st.MinChunks*st.Active > n || st.MaxChunks*st.Active < n || st.MaxChunks+(st.Active-1)*st.MinChunks > n {
			t.Errorf("workers %d: chunk counts do not add up to %d: %+v", workers, n, st)
		}
		if st.Wall <= 0 || st.FirstStart < 0 || st.FirstStart > st.LastStart || st.LastStart > st.Wall ||
			st.Busy < 0 || st.Busy > time.Duration(st.Active)*st.Wall || st.Cores() > float64(st.Active) {
			t.Errorf("workers %d: times outside the call: %+v (%s)", workers, st, st)
		}
		if workers == 1 && (st.Active != 1 || st.MinChunks != n) {
			t.Errorf("one worker: %+v", st)
		}
	}
	for i := range n {
		if !bytes.Equal(buf[i*size:(i+1)*size], bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, size/3+1)[:size]) {
			t.Fatalf("chunk %d decoded wrong", i)
		}
	}
	// A failure still accounts for the workers started.
	bad := append(slices.Clone(jobs), restore.Job{Digest: cas.Sum([]byte("absent")), Dst: make([]byte, 6)})
	st, err := restore.DecodeStats(ctx, store, bad, 2)
	if !errors.Is(err, restore.ErrChunk) || st.Workers != 2 {
		t.Fatalf("missing chunk: %v, %+v", err, st)
	}

	e := openEnv(t, t.TempDir())
	cp := capture(t, e, engine.KVDefault, 20)
	in, err := e.model.NewInstance(engine.InstanceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	res, err := restore.Into(ctx, e.store, in, cp, 2)
	if err != nil {
		t.Fatal(err)
	}
	if w := res.Workers; w.Workers != min(2, res.Chunks) || w.Active < 1 || w.MaxChunks < 1 || w.Wall <= 0 || w.Wall > res.Decode {
		t.Fatalf("Into's decode account: %+v (decode %v, %d chunks)", w, res.Decode, res.Chunks)
	}
}

// countingStore is a real store that counts the Gets in flight and can make some slow (a test
// instrument around cas.Local, not a stand-in for it).
type countingStore struct {
	cas.Store
	inflight, maxInflight atomic.Int64
	slow                  map[cas.Digest]bool
}

func (s *countingStore) Get(ctx context.Context, d cas.Digest, dst []byte) ([]byte, error) {
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for {
		m := s.maxInflight.Load()
		if n <= m || s.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	if s.slow[d] {
		time.Sleep(2 * time.Millisecond)
	}
	return s.Store.Get(ctx, d, dst)
}

// decodeJobs stores n chunks of size bytes (distinct contents) and returns jobs into a fresh
// buffer and the bytes they must produce.
func decodeJobs(t *testing.T, store cas.Store, n, size int, seed uint64) ([]restore.Job, []byte, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 9))
	want := make([]byte, n*size)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	buf := make([]byte, n*size)
	jobs := make([]restore.Job, n)
	for i := range n {
		info, err := store.Put(context.Background(), want[i*size:(i+1)*size], cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		jobs[i] = restore.Job{Digest: info.Digest, Dst: buf[i*size : (i+1)*size], Layer: 0, Block: i}
	}
	return jobs, buf, want
}

// TestDecodeCrewAndSpawn: the woken crew and goroutines started per call decode the same
// bytes, call after call, and calls at the same time (the crew busy with one of them, the
// others starting goroutines) each get exactly their own chunks.
func TestDecodeCrewAndSpawn(t *testing.T) {
	store, err := cas.OpenLocal(t.TempDir(), cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const callers, rounds = 6, 15
	var wg sync.WaitGroup
	for c := range callers {
		jobs, buf, want := decodeJobs(t, store, 48, 3000, uint64(c))
		wg.Go(func() {
			for r := range rounds {
				clear(buf)
				st, err := restore.DecodeWith(ctx, store, jobs, restore.DecodeOptions{Spawn: r%3 == 2})
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(buf, want) {
					t.Errorf("caller %d round %d: decoded bytes differ", c, r)
					return
				}
				if st.MinChunks < 1 || st.MaxChunks*st.Active < len(jobs) || st.Active > st.Workers {
					t.Errorf("caller %d round %d: account %+v", c, r, st)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestDecodeReturnsAfterEveryChunk: on a failure DecodeWith returns the chunk's error only
// once no worker is still writing a chunk (slow reads in flight are waited for), so the
// caller may reuse or free the destinations.
func TestDecodeReturnsAfterEveryChunk(t *testing.T) {
	local, err := cas.OpenLocal(t.TempDir(), cas.LocalOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	jobs, _, _ := decodeJobs(t, local, 64, 2048, 7)
	store := &countingStore{Store: local, slow: map[cas.Digest]bool{}}
	for i := 4; i < len(jobs); i += 5 {
		store.slow[jobs[i].Digest] = true
	}
	missing := cas.Sum([]byte("not stored"))
	jobs[10].Digest = missing
	for _, spawn := range []bool{false, true} {
		st, err := restore.DecodeWith(context.Background(), store, jobs, restore.DecodeOptions{Workers: 8, Spawn: spawn})
		var ce *restore.ChunkError
		if !errors.As(err, &ce) || ce.Digest != missing || !errors.Is(err, cas.ErrNotFound) {
			t.Fatalf("spawn %v: %v", spawn, err)
		}
		if n := store.inflight.Load(); n != 0 {
			t.Fatalf("spawn %v: returned with %d reads in flight", spawn, n)
		}
		if st.Workers != 8 || store.maxInflight.Load() > 8 {
			t.Fatalf("spawn %v: %d workers, %d reads at once (bound 8)", spawn, st.Workers, store.maxInflight.Load())
		}
	}
	// A cancelled context: its error, and nothing in flight either.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := restore.DecodeWith(ctx, store, jobs, restore.DecodeOptions{}); !errors.Is(err, context.Canceled) || store.inflight.Load() != 0 {
		t.Fatalf("cancelled: %v, %d in flight", err, store.inflight.Load())
	}
}
