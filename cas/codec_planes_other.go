//go:build !amd64

package cas

// Without an assembly version, splitPlanes and joinPlanes do all the work in portable Go,
// eight bytes at a time.

func splitPlanesFast(lo, hi, src []byte) int { return 0 }

func joinPlanesFast(dst, lo, hi []byte) int { return 0 }

func joinedEqualFast(data, lo, hi []byte) (int, bool) { return 0, true }
