package cas

// Byte-plane split and join with SSE2, which every amd64 CPU has (codec_planes_amd64.s).

//go:noescape
func splitPlanesSSE2(lo, hi, src []byte) int

//go:noescape
func joinPlanesSSE2(dst, lo, hi []byte) int

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
