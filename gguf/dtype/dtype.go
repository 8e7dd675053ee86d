// Package dtype converts between the number formats GGUF tensors are stored in and float32:
// IEEE 754 half precision (F16), bfloat16 (BF16) and ggml's Q8_0 blocks.
//
// Everything here is a pure function without allocation or shared state, safe for concurrent use,
// and free of dependencies so that compute kernels can import it. Conversions are bit-exact with
// ggml's reference (non-SIMD) code paths: float32 to F16 and to BF16 round to nearest, ties to
// even; Q8_0 quantization follows quantize_row_q8_0_ref (scale = max|x|/127, values rounded half
// away from zero).
//
// Slice arguments follow one rule: the functions named for one value work on one value; the
// bulk functions (plural names) require dst and src of matching lengths and panic otherwise, like
// an out-of-range index would: a length mismatch is a programming error, not a data error.
package dtype

import (
	"encoding/binary"
	"fmt"
	"math"
)

// F16ToF32 returns the float32 value of the IEEE 754 half-precision number h. Every half value,
// including subnormals, infinities and NaNs (payload kept), converts exactly.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // infinity or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	default: // subnormal: mant * 2^-24, exact in float32
		f := float32(mant) * (1.0 / (1 << 24))
		return math.Float32frombits(sign | math.Float32bits(f))
	}
}

// F32ToF16 rounds f to the nearest half-precision value, ties to even. Values beyond the half
// range become ±Inf, values below half the smallest subnormal become ±0, NaNs stay NaN (quiet,
// with the top payload bits kept).
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	// Fast path, branch-free rounding: |f| in [2^-14, 2^16) has a normal half result (or rounds
	// up to Inf). Adding 0xfff plus the lowest kept bit rounds the 13 dropped bits to nearest
	// even; a carry ripples into the exponent as it should.
	if a := b & 0x7fffffff; a-0x38800000 < 0x47800000-0x38800000 {
		return sign | uint16((a+0xfff+((a>>13)&1))>>13-(127-15)<<10)
	}
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Result is subnormal (or rounds up to the smallest normal). f = m * 2^(exp-150) and a
		// half subnormal unit is 2^-24, so the half mantissa is m >> (14-e) before rounding.
		if e < -10 {
			return sign // below 2^-25: rounds to zero (2^-25 itself ties to the even zero)
		}
		m := mant | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && h&1 == 1 {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++ // a carry out of the mantissa correctly bumps the exponent, up to Inf
	}
	return sign | uint16(h)
}

// BF16ToF32 returns the float32 value of the bfloat16 number h (exact: bfloat16 is the top half
// of a float32).
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds f to the nearest bfloat16, ties to even; NaNs stay NaN (forced quiet), as
// ggml's reference conversion does.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// F16sToF32s converts little-endian F16 values in src (2 bytes each) into dst.
// It panics unless len(src) == 2*len(dst).
func F16sToF32s(dst []float32, src []byte) {
	checkLen("F16sToF32s", len(src), 2*len(dst))
	for i := range dst {
		dst[i] = F16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// F32sToF16s converts src into little-endian F16 values in dst (2 bytes each).
// It panics unless len(dst) == 2*len(src).
func F32sToF16s(dst []byte, src []float32) {
	checkLen("F32sToF16s", len(dst), 2*len(src))
	for i, f := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], F32ToF16(f))
	}
}

// BF16sToF32s converts little-endian BF16 values in src (2 bytes each) into dst.
// It panics unless len(src) == 2*len(dst).
func BF16sToF32s(dst []float32, src []byte) {
	checkLen("BF16sToF32s", len(src), 2*len(dst))
	for i := range dst {
		dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// F32sToBF16s converts src into little-endian BF16 values in dst (2 bytes each).
// It panics unless len(dst) == 2*len(src).
func F32sToBF16s(dst []byte, src []float32) {
	checkLen("F32sToBF16s", len(dst), 2*len(src))
	for i, f := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], F32ToBF16(f))
	}
}

