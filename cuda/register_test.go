package cuda

import (
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/driftstore/driftstore/wasmmem"
)

const regWAT = `(module
  (memory (export "mem") 2 256)
  (func (export "fill") (param $off i32) (param $n i32) (param $v i32)
    (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store (i32.add (local.get $off) (i32.shl (local.get $i) (i32.const 2)))
                 (i32.add (local.get $v) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))))
  (func (export "sum") (param $off i32) (param $n i32) (result i32)
    (local $i i32) (local $s i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $s (i32.add (local.get $s)
        (i32.load (i32.add (local.get $off) (i32.shl (local.get $i) (i32.const 2))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $s))
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))`

// wordsSum is what fill(off, n, v) leaves summed: sum of v+i, wrapping.
func wordsSum(n int, v uint32) uint32 {
	var s uint32
	for i := 0; i < n; i++ {
		s += v + uint32(i)
	}
	return s
}

// TestRegisterWasmRegion: a real wasmtime instance whose memory comes from wasmmem with the
// Registrar as hook. The guest writes, the device reads in place (and the other way round),
// across a memory.grow, and release unregisters everything.
func TestRegisterWasmRegion(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	reg := NewRegistrar(d)
	c := wasmmem.NewCreator(wasmmem.Options{})
	c.SetHook(reg)
	cfg := wasmtime.NewConfig()
	c.Install(cfg)
	engine := wasmtime.NewEngineWithConfig(cfg)
	wasm, err := wasmtime.Wat2Wasm(regWAT)
	if err != nil {
		t.Fatal(err)
	}
	module, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		t.Fatal(err)
	}
	store := wasmtime.NewStore(engine)
	in, err := wasmtime.NewInstance(store, module, nil)
	if err != nil {
		t.Fatal(err)
	}
	mem := in.GetExport(store, "mem").Memory()
	base := uintptr(mem.Data(store))
	region, ok := c.Lookup(base)
	if !ok {
		t.Fatal("instance memory is not a wasmmem region")
	}
	const page = 64 << 10
	if got := reg.Registered(base); got != 2*page {
		t.Fatalf("registered %d bytes after instantiation, want %d", got, 2*page)
	}
	call := func(name string, args ...any) any {
		t.Helper()
		v, err := in.GetFunc(store, name).Call(store, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return v
	}
	// Guest writes, device reads through the mapping.
	n := 2 * page / 4
	call("fill", 0, n, 1000)
	p, err := reg.DevPtr(base, 0, 2*page)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.SumWords(p, n); err != nil || got != wordsSum(n, 1000) {
		t.Fatalf("device sum %d (%v), want %d", got, err, wordsSum(n, 1000))
	}
	// Grow: the new pages are registered as they are committed.
	if old := call("grow", 30).(int32); old != 2 {
		t.Fatalf("grow returned %d", old)
	}
	if got := reg.Registered(base); got != 32*page || region.Len() != 32*page {
		t.Fatalf("registered %d, region %d bytes after grow, want %d", got, region.Len(), 32*page)
	}
	n = 32 * page / 4
	call("fill", 0, n, 7)
	if d.Info().HostPtrIsDevPtr {
		// One range across both registrations.
		p, err = reg.DevPtr(base, 0, 32*page)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := s.SumWords(p, n); err != nil || got != wordsSum(n, 7) {
			t.Fatalf("device sum after grow %d (%v), want %d", got, err, wordsSum(n, 7))
		}
	}
	pcs, err := reg.Pieces(base+page, 31*page)
	if err != nil || len(pcs) != 2 || pcs[0].N != page || pcs[1].Off != page || pcs[1].N != 30*page {
		t.Fatalf("pieces across the growth: %+v, %v", pcs, err)
	}
	p2, err := reg.DevPtr(base, 2*page, 30*page)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.SumWords(p2, 30*page/4); err != nil || got != wordsSum(n, 7)-wordsSum(2*page/4, 7) {
		t.Fatalf("device sum of the grown part %d (%v)", got, err)
	}
	// Device writes, guest reads.
	if err := s.FillWords(p2, 30*page/4, 99); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := uint32(call("sum", 2*page, 30*page/4).(int32)); got != wordsSum(30*page/4, 99) {
		t.Fatalf("guest sum of device-written words %d, want %d", got, wordsSum(30*page/4, 99))
	}
	if _, err := reg.DevPtr(base, 32*page-4, 8); err == nil {
		t.Fatal("DevPtr accepted a range past the committed memory")
	}
	store.Close()
	if reg.Registered(base) != 0 || d.Stats.Registered.Load() != 0 {
		t.Fatalf("still registered after release: %d bytes", d.Stats.Registered.Load())
	}
}
