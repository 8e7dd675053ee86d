package wasmmem

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// HugePages advises the OS to back the huge-page-aligned spans inside [off, off+n) of the
// region with transparent huge pages (2 MiB on x86-64), so that a bulk write into fresh memory
// there — a restore decoding KV blocks into place — takes one page fault per huge page instead
// of one per small page. It is advice: contents, protections and bounds are unchanged, nothing
// is committed or made resident, and where the OS has no such advice (or transparent huge pages
// are off) it does nothing and returns nil. It returns how many bytes were advised (0 when the
// range holds no whole huge page). It fails only for a range outside [0, Len()) or a released
// region. Safe to call between guest calls, like any host access to the region.
func (r *Region) HugePages(off, n int) (int, error) {
	if off < 0 || n < 0 || off > r.Len()-n {
		return 0, fmt.Errorf("wasmmem: huge pages for [%d, %d+%d) outside the region's %d bytes", off, off, n, r.Len())
	}
	if r.released.Load() {
		return 0, fmt.Errorf("wasmmem: huge pages: region released")
	}
	hp := hugePageSize()
	if hp <= 0 || n < hp {
		return 0, nil
	}
	lo := (uintptr(r.base) + uintptr(off) + uintptr(hp) - 1) &^ uintptr(hp-1)
	hi := (uintptr(r.base) + uintptr(off) + uintptr(n)) &^ uintptr(hp-1)
	if hi <= lo {
		return 0, nil
	}
	start := unsafe.Add(r.base, lo-uintptr(r.base))
	if err := adviseHuge(start, int(hi-lo)); err != nil {
		return 0, fmt.Errorf("wasmmem: huge pages for %d bytes at offset %d: %w", hi-lo, lo-uintptr(r.base), err)
	}
	return int(hi - lo), nil
}

// hugePageSize is the transparent huge page size, 0 when the OS has none we can use.
var hugePageSize = sync.OnceValue(func() int {
	if !hugeAdviceSupported {
		return 0
	}
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > pageSize && v&(v-1) == 0 {
			return v
		}
	}
	return 2 << 20
})
