package wasmmem

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// failingHook fails whichever step is armed and otherwise counts events.
type failingHook struct {
	failCreate, failGrow, panicGrow atomic.Bool
	created, grew, released         atomic.Int64
	scribble                        atomic.Bool // write into the new bytes before refusing a grow
}

var errRefused = errors.New("device refused")

func (h *failingHook) RegionCreated(r *Region) error {
	if h.failCreate.Load() {
		return errRefused
	}
	h.created.Add(1)
	return nil
}

func (h *failingHook) RegionGrew(r *Region, oldLen, newLen int) error {
	if h.panicGrow.Load() {
		panic("hook bug")
	}
	if h.failGrow.Load() {
		if h.scribble.Load() {
			b := r.Bytes()[oldLen:newLen]
			for i := range b {
				b[i] = 0xff
			}
		}
		return errRefused
	}
	h.grew.Add(1)
	return nil
}

func (h *failingHook) RegionReleased(r *Region) { h.released.Add(1) }

func TestHookFailsInstantiation(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	h := &failingHook{}
	e.c.SetHook(h)
	before := mappedBytes(t)
	h.failCreate.Store(true)
	for range 20 {
		_, err := e.instantiate()
		if err == nil || !strings.Contains(err.Error(), errRefused.Error()) {
			t.Fatalf("instantiate with a refusing hook: %v", err)
		}
	}
	if e.c.Live() != 0 || h.released.Load() != 0 {
		t.Fatalf("Live %d, released %d after refused creations", e.c.Live(), h.released.Load())
	}
	if after := mappedBytes(t); after > before+1<<30 {
		t.Fatalf("refused creations leaked mappings: %d -> %d bytes", before, after)
	}
	h.failCreate.Store(false)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	i.store.Close()
	if h.created.Load() != 1 || h.released.Load() != 1 || e.c.Live() != 0 {
		t.Fatalf("created %d released %d live %d", h.created.Load(), h.released.Load(), e.c.Live())
	}
}

func TestHookFailsGrow(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	h := &failingHook{}
	e.c.SetHook(h)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	defer i.store.Close()
	r, _ := e.c.Lookup(i.base())

	h.failGrow.Store(true)
	h.scribble.Store(true)
	if got := i.mustCall(t, "grow", int32(2)).(int32); got != -1 {
		t.Fatalf("refused grow returned %d, want -1", got)
	}
	if r.Len() != wasmPage || i.mustCall(t, "size").(int32) != 1 {
		t.Fatalf("Len %d after refused grow", r.Len())
	}
	checkProtection(t, r)
	if _, err := i.call(t, "load", int32(wasmPage)); err == nil {
		t.Fatal("page of a refused grow is readable")
	}
	if _, err := i.mem.Grow(i.store, 1); err == nil {
		t.Fatal("host grow with a refusing hook succeeded")
	}
	if r.Len() != wasmPage {
		t.Fatalf("Len %d after refused host grow", r.Len())
	}

	h.failGrow.Store(false)
	h.panicGrow.Store(true)
	if got := i.mustCall(t, "grow", int32(1)).(int32); got != -1 {
		t.Fatalf("grow with panicking hook returned %d", got)
	}
	h.panicGrow.Store(false)

	if got := i.mustCall(t, "grow", int32(2)).(int32); got != 1 {
		t.Fatalf("grow returned %d, want 1", got)
	}
	// The bytes the refusing hook scribbled on must be zero now.
	for _, b := range r.Bytes()[wasmPage:] {
		if b != 0 {
			t.Fatal("grown memory is not zero after an earlier refused grow")
		}
	}
	checkProtection(t, r)
}

func TestMaxBytes(t *testing.T) {
	e := newEnv(t, Options{MaxBytes: 4 * wasmPage}, testWAT)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	defer i.store.Close()
	if got := i.mustCall(t, "grow", int32(3)).(int32); got != 1 {
		t.Fatalf("grow to the cap returned %d", got)
	}
	if got := i.mustCall(t, "grow", int32(1)).(int32); got != -1 {
		t.Fatalf("grow past MaxBytes returned %d, want -1", got)
	}
	r, _ := e.c.Lookup(i.base())
	if r.Len() != 4*wasmPage {
		t.Fatalf("Len %d", r.Len())
	}
	checkProtection(t, r)

	big := newEnv(t, Options{MaxBytes: 4 * wasmPage}, `(module (memory (export "mem") 5))`)
	if _, err := big.instantiate(); err == nil || !strings.Contains(err.Error(), "MaxBytes") {
		t.Fatalf("instantiating a 5-page memory under a 4-page cap: %v", err)
	}
	if big.c.Live() != 0 {
		t.Fatal("refused instantiation left a region")
	}
}

