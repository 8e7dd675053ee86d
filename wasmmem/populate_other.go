//go:build !linux

package wasmmem

import "unsafe"

// populateWrite has no kernel advice to use here: the caller touches the pages.
func populateWrite(unsafe.Pointer, int) (bool, error) { return false, nil }
