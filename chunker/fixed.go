package chunker

import (
	"fmt"
	"iter"
	"os"
)

// PageSize is the operating system's memory page size. Aligned block sizes must be multiples
// of it. Portable layouts should use multiples of 16 KiB, the largest common page size (Apple
// Silicon); DefaultBlockSize is one.
var PageSize = os.Getpagesize()

// DefaultBlockSize is a block size that is a multiple of every common page size.
const DefaultBlockSize = 64 << 10

// CheckFixedSize reports whether size is usable for fixed-size chunking of a byte stream:
// 1 ≤ size ≤ MaxFixedSize.
func CheckFixedSize(size int) error {
	if size < 1 || size > MaxFixedSize {
		return fmt.Errorf("%w: fixed chunk size %d outside [1, %d]", ErrInvalidParams, size, MaxFixedSize)
	}
	return nil
}

// CheckBlockSize reports whether blockSize is usable for aligned chunking of memory regions: a
// positive multiple of PageSize, at most MaxFixedSize.
func CheckBlockSize(blockSize int) error {
	if blockSize < PageSize || blockSize > MaxFixedSize || blockSize%PageSize != 0 {
		return fmt.Errorf("%w: block size %d is not a multiple of the %d-byte page in [%d, %d]",
			ErrInvalidParams, blockSize, PageSize, PageSize, MaxFixedSize)
	}
	return nil
}

// Aligned splits a memory region into consecutive blocks of blockSize bytes; the last block is
// shorter when len(region) is not a multiple of blockSize. Offsets are multiples of blockSize, so
// when the region starts on a page boundary every block does too and restores to one contiguous
// page-aligned range. Each Chunk's Data aliases region. blockSize must pass CheckBlockSize.
func Aligned(region []byte, blockSize int) ([]Chunk, error) {
	if err := CheckBlockSize(blockSize); err != nil {
		return nil, err
	}
	out := make([]Chunk, 0, (len(region)+blockSize-1)/blockSize)
	for ch := range fixedChunks(region, blockSize) {
		out = append(out, ch)
	}
	return out, nil
}

// FixedChunks yields the consecutive size-byte chunks of data (the last may be short) after
// checking size with CheckFixedSize. Each Chunk's Data aliases data.
func FixedChunks(data []byte, size int) (iter.Seq[Chunk], error) {
	if err := CheckFixedSize(size); err != nil {
		return nil, err
	}
	return fixedChunks(data, size), nil
}

func fixedChunks(data []byte, size int) iter.Seq[Chunk] {
	return func(yield func(Chunk) bool) {
		for off := 0; off < len(data); off += size {
			end := min(off+size, len(data))
			if !yield(Chunk{Offset: int64(off), Length: end - off, Data: data[off:end:end]}) {
				return
			}
		}
	}
}
