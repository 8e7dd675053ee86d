package engine

import (
	"bytes"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/driftstore/driftstore/gguf"
)

// residentPages counts the resident OS pages under b.
func residentPages(t *testing.T, b []byte) (got, total int) {
	t.Helper()
	page := unix.Getpagesize()
	start := uintptr(unsafe.Pointer(&b[0])) &^ uintptr(page-1)
	end := (uintptr(unsafe.Pointer(&b[0])) + uintptr(len(b)) + uintptr(page-1)) &^ uintptr(page-1)
	vec := make([]byte, (end-start)/uintptr(page))
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, start, end-start, uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	for _, v := range vec {
		got += int(v & 1)
	}
	return got, len(vec)
}

// TestInstanceContext: an instance made for a context has the KV blocks of that many positions
// allocated and resident right after creation, before anything is fed; feeding past it works
// and computes exactly what an instance made without it does.
func TestInstanceContext(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF16)
	const ctx = 300
	a := newInst(t, m, InstanceOptions{Context: ctx})
	if pos, err := a.Position(); err != nil || pos != 0 {
		t.Fatalf("position %d, %v", pos, err)
	}
	if regs, err := a.KVRegions(); err != nil || len(regs) != 0 {
		t.Fatalf("%d regions in use before feeding (%v)", len(regs), err)
	}
	regs, err := a.AllocKV(ctx) // allocated at creation: this only lists them
	if err != nil {
		t.Fatal(err)
	}
	if want := (ctx + 15) / 16 * m.Hyper().Layers; len(regs) != want {
		t.Fatalf("%d regions for %d positions, want %d", len(regs), ctx, want)
	}
	mem := a.Memory()
	for _, r := range regs {
		if got, total := residentPages(t, mem[r.Offset:r.Offset+r.Length]); got != total {
			t.Fatalf("region %+v: %d of %d pages resident right after creation", r, got, total)
		}
	}
	// The same blocks a bare instance would allocate, only earlier: fed past the context, the
	// two agree bit for bit.
	b := newInst(t, m, InstanceOptions{})
	toks := prompt(400, m.Hyper().Vocab, 5)
	for _, in := range []*Instance{a, b} {
		if err := in.Prefill(toks); err != nil {
			t.Fatal(err)
		}
	}
	la, _ := a.Logits()
	lb, _ := b.Logits()
	if !bytes.Equal(f32bits(la), f32bits(lb)) {
		t.Fatal("logits of an instance made for a context differ from a bare one's")
	}
	ka, kb := kvBytes(t, a), kvBytes(t, b)
	if len(ka) != len(kb) {
		t.Fatalf("%d KV regions against %d", len(ka), len(kb))
	}
	for i := range ka {
		if !bytes.Equal(ka[i], kb[i]) {
			t.Fatalf("KV region %d differs", i)
		}
	}
	// Clamped to the model's context length; negative refused.
	c := newInst(t, m, InstanceOptions{Context: 1 << 20})
	if got := c.Options().Context; got != m.Hyper().CtxMax {
		t.Fatalf("context %d, want the model's %d", got, m.Hyper().CtxMax)
	}
	if _, err := m.NewInstance(InstanceOptions{Context: -1}); err == nil {
		t.Fatal("negative context accepted")
	}
}

// TestPopulateKV: blocks allocated on demand are not resident until written or populated;
// populateKV makes them resident without changing them, on one thread or several.
func TestPopulateKV(t *testing.T) {
	m := testModel(t, "small", gguf.TypeF16)
	defer func(n int) { populateSplit = n }(populateSplit)
	populateSplit = 64 << 10 // the small model's 1 MiB of blocks in pieces on 2 threads
	for _, threads := range []int{1, 2} {
		in := newInst(t, m, InstanceOptions{Threads: threads})
		regs, err := in.AllocKV(512)
		if err != nil {
			t.Fatal(err)
		}
		mem := in.Memory()
		first := mem[regs[0].Offset : regs[0].Offset+regs[0].Length]
		first[7] = 42
		untouched := 0
		for _, r := range regs[1:] {
			if got, _ := residentPages(t, mem[r.Offset:r.Offset+r.Length]); got == 0 {
				untouched++
			}
		}
		if untouched == 0 {
			t.Fatal("every fresh block is resident before populateKV; the test needs untouched memory")
		}
		if err := in.populateKV(regs, threads == 2); err != nil {
			t.Fatal(err)
		}
		for _, r := range regs {
			b := mem[r.Offset : r.Offset+r.Length]
			if got, total := residentPages(t, b); got != total {
				t.Fatalf("threads %d: region %+v: %d of %d pages resident after populateKV", threads, r, got, total)
			}
			for i, v := range b {
				if v != 0 && !(r == regs[0] && i == 7 && v == 42) {
					t.Fatalf("region %+v byte %d is %d after populateKV", r, i, v)
				}
			}
		}
		if err := in.populateKV([]KVRegion{{Offset: uint32(len(mem)) - 100, Length: 4096}}, false); err == nil {
			t.Fatal("populateKV of a region past the memory succeeded")
		}
	}
}
