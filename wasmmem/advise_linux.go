//go:build linux

package wasmmem

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

const hugeAdviceSupported = true

func adviseHuge(p unsafe.Pointer, n int) error {
	err := unix.Madvise(unsafe.Slice((*byte)(p), n), unix.MADV_HUGEPAGE)
	if errors.Is(err, unix.EINVAL) {
		return nil // a kernel without transparent huge pages: no advice to give
	}
	return err
}
