package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/gguf"
	"github.com/driftstore/driftstore/guest"
)

// logitsAfter feeds toks into a fresh instance and returns the logits, the generated tokens
// of a short sampled continuation and the instance.
func run(t *testing.T, m *Model, opts InstanceOptions, toks []int32, gen int) ([]float32, []int32, *Instance) {
	t.Helper()
	in := newInst(t, m, opts)
	if err := in.Prefill(toks); err != nil {
		t.Fatal(err)
	}
	lg, err := in.Logits()
	if err != nil {
		t.Fatal(err)
	}
	out, err := in.Generate(gen, nil)
	if err != nil {
		t.Fatal(err)
	}
	return lg, out, in
}

var sampled = Sampler{Temp: 0.9, TopK: 40, TopP: 0.95, Seed: 12345}

// TestDeterminism: the same model, tokens and seed give bit-identical logits and tokens across
// instances and with 1 and 2 threads, and with f16 and f32 KV each on its own.
func TestDeterminism(t *testing.T) {
	for _, kv := range []KVType{KVF16, KVF32} {
		m := testModel(t, "small", gguf.TypeQ8_0)
		toks := prompt(50, m.Hyper().Vocab, 2)
		lg0, out0, _ := run(t, m, InstanceOptions{KVType: kv, Threads: 1, Sampler: sampled}, toks, 20)
		for i, th := range []int{1, 2, 2} {
			lg, out, _ := run(t, m, InstanceOptions{KVType: kv, Threads: th, Sampler: sampled}, toks, 20)
			if !bytes.Equal(f32bits(lg), f32bits(lg0)) {
				t.Fatalf("kv %s run %d threads %d: logits differ", kv, i, th)
			}
			if fmt.Sprint(out) != fmt.Sprint(out0) {
				t.Fatalf("kv %s run %d threads %d: tokens %v, want %v", kv, i, th, out, out0)
			}
		}
	}
}

// TestDeterminismAcrossProcesses runs the same computation in a child process (this test
// binary again) and compares a hash of the logits and tokens.
func TestDeterminismAcrossProcesses(t *testing.T) {
	if os.Getenv("DRIFTSTORE_ENGINE_CHILD") == "1" {
		return // the child runs TestChildHash only
	}
	want := childHash(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildHash$", "-test.v")
	cmd.Env = append(os.Environ(), "DRIFTSTORE_ENGINE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "hash="+want) {
		t.Fatalf("child process computed a different result (want hash=%s):\n%s", want, out)
	}
}

func TestChildHash(t *testing.T) {
	if os.Getenv("DRIFTSTORE_ENGINE_CHILD") != "1" {
		t.Skip("run by TestDeterminismAcrossProcesses")
	}
	t.Logf("hash=%s", childHash(t))
}

func childHash(t *testing.T) string {
	m := testModel(t, "small", gguf.TypeF16)
	lg, out, _ := run(t, m, InstanceOptions{Threads: 2, Sampler: sampled}, prompt(37, m.Hyper().Vocab, 3), 10)
	h := sha256.New()
	h.Write(f32bits(lg))
	fmt.Fprint(h, out)
	return hex.EncodeToString(h.Sum(nil))
}

// kvBytes returns a copy of every KV block region in use, in KVRegions order.
func kvBytes(t *testing.T, in *Instance) [][]byte {
	t.Helper()
	regs, err := in.KVRegions()
	if err != nil {
		t.Fatal(err)
	}
	mem := in.Memory()
	out := make([][]byte, len(regs))
	for i, r := range regs {
		out[i] = append([]byte(nil), mem[r.Offset:r.Offset+r.Length]...)
	}
	return out
}

// TestBatchedPrefillKVBytes: prefill in batches (of 64, and of 7, which splits blocks
// unevenly) leaves the same KV bytes, block by block, and the same logits as feeding the
// prompt one token at a time.
func TestBatchedPrefillKVBytes(t *testing.T) {
	for _, kv := range []KVType{KVF16, KVF32} {
		m := testModel(t, "small", gguf.TypeF16)
		toks := prompt(53, m.Hyper().Vocab, 4)
		one := newInst(t, m, InstanceOptions{KVType: kv, Batch: 1})
		for _, tk := range toks {
			if err := one.Prefill([]int32{tk}); err != nil {
				t.Fatal(err)
			}
		}
		want := kvBytes(t, one)
		wantLg, _ := one.Logits()
		if len(want) != m.Hyper().Layers*4 {
			t.Fatalf("%d regions for 53 positions, want %d", len(want), m.Hyper().Layers*4)
		}
		for _, batch := range []int{64, 7} {
			in := newInst(t, m, InstanceOptions{KVType: kv, Batch: batch, Threads: 2})
			if err := in.Prefill(toks); err != nil {
				t.Fatal(err)
			}
			got := kvBytes(t, in)
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("kv %s batch %d: region %d differs from token-by-token prefill", kv, batch, i)
				}
			}
			lg, _ := in.Logits()
			if !bytes.Equal(f32bits(lg), f32bits(wantLg)) {
				t.Fatalf("kv %s batch %d: logits differ from token-by-token prefill", kv, batch)
			}
		}
	}
}

