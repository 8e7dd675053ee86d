//go:build unix

package gguf

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps size bytes of fh read-only and shared. The mapping outlives fh. An empty file
// is returned as an empty slice without a mapping (mmap refuses zero lengths).
func mapFile(fh *os.File, size int64) ([]byte, func() error, error) {
	if size == 0 {
		return []byte{}, nil, nil
	}
	if int64(int(size)) != size {
		return readAll(fh, size)
	}
	data, err := unix.Mmap(int(fh.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return readAll(fh, size)
	}
	return data, func() error { return unix.Munmap(data) }, nil
}
