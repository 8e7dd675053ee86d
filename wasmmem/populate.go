package wasmmem

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Populate makes the pages of [off, off+n) resident and writable now, so that writes there
// later (a restore decoding KV blocks into place, a prefill storing keys and values) take no
// page faults: the cost of faulting fresh memory in is paid here, once, when the caller
// chooses (instance creation, like llama.cpp clearing its KV buffer when it makes a context).
// Contents are unchanged: fresh pages read as zero as before, written pages keep their bytes.
//
// On Linux ≥ 5.14 it is one madvise(MADV_POPULATE_WRITE) per call, which faults the pages in
// inside the kernel without a user-mode fault per page; elsewhere, or where the kernel refuses
// that advice, it writes one byte per OS page with an atomic add of zero (a real write, so
// the page is faulted in writable, whose value cannot change). Transparent huge page advice
// given before (HugePages) applies: the span is then populated with huge pages where the
// kernel has them.
//
// It fails only for a range outside [0, Len()) or a released region, and (MADV_POPULATE_WRITE)
// when the kernel cannot back the pages (out of memory). Like any host access to the bytes, it
// must not run while the guest runs; distinct ranges of one region may be populated at once
// from several goroutines.
func (r *Region) Populate(off, n int) error {
	if off < 0 || n < 0 || off > r.Len()-n {
		return fmt.Errorf("wasmmem: populate [%d, %d+%d) outside the region's %d bytes", off, off, n, r.Len())
	}
	if r.released.Load() {
		return fmt.Errorf("wasmmem: populate: region released")
	}
	if n == 0 {
		return nil
	}
	// Whole OS pages covering the range: madvise wants a page-aligned start, and the page of
	// a partial first or last page is resident afterwards anyway.
	lo := (uintptr(r.base) + uintptr(off)) &^ uintptr(pageSize-1)
	hi := (uintptr(r.base) + uintptr(off) + uintptr(n) + uintptr(pageSize) - 1) &^ uintptr(pageSize-1)
	start := unsafe.Add(r.base, lo-uintptr(r.base))
	ok, err := populateWrite(start, int(hi-lo))
	if err != nil {
		return fmt.Errorf("wasmmem: populate %d bytes at offset %d: %w", hi-lo, off, err)
	}
	if !ok {
		touchPages(start, int(hi-lo))
	}
	return nil
}

// touchPages writes one byte of every OS page of [p, p+n) (p page-aligned, n a multiple of the
// page size) without changing it. The add is done on the aligned 32-bit word at each page's
// start: atomic, so the compiler cannot drop it and a concurrent host writer of the same word
// (there should be none) loses nothing.
func touchPages(p unsafe.Pointer, n int) {
	for o := 0; o < n; o += pageSize {
		atomic.AddUint32((*uint32)(unsafe.Add(p, o)), 0)
	}
}
