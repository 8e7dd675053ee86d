package wasmmem

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

const wasmPage = 64 << 10

const testWAT = `(module
  (memory (export "mem") 1 64)
  (data (i32.const 16) "hello")
  (func (export "load") (param i32) (result i32) local.get 0 i32.load)
  (func (export "store") (param i32 i32) local.get 0 local.get 1 i32.store)
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow)
  (func (export "size") (result i32) memory.size))`

type env struct {
	c      *Creator
	engine *wasmtime.Engine
	module *wasmtime.Module
}

func newEnv(t testing.TB, opts Options, wat string) *env {
	t.Helper()
	c := NewCreator(opts)
	cfg := wasmtime.NewConfig()
	c.Install(cfg)
	engine := wasmtime.NewEngineWithConfig(cfg)
	wasm, err := wasmtime.Wat2Wasm(wat)
	if err != nil {
		t.Fatal(err)
	}
	module, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		t.Fatal(err)
	}
	return &env{c: c, engine: engine, module: module}
}

type inst struct {
	store *wasmtime.Store
	in    *wasmtime.Instance
	mem   *wasmtime.Memory
}

func (e *env) instantiate() (*inst, error) {
	store := wasmtime.NewStore(e.engine)
	in, err := wasmtime.NewInstance(store, e.module, nil)
	if err != nil {
		store.Close()
		return nil, err
	}
	return &inst{store: store, in: in, mem: in.GetExport(store, "mem").Memory()}, nil
}

func (i *inst) call(t testing.TB, name string, args ...any) (any, error) {
	t.Helper()
	return i.in.GetFunc(i.store, name).Call(i.store, args...)
}

func (i *inst) mustCall(t testing.TB, name string, args ...any) any {
	t.Helper()
	v, err := i.call(t, name, args...)
	if err != nil {
		t.Fatalf("%s%v: %v", name, args, err)
	}
	return v
}

func (i *inst) base() uintptr { return uintptr(i.mem.Data(i.store)) }

func TestConfigLayout(t *testing.T) {
	if err := checkConfigLayout(); err != nil {
		t.Fatalf("wasmtime-go changed wasmtime.Config; fix configPtr before anything else: %v", err)
	}
	f := reflect.TypeFor[wasmtime.Config]().Field(0)
	if f.Type.Elem().Name() != "_Ctype_struct_wasm_config_t" {
		t.Fatalf("Config._ptr is %v, want *C.wasm_config_t", f.Type)
	}
	cfg := wasmtime.NewConfig()
	if configPtr(cfg) == nil {
		t.Fatal("configPtr of a fresh Config is nil")
	}
	_ = wasmtime.NewEngineWithConfig(cfg) // consumes cfg and nils _ptr
	if configPtr(cfg) != nil {
		t.Fatal("configPtr does not read Config._ptr: still non-nil after the engine consumed it")
	}
}

func TestRegionIsInstanceMemory(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	defer i.store.Close()

	r, ok := e.c.Lookup(i.base())
	if !ok {
		t.Fatalf("memory base %#x is not a registered region", i.base())
	}
	if r.Base()%MinAlignment != 0 || r.Base()%uintptr(e.c.Alignment()) != 0 {
		t.Fatalf("base %#x not aligned to %d", r.Base(), e.c.Alignment())
	}
	if r.Len() != wasmPage || len(r.Bytes()) != wasmPage {
		t.Fatalf("Len %d, len(Bytes) %d, want %d", r.Len(), len(r.Bytes()), wasmPage)
	}
	if e.c.Live() != 1 {
		t.Fatalf("Live = %d, want 1", e.c.Live())
	}
	t.Logf("region base %#x len %d cap %d guard %d", r.Base(), r.Len(), r.Cap(), r.Guard())

	b := r.Bytes()
	if got := string(b[16:21]); got != "hello" {
		t.Fatalf("data segment not in region: %q", got)
	}
	// Guest writes, host reads.
	i.mustCall(t, "store", int32(1024), int32(0x11223344))
	if got := *(*uint32)(unsafe.Pointer(&b[1024])); got != 0x11223344 {
		t.Fatalf("host sees %#x at 1024", got)
	}
	// Host writes, guest reads.
	b[wasmPage-4], b[wasmPage-3], b[wasmPage-2], b[wasmPage-1] = 0xde, 0xc0, 0xad, 0x0b
	if got := i.mustCall(t, "load", int32(wasmPage-4)).(int32); uint32(got) != 0x0badc0de {
		t.Fatalf("guest sees %#x", uint32(got))
	}
	checkProtection(t, r)
}

// checkProtection asserts, from /proc/self/maps, that exactly [base, base+Len)
// is readable and writable and the rest of the reservation plus guard is not.
func checkProtection(t *testing.T, r *Region) {
	t.Helper()
	maps := readMaps(t)
	at := func(addr uintptr) mapping {
		for _, m := range maps {
			if m.start <= addr && addr < m.end {
				return m
			}
		}
		t.Fatalf("%#x is not mapped", addr)
		return mapping{}
	}
	base, end := r.Base(), r.Base()+uintptr(r.Len())
	if r.Len() > 0 {
		if m := at(base); m.perms[:2] != "rw" || m.start != base || m.end != end {
			t.Fatalf("accessible part %#x-%#x %s, want rw %#x-%#x", m.start, m.end, m.perms, base, end)
		}
	}
	last := r.Base() + uintptr(r.Cap()+r.Guard()) - 1
	for _, m := range maps {
		if m.end > end && m.start <= last && m.perms[:3] != "---" {
			t.Fatalf("inaccessible part of the region overlaps %#x-%#x %s", m.start, m.end, m.perms)
		}
	}
	at(last) // the whole reservation and guard stay reserved
}