func TestAlignment(t *testing.T) {
	const align = 4 << 20
	e := newEnv(t, Options{Alignment: align}, testWAT)
	var ins []*inst
	for range 8 {
		i, err := e.instantiate()
		if err != nil {
			t.Fatal(err)
		}
		ins = append(ins, i)
		if i.base()%align != 0 {
			t.Fatalf("base %#x not aligned to %d", i.base(), align)
		}
		if _, ok := e.c.Lookup(i.base()); !ok {
			t.Fatal("not registered")
		}
	}
	for _, i := range ins {
		i.store.Close()
	}
	for _, bad := range []int{3, 3 << 14, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewCreator(Alignment %d) did not panic", bad)
				}
			}()
			NewCreator(Options{Alignment: bad})
		}()
	}
	if got := NewCreator(Options{Alignment: 4096}).Alignment(); got < MinAlignment {
		t.Fatalf("Alignment 4096 gave %d", got)
	}
}

func TestMultiMemory(t *testing.T) {
	e := newEnv(t, Options{}, `(module
	  (memory (export "a") 1) (memory (export "b") 2 3)
	  (func (export "grow_b") (result i32) i32.const 1 memory.grow 1))`)
	store := wasmtime.NewStore(e.engine)
	in, err := wasmtime.NewInstance(store, e.module, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := in.GetExport(store, "a").Memory()
	b := in.GetExport(store, "b").Memory()
	ra, okA := e.c.Lookup(uintptr(a.Data(store)))
	rb, okB := e.c.Lookup(uintptr(b.Data(store)))
	if !okA || !okB || ra == rb || e.c.Live() != 2 {
		t.Fatalf("regions a %v b %v live %d", okA, okB, e.c.Live())
	}
	if _, err := in.GetFunc(store, "grow_b").Call(store); err != nil {
		t.Fatal(err)
	}
	if ra.Len() != wasmPage || rb.Len() != 3*wasmPage {
		t.Fatalf("Len a %d b %d", ra.Len(), rb.Len())
	}
	store.Close()
	if e.c.Live() != 0 {
		t.Fatalf("Live %d", e.c.Live())
	}
}

// TestMemory64 covers a memory wasmtime may not give a fixed reservation.
func TestMemory64(t *testing.T) {
	c := NewCreator(Options{})
	cfg := wasmtime.NewConfig()
	cfg.SetWasmMemory64(true)
	c.Install(cfg)
	engine := wasmtime.NewEngineWithConfig(cfg)
	wasm, err := wasmtime.Wat2Wasm(`(module (memory (export "mem") i64 1)
	  (func (export "grow") (param i64) (result i64) local.get 0 memory.grow)
	  (func (export "load") (param i64) (result i32) local.get 0 i32.load))`)
	if err != nil {
		t.Fatal(err)
	}
	module, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		t.Fatal(err)
	}
	store := wasmtime.NewStore(engine)
	defer store.Close()
	in, err := wasmtime.NewInstance(store, module, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := in.GetExport(store, "mem").Memory()
	r, ok := c.Lookup(uintptr(mem.Data(store)))
	if !ok {
		t.Fatal("memory64 memory not a region")
	}
	t.Logf("memory64: cap %d guard %d", r.Cap(), r.Guard())
	if got, err := in.GetFunc(store, "grow").Call(store, int64(3)); err != nil || got.(int64) != 1 {
		t.Fatalf("grow: %v %v", got, err)
	}
	if _, err := in.GetFunc(store, "load").Call(store, int64(4*wasmPage)); err == nil {
		t.Fatal("load past the end of a memory64 memory succeeded")
	}
	if r.Len() != 4*wasmPage || uintptr(mem.Data(store)) != r.Base() {
		t.Fatalf("Len %d", r.Len())
	}
	checkProtection(t, r)
}

// mappedBytes sums the sizes of all mappings of the process.
func mappedBytes(t testing.TB) uint64 {
	var n uint64
	for _, m := range readMaps(t) {
		n += uint64(m.end - m.start)
	}
	return n
}

func TestNoLeakedMappings(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	h := &failingHook{}
	e.c.SetHook(h)
	run := func(n int, viaGC bool) {
		for k := range n {
			i, err := e.instantiate()
			if err != nil {
				t.Fatal(err)
			}
			i.mustCall(t, "store", int32(k%wasmPage&^3), int32(k))
			if k%3 == 0 {
				i.mustCall(t, "grow", int32(1))
			}
			if !viaGC {
				i.store.Close()
			}
		}
	}
	run(10, false) // warm up wasmtime's and Go's own allocations
	runtime.GC()
	beforeBytes, beforeLines := mappedBytes(t), len(readMaps(t))

	const closed, collected = 2000, 500
	run(closed, false)
	if e.c.Live() != 0 {
		t.Fatalf("Live %d after closing every store", e.c.Live())
	}
	run(collected, true) // stores dropped without Close: their finalizers release
	for k := 0; k < 50 && e.c.Live() > 0; k++ {
		runtime.GC()
	}
	if e.c.Live() != 0 {
		t.Fatalf("Live %d after collecting the stores", e.c.Live())
	}
	afterBytes, afterLines := mappedBytes(t), len(readMaps(t))
	t.Logf("mappings: %d lines, %d MiB before; %d lines, %d MiB after %d instances",
		beforeLines, beforeBytes>>20, afterLines, afterBytes>>20, closed+collected)
	// One leaked region alone is over 4 GiB of address space.
	if afterBytes > beforeBytes+1<<30 {
		t.Fatalf("mapped bytes grew from %d to %d", beforeBytes, afterBytes)
	}
	if afterLines > beforeLines+16 {
		t.Fatalf("mappings grew from %d to %d lines", beforeLines, afterLines)
	}
	total := int64(closed + collected + 10)
	if h.created.Load() != total || h.released.Load() != total {
		t.Fatalf("hook saw %d created, %d released; want %d", h.created.Load(), h.released.Load(), total)
	}
}

func TestConcurrentInstances(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	h := &failingHook{}
	e.c.SetHook(h)
	const workers, per = 4, 150
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			var held []*inst
			defer func() {
				for _, i := range held {
					i.store.Close()
				}
			}()
			for k := range per {
				i, err := e.instantiate()
				if err != nil {
					errs <- err
					return
				}
				held = append(held, i)
				r, ok := e.c.Lookup(i.base())
				if !ok {
					errs <- fmt.Errorf("worker %d: base %#x not registered", w, i.base())
					return
				}
				v := int32(w<<16 | k)
				if _, err := i.in.GetFunc(i.store, "store").Call(i.store, int32(64), v); err != nil {
					errs <- err
					return
				}
				if got := int32(r.Bytes()[64]) | int32(r.Bytes()[65])<<8 | int32(r.Bytes()[66])<<16; got != v {
					errs <- fmt.Errorf("worker %d: region holds %#x, want %#x", w, got, v)
					return
				}
				if _, err := i.in.GetFunc(i.store, "grow").Call(i.store, int32(1)); err != nil {
					errs <- err
					return
				}
				if r.Len() != 2*wasmPage {
					errs <- fmt.Errorf("worker %d: Len %d after grow", w, r.Len())
					return
				}
				if len(held) == 8 { // keep a few alive at once, then drop them
					for _, i := range held {
						i.store.Close()
					}
					held = held[:0]
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if e.c.Live() != 0 {
		t.Fatalf("Live %d", e.c.Live())
	}
	if h.created.Load() != workers*per || h.released.Load() != workers*per || h.grew.Load() != workers*per {
		t.Fatalf("hook: created %d grew %d released %d", h.created.Load(), h.grew.Load(), h.released.Load())
	}
}

// A region created for an instantiation that fails later (here: the start
// function traps) is released like any other.
func TestFailedInstantiationReleases(t *testing.T) {
	e := newEnv(t, Options{}, `(module (memory (export "mem") 1)
	  (func $boom unreachable) (start $boom))`)
	h := &failingHook{}
	e.c.SetHook(h)
	for range 5 {
		if _, err := e.instantiate(); err == nil {
			t.Fatal("instantiation with a trapping start function succeeded")
		}
	}
	if h.created.Load() != 5 || h.released.Load() != 5 || e.c.Live() != 0 {
		t.Fatalf("created %d released %d live %d", h.created.Load(), h.released.Load(), e.c.Live())
	}
}

func installed(c *Creator) int {
	installsMu.RLock()
	defer installsMu.RUnlock()
	n := 0
	for _, v := range installs {
		if v == c {
			n++
		}
	}
	return n
}

// wasmtime finalizes the creator when the engine (or an unused config) goes;
// that drops the creator from the package registry.
func TestCreatorFinalized(t *testing.T) {
	c := NewCreator(Options{})
	unused := wasmtime.NewConfig()
	c.Install(unused)
	cfg := wasmtime.NewConfig()
	c.Install(cfg)
	if installed(c) != 2 {
		t.Fatalf("installed %d times, want 2", installed(c))
	}
	unused.Close()
	if installed(c) != 1 {
		t.Fatalf("closing an unused config left %d installs", installed(c))
	}
	engine := wasmtime.NewEngineWithConfig(cfg)
	wasm, err := wasmtime.Wat2Wasm(testWAT)
	if err != nil {
		t.Fatal(err)
	}
	module, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		t.Fatal(err)
	}
	store := wasmtime.NewStore(engine)
	if _, err := wasmtime.NewInstance(store, module, nil); err != nil {
		t.Fatal(err)
	}
	module.Close()
	engine.Close() // the store still holds the engine
	if installed(c) != 1 || c.Live() != 1 {
		t.Fatalf("after engine.Close with a live store: installs %d live %d", installed(c), c.Live())
	}
	store.Close()
	if installed(c) != 0 || c.Live() != 0 {
		t.Fatalf("after the last store: installs %d live %d", installed(c), c.Live())
	}
}