// F32sFromBytes decodes little-endian float32 values in src (4 bytes each) into dst.
// It panics unless len(src) == 4*len(dst).
func F32sFromBytes(dst []float32, src []byte) {
	checkLen("F32sFromBytes", len(src), 4*len(dst))
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

// F32sToBytes encodes src as little-endian float32 values into dst (4 bytes each).
// It panics unless len(dst) == 4*len(src).
func F32sToBytes(dst []byte, src []float32) {
	checkLen("F32sToBytes", len(dst), 4*len(src))
	for i, f := range src {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
	}
}

// Q8_0 layout: a block of QK8_0 consecutive values is stored as an F16 scale d followed by
// QK8_0 int8 quants q; value i is d*q[i].
const (
	QK8_0        = 32        // values per Q8_0 block
	BlockQ8_0Len = 2 + QK8_0 // bytes per Q8_0 block
)

// Q8_0Len returns the number of bytes n values take in Q8_0; n must be a multiple of QK8_0.
func Q8_0Len(n int) int { return n / QK8_0 * BlockQ8_0Len }

// QuantizeQ8_0 quantizes src into Q8_0 blocks in dst exactly as ggml's quantize_row_q8_0_ref:
// per block, d = max|x|/127 (computed in float32), stored as F16; q = round(x * (1/d)) with
// halves rounded away from zero (q = 0 for an all-zero block). The quants are computed from the
// float32 d, not from its F16 rounding, like the reference. It panics unless len(src) is a
// multiple of QK8_0 and len(dst) == Q8_0Len(len(src)).
func QuantizeQ8_0(dst []byte, src []float32) {
	if len(src)%QK8_0 != 0 {
		panic(fmt.Sprintf("dtype.QuantizeQ8_0: %d values is not a multiple of %d", len(src), QK8_0))
	}
	checkLen("QuantizeQ8_0", len(dst), Q8_0Len(len(src)))
	for b := 0; b < len(src)/QK8_0; b++ {
		x := src[b*QK8_0 : (b+1)*QK8_0 : (b+1)*QK8_0]
		y := dst[b*BlockQ8_0Len : (b+1)*BlockQ8_0Len : (b+1)*BlockQ8_0Len]
		var amax float32
		for _, v := range x {
			if a := math.Float32frombits(math.Float32bits(v) &^ (1 << 31)); a > amax {
				amax = a
			}
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		binary.LittleEndian.PutUint16(y, F32ToF16(d))
		for i, v := range x {
			y[2+i] = byte(int8(roundAway(v * id)))
		}
	}
}

// roundAway rounds half away from zero, like C's roundf, for |f| <= 127 (up to one rounding
// step beyond): in float64, f ± 0.5 is exact for such a float32, and the conversion to an
// integer truncates. NaN (from a NaN input) gives an unspecified but in-range quant.
func roundAway(f float32) int32 {
	r := int32(float64(f) + math.Copysign(0.5, float64(f)))
	return max(-128, min(127, r))
}

// DequantizeQ8_0 expands Q8_0 blocks in src into dst: dst[i] = float32(d) * float32(q[i]).
// It panics unless len(dst) is a multiple of QK8_0 and len(src) == Q8_0Len(len(dst)).
func DequantizeQ8_0(dst []float32, src []byte) {
	if len(dst)%QK8_0 != 0 {
		panic(fmt.Sprintf("dtype.DequantizeQ8_0: %d values is not a multiple of %d", len(dst), QK8_0))
	}
	checkLen("DequantizeQ8_0", len(src), Q8_0Len(len(dst)))
	for b := 0; b < len(dst)/QK8_0; b++ {
		y := src[b*BlockQ8_0Len : (b+1)*BlockQ8_0Len : (b+1)*BlockQ8_0Len]
		x := dst[b*QK8_0 : (b+1)*QK8_0 : (b+1)*QK8_0]
		d := F16ToF32(binary.LittleEndian.Uint16(y))
		for i := range x {
			x[i] = d * float32(int8(y[2+i]))
		}
	}
}

func checkLen(fn string, got, want int) {
	if got != want {
		panic(fmt.Sprintf("dtype.%s: length %d, want %d", fn, got, want))
	}
}
