package castest

import (
	"encoding/binary"
	"math"

	"github.com/driftstore/driftstore/cas/castest/half"
)

// Random returns n bytes from SplitMix64 started at seed (each output little-endian): a
// deterministic stand-in for incompressible data.
func Random(n int, seed uint64) []byte {
	b := make([]byte, n+8)
	x := seed
	for i := 0; i < n; i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(b[i:], z^(z>>31))
	}
	return b[:n:n]
}

// KVFloat16 returns n bytes (n/2 little-endian IEEE float16 values; an odd n gets one trailing
// random byte) shaped like a transformer's KV cache: rows of headDim = 64 values, one row per
// token position, heads of 256 positions in turn. Each head has its own scale, log-uniform in
// [0.05, 2]; a few fixed channels of each head carry 4× outliers (as key caches do); values are
// normally distributed around zero. The generator is deterministic in seed.
func KVFloat16(n int, seed uint64) []byte {
	const headDim, positions = 64, 256
	out := make([]byte, n)
	rng := newRNG(seed)
	var scale float64
	for i := 0; i+1 < n; i += 2 {
		v := i / 2
		if v%(headDim*positions) == 0 {
			scale = 0.05 * math.Pow(40, rng.float())
		}
		s := scale
		if ch := v % headDim; ch == 3 || ch == 17 || ch == 42 {
			s *= 4
		}
		binary.LittleEndian.PutUint16(out[i:], half.FromFloat32(float32(rng.normal()*s)))
	}
	if n%2 == 1 {
		out[n-1] = byte(rng.next())
	}
	return out
}

type rng struct{ x uint64 }

func newRNG(seed uint64) *rng { return &rng{x: seed} }

func (r *rng) next() uint64 {
	r.x += 0x9e3779b97f4a7c15
	z := r.x
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// float returns a uniform value in [0, 1).
func (r *rng) float() float64 { return float64(r.next()>>11) / (1 << 53) }

// normal returns a standard normal value (Box-Muller).
func (r *rng) normal() float64 {
	u := r.float()
	if u == 0 {
		u = 1.0 / (1 << 53)
	}
	return math.Sqrt(-2*math.Log(u)) * math.Cos(2*math.Pi*r.float())
}
