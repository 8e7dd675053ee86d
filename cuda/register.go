package cuda

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/driftstore/driftstore/wasmmem"
)

// Registrar registers host memory with a device so kernels read and write it in place. As a
// wasmmem.Hook it follows every region of a Creator: the committed part when the region is
// created, each growth as it happens (the reservation beyond Len is never registered: it is
// not accessible), and it unregisters everything when the region is released. All methods
// are safe for concurrent use.
type Registrar struct {
	d  *Device
	mu sync.Mutex
	// maps holds the registered memories by base address (guarded by mu).
	maps map[uintptr]*hostMap
	// gen counts registrations and growths: executors refresh their cached view when it moves.
	gen atomic.Uint64
}

// hostMap is one registered memory: its ranges in address order, each registered separately.
type hostMap struct {
	base   uintptr
	n      int // bytes registered from base
	ranges []hostRange
}

type hostRange struct {
	off, n int
	dev    DevPtr
}

var _ wasmmem.Hook = (*Registrar)(nil)

// NewRegistrar returns a Registrar for d.
func NewRegistrar(d *Device) *Registrar {
	return &Registrar{d: d, maps: make(map[uintptr]*hostMap)}
}

// Register registers [base, base+n) as a new memory. base must not be registered already.
func (g *Registrar) Register(base uintptr, n int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.maps[base]; ok {
		return fmt.Errorf("cuda: memory at %#x registered twice", base)
	}
	m := &hostMap{base: base}
	if err := g.extend(m, n); err != nil {
		return err
	}
	g.maps[base] = m
	return nil
}

// Extend registers the memory at base up to newLen bytes (the growth [old, newLen)).
func (g *Registrar) Extend(base uintptr, newLen int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.maps[base]
	if !ok {
		return fmt.Errorf("cuda: growth of unregistered memory at %#x", base)
	}
	return g.extend(m, newLen)
}

func (g *Registrar) extend(m *hostMap, newLen int) error {
	if newLen <= m.n {
		return nil
	}
	add := newLen - m.n
	dev, err := g.d.drv.hostRegister(m.base+uintptr(m.n), add)
	if err != nil {
		return fmt.Errorf("cuda: register %d bytes at %#x: %w", add, m.base+uintptr(m.n), err)
	}
	m.ranges = append(m.ranges, hostRange{off: m.n, n: add, dev: dev})
	m.n = newLen
	g.gen.Add(1)
	g.d.Stats.Registered.Add(int64(add))
	return nil
}

// Unregister unregisters the memory at base, after waiting for the device (queued kernels
// may still use it). Unknown bases are ignored.
func (g *Registrar) Unregister(base uintptr) error {
	g.mu.Lock()
	m, ok := g.maps[base]
	delete(g.maps, base)
	g.mu.Unlock()
	if !ok {
		return nil
	}
	err := g.d.drv.sync()
	for _, r := range m.ranges {
		err = errors.Join(err, g.d.drv.hostUnregister(m.base+uintptr(r.off)))
		g.d.Stats.Registered.Add(-int64(r.n))
	}
	return err
}

// DevPtr returns the device address of the n bytes at offset off of the memory at base. The
// range must lie within the registered part (and, unless the device maps host pointers 1:1,
// within one registered range).
func (g *Registrar) DevPtr(base uintptr, off, n int) (DevPtr, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.maps[base]
	if !ok {
		return 0, fmt.Errorf("cuda: memory at %#x is not registered", base)
	}
	return m.devPtr(off, n, g.d.info.HostPtrIsDevPtr)
}

func (m *hostMap) devPtr(off, n int, identity bool) (DevPtr, error) {
	if off < 0 || n < 0 || off+n > m.n || off+n < off {
		return 0, fmt.Errorf("cuda: range [%d,%d) outside the %d registered bytes", off, off+n, m.n)
	}
	i := sort.Search(len(m.ranges), func(i int) bool { return m.ranges[i].off+m.ranges[i].n > off })
	if i == len(m.ranges) {
		return 0, fmt.Errorf("cuda: offset %d not registered", off)
	}
	r := m.ranges[i]
	if identity {
		if r.dev != DevPtr(m.base)+DevPtr(r.off) {
			return 0, fmt.Errorf("cuda: device pointer %#x of host %#x differs", r.dev, m.base+uintptr(r.off))
		}
		return r.dev + DevPtr(off-r.off), nil
	}
	if off+n > r.off+r.n {
		return 0, fmt.Errorf("cuda: range [%d,%d) spans two registrations", off, off+n)
	}
	return r.dev + DevPtr(off-r.off), nil
}

// Registered is the number of bytes registered for the memory at base.
func (g *Registrar) Registered(base uintptr) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m, ok := g.maps[base]; ok {
		return m.n
	}
	return 0
}

// RegionCreated registers the region's committed part.
func (g *Registrar) RegionCreated(r *wasmmem.Region) error { return g.Register(r.Base(), r.Len()) }

// RegionGrew registers the growth [oldLen, newLen).
func (g *Registrar) RegionGrew(r *wasmmem.Region, oldLen, newLen int) error {
	return g.Extend(r.Base(), newLen)
}

// RegionReleased unregisters the region.
func (g *Registrar) RegionReleased(r *wasmmem.Region) { _ = g.Unregister(r.Base()) }

// DevPtrOf returns the device address of the n bytes at host address p, which must lie in
// one registered memory.
func (g *Registrar) DevPtrOf(p uintptr, n int) (DevPtr, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for base, m := range g.maps {
		if p >= base && p < base+uintptr(m.n) {
			return m.devPtr(int(p-base), n, g.d.info.HostPtrIsDevPtr)
		}
	}
	return 0, fmt.Errorf("cuda: host address %#x is not in registered memory", p)
}

// Piece is a part of a host range that lies in one registration.
type Piece struct {
	Off int    // offset within the range asked for
	Dev DevPtr // device address of the part
	N   int
}

// Pieces splits the n bytes at host address p at registration boundaries: copy engines
// (cuMemcpy*) refuse a range that spans two registrations, even where kernels, through
// unified addressing, read across them.
func (g *Registrar) Pieces(p uintptr, n int) ([]Piece, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for base, m := range g.maps {
		if p < base || p >= base+uintptr(m.n) {
			continue
		}
		off := int(p - base)
		if off+n > m.n {
			return nil, fmt.Errorf("cuda: range [%d,%d) outside the %d registered bytes", off, off+n, m.n)
		}
		var out []Piece
		for _, r := range m.ranges {
			lo, hi := max(off, r.off), min(off+n, r.off+r.n)
			if lo < hi {
				out = append(out, Piece{Off: lo - off, Dev: r.dev + DevPtr(lo-r.off), N: hi - lo})
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("cuda: host address %#x is not in registered memory", p)
}

// snapshot returns the registered memory that contains host address p: its base, registered
// length and ranges (a copy), for an executor's cached translation.
func (g *Registrar) snapshot(p uintptr) (hostMap, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for base, m := range g.maps {
		if p >= base && p < base+uintptr(m.n) {
			return hostMap{base: base, n: m.n, ranges: append([]hostRange(nil), m.ranges...)}, true
		}
	}
	return hostMap{}, false
}
