package half

import (
	"math"
	"testing"
)

func TestFromFloat32(t *testing.T) {
	cases := map[float32]uint16{
		0: 0, 1: 0x3c00, -2: 0xc000, 65504: 0x7bff, 65520: 0x7c00, 1e-8: 0,
		float32(math.Inf(-1)): 0xfc00, 5.960464477539063e-08: 0x0001, 6.103515625e-05: 0x0400,
		0.333333333: 0x3555, 1.0009765625: 0x3c01, 1.00048828125: 0x3c00, // ties to even
	}
	for f, want := range cases {
		if got := FromFloat32(f); got != want {
			t.Errorf("FromFloat32(%g) = %#04x, want %#04x", f, got, want)
		}
	}
	if got := FromFloat32(float32(math.NaN())); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("NaN -> %#04x", got)
	}
}
