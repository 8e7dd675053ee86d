//go:build !unix

package gguf

import "os"

// mapFile reads the whole file into memory where mmap is not available.
func mapFile(fh *os.File, size int64) ([]byte, func() error, error) {
	return readAll(fh, size)
}
