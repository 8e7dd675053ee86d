package wasmmem

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the OS pages of b (page-aligned) that are resident.
func resident(t *testing.T, b []byte) int {
	t.Helper()
	vec := make([]byte, (len(b)+pageSize-1)/pageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

func TestPopulate(t *testing.T) {
	e := newEnv(t, Options{}, bigWAT)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	defer i.store.Close()
	r, ok := e.c.Lookup(i.base())
	if !ok {
		t.Fatal("no region")
	}
	i.mustCall(t, "grow", int32(160)) // 161 wasm pages: a little over 10 MiB, all untouched
	b := r.Bytes()
	for _, bad := range [][2]int{{-1, 10}, {0, r.Len() + 1}, {r.Len(), 1}, {5, -1}} {
		if err := r.Populate(bad[0], bad[1]); err == nil {
			t.Fatalf("Populate(%d, %d) accepted for a region of %d bytes", bad[0], bad[1], r.Len())
		}
	}
	if err := r.Populate(r.Len(), 0); err != nil {
		t.Fatal(err)
	}
	// Two ranges with a written page inside each: populated by the kernel, and by touching.
	lo, n := 1<<20+100, 4<<20 // not page-aligned: the pages covering it are populated
	lo2 := 6 << 20
	b[lo+3*pageSize+5], b[lo2+7] = 0xab, 0xcd
	span := b[lo&^(pageSize-1) : (lo+n+pageSize-1)&^(pageSize-1)]
	span2 := b[lo2 : lo2+n]
	if got := resident(t, span); got > 1 {
		t.Fatalf("%d pages resident before Populate; the test needs untouched memory", got)
	}
	if err := r.Populate(lo, n); err != nil {
		t.Fatal(err)
	}
	if got, want := resident(t, span), len(span)/pageSize; got != want {
		t.Fatalf("%d of %d pages resident after Populate", got, want)
	}
	touchPages(unsafe.Pointer(&span2[0]), len(span2))
	if got, want := resident(t, span2), len(span2)/pageSize; got != want {
		t.Fatalf("%d of %d pages resident after touching them", got, want)
	}
	// Contents unchanged: written bytes kept, fresh pages zero, for the host and the guest.
	if b[lo+3*pageSize+5] != 0xab || b[lo2+7] != 0xcd {
		t.Fatal("populating changed written bytes")
	}
	for k := lo; k < lo2+n; k += pageSize / 2 {
		if k != lo+3*pageSize && k != lo2 && b[k] != 0 {
			t.Fatalf("byte %d is %#x after populating, want 0", k, b[k])
		}
	}
	if v := i.mustCall(t, "load", int32(lo+3*pageSize+4)).(int32); uint32(v) != 0xab00 {
		t.Fatalf("guest reads %#x", v)
	}
	// Growth after populating works and the new memory is fresh.
	i.mustCall(t, "grow", int32(16))
	if err := r.Populate(r.Len()-pageSize, pageSize); err != nil {
		t.Fatal(err)
	}
	if v := i.mustCall(t, "load", int32(r.Len()-4)).(int32); v != 0 {
		t.Fatalf("grown memory reads %#x", v)
	}
	checkProtection(t, r)
	i.store.Close()
	if err := r.Populate(0, 0); err == nil {
		t.Fatal("Populate on a released region accepted")
	}
}
