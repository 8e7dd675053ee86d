package cas

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// TestPlanesVectorMatchesGo checks the platform's vector split and join (if any) against the
// portable Go versions for every length up to a few vector steps and at unaligned offsets.
func TestPlanesVectorMatchesGo(t *testing.T) {
	buf := testBytes(600, 7)
	for off := 0; off < 3; off++ {
		for n := 0; n+off <= len(buf) && n < 300; n++ {
			src := buf[off : off+n]
			lo, hi := make([]byte, (n+1)/2), make([]byte, n/2)
			wlo, whi := make([]byte, (n+1)/2), make([]byte, n/2)
			splitPlanes(lo, hi, src)
			splitPlanesGo(wlo, whi, src)
			if !bytes.Equal(lo, wlo) || !bytes.Equal(hi, whi) {
				t.Fatalf("off %d n %d: split differs from the Go version", off, n)
			}
			// Join into a slice with guard bytes after it: nothing past n may be written.
			out := bytes.Repeat([]byte{0xa5}, n+40)
			joinPlanes(out[:n], lo, hi)
			if !bytes.Equal(out[:n], src) {
				t.Fatalf("off %d n %d: join(split(x)) != x", off, n)
			}
			for i, c := range out[n:] {
				if c != 0xa5 {
					t.Fatalf("off %d n %d: join wrote byte %d past the end", off, n, i)
				}
			}
		}
	}
}

// joinedEqual agrees with joining and comparing, at every length and for a difference at any
// position.
func TestJoinedEqual(t *testing.T) {
	buf := testBytes(400, 9)
	for n := 0; n < 200; n++ {
		data := buf[:n]
		lo, hi := make([]byte, (n+1)/2), make([]byte, n/2)
		splitPlanes(lo, hi, data)
		if !joinedEqual(data, lo, hi) {
			t.Fatalf("n=%d: equal planes reported different", n)
		}
		for i := 0; i < n; i++ {
			p := lo
			if i%2 == 1 {
				p = hi
			}
			p[i/2] ^= 0x40
			if joinedEqual(data, lo, hi) {
				t.Fatalf("n=%d: a difference at byte %d not seen", n, i)
			}
			p[i/2] ^= 0x40
		}
		if n > 0 && joinedEqual(data[:n-1], lo, hi) {
			t.Fatalf("n=%d: planes of another length reported equal", n)
		}
	}
}

// The plane codec stores a noisy low plane raw (no match search) and still finds zero runs;
// the sampled uniformity check tells the two apart.
func TestPlanesLowPlaneChoice(t *testing.T) {
	noisy := testBytes(32<<10, 1)
	if !looksUniform(noisy) {
		t.Fatal("random bytes do not look uniform")
	}
	padded := append(testBytes(16<<10, 2), make([]byte, 16<<10)...)
	if looksUniform(padded) {
		t.Fatal("half zero padding looks uniform")
	}
	if looksUniform(testBytes(1000, 3)) {
		t.Fatal("a sample too small to judge looks uniform")
	}
	// A float16 chunk half zeros (a partly filled KV block) compresses far better than one
	// without, so the zero half was not stored raw.
	full := f16ish(64 << 10)
	half := append(f16ish(32<<10), make([]byte, 32<<10)...)
	a, _ := EncodeWith(nil, full, CodecF16Planes)
	b, _ := EncodeWith(nil, half, CodecF16Planes)
	if len(b) > len(a)*6/10 {
		t.Fatalf("half-zero chunk stores %d bytes, full one %d", len(b), len(a))
	}
	if a[4] != 0 || b[4]&planesLoZstd == 0 {
		t.Fatalf("flags %#x (full) and %#x (half zeros): want a raw low plane only for the full one", a[4], b[4])
	}
	for _, data := range [][]byte{full, half} {
		codec, out, err := encodeVerified(nil, data, HintFloat16)
		if err != nil || codec != CodecF16Planes {
			t.Fatalf("encodeVerified: %v %v", codec, err)
		}
		if got, err := Decode(nil, codec, out, len(data)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round trip: %v", err)
		}
	}
}

// Every layout of the version 2 form round-trips, at sizes around the Huffman block size, and
// the encoder picks the layout the data calls for.
func TestPlanesV2Layouts(t *testing.T) {
	zeros := make([]byte, 300<<10)
	cases := []struct {
		name  string
		data  []byte
		flags byte
	}{
		{"f16", f16ish(64 << 10), 0},
		{"f16-odd", f16ish(64<<10 + 1), 0},
		{"f16-one-block", f16ish(2 * hiBlockSize), 0},
		{"f16-block-plus-one", f16ish(2*hiBlockSize + 2), 0},
		{"f16-block-plus-odd", f16ish(2*hiBlockSize + 3), 0},
		{"f16-large", f16ish(5*hiBlockSize + 1234), 0},
		{"zeros", zeros, planesLoZstd | planesHiZstd},
		{"tiny", f16ish(3), planesHiZstd},
		{"two", f16ish(2), planesHiZstd},
	}
	for _, c := range cases {
		out, err := EncodeWith([]byte("prefix"), c.data, CodecF16Planes)
		if err != nil || string(out[:6]) != "prefix" {
			t.Fatalf("%s: EncodeWith: %v, or it overwrote dst", c.name, err)
		}
		stored := out[6:]
		if binary.LittleEndian.Uint32(stored) != planesV2Tag || stored[4] != c.flags {
			t.Fatalf("%s: tag %#x flags %#x, want version 2 with flags %#x", c.name, binary.LittleEndian.Uint32(stored), stored[4], c.flags)
		}
		for _, size := range []int{len(c.data), -1} {
			got, err := Decode(make([]byte, 0, len(c.data)), CodecF16Planes, stored, size)
			if err != nil || !bytes.Equal(got, c.data) {
				t.Fatalf("%s: round trip (size %d): %v", c.name, size, err)
			}
		}
		if _, err := Decode(nil, CodecF16Planes, stored, len(c.data)+1); err == nil {
			t.Fatalf("%s: a wrong size is accepted", c.name)
		}
	}
}

