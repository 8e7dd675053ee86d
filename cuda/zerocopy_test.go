package cuda_test

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/driftstore/driftstore/cuda"
	"github.com/driftstore/driftstore/wasmmem"
)

// A guest with exactly 16 MiB of linear memory and a function that writes every word of a
// range (so every page is resident before anything is measured).
const zcWAT = `(module
  (memory (export "mem") 256 256)
  (func (export "fill") (param $off i32) (param $n i32) (param $v i32)
    (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store (i32.add (local.get $off) (i32.shl (local.get $i) (i32.const 2)))
                 (i32.add (local.get $v) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))))`

// vmRSS is the process's resident set size in bytes (/proc/self/status VmRSS).
func vmRSS(t testing.TB) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func devUsed(t testing.TB, d *cuda.Device) int64 {
	t.Helper()
	free, total, err := d.MemInfo()
	if err != nil {
		t.Fatal(err)
	}
	return total - free
}

func fillSum(n int, v uint32) uint32 {
	var s uint32
	for i := 0; i < n; i++ {
		s += v + uint32(i)
	}
	return s
}

// TestZeroCopyOverhead measures what making 16 MiB of a guest's linear memory visible to the
// GPU costs in host memory (VmRSS) and device memory (cuMemGetInfo), two ways:
//   - zero-copy (what the backend does): cuMemHostRegister of the wasmmem region with device
//     mapping; kernels read the bytes in place;
//   - explicit copy (what a runtime without shared memory does): the bytes copied out of the
//     sandbox into a host buffer, a 16 MiB device buffer allocated and the bytes uploaded.
//
// Both paths are checked to give the device the right bytes (a device-side sum of all words).
// The overheads are logged (lines "zero-copy:"), not asserted: device memory is reported in
// the driver's allocation granularity and the driver keeps host bookkeeping of its own.
func TestZeroCopyOverhead(t *testing.T) {
	if err := cuda.Available(); err != nil {
		t.Skipf("no CUDA driver or device, GPU test skipped: %v", err)
	}
	d, err := cuda.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	c := wasmmem.NewCreator(wasmmem.Options{})
	cfg := wasmtime.NewConfig()
	c.Install(cfg)
	eng := wasmtime.NewEngineWithConfig(cfg)
	defer eng.Close()
	wasm, err := wasmtime.Wat2Wasm(zcWAT)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := wasmtime.NewModule(eng, wasm)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	store := wasmtime.NewStore(eng)
	defer store.Close()
	inst, err := wasmtime.NewInstance(store, mod, nil)
	if err != nil {
		t.Fatal(err)
	}
	const size = 16 << 20
	const words = size / 4
	if _, err := inst.GetFunc(store, "fill").Call(store, 0, words, 7); err != nil {
		t.Fatal(err)
	}
	base := uintptr(inst.GetExport(store, "mem").Memory().Data(store))
	region, ok := c.Lookup(base)
	if !ok || region.Len() != size {
		t.Fatalf("guest memory is not a %d-byte wasmmem region (%v)", size, ok)
	}
	want := fillSum(words, 7)

	// Warm up what both paths use once (the sum kernel, its scratch buffer, the copy path) so
	// that neither measurement pays for it.
	warm, err := d.Alloc(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := warm.Upload(0, region.Bytes()[:1<<20]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SumWords(warm.Ptr, (1<<20)/4); err != nil {
		t.Fatal(err)
	}
	defer warm.Free()

	// Zero-copy.
	reg := cuda.NewRegistrar(d)
	rss0, dev0 := vmRSS(t), devUsed(t, d)
	t0 := time.Now()
	if err := reg.Register(base, size); err != nil {
		t.Fatal(err)
	}
	p, err := reg.DevPtr(base, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	regTime := time.Since(t0)
	got, err := s.SumWords(p, words)
	if err != nil || got != want {
		t.Fatalf("device sum over the registered region: %d (%v), want %d", got, err, want)
	}
	rss1, dev1 := vmRSS(t), devUsed(t, d)
	if err := reg.Unregister(base); err != nil {
		t.Fatal(err)
	}

	// Explicit copy.
	rss2, dev2 := vmRSS(t), devUsed(t, d)
	t1 := time.Now()
	stage := make([]byte, size)
	copy(stage, region.Bytes())
	buf, err := d.Alloc(size)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	if err := buf.Upload(0, stage); err != nil {
		t.Fatal(err)
	}
	copyTime := time.Since(t1)
	got, err = s.SumWords(buf.Ptr, words)
	if err != nil || got != want {
		t.Fatalf("device sum over the uploaded copy: %d (%v), want %d", got, err, want)
	}
	rss3, dev3 := vmRSS(t), devUsed(t, d)

	mb := func(v int64) string { return fmt.Sprintf("%+.2f MB", float64(v)/1e6) }
	t.Logf("zero-copy: 16 MiB region registered in place: host RSS %s, device memory %s, %.2f ms (register + device pointer)",
		mb(rss1-rss0), mb(dev1-dev0), float64(regTime.Microseconds())/1000)
	t.Logf("zero-copy: explicit copy (host buffer + device buffer + upload): host RSS %s, device memory %s, %.2f ms",
		mb(rss3-rss2), mb(dev3-dev2), float64(copyTime.Microseconds())/1000)
	runtime.KeepAlive(stage) // resident until it was measured
}
