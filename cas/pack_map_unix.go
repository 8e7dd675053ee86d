//go:build unix

package cas

import (
	"fmt"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// Reads through a mapping. A Pack maps each pack file read-only (MAP_SHARED), the first time a
// Get reads from it, over MaxPackSize bytes of address space (or the file's size, if larger), so
// that the mapping never has to grow while the file does: a record is read only once it is
// durable and published, so only written bytes are ever touched. A raw chunk is then one copy
// out of the page cache into the caller's buffer instead of a pread (the kernel's copy cost about
// as much again as a restore's CRC-32C and memmove together on the 2-core development VM), and a
// compressed one is decoded straight from the mapping. A pack file is unmapped when it is closed
// (Close, Compact), under its rw lock, so no reader holds the mapping then. Files never shrink
// while the store is open (a torn tail is cut at open, before any read).
//
// A read fault on a mapped page (an I/O error under the page cache) would be a SIGBUS; the reads
// turn it into an error instead (debug.SetPanicOnFault and recover), as a pread returns EIO.

// mapping returns pf's mapping, making it if needed; nil when it cannot be made (the caller
// preads instead). Called with pf.rw held for reading; it takes the write lock itself to map,
// so it returns with pf.rw held for reading again, and pf may have been closed meanwhile (the
// caller checks pf.closed after).
func (p *Pack) mapping(pf *packFile) []byte {
	if pf.m != nil || pf.mapFailed || p.opts.NoMap {
		return pf.m
	}
	pf.rw.RUnlock()
	pf.rw.Lock()
	if pf.m == nil && !pf.mapFailed && !pf.closed {
		n := p.opts.MaxPackSize
		if st, err := pf.f.Stat(); err == nil && st.Size() > n {
			n = st.Size()
		}
		m, err := unix.Mmap(int(pf.f.Fd()), 0, int(n), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			pf.mapFailed = true
		} else {
			pf.m = m
		}
	}
	pf.rw.Unlock()
	pf.rw.RLock()
	return pf.m
}

// unmap drops pf's mapping. Called with pf.rw held for writing, when pf is closed.
func (pf *packFile) unmap() error {
	if pf.m == nil {
		return nil
	}
	err := unix.Munmap(pf.m)
	pf.m = nil
	return err
}

// readMapped runs fn over m, turning a fault on a mapped page into an error naming d.
func readMapped(d Digest, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("read %s: fault on the mapped pack file: %v", d, r)
		}
	}()
	return fn()
}