// Huffman blocks take the kind each block's bytes call for, and decode back.
func TestHuffBlocks(t *testing.T) {
	var plane []byte
	plane = append(plane, bytes.Repeat([]byte{0x3c}, hiBlockSize)...) // rle
	plane = append(plane, testBytes(hiBlockSize, 4)...)               // raw: nothing to gain
	skewed := testBytes(hiBlockSize, 5)
	for i := range skewed {
		skewed[i] = 0x30 + skewed[i]%5
	}
	plane = append(plane, skewed...) // huffman
	plane = append(plane, 0x31)      // a one-byte last block: raw
	enc := appendHuffBlocks(nil, plane)
	var kinds []byte
	for in := enc; len(in) > 0; {
		kinds = append(kinds, in[0])
		switch in[0] {
		case hiBlockRaw:
			in = in[1+min(hiBlockSize, len(in)-1):]
			if len(kinds) == 4 {
				in = in[:0]
			}
		case hiBlockRLE:
			in = in[2:]
		case hiBlockHuff:
			in = in[5+binary.LittleEndian.Uint32(in[1:]):]
		default:
			t.Fatalf("unknown kind %d", in[0])
		}
	}
	if want := []byte{hiBlockRLE, hiBlockRaw, hiBlockHuff, hiBlockRaw}; !bytes.Equal(kinds, want) {
		t.Fatalf("block kinds %v, want %v", kinds, want)
	}
	got := make([]byte, len(plane))
	if err := decodeHuffBlocks(got, enc); err != nil || !bytes.Equal(got, plane) {
		t.Fatalf("round trip: %v", err)
	}
	if err := decodeHuffBlocks(got, append(enc, 0)); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	if err := decodeHuffBlocks(make([]byte, len(plane)+1), enc); err == nil {
		t.Fatal("a plane longer than the blocks accepted")
	}
	for cut := 0; cut < len(enc); cut += 1 + len(enc)/40 {
		if err := decodeHuffBlocks(got, enc[:cut]); err == nil {
			t.Fatalf("truncated to %d bytes accepted", cut)
		}
	}
}

// Payloads of version 1, written by the encoder before version 2 (testdata, made by commit
// 83b05ae's EncodeWith from castest.KVFloat16), still decode to their chunks.
func TestPlanesV1Golden(t *testing.T) {
	for _, g := range []struct {
		file   string
		size   int
		digest string
	}{
		{"f16planes-v1-kv.stored", 20480, "blake3:725f212134e774bd9a0a756ad4e7b2f7e9042490eb8e69b964846133d2b5a716"},
		{"f16planes-v1-mixed-odd.stored", 20481, "blake3:a249f04eb65e93cb1e053e60cad7909b4436cf3470c41dd87498171aec8f7024"},
	} {
		stored, err := os.ReadFile(filepath.Join("testdata", g.file))
		if err != nil {
			t.Fatal(err)
		}
		want, err := ParseDigest(g.digest)
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{g.size, -1} {
			got, err := Decode(nil, CodecF16Planes, stored, size)
			if err != nil || len(got) != g.size || Sum(got) != want {
				t.Fatalf("%s (size %d): %v", g.file, size, err)
			}
		}
		if _, err := verifyStored(want, CodecF16Planes, stored); err != nil {
			t.Fatalf("%s: verifyStored: %v", g.file, err)
		}
	}
}

// FuzzPlanes checks the float16 plane codec both ways: any bytes encode to a payload that
// decodes back to them, and any payload, valid or not, decodes without panicking to at most
// the size asked for.
func FuzzPlanes(f *testing.F) {
	f.Add(f16ish(4096), false)
	f.Add(append(f16ish(3000), make([]byte, 3001)...), false)
	f.Add([]byte{1, 2, 3}, false)
	for _, name := range []string{"f16planes-v1-kv.stored", "f16planes-v1-mixed-odd.stored"} {
		if b, err := os.ReadFile(filepath.Join("testdata", name)); err == nil {
			f.Add(b, true)
		}
	}
	for _, data := range [][]byte{f16ish(5000), make([]byte, 4000), f16ish(9)} {
		stored, _ := EncodeWith(nil, data, CodecF16Planes)
		f.Add(stored, true)
	}
	f.Fuzz(func(t *testing.T, in []byte, asPayload bool) {
		if asPayload {
			got, err := Decode(nil, CodecF16Planes, in, -1)
			if err == nil && len(got) > MaxChunkSize {
				t.Fatalf("decoded %d bytes, over the chunk limit", len(got))
			}
			if err == nil {
				if again, err := Decode(nil, CodecF16Planes, in, len(got)); err != nil || !bytes.Equal(again, got) {
					t.Fatalf("decodes differently with its size given: %v", err)
				}
			}
			return
		}
		stored, err := EncodeWith(nil, in, CodecF16Planes)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(nil, CodecF16Planes, stored, len(in))
		if err != nil || !bytes.Equal(got, in) {
			t.Fatalf("round trip of %d bytes: %v", len(in), err)
		}
	})
}