// TestKVLayout checks the regions: aligned, the layout's length, distinct and disjoint,
// covering exactly the blocks of positions [0, pos), zero past pos in the last block.
func TestKVLayout(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF32)
	h := m.Hyper()
	in := newInst(t, m, InstanceOptions{KVType: KVF32, BlockSize: 8})
	toks := prompt(21, h.Vocab, 5)
	if err := in.Prefill(toks); err != nil {
		t.Fatal(err)
	}
	l := in.Layout()
	if l.BlockBytes != 2*8*h.KVHeads*h.HeadDim*4 || l.Layers != h.Layers || l.Type != KVF32 {
		t.Fatalf("layout %+v", l)
	}
	regs, err := in.KVRegions()
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != h.Layers*3 {
		t.Fatalf("%d regions, want %d", len(regs), h.Layers*3)
	}
	sorted := append([]KVRegion(nil), regs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	for i, r := range sorted {
		if r.Offset%BlockAlign != 0 || int(r.Length) != l.BlockBytes {
			t.Fatalf("region %+v", r)
		}
		if i > 0 && sorted[i-1].Offset+sorted[i-1].Length > r.Offset {
			t.Fatalf("regions %+v and %+v overlap", sorted[i-1], r)
		}
	}
	for i, r := range regs {
		if r.Layer != i/3 || r.Block != i%3 {
			t.Fatalf("region %d is %+v, want layer-major order", i, r)
		}
	}
	// Position 21 is slot 5 of block 2: slots 5..7 of K and of V must be zero.
	mem := in.Memory()
	row := h.KVHeads * h.HeadDim * 4
	last := mem[regs[2].Offset : regs[2].Offset+regs[2].Length]
	for _, part := range [][]byte{last[5*row : 8*row], last[(8+5)*row : 16*row]} {
		if !bytes.Equal(part, make([]byte, len(part))) {
			t.Fatal("unwritten positions of the last block are not zero")
		}
	}
	if bytes.Equal(last[:row], make([]byte, row)) {
		t.Fatal("written position is zero")
	}
}

// TestKVTable: the table KVTable keeps, asking the guest only for new blocks, equals
// KVRegions at every step: an empty instance, growth within a block and across blocks, and
// blocks allocated ahead of the position (AllocKV).
func TestKVTable(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF32)
	in := newInst(t, m, InstanceOptions{KVType: KVF32, BlockSize: 8})
	check := func(step string) {
		t.Helper()
		table, err := in.KVTable()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		regs, err := in.KVRegions()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		n := 0
		for l, offs := range table {
			for b, off := range offs {
				if n >= len(regs) || regs[n] != (KVRegion{Layer: l, Block: b, Offset: off, Length: uint32(in.Layout().BlockBytes)}) {
					t.Fatalf("%s: table entry %d/%d at %d differs from KVRegions %v", step, l, b, off, regs)
				}
				n++
			}
		}
		if len(table) != in.Layout().Layers || n != len(regs) {
			t.Fatalf("%s: table of %d layers lists %d blocks, KVRegions %d", step, len(table), n, len(regs))
		}
	}
	check("empty")
	for i, n := range []int{3, 4, 1, 9, 16} {
		if err := in.Prefill(prompt(n, m.Hyper().Vocab, i)); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("after %d more tokens", n))
	}
	if _, err := in.AllocKV(64); err != nil {
		t.Fatal(err)
	}
	check("blocks allocated ahead")
	if err := in.Prefill(prompt(9, m.Hyper().Vocab, 9)); err != nil {
		t.Fatal(err)
	}
	check("into the blocks allocated ahead")
}

