// Package wasmmem allocates the linear memory of every wasmtime instance
// itself, so the host knows each memory's base and length and can hand the
// same bytes to a compute backend (CPU directly, CUDA/Metal by registering
// them) without copies.
//
// A Creator is installed on a wasmtime.Config before the Engine is built.
// From then on every instance memory of that engine is a Region: one
// reservation made at instantiation (wasmtime's full reservation plus its
// guard, aligned to Options.Alignment), of which only [0, Len()) is readable
// and writable. memory.grow commits more of the reservation in place; a
// region never moves. When wasmtime drops the memory (its Store is closed or
// collected) the hook's RegionReleased runs, the region leaves the registry,
// and the whole reservation is unmapped.
//
// Ownership: wasmtime owns a Region's lifetime (the memory lives as long as
// its Store); the Creator only tracks it. The host may read and write the
// bytes of a live region between guest calls or from host functions called
// by the guest, as with any wasmtime memory. Memories made by the host with
// wasmtime.NewMemory do not go through the creator and are not Regions.
//
// Residency: committed memory is faulted in a page at a time on first write, unless the host
// populates a range ahead (Region.Populate: one MADV_POPULATE_WRITE, or a write per page),
// e.g. the KV blocks of an instance when it is made, so that a restore writing them later
// takes no faults. Transparent huge page advice is Region.HugePages.
//
// Bounds: only [0, Len) of a region is ever readable or writable; the rest
// of the reservation and the guard stay PROT_NONE, since wasmtime's compiled
// code relies on faults there for its bounds checks.
//
// Implementation: reservation, commit, grow and unmap are plain mmap/mprotect
// in C (creator.c), so wasmtime's frequent get-memory callback never enters
// Go. Go is entered once per creation, growth and release to keep the
// registry and run the Hook. wasmtime tells us a memory is gone by calling
// the linear memory's finalizer when it drops it (Store.Close or the store's
// finalizer).
//
// Thread-safety: wasmtime may create and drop memories from several threads
// at once; the Creator's registry is locked and all its methods are safe for
// concurrent use.
package wasmmem

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// MinAlignment is the smallest region alignment: the largest OS page size
// driftstore targets (16 KiB on Apple Silicon), so the bytes can be
// registered with a device that wants page-aligned host memory.
const MinAlignment = 16 << 10

// Options configures a Creator.
type Options struct {
	// Alignment of every region base, in bytes. 0 means MinAlignment.
	// It must be a power of two; values below MinAlignment or the OS page
	// size are raised to the larger of the two.
	Alignment int
	// MaxBytes caps the accessible size of each memory. 0 means no cap
	// other than the reservation wasmtime asks for (4 GiB for a 32-bit
	// memory). An instance whose memory minimum exceeds it fails to
	// instantiate; memory.grow past it fails (the guest sees -1).
	MaxBytes int
}

// Hook lets a compute backend follow the regions of a Creator. Its methods
// are called synchronously from wasmtime's callbacks, on whatever goroutine
// or thread is instantiating, growing or dropping the memory, possibly
// several at once for different regions; never concurrently for one region.
// They must not call into wasmtime for the store being instantiated, grown
// or dropped, must not block waiting for it, and should not panic (a panic
// is recovered and turned into an error, or ignored on release).
type Hook interface {
	// RegionCreated runs after the initial commit, before the instance is
	// visible to anyone. An error fails the instantiation.
	RegionCreated(r *Region) error
	// RegionGrew runs after [oldLen, newLen) was committed; r.Len() is
	// already newLen. An error undoes the growth and fails memory.grow
	// (the guest sees -1).
	RegionGrew(r *Region, oldLen, newLen int) error
	// RegionReleased runs before the reservation is unmapped. After it
	// returns, the region's bytes must not be touched again.
	RegionReleased(r *Region)
}

// Creator allocates linear memories for one wasmtime Engine (it may be
// installed on several configs; all their regions share one registry and
// hook). All methods are safe for concurrent use.
type Creator struct {
	align    int
	maxBytes int

	hook atomic.Pointer[hookBox]

	mu      sync.RWMutex
	regions map[uintptr]*Region
}

type hookBox struct{ h Hook }

// NewCreator returns a Creator for opts. It panics if opts.Alignment is not
// a power of two or opts.MaxBytes is negative (programming errors).
func NewCreator(opts Options) *Creator {
	align := opts.Alignment
	if align < 0 || align&(align-1) != 0 {
		panic(fmt.Sprintf("wasmmem: Alignment %d is not a power of two", align))
	}
	if opts.MaxBytes < 0 {
		panic(fmt.Sprintf("wasmmem: negative MaxBytes %d", opts.MaxBytes))
	}
	align = max(align, MinAlignment, pageSize)
	return &Creator{align: align, maxBytes: opts.MaxBytes, regions: make(map[uintptr]*Region)}
}

