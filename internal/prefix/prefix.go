// Package prefix finds the common prefix of two slices quickly: a checkpoint's token history
// and chunk lists share thousands of entries with its parent's.
package prefix

import (
	"bytes"
	"unsafe"
)

// Common returns the length of the longest common prefix of a and b. It compares runs of
// entries as bytes first, so T's bytes must be equal exactly when its values are: no padding,
// no floating-point fields, no pointers (integers, byte arrays, structs of those laid out
// without gaps).
func Common[T comparable](a, b []T) int {
	n := min(len(a), len(b))
	size := int(unsafe.Sizeof(*new(T)))
	run := max(1, 2048/max(1, size)) // entries compared at once: about 2 KiB
	i := 0
	for ; i+run <= n; i += run {
		if !bytes.Equal(asBytes(a[i:i+run], size), asBytes(b[i:i+run], size)) {
			break
		}
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// asBytes views s, of entries of size bytes, as its bytes.
func asBytes[T any](s []T, size int) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*size)
}
