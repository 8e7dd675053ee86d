package wasmmem

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

const bigWAT = `(module
  (memory (export "mem") 1 1024)
  (func (export "load") (param i32) (result i32) local.get 0 i32.load)
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))`

func TestHugePages(t *testing.T) {
	e := newEnv(t, Options{}, bigWAT)
	i, err := e.instantiate()
	if err != nil {
		t.Fatal(err)
	}
	r, ok := e.c.Lookup(i.base())
	if !ok {
		t.Fatal("no region")
	}
	i.mustCall(t, "grow", int32(160)) // 161 wasm pages: a little over 10 MiB
	b := r.Bytes()
	for k := range b {
		if k%4093 == 0 {
			b[k] = byte(k)
		}
	}
	for _, bad := range [][2]int{{-1, 10}, {0, r.Len() + 1}, {r.Len(), 1}, {5, -1}, {r.Len() - 10, 11}} {
		if _, err := r.HugePages(bad[0], bad[1]); err == nil {
			t.Fatalf("HugePages(%d, %d) accepted for a region of %d bytes", bad[0], bad[1], r.Len())
		}
	}
	if n, err := r.HugePages(r.Len(), 0); err != nil || n != 0 {
		t.Fatalf("empty range at the end: %d, %v", n, err)
	}
	off, n := 12345, r.Len()-12345-7
	if thpMode() == "madvise" && thpEligible(t, r.Base()+uintptr(r.Len()/2)) {
		t.Fatal("eligible for transparent huge pages before the advice")
	}
	got, err := r.HugePages(off, n)
	if err != nil {
		t.Fatal(err)
	}
	hp := hugePageSize()
	if runtime.GOOS == "linux" {
		lo := (int(r.Base()) + off + hp - 1) &^ (hp - 1)
		hi := (int(r.Base()) + off + n) &^ (hp - 1)
		if got != hi-lo || got%hp != 0 || got == 0 {
			t.Fatalf("advised %d bytes, want %d (huge page %d)", got, hi-lo, hp)
		}
		if thpEnabled() && !thpEligible(t, r.Base()+uintptr(lo-int(r.Base()))) {
			t.Fatal("advised range is not eligible for transparent huge pages")
		}
	} else if got != 0 {
		t.Fatalf("advised %d bytes where there is no such advice", got)
	}
	// Contents, bounds and protections are unchanged: the accessible part is rw (now possibly
	// several mappings), everything past it inaccessible.
	for k := range b {
		if k%4093 == 0 && b[k] != byte(k) {
			t.Fatalf("byte %d changed", k)
		}
	}
	for k := 0; k < len(b); k += 4096 {
		b[k]++ // writable everywhere, before and after the advice
	}
	if v := i.mustCall(t, "load", int32(4093*2)).(int32); byte(v) != b[4093*2] {
		t.Fatalf("guest reads %#x", v)
	}
	checkSplitProtection(t, r)
	if _, err := i.call(t, "load", int32(r.Len())); err == nil {
		t.Fatal("load past the end succeeded")
	}
	i.store.Close()
	if _, err := r.HugePages(0, 0); err == nil {
		t.Fatal("HugePages on a released region accepted")
	}
}

// checkSplitProtection is checkProtection for an accessible part that may span several
// adjacent rw mappings.
func checkSplitProtection(t *testing.T, r *Region) {
	t.Helper()
	maps := readMaps(t)
	base, end := r.Base(), r.Base()+uintptr(r.Len())
	for at := base; at < end; {
		found := false
		for _, m := range maps {
			if m.start <= at && at < m.end {
				if m.perms[:2] != "rw" || m.end > end && m.start < end {
					t.Fatalf("accessible part: mapping %#x-%#x %s, region %#x-%#x", m.start, m.end, m.perms, base, end)
				}
				at, found = m.end, true
				break
			}
		}
		if !found {
			t.Fatalf("%#x is not mapped", at)
		}
	}
	last := r.Base() + uintptr(r.Cap()+r.Guard()) - 1
	for _, m := range maps {
		if m.end > end && m.start <= last && m.perms[:3] != "---" {
			t.Fatalf("inaccessible part of the region overlaps %#x-%#x %s", m.start, m.end, m.perms)
		}
	}
}

func thpEnabled() bool { m := thpMode(); return m == "always" || m == "madvise" }

// thpMode is the selected transparent huge page mode ("always", "madvise", "never"), or "".
func thpMode() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return ""
	}
	_, rest, ok := strings.Cut(string(b), "[")
	mode, _, ok2 := strings.Cut(rest, "]")
	if !ok || !ok2 {
		return ""
	}
	return mode
}

// thpEligible reads THPeligible of the mapping holding addr from /proc/self/smaps.
func thpEligible(t *testing.T, addr uintptr) bool {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			a, b, _ := strings.Cut(fields[0], "-")
			lo, err1 := strconv.ParseUint(a, 16, 64)
			hi, err2 := strconv.ParseUint(b, 16, 64)
			in = err1 == nil && err2 == nil && uintptr(lo) <= addr && addr < uintptr(hi)
			continue
		}
		if in && strings.HasPrefix(line, "THPeligible:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "THPeligible:")) == "1"
		}
	}
	t.Fatalf("no smaps entry for %#x", addr)
	return false
}
