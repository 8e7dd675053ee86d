package dtype

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// refHalf is the float64 value of half h, straight from the IEEE 754 definition.
func refHalf(h uint16) float64 {
	s := 1.0
	if h&0x8000 != 0 {
		s = -1
	}
	e := int(h>>10) & 0x1f
	m := float64(h & 0x3ff)
	switch {
	case e == 0x1f && m == 0:
		return math.Inf(int(s))
	case e == 0x1f:
		return math.NaN()
	case e == 0:
		return s * math.Ldexp(m, -24)
	}
	return s * math.Ldexp(1+m/1024, e-15)
}

// refBF16 is the float64 value of bfloat16 h from the definition (8 exponent bits, 7 mantissa).
func refBF16(h uint16) float64 {
	s := 1.0
	if h&0x8000 != 0 {
		s = -1
	}
	e := int(h>>7) & 0xff
	m := float64(h & 0x7f)
	switch {
	case e == 0xff && m == 0:
		return math.Inf(int(s))
	case e == 0xff:
		return math.NaN()
	case e == 0:
		return s * math.Ldexp(m, -133)
	}
	return s * math.Ldexp(1+m/128, e-127)
}

func TestF16Exhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		ref := refHalf(h)
		got := F16ToF32(h)
		if math.IsNaN(ref) {
			if !math.IsNaN(float64(got)) {
				t.Fatalf("F16ToF32(%#04x) = %v, want NaN", h, got)
			}
			if back := F32ToF16(got); back&0x7c00 != 0x7c00 || back&0x3ff == 0 || back&0x8000 != h&0x8000 {
				t.Fatalf("NaN %#04x round trip gave %#04x", h, back)
			}
			continue
		}
		if float64(got) != ref || math.Signbit(float64(got)) != math.Signbit(ref) {
			t.Fatalf("F16ToF32(%#04x) = %v, want %v", h, got, ref)
		}
		if back := F32ToF16(got); back != h {
			t.Fatalf("F32ToF16(F16ToF32(%#04x)) = %#04x", h, back)
		}
	}
}

func TestF16RoundingMidpoints(t *testing.T) {
	for _, sign := range []float64{1, -1} {
		for h := uint16(0); h <= 0x7bff; h++ {
			lo := refHalf(h)
			hi := math.Ldexp(1, 16) // the value one step past the largest finite half
			if h < 0x7bff {
				hi = refHalf(h + 1)
			}
			mid := (lo + hi) / 2
			f := float32(sign * mid)
			if float64(f) != sign*mid {
				t.Fatalf("midpoint %v not exact in float32", mid)
			}
			want := h
			if h&1 == 1 {
				want = h + 1 // ties to even; h+1 == 0x7c00 is +Inf past the top
			}
			sbit := uint16(0)
			if sign < 0 {
				sbit = 0x8000
			}
			if got := F32ToF16(f); got != want|sbit {
				t.Fatalf("F32ToF16(%v) = %#04x, want %#04x", f, got, want|sbit)
			}
			up := math.Nextafter32(float32(mid), float32(math.Inf(1)))
			down := math.Nextafter32(float32(mid), 0)
			if got := F32ToF16(float32(sign) * up); got != (h+1)|sbit {
				t.Fatalf("F32ToF16(%v) = %#04x, want %#04x", up, got, (h+1)|sbit)
			}
			if got := F32ToF16(float32(sign) * down); got != h|sbit {
				t.Fatalf("F32ToF16(%v) = %#04x, want %#04x", down, got, h|sbit)
			}
		}
	}
}

// TestF16RandomAgainstReference compares F32ToF16 on random float32 bit patterns with a nearest
// search over all finite halves done in float64.
func TestF16RandomAgainstReference(t *testing.T) {
	var vals []float64 // all non-negative finite halves in increasing order, index == bits
	for h := uint16(0); h <= 0x7bff; h++ {
		vals = append(vals, refHalf(h))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 200000; n++ {
		f := math.Float32frombits(r.Uint32())
		if n%2 == 0 { // half of them in the half range
			f = float32((r.Float64()*2 - 1) * math.Ldexp(1, r.IntN(32)-25))
		}
		if f != f {
			continue
		}
		a := math.Abs(float64(f))
		var want uint16
		if a >= 65520 {
			want = 0x7c00
		} else {
			i := sort.SearchFloat64s(vals, a) // first >= a
			switch {
			case i == len(vals):
				want = 0x7bff
			case vals[i] == a || i == 0:
				want = uint16(i)
			default:
				dlo, dhi := a-vals[i-1], vals[i]-a
				switch {
				case dlo < dhi:
					want = uint16(i - 1)
				case dhi < dlo:
					want = uint16(i)
				case (i-1)%2 == 0:
					want = uint16(i - 1)
				default:
					want = uint16(i)
				}
			}
		}
		if math.Signbit(float64(f)) {
			want |= 0x8000
		}
		if got := F32ToF16(f); got != want {
			t.Fatalf("F32ToF16(%g) = %#04x, want %#04x", f, got, want)
		}
	}
}

func TestBF16Exhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		ref := refBF16(h)
		got := BF16ToF32(h)
		if math.IsNaN(ref) {
			if !math.IsNaN(float64(got)) || !math.IsNaN(float64(BF16ToF32(F32ToBF16(got)))) {
				t.Fatalf("BF16 NaN %#04x not kept", h)
			}
			continue
		}
		if float64(got) != ref || math.Signbit(float64(got)) != math.Signbit(ref) {
			t.Fatalf("BF16ToF32(%#04x) = %v, want %v", h, got, ref)
		}
		if back := F32ToBF16(got); back != h {
			t.Fatalf("F32ToBF16(BF16ToF32(%#04x)) = %#04x", h, back)
		}
		// Midpoint to the next value up (positive finite only): ties to even.
		if h < 0x7f7f {
			mid := (ref + refBF16(h+1)) / 2
			want := h
			if h&1 == 1 {
				want = h + 1
			}
			if got := F32ToBF16(float32(mid)); got != want {
				t.Fatalf("F32ToBF16(mid %v) = %#04x, want %#04x", mid, got, want)
			}
			up := math.Nextafter32(float32(mid), float32(math.Inf(1)))
			if got := F32ToBF16(up); got != h+1 {
				t.Fatalf("F32ToBF16(%v) = %#04x, want %#04x", up, got, h+1)
			}
		}
	}
}