// TestStateRoundTrip is what checkpoint/restore does: copy the KV regions and the small state
// of one instance into a fresh one (AllocKV, write blocks, LoadState); both then continue
// identically, logit for logit, with no forward pass needed for the first token.
func TestStateRoundTrip(t *testing.T) {
	for _, n := range []int{1, 16, 17, 40} {
		m := testModel(t, "small", gguf.TypeQ8_0)
		a := newInst(t, m, InstanceOptions{Sampler: sampled})
		if err := a.Prefill(prompt(n, m.Hyper().Vocab, 6)); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Generate(3, nil); err != nil {
			t.Fatal(err)
		}
		blocks := kvBytes(t, a)
		state, err := a.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		pos, _ := a.Position()

		b := newInst(t, m, InstanceOptions{})
		regs, err := b.AllocKV(pos)
		if err != nil {
			t.Fatal(err)
		}
		if len(regs) != len(blocks) {
			t.Fatalf("AllocKV gave %d regions, source has %d", len(regs), len(blocks))
		}
		mem := b.Memory()
		for i, r := range regs {
			copy(mem[r.Offset:r.Offset+r.Length], blocks[i])
		}
		if err := b.LoadState(state); err != nil {
			t.Fatal(err)
		}
		if b.Options().Sampler != sampled {
			t.Fatalf("sampler after LoadState %+v", b.Options().Sampler)
		}
		ta, _ := a.Tokens()
		tb, _ := b.Tokens()
		if fmt.Sprint(ta) != fmt.Sprint(tb) {
			t.Fatal("token history differs after LoadState")
		}
		la, _ := a.Logits()
		lb, _ := b.Logits()
		if !bytes.Equal(f32bits(la), f32bits(lb)) {
			t.Fatal("logits differ after LoadState")
		}
		ga, err := a.Generate(12, nil)
		if err != nil {
			t.Fatal(err)
		}
		gb, err := b.Generate(12, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ga) != fmt.Sprint(gb) {
			t.Fatalf("n=%d: continuation %v after restore, want %v", n, gb, ga)
		}
		la, _ = a.Logits()
		lb, _ = b.Logits()
		if !bytes.Equal(f32bits(la), f32bits(lb)) {
			t.Fatal("logits differ after continuing")
		}
	}
}

// TestLoadStateRefusals: malformed or mismatched states are refused, the instance unchanged.
func TestLoadStateRefusals(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF16)
	a := newInst(t, m, InstanceOptions{})
	if err := a.Prefill(prompt(20, m.Hyper().Vocab, 7)); err != nil {
		t.Fatal(err)
	}
	state, _ := a.SaveState()
	b := newInst(t, m, InstanceOptions{})
	mutate := func(f func(s []byte) []byte) []byte { return f(append([]byte(nil), state...)) }
	cases := map[string][]byte{
		"no blocks allocated": state,
		"truncated":           state[:len(state)-3],
		"bad magic":           mutate(func(s []byte) []byte { s[0] ^= 1; return s }),
		"other kv type":       mutate(func(s []byte) []byte { s[8] = 0; return s }),
		"token out of vocab":  mutate(func(s []byte) []byte { s[stateFixedLen] = 0xff; s[stateFixedLen+3] = 0x7f; return s }),
		"empty":               {},
	}
	for name, s := range cases {
		err := b.LoadState(s)
		if !errors.Is(err, ErrGuest) {
			t.Fatalf("%s: err %v, want ErrGuest", name, err)
		}
	}
	if p, _ := b.Position(); p != 0 {
		t.Fatalf("position %d after refused loads", p)
	}
	// Still usable, and an f32 instance refuses an f16 state.
	if _, err := b.AllocKV(20); err != nil {
		t.Fatal(err)
	}
	if err := b.LoadState(state); err != nil {
		t.Fatal(err)
	}
	c := newInst(t, m, InstanceOptions{KVType: KVF32})
	c.AllocKV(20)
	if err := c.LoadState(state); err == nil || !strings.Contains(err.Error(), "dtype") {
		t.Fatalf("f32 instance loading an f16 state: %v", err)
	}
}

const stateFixedLen = 80

