//go:build linux

package wasmmem

import (
	"errors"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// noPopulate is set once the kernel refused MADV_POPULATE_WRITE (before 5.14: EINVAL), so
// later calls go straight to touching pages.
var noPopulate atomic.Bool

// populateWrite asks the kernel to fault [p, p+n) in writable. It reports false when the
// kernel has no such advice (the caller then touches the pages).
func populateWrite(p unsafe.Pointer, n int) (bool, error) {
	if noPopulate.Load() {
		return false, nil
	}
	err := unix.Madvise(unsafe.Slice((*byte)(p), n), unix.MADV_POPULATE_WRITE)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		noPopulate.Store(true)
		return false, nil
	}
	return false, err
}