// Alignment is the alignment of every region base this creator makes.
func (c *Creator) Alignment() int { return c.align }

// SetHook sets the hook for regions created, grown and released from now
// on; nil clears it. Regions that already exist are not replayed: set the
// hook before the first instantiation.
func (c *Creator) SetHook(h Hook) {
	if h == nil {
		c.hook.Store(nil)
		return
	}
	c.hook.Store(&hookBox{h})
}

func (c *Creator) currentHook() Hook {
	if b := c.hook.Load(); b != nil {
		return b.h
	}
	return nil
}

// Lookup returns the live region whose base is base, which is what
// (*wasmtime.Memory).Data returns for an instance memory of this creator's
// engine. It reports false for any other address, including host-created
// memories and released regions. It takes a read lock: cheap, but callers on
// a hot path should keep the *Region of an instance rather than look it up
// per call.
func (c *Creator) Lookup(base uintptr) (*Region, bool) {
	c.mu.RLock()
	r, ok := c.regions[base]
	c.mu.RUnlock()
	return r, ok
}

// Live is the number of regions alive now.
func (c *Creator) Live() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.regions)
}

// Region is one instance linear memory. Its base never changes; Len grows
// with memory.grow. Methods are safe for concurrent use, but the bytes
// themselves are shared with the guest.
type Region struct {
	base     unsafe.Pointer
	capacity int
	guard    int
	n        atomic.Int64
	released atomic.Bool
}

// Base is the address of the first byte; a multiple of the creator's
// Alignment.
func (r *Region) Base() uintptr { return uintptr(r.base) }

// Len is the current accessible size in bytes (the memory's size in wasm
// pages times the page size).
func (r *Region) Len() int { return int(r.n.Load()) }

// Cap is the size of the reservation (excluding the guard): the most the
// memory can ever grow to without moving.
func (r *Region) Cap() int { return r.capacity }

// Guard is the size of the inaccessible guard region after the reservation.
func (r *Region) Guard() int { return r.guard }

// Released reports whether wasmtime has dropped the memory.
func (r *Region) Released() bool { return r.released.Load() }

// Bytes returns the accessible bytes, [Base, Base+Len). The slice aliases the
// guest's memory; it is not a copy. Contract: it is valid until the next grow
// of this memory or its release, whichever comes first; call Bytes again
// after a grow. (Regions never move, so an older slice still addresses the
// same bytes after a grow, only shorter; after release touching it faults.)
// It returns nil once the region is released.
func (r *Region) Bytes() []byte {
	if r.released.Load() {
		return nil
	}
	return unsafe.Slice((*byte)(r.base), r.Len())
}

// created registers a region made by creator.c. It runs the hook and, if the
// hook fails, unregisters it again and returns the error.
func (c *Creator) created(base unsafe.Pointer, size, capacity, guard int) (err error) {
	r := &Region{base: base, capacity: capacity, guard: guard}
	r.n.Store(int64(size))
	c.mu.Lock()
	c.regions[uintptr(base)] = r
	c.mu.Unlock()
	if h := c.currentHook(); h != nil {
		err = callHook(func() error { return h.RegionCreated(r) })
	}
	if err != nil {
		c.mu.Lock()
		delete(c.regions, uintptr(base))
		c.mu.Unlock()
		r.released.Store(true)
		return fmt.Errorf("wasmmem: hook refused new region: %w", err)
	}
	return nil
}

func (c *Creator) grew(base unsafe.Pointer, oldLen, newLen int) error {
	r, ok := c.Lookup(uintptr(base))
	if !ok {
		return fmt.Errorf("wasmmem: grow of unknown region %#x", uintptr(base))
	}
	r.n.Store(int64(newLen))
	h := c.currentHook()
	if h == nil {
		return nil
	}
	if err := callHook(func() error { return h.RegionGrew(r, oldLen, newLen) }); err != nil {
		r.n.Store(int64(oldLen))
		return fmt.Errorf("wasmmem: hook refused growth %d -> %d: %w", oldLen, newLen, err)
	}
	return nil
}

func (c *Creator) released(base unsafe.Pointer) {
	r, ok := c.Lookup(uintptr(base))
	if !ok {
		return
	}
	if h := c.currentHook(); h != nil {
		_ = callHook(func() error { h.RegionReleased(r); return nil })
	}
	r.released.Store(true)
	c.mu.Lock()
	delete(c.regions, uintptr(base))
	c.mu.Unlock()
}

// callHook runs f, turning a panic into an error: a Go panic must never
// unwind into wasmtime's frames.
func callHook(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("hook panicked: %v", p)
		}
	}()
	return f()
}
