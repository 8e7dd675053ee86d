package gguf

import (
	"fmt"
	"io"
	"os"
)

// readAll is the fallback when a file cannot be mapped: it reads the whole file into memory.
func readAll(fh *os.File, size int64) ([]byte, func() error, error) {
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("file of %d bytes is too large for this platform", size)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(fh, 0, size), data); err != nil {
		return nil, nil, err
	}
	return data, nil, nil
}