// TestSampler checks greedy = argmax, that top-k and top-p restrict the support, and that the
// same seed gives the same tokens and another seed other ones.
func TestSampler(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF32)
	v := m.Hyper().Vocab
	in := newInst(t, m, InstanceOptions{Sampler: Sampler{Temp: 0}})
	if err := in.Prefill(prompt(9, v, 8)); err != nil {
		t.Fatal(err)
	}
	lg, _ := in.Logits()
	order := make([]int32, v)
	for i := range order {
		order[i] = int32(i)
	}
	sort.SliceStable(order, func(i, j int) bool { return lg[order[i]] > lg[order[j]] })
	tok, err := in.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if tok != order[0] {
		t.Fatalf("greedy picked %d, argmax is %d", tok, order[0])
	}

	counts := func(s Sampler, draws int) map[int32]int {
		if err := in.SetSampler(s); err != nil {
			t.Fatal(err)
		}
		c := map[int32]int{}
		for i := 0; i < draws; i++ {
			tk, err := in.Sample()
			if err != nil {
				t.Fatal(err)
			}
			c[tk]++
		}
		return c
	}
	// top-k 5 at a high temperature: only the 5 best, and (over 400 draws) several of them.
	c := counts(Sampler{Temp: 5, TopK: 5, TopP: 1, Seed: 1}, 400)
	top := map[int32]bool{}
	for _, id := range order[:5] {
		top[id] = true
	}
	for id := range c {
		if !top[id] {
			t.Fatalf("top-k 5 drew %d, outside the 5 best", id)
		}
	}
	if len(c) < 3 {
		t.Fatalf("top-k 5 at temperature 5 drew only %v", c)
	}
	// top-p: the nucleus computed here from the logits.
	const temp, topP = 1.5, 0.5
	p := make([]float64, v)
	maxL := float64(lg[order[0]])
	sum := 0.0
	for i := range p {
		p[i] = math.Exp((float64(lg[i]) - maxL) / temp)
		sum += p[i]
	}
	nucleus := map[int32]bool{}
	cum := 0.0
	for _, id := range order {
		nucleus[id] = true
		cum += p[id] / sum
		if cum >= topP {
			break
		}
	}
	c = counts(Sampler{Temp: temp, TopP: topP, Seed: 2}, 400)
	for id := range c {
		if !nucleus[id] {
			t.Fatalf("top-p %.2f drew %d, outside the nucleus of %d tokens", topP, id, len(nucleus))
		}
	}
	// No restriction at a high temperature reaches far beyond the nucleus.
	c = counts(Sampler{Temp: 50, TopP: 1, Seed: 3}, 400)
	if len(c) < 50 {
		t.Fatalf("unrestricted sampling at temperature 50 drew only %d distinct tokens", len(c))
	}
	// Same seed, same draws; another seed, other draws.
	s := Sampler{Temp: 1, TopK: 0, TopP: 1, Seed: 99}
	a, b := counts(s, 50), counts(s, 50)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("the same seed gave different draws")
	}
	s.Seed = 100
	if d := counts(s, 50); fmt.Sprint(d) == fmt.Sprint(a) {
		t.Fatal("another seed gave the same draws")
	}
	if err := in.SetSampler(Sampler{Temp: -1}); !errors.Is(err, ErrGuest) {
		t.Fatalf("negative temperature: %v", err)
	}
}

// TestModuleCache: a cold engine compiles and writes the cache file, a warm one loads it, a
// damaged file is replaced. Uses a small hand-written module so that it stays fast; the key
// includes the module bytes, the wasmtime version and the configuration.
func TestModuleCache(t *testing.T) {
	dir := t.TempDir()
	wasm := mustWat(t, `(module (memory (export "memory") 1) (func (export "f") (result i32) i32.const 7))`)
	e1, err := New(Options{CacheDir: dir, Wasm: wasm})
	if err != nil {
		t.Fatal(err)
	}
	defer e1.Close()
	if ld := e1.ModuleLoad(); ld.FromCache || ld.CachePath == "" {
		t.Fatalf("cold load %+v", ld)
	}
	path := filepath.Join(dir, ModuleCacheKey(wasm)+".cwasm")
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	e2, err := New(Options{CacheDir: dir, Wasm: wasm})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	if ld := e2.ModuleLoad(); !ld.FromCache {
		t.Fatalf("warm load %+v", ld)
	}
	if err := os.WriteFile(path, []byte("not a module"), 0o644); err != nil {
		t.Fatal(err)
	}
	e3, err := New(Options{CacheDir: dir, Wasm: wasm})
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Close()
	if ld := e3.ModuleLoad(); ld.FromCache {
		t.Fatalf("damaged cache file was used: %+v", ld)
	}
	e4, err := New(Options{CacheDir: dir, Wasm: wasm})
	if err != nil {
		t.Fatal(err)
	}
	defer e4.Close()
	if !e4.ModuleLoad().FromCache {
		t.Fatal("damaged cache file was not replaced")
	}
	other := mustWat(t, `(module (memory (export "memory") 1) (func (export "f") (result i32) i32.const 8))`)
	if ModuleCacheKey(other) == ModuleCacheKey(wasm) {
		t.Fatal("different modules share a cache key")
	}
}

