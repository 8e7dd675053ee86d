package cas

// Byte-plane split and join with SSE2, which every amd64 CPU has (codec_planes_amd64.s).

//go:noescape
func splitPlanesSSE2(lo, hi, src []byte) int

//go:noescape
func joinPlanesSSE2(dst, lo, hi []byte) int

//go:noescape
func joinEqualSSE2(data, lo, hi []byte) bool

// splitPlanesFast splits a prefix of src as splitPlanes does and returns its length (a multiple
// of 32); the caller finishes the rest. len(lo) and len(hi) must be at least len(src)/2.
func splitPlanesFast(lo, hi, src []byte) int {
	if len(lo) < len(src)/2 || len(hi) < len(src)/2 {
		panic("cas: splitPlanes: planes too short")
	}
	return splitPlanesSSE2(lo, hi, src)
}

// joinPlanesFast joins a prefix of dst as joinPlanes does and returns its length (a multiple of
// 32); the caller finishes the rest. len(lo) and len(hi) must be at least len(dst)/2.
func joinPlanesFast(dst, lo, hi []byte) int {
	if len(lo) < len(dst)/2 || len(hi) < len(dst)/2 {
		panic("cas: joinPlanes: planes too short")
	}
	return joinPlanesSSE2(dst, lo, hi)
}

// joinedEqualFast compares a prefix of data with lo and hi interleaved, as joinedEqual does,
// and returns the prefix's length (a multiple of 32) and whether it matched; the caller checks
// the rest. len(lo) and len(hi) must be at least len(data)/2.
func joinedEqualFast(data, lo, hi []byte) (int, bool) {
	if len(lo) < len(data)/2 || len(hi) < len(data)/2 {
		panic("cas: joinedEqual: planes too short")
	}
	return len(data) &^ 31, joinEqualSSE2(data, lo, hi)
}