type mapping struct {
	start, end uintptr
	perms      string
}

func readMaps(t testing.TB) []mapping {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Skipf("no /proc/self/maps: %v", err)
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		lo, hi, _ := strings.Cut(fields[0], "-")
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad maps line %q", sc.Text())
		}
		out = append(out, mapping{uintptr(s), uintptr(e), fields[1]})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGrowKeepsBase(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	h := &recordingHook{}
	e.c.SetHook(h)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	r, ok := e.c.Lookup(i.base())
	if !ok {
		t.Fatal("no region")
	}
	base := r.Base()
	i.mustCall(t, "store", int32(8), int32(77))
	for step, delta := range []int32{1, 3, 0, 2} {
		old := i.mustCall(t, "grow", delta).(int32)
		if want := int32(r.Len() / wasmPage); step > 0 && old != want-delta {
			t.Fatalf("grow returned %d", old)
		}
		if i.base() != base || r.Base() != base {
			t.Fatalf("memory moved on grow: %#x -> %#x", base, i.base())
		}
		if got := int(i.mustCall(t, "size").(int32)) * wasmPage; r.Len() != got || int(i.mem.DataSize(i.store)) != got {
			t.Fatalf("Len %d, wasm size %d", r.Len(), got)
		}
		checkProtection(t, r)
	}
	// Host-side grow goes through the same path.
	if _, err := i.mem.Grow(i.store, 1); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 8*wasmPage {
		t.Fatalf("Len %d after 7 pages of growth", r.Len())
	}
	b := r.Bytes()
	b[len(b)-1] = 9 // the newest page is writable from the host
	if got := i.mustCall(t, "load", int32(len(b)-4)).(int32); got != 9<<24 {
		t.Fatalf("guest reads %#x at the end", got)
	}
	if got := i.mustCall(t, "load", int32(8)).(int32); got != 77 {
		t.Fatalf("contents lost on grow: %d", got)
	}
	i.store.Close()

	h.mu.Lock()
	defer h.mu.Unlock()
	want := []string{
		fmt.Sprintf("created %#x %d", base, wasmPage),
		fmt.Sprintf("grew %#x %d %d", base, 1*wasmPage, 2*wasmPage),
		fmt.Sprintf("grew %#x %d %d", base, 2*wasmPage, 5*wasmPage),
		fmt.Sprintf("grew %#x %d %d", base, 5*wasmPage, 7*wasmPage),
		fmt.Sprintf("grew %#x %d %d", base, 7*wasmPage, 8*wasmPage),
		fmt.Sprintf("released %#x %d", base, 8*wasmPage),
	}
	if !reflect.DeepEqual(h.events, want) {
		t.Fatalf("hook saw\n%s\nwant\n%s", strings.Join(h.events, "\n"), strings.Join(want, "\n"))
	}
	if e.c.Live() != 0 {
		t.Fatalf("Live = %d after close", e.c.Live())
	}
	if !r.Released() || r.Bytes() != nil {
		t.Fatal("region not marked released")
	}
}

type recordingHook struct {
	mu     sync.Mutex
	events []string
}

func (h *recordingHook) add(format string, args ...any) {
	h.mu.Lock()
	h.events = append(h.events, fmt.Sprintf(format, args...))
	h.mu.Unlock()
}
func (h *recordingHook) RegionCreated(r *Region) error {
	h.add("created %#x %d", r.Base(), r.Len())
	return nil
}
func (h *recordingHook) RegionGrew(r *Region, oldLen, newLen int) error {
	if r.Len() != newLen || len(r.Bytes()) != newLen {
		return fmt.Errorf("Len %d during RegionGrew to %d", r.Len(), newLen)
	}
	h.add("grew %#x %d %d", r.Base(), oldLen, newLen)
	return nil
}
func (h *recordingHook) RegionReleased(r *Region) {
	h.add("released %#x %d", r.Base(), r.Len())
}

func TestBoundsChecks(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	defer i.store.Close()
	for _, addr := range []int32{wasmPage - 3, wasmPage, 2 * wasmPage, -4} {
		_, err := i.call(t, "load", addr)
		var trap *wasmtime.Trap
		if !errors.As(err, &trap) || !strings.Contains(err.Error(), "out of bounds") {
			t.Fatalf("load at %#x: %v, want an out-of-bounds trap", uint32(addr), err)
		}
		if _, err := i.call(t, "store", addr, int32(1)); err == nil {
			t.Fatalf("store at %#x succeeded", uint32(addr))
		}
	}
	// The instance and the host are fine afterwards.
	if got := i.mustCall(t, "load", int32(16)).(int32); got != 0x6c6c6568 { // "hell"
		t.Fatalf("after traps: %#x", got)
	}
	i.mustCall(t, "grow", int32(1))
	if got := i.mustCall(t, "load", int32(wasmPage)).(int32); got != 0 {
		t.Fatalf("fresh page not zero: %#x", got)
	}
}

func TestHostMemoryNotARegion(t *testing.T) {
	e := newEnv(t, Options{}, testWAT)
	store := wasmtime.NewStore(e.engine)
	defer store.Close()
	ty, err := wasmtime.NewMemoryType(1, true, 2, false)
	if err != nil {
		t.Fatal(err)
	}
	m, err := wasmtime.NewMemory(store, ty)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := e.c.Lookup(uintptr(m.Data(store))); ok {
		// The C API documents host memories as going through the creator
		// too; if they ever do, they must be proper regions.
		if r.Len() != wasmPage {
			t.Fatalf("host memory region Len %d", r.Len())
		}
		t.Logf("host-created memory went through the creator")
	}
}