// TestInstancesReleaseMemory: closing instances releases their linear memory regions.
func TestInstancesReleaseMemory(t *testing.T) {
	e := testEngine(t)
	m := testModel(t, "small", gguf.TypeF16)
	base := e.Creator().Live()
	for i := 0; i < 20; i++ {
		in, err := m.NewInstance(InstanceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := in.Prefill([]int32{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if e.Creator().Live() != base+1 {
			t.Fatalf("%d live regions with one instance open, want %d", e.Creator().Live(), base+1)
		}
		in.Close()
		if _, err := in.Position(); !errors.Is(err, ErrClosed) {
			t.Fatalf("call after Close: %v", err)
		}
	}
	if got := e.Creator().Live(); got != base {
		t.Fatalf("%d live regions after closing every instance, want %d", got, base)
	}
	if e.GuestFingerprint() != guest.Fingerprint {
		t.Fatal("engine guest fingerprint differs from the embedded guest's")
	}
}

// TestConcurrentInstances: instances of one model run in parallel goroutines and each gets
// the same result as running alone.
func TestConcurrentInstances(t *testing.T) {
	m := testModel(t, "small", gguf.TypeQ8_0)
	toks := prompt(30, m.Hyper().Vocab, 10)
	want, wantOut, _ := run(t, m, InstanceOptions{Sampler: sampled}, toks, 8)
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			in, err := m.NewInstance(InstanceOptions{Sampler: sampled, Threads: 1 + g%2})
			if err != nil {
				errs <- err
				return
			}
			defer in.Close()
			if err := in.Prefill(toks); err != nil {
				errs <- err
				return
			}
			lg, _ := in.Logits()
			out, err := in.Generate(8, nil)
			if err == nil && (!bytes.Equal(f32bits(lg), f32bits(want)) || fmt.Sprint(out) != fmt.Sprint(wantOut)) {
				err = fmt.Errorf("goroutine %d: result differs from a lone run", g)
			}
			errs <- err
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestAdoptPrefix: full blocks of a shared prefix copied from another instance plus
// AdoptPrefix, then prefilling the rest, give the same logits and KV bytes as prefilling the
// whole prompt (what a prefix cache relies on).
func TestAdoptPrefix(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF16)
	toks := prompt(45, m.Hyper().Vocab, 11)
	a := newInst(t, m, InstanceOptions{})
	if err := a.Prefill(toks); err != nil {
		t.Fatal(err)
	}
	aRegs, _ := a.KVRegions()
	src := map[[2]int][]byte{}
	for _, r := range aRegs {
		src[[2]int{r.Layer, r.Block}] = a.Memory()[r.Offset : r.Offset+r.Length]
	}
	b := newInst(t, m, InstanceOptions{})
	regs, err := b.AllocKV(32)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		copy(b.Memory()[r.Offset:r.Offset+r.Length], src[[2]int{r.Layer, r.Block}])
	}
	if err := b.AdoptPrefix(toks[:32]); err != nil {
		t.Fatal(err)
	}
	if lg, _ := b.Logits(); lg != nil {
		t.Fatal("logits after AdoptPrefix")
	}
	if err := b.AdoptPrefix(toks[:32]); err == nil {
		t.Fatal("AdoptPrefix twice succeeded")
	}
	if err := b.Prefill(toks[32:]); err != nil {
		t.Fatal(err)
	}
	la, _ := a.Logits()
	lb, _ := b.Logits()
	if !bytes.Equal(f32bits(la), f32bits(lb)) {
		t.Fatal("logits after prefix adoption differ from a full prefill")
	}
	ka, kb := kvBytes(t, a), kvBytes(t, b)
	for i := range ka {
		if !bytes.Equal(ka[i], kb[i]) {
			t.Fatalf("KV region %d differs", i)
		}
	}
}
