//go:build !linux

package wasmmem

import "unsafe"

const hugeAdviceSupported = false

func adviseHuge(unsafe.Pointer, int) error { return nil }
