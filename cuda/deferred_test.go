package cuda

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestDeferredFlushSchedule checks when a deferred stream issues what it recorded: after each
// Sync the first flush comes once flushStart kernels are recorded and each later one at twice
// the size of the one before, up to flushEvery; and a flush comes before a kernel is recorded,
// so the kernel recorded last can still fuse with the next operation (here an Add recorded as
// the flushStart-th kernel, then an RMSNorm of its output: one ds_add_rmsnorm).
func TestDeferredFlushSchedule(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	if err := s.SetDeferred(true); err != nil {
		t.Fatal(err)
	}
	var want []int
	total := 0
	for l := flushStart; total < 200; l = min(2*l, flushEvery) {
		want = append(want, l)
		total += l
	}
	for step := range 2 {
		var got []int
		for range total + 5 {
			before := s.q.pending
			if err := s.Nop(); err != nil {
				t.Fatal(err)
			}
			if s.q.pending != before+1 {
				got = append(got, before)
			}
		}
		if !slices.Equal(got, want) || s.q.pending != 5 {
			t.Fatalf("step %d: flushes of %v kernels, %d left; want %v, 5 left", step, got, s.q.pending, want)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}

	const dim = 256
	r := rand.New(rand.NewPCG(21, 22))
	xb, yb, wb := devBuf(t, d, randF32(r, dim, 2), dim), devBuf(t, d, randF32(r, dim, 2), dim), devBuf(t, d, randF32(r, dim, 1), dim)
	sum, out := devBuf(t, d, nil, dim), devBuf(t, d, nil, dim)
	for range flushStart - 1 {
		if err := s.Nop(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(sum.Ptr, xb.Ptr, yb.Ptr, dim); err != nil {
		t.Fatal(err)
	}
	if err := s.RMSNorm(out.Ptr, sum.Ptr, wb.Ptr, dim, 1, 1e-5); err != nil {
		t.Fatal(err)
	}
	if n := len(s.q.recs.fns); n != flushStart || s.q.recs.fns[n-1] != d.fns["ds_add_rmsnorm"] {
		t.Fatalf("%d kernels pending after %d Nops, Add and RMSNorm; want %d, the last ds_add_rmsnorm",
			n, flushStart-1, flushStart)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestGraphChain runs steps of dependent kernels through a deferred stream (each Add reads
// what the one before wrote and overwrites what it read: every hazard between neighbours) and
// checks every element, so a graph that let a kernel start before the one before it finished
// would show. On compute capability 9.0 and newer the graphs must have been built with
// programmatic edges (pdl.go) unless DRIFTSTORE_CUDA_PDL=0.
func TestGraphChain(t *testing.T) {
	d := device(t)
	s := newStream(t, d)
	if err := s.SetDeferred(true); err != nil {
		t.Fatal(err)
	}
	const n, adds, steps = 1 << 22, 48, 4
	ones := make([]float32, n)
	for i := range ones {
		ones[i] = 1
	}
	a, b, y := devBuf(t, d, make([]float32, n), n), devBuf(t, d, make([]float32, n), n), devBuf(t, d, ones, n)
	for range steps {
		for i := range adds {
			src, dst := a, b
			if i%2 == 1 {
				src, dst = b, a
			}
			if err := s.Add(dst.Ptr, src.Ptr, y.Ptr, n); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		b    *Buffer
		want float32
	}{{"a", a, adds * steps}, {"b", b, adds*steps - 1}} {
		for i, v := range readF32(t, c.b, 0, n) {
			if v != c.want {
				t.Fatalf("%s[%d] = %v after %d steps of %d adds, want %v", c.name, i, v, steps, adds, c.want)
			}
		}
	}
	replays, _, _ := s.GraphStats()
	info := d.Info()
	t.Logf("%s (sm_%d%d): %d graph replays, PDL %v", info.Name, info.CC[0], info.CC[1], replays, info.PDL)
	if graphsAvailable() && replays == 0 {
		t.Fatal("no kernel run was replayed through a graph")
	}
	if info.CC[0] >= 9 && !pdlOff && pdlEdgesAvailable() && !info.PDL {
		t.Fatal("compute capability 9.0 or newer, but the graphs were built without programmatic edges")
	}
}

// TestParseFlush: DRIFTSTORE_CUDA_FLUSH takes 1..flushEvery; anything else is refused (Open
// fails) rather than silently replaced by the default. Needs no GPU.
func TestParseFlush(t *testing.T) {
	for _, c := range []struct {
		v    string
		want int
		ok   bool
	}{{"", flushFirst, true}, {"1", 1, true}, {"8", 8, true}, {"64", 64, true},
		{"0", flushFirst, false}, {"65", flushFirst, false}, {"-3", flushFirst, false}, {"eight", flushFirst, false}} {
		n, err := parseFlush(c.v)
		if n != c.want || (err == nil) != c.ok {
			t.Errorf("parseFlush(%q) = %d, %v; want %d, ok %v", c.v, n, err, c.want, c.ok)
		}
	}
}