func TestBulkConversions(t *testing.T) {
	src := []float32{0, 1, -2.5, 65504, 1e-7, float32(math.Inf(-1))}
	b := make([]byte, 2*len(src))
	F32sToF16s(b, src)
	out := make([]float32, len(src))
	F16sToF32s(out, b)
	for i := range src {
		if want := F16ToF32(F32ToF16(src[i])); out[i] != want {
			t.Errorf("f16 bulk %d: %v want %v", i, out[i], want)
		}
	}
	F32sToBF16s(b, src)
	BF16sToF32s(out, b)
	for i := range src {
		if want := BF16ToF32(F32ToBF16(src[i])); out[i] != want {
			t.Errorf("bf16 bulk %d: %v want %v", i, out[i], want)
		}
	}
	b4 := make([]byte, 4*len(src))
	F32sToBytes(b4, src)
	F32sFromBytes(out, b4)
	for i := range src {
		if out[i] != src[i] {
			t.Errorf("f32 bulk %d: %v want %v", i, out[i], src[i])
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("length mismatch did not panic")
		}
	}()
	F16sToF32s(out, b[:3])
}

func TestQ8_0ErrorBound(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const n = 32 * 4096
	src := make([]float32, n)
	for i := range src {
		scale := math.Ldexp(1, r.IntN(20)-10)
		src[i] = float32(r.NormFloat64() * scale)
	}
	// A few special blocks: all zero, one spike, constants.
	for i := 0; i < 32; i++ {
		src[i] = 0
		src[32+i] = 0
		src[64+i] = 3.25
	}
	src[40] = -1000
	q := make([]byte, Q8_0Len(n))
	QuantizeQ8_0(q, src)
	deq := make([]float32, n)
	DequantizeQ8_0(deq, q)
	for b := 0; b < n/32; b++ {
		var amax float64
		maxq := 0
		for i := 0; i < 32; i++ {
			amax = math.Max(amax, math.Abs(float64(src[b*32+i])))
			if v := int(int8(q[b*34+2+i])); v > maxq || -v > maxq {
				maxq = max(v, -v)
			}
		}
		d := amax / 127
		if amax == 0 {
			if maxq != 0 || binary.LittleEndian.Uint16(q[b*34:]) != 0 {
				t.Fatalf("block %d: zero block quantized to nonzero", b)
			}
		} else if maxq != 127 {
			t.Fatalf("block %d: largest quant %d, want 127", b, maxq)
		}
		// Rounding to the nearest step costs d/2; storing d as F16 costs up to 127*d*2^-11.
		bound := d*(0.5+127*math.Ldexp(1, -11)) + 1e-12
		for i := 0; i < 32; i++ {
			if e := math.Abs(float64(src[b*32+i]) - float64(deq[b*32+i])); e > bound {
				t.Fatalf("block %d value %d: %v -> %v, error %g > bound %g", b, i, src[b*32+i], deq[b*32+i], e, bound)
			}
		}
	}
}

// TestQ8_0ReferenceRounding pins the reference behaviour: d = amax/127, halves round away from
// zero, the F16 scale is stored little-endian in front of the quants.
func TestQ8_0ReferenceRounding(t *testing.T) {
	src := make([]float32, 32)
	src[0] = 127 // d = 1 exactly, 1/d = 1
	src[1] = 2.5
	src[2] = -2.5
	src[3] = 0.5
	src[4] = -0.49
	src[5] = -127
	q := make([]byte, 34)
	QuantizeQ8_0(q, src)
	if d := binary.LittleEndian.Uint16(q); d != F32ToF16(1) {
		t.Fatalf("scale %#04x, want %#04x", d, F32ToF16(1))
	}
	want := []int8{127, 3, -3, 1, 0, -127}
	for i, w := range want {
		if got := int8(q[2+i]); got != w {
			t.Errorf("quant %d of %v = %d, want %d", i, src[i], got, w)
		}
	}
}
