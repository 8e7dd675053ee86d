package chunker

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// splitmix64 fills b with the output of Vigna's SplitMix64 generator started at seed, each
// 64-bit output written little-endian. It is the documented source of every deterministic test
// input here: anyone can regenerate the golden inputs in any language.
func splitmix64(b []byte, seed uint64) {
	x := seed
	var w [8]byte
	for i := 0; i < len(b); i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		for j := range w {
			w[j] = byte(z >> (8 * j))
		}
		copy(b[i:], w[:])
	}
}

func randomInput(n int, seed uint64) []byte {
	b := make([]byte, n)
	splitmix64(b, seed)
	return b
}

// structuredInput is low-entropy data with long repeats and zero runs: text-like records,
// a copy of an earlier stretch, and a zero page. It drives the chunker through Max cuts and
// through the easier mask after Avg.
func structuredInput(n int) []byte {
	var buf bytes.Buffer
	rnd := randomInput(n, 7)
	for i := 0; buf.Len() < n; i++ {
		switch i % 5 {
		case 0, 1, 2:
			fmt.Fprintf(&buf, "record %08d value=%d flags=%x\n", i, rnd[i%len(rnd)], rnd[(i*7)%len(rnd)])
		case 3:
			buf.Write(rnd[(i*131)%(n/2) : (i*131)%(n/2)+int(rnd[i%n])*3])
		case 4:
			if i%45 == 4 {
				buf.Write(make([]byte, 70_000))
			}
		}
	}
	return buf.Bytes()[:n]
}

func TestGearTableMatchesReference(t *testing.T) {
	// Entries published in the Rust fastcdc crate's v2020 GEAR and GEAR_LS tables.
	want := map[int]uint64{
		0: 0x3b5d3c7d207e37dc, 1: 0x784d68ba91123086, 2: 0xcd52880f882e7298, 3: 0xeacf8e4e19fdcca7,
		252: 0x8e3e4221d3614413, 253: 0xef14d0d86bf1a22c, 254: 0xe1d830d3f16c5ddb, 255: 0xaabd2b2a451504e1,
	}
	for i, w := range want {
		if gear[i] != w {
			t.Errorf("gear[%d] = %#016x, want %#016x", i, gear[i], w)
		}
	}
	if gearLS[0] != 0x76ba78fa40fc6fb8 || gearLS[255] != 0x557a56548a2a09c2 {
		t.Errorf("gearLS[0], gearLS[255] = %#016x, %#016x", gearLS[0], gearLS[255])
	}
	seen := map[uint64]bool{}
	for i, g := range gear {
		if seen[g] {
			t.Fatalf("gear[%d] repeats an earlier entry", i)
		}
		seen[g] = true
	}
}

func TestMasks(t *testing.T) {
	for b := 5; b < len(masks); b++ {
		if got := bits.OnesCount64(masks[b]); got != b {
			t.Errorf("masks[%d] has %d one-bits", b, got)
		}
		if masks[b]>>63 != 0 {
			t.Errorf("masks[%d] uses the top bit, which the shifted mask would lose", b)
		}
	}
}

func TestParamsValidate(t *testing.T) {
	ok := []Params{
		DefaultParams(),
		{Min: 64, Avg: 256, Max: 1024, Normalization: 3},
		{Min: 4096, Avg: 16384, Max: 65535, Normalization: 1},
		{Min: 1 << 20, Avg: 4 << 20, Max: 16 << 20, Normalization: 3},
		{Min: 2000, Avg: 3000, Max: 5000, Normalization: 0},
	}
	for _, p := range ok {
		if err := p.Validate(); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
		if _, err := NewFastCDC(p); err != nil {
			t.Errorf("NewFastCDC(%+v): %v", p, err)
		}
	}
	bad := []Params{
		{},
		{Min: 62, Avg: 256, Max: 1024},
		{Min: 65, Avg: 256, Max: 1024},
		{Min: 64, Avg: 255, Max: 1024},
		{Min: 64, Avg: 256, Max: 1023},
		{Min: 64, Avg: 256, Max: 16<<20 + 1},
		{Min: 2 << 20, Avg: 3 << 20, Max: 4 << 20},
		{Min: 512, Avg: 512, Max: 4096},
		{Min: 512, Avg: 8192, Max: 4096},
		{Min: 64, Avg: 256, Max: 1024, Normalization: 4},
		{Min: 64, Avg: 256, Max: 1024, Normalization: -1},
		{Min: 64, Avg: 8 << 20, Max: 16 << 20},
	}
	for _, p := range bad {
		err := p.Validate()
		if !errors.Is(err, ErrInvalidParams) {
			t.Errorf("%+v: got %v, want ErrInvalidParams", p, err)
		}
		if _, err := NewFastCDC(p); err == nil {
			t.Errorf("NewFastCDC(%+v) accepted bad params", p)
		}
	}
}

// modelCut is the paper's algorithm written the obvious way, one byte per step: the reference
// against which the two-bytes-per-step loop of Cut is checked. Bytes [min, center&^1) are tested
// against the harder mask, bytes [center&^1, limit&^1) against the easier one; a match at byte p
// ends the chunk at length p. The fingerprint Cut reports for a match on an even byte is the
// model's hash shifted left once (the 2020 loop keeps the hash pre-shifted for the pair).
func modelCut(c *FastCDC, src []byte) (int, uint64) {
	n := len(src)
	if n <= c.p.Min {
		return n, 0
	}
	center := c.p.Avg
	if n > c.p.Max {
		n = c.p.Max
	} else if n < center {
		center = n
	}
	var h uint64
	for p := c.p.Min &^ 1; p < n&^1; p++ {
		h = h<<1 + gear[src[p]]
		mask := c.maskL
		if p < center&^1 {
			mask = c.maskS
		}
		if h&mask == 0 {
			if p%2 == 0 {
				return p, h << 1
			}
			return p, h
		}
	}
	return n, h // the pairs loop ends on a whole pair, so no shift is pending
}

func TestCutMatchesBytewiseModel(t *testing.T) {
	inputs := map[string][]byte{
		"random":     randomInput(3<<20, 1),
		"structured": structuredInput(3 << 20),
		"zeros":      make([]byte, 1<<20),
	}
	params := []Params{
		DefaultParams(),
		{Min: 64, Avg: 256, Max: 1024, Normalization: 3},
		{Min: 4096, Avg: 16384, Max: 65535, Normalization: 1},
		{Min: 2000, Avg: 3001, Max: 5001, Normalization: 0},
		{Min: 8192, Avg: 16384, Max: 32768, Normalization: 2},
	}
	for name, in := range inputs {
		for _, p := range params {
			c, err := NewFastCDC(p)
			if err != nil {
				t.Fatal(err)
			}
			off, count := 0, 0
			for off < len(in) {
				n, fp := c.Cut(in[off:])
				mn, mfp := modelCut(c, in[off:])
				if n != mn || fp != mfp {
					t.Fatalf("%s %+v at offset %d: Cut = (%d, %#x), model = (%d, %#x)", name, p, off, n, fp, mn, mfp)
				}
				off += n
				count++
			}
			t.Logf("%s %+v: %d chunks", name, p, count)
		}
	}
}

func checkCover(t testing.TB, in []byte, chunks []Chunk, minLen, maxLen int) {
	t.Helper()
	var off int64
	for i, ch := range chunks {
		if ch.Offset != off {
			t.Fatalf("chunk %d: offset %d, want %d", i, ch.Offset, off)
		}
		if ch.Length != len(ch.Data) || ch.Length == 0 {
			t.Fatalf("chunk %d: length %d, len(Data) %d", i, ch.Length, len(ch.Data))
		}
		last := i == len(chunks)-1
		if ch.Length > maxLen || (!last && ch.Length < minLen) {
			t.Fatalf("chunk %d of %d: length %d outside [%d, %d]", i, len(chunks), ch.Length, minLen, maxLen)
		}
		if !bytes.Equal(ch.Data, in[off:off+int64(ch.Length)]) {
			t.Fatalf("chunk %d: data differs from the input at its offset", i)
		}
		off += int64(ch.Length)
	}
	if off != int64(len(in)) {
		t.Fatalf("chunks cover %d bytes of %d", off, len(in))
	}
}

// streamChunks collects a Stream's chunks, copying their data.
func streamChunks(t testing.TB, s *Stream) []Chunk {
	t.Helper()
	var out []Chunk
	for {
		ch, err := s.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ch.Data = bytes.Clone(ch.Data)
		out = append(out, ch)
	}
}

func sameChunks(t testing.TB, a, b []Chunk) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%d chunks vs %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Offset != b[i].Offset || a[i].Length != b[i].Length || a[i].Fingerprint != b[i].Fingerprint {
			t.Fatalf("chunk %d: %d+%d fp %#x vs %d+%d fp %#x", i, a[i].Offset, a[i].Length, a[i].Fingerprint, b[i].Offset, b[i].Length, b[i].Fingerprint)
		}
	}
}

func TestStreamMatchesSplit(t *testing.T) {
	in := append(randomInput(2<<20, 3), structuredInput(1<<20)...)
	readers := map[string]func([]byte) io.Reader{
		"whole":   func(b []byte) io.Reader { return bytes.NewReader(b) },
		"half":    func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"dataerr": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
		"bufio7":  func(b []byte) io.Reader { return bufio.NewReaderSize(iotest.OneByteReader(bytes.NewReader(b)), 16) },
	}
	for _, p := range []Params{DefaultParams(), {Min: 64, Avg: 256, Max: 1024, Normalization: 2}} {
		c, _ := NewFastCDC(p)
		want := c.Split(in)
		checkCover(t, in, want, p.Min, p.Max)
		for name, mk := range readers {
			s, err := NewStream(mk(in), p)
			if err != nil {
				t.Fatal(err)
			}
			got := streamChunks(t, s)
			sameChunks(t, want, got)
			checkCover(t, in, got, p.Min, p.Max)
			// Reset reuses the buffer and gives the same chunks again.
			s.Reset(mk(in))
			sameChunks(t, want, streamChunks(t, s))
			_ = name
		}
	}
}

func TestStreamReadError(t *testing.T) {
	boom := errors.New("boom")
	in := randomInput(1<<20, 4)
	r := io.MultiReader(bytes.NewReader(in), iotest.ErrReader(boom))
	s, _ := NewStream(r, DefaultParams())
	var total int
	var err error
	for {
		var ch Chunk
		ch, err = s.Next()
		if err != nil {
			break
		}
		total += ch.Length
	}
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	if total > len(in) {
		t.Fatalf("returned %d bytes of %d", total, len(in))
	}
	if _, err2 := s.Next(); !errors.Is(err2, boom) {
		t.Fatalf("error not sticky: %v", err2)
	}
	fs, _ := NewFixedStream(io.MultiReader(bytes.NewReader(in[:100]), iotest.ErrReader(boom)), 4096)
	if _, err := fs.Next(); !errors.Is(err, boom) {
		t.Fatalf("fixed: got %v, want boom", err)
	}
}

func TestEmptyAndTiny(t *testing.T) {
	c, _ := NewFastCDC(DefaultParams())
	if got := c.Split(nil); len(got) != 0 {
		t.Fatalf("empty input gave %d chunks", len(got))
	}
	s, _ := NewStream(bytes.NewReader(nil), DefaultParams())
	if _, err := s.Next(); err != io.EOF {
		t.Fatalf("empty stream: %v", err)
	}
	tiny := []byte("hello")
	got := c.Split(tiny)
	if len(got) != 1 || !bytes.Equal(got[0].Data, tiny) || got[0].Fingerprint != 0 {
		t.Fatalf("tiny input: %+v", got)
	}
	// All zeros never match a mask: every chunk is Max long.
	zeros := make([]byte, 5*DefaultMax+10)
	got = c.Split(zeros)
	if len(got) != 6 || got[0].Length != DefaultMax || got[5].Length != 10 {
		t.Fatalf("zeros: %d chunks, first %d", len(got), got[0].Length)
	}
}

func TestFixedAndAligned(t *testing.T) {
	in := randomInput(10*PageSize+123, 5)
	chunks, err := Aligned(in, 4*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, in, chunks, 4*PageSize, 4*PageSize)
	if len(chunks) != 3 || chunks[2].Length != 2*PageSize+123 {
		t.Fatalf("got %d chunks, last %d", len(chunks), chunks[len(chunks)-1].Length)
	}
	for _, ch := range chunks {
		if ch.Offset%int64(PageSize) != 0 {
			t.Fatalf("offset %d not page-aligned", ch.Offset)
		}
	}
	for _, bad := range []int{0, -PageSize, PageSize + 1, PageSize / 2, MaxFixedSize + PageSize} {
		if _, err := Aligned(in, bad); !errors.Is(err, ErrInvalidParams) {
			t.Errorf("block size %d: got %v", bad, err)
		}
	}
	if c, err := Aligned(nil, PageSize); err != nil || len(c) != 0 {
		t.Fatalf("empty region: %v, %d chunks", err, len(c))
	}
	for _, size := range []int{1, 1000, 4096, len(in), len(in) + 1} {
		seq, err := FixedChunks(in, size)
		if err != nil {
			t.Fatal(err)
		}
		var want []Chunk
		for ch := range seq {
			want = append(want, ch)
		}
		checkCover(t, in, want, size, size)
		s, err := NewFixedStream(iotest.HalfReader(bytes.NewReader(in)), size)
		if err != nil {
			t.Fatal(err)
		}
		sameChunks(t, want, streamChunks(t, s))
	}
	for _, bad := range []int{0, -1, MaxFixedSize + 1} {
		if _, err := NewFixedStream(bytes.NewReader(in), bad); !errors.Is(err, ErrInvalidParams) {
			t.Errorf("fixed size %d: got %v", bad, err)
		}
	}
}

// goldenCases are the inputs and parameters pinned in testdata/fastcdc-golden.txt.
var goldenCases = []struct {
	name  string
	input func() []byte
	p     Params
}{
	{"splitmix64-seed1-8MiB", func() []byte { return randomInput(8<<20, 1) }, DefaultParams()},
	{"splitmix64-seed1-8MiB", func() []byte { return randomInput(8<<20, 1) }, Params{Min: 4096, Avg: 16384, Max: 65535, Normalization: 1}},
	{"splitmix64-seed1-8MiB", func() []byte { return randomInput(8<<20, 1) }, Params{Min: 8192, Avg: 16384, Max: 32768, Normalization: 2}},
	{"splitmix64-seed2-64KiB", func() []byte { return randomInput(64<<10, 2) }, Params{Min: 64, Avg: 256, Max: 1024, Normalization: 3}},
	{"splitmix64-seed2-64KiB", func() []byte { return randomInput(64<<10, 2) }, Params{Min: 64, Avg: 256, Max: 1024, Normalization: 0}},
	// Aligned variants (Params.Align), for float16 and float32 arrays.
	{"splitmix64-seed1-8MiB", func() []byte { return randomInput(8<<20, 1) }, Params{Min: DefaultMin, Avg: DefaultAvg, Max: DefaultMax, Normalization: DefaultNormalization, Align: 2}},
	{"splitmix64-seed2-64KiB", func() []byte { return randomInput(64<<10, 2) }, Params{Min: 64, Avg: 256, Max: 1026, Normalization: 1, Align: 4}},
}

func goldenText(t *testing.T) string {
	var b strings.Builder
	b.WriteString("# FastCDC (2020, two bytes per step) golden boundaries. Regenerate: go test ./chunker -run TestGolden -update\n")
	b.WriteString("# input: SplitMix64(seed) outputs, little-endian, truncated to the size; sha256 given to catch generator drift.\n")
	b.WriteString("# per chunk: offset length fingerprint\n")
	for _, gc := range goldenCases {
		in := gc.input()
		sum := sha256.Sum256(in)
		c, err := NewFastCDC(gc.p)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "case %s sha256=%s min=%d avg=%d max=%d level=%d", gc.name, hex.EncodeToString(sum[:]),
			gc.p.Min, gc.p.Avg, gc.p.Max, gc.p.Normalization)
		if gc.p.Align > 1 {
			fmt.Fprintf(&b, " align=%d", gc.p.Align)
		}
		b.WriteString("\n")
		for ch := range c.Chunks(in) {
			fmt.Fprintf(&b, "%d %d %016x\n", ch.Offset, ch.Length, ch.Fingerprint)
		}
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	path := filepath.Join("testdata", "fastcdc-golden.txt")
	got := goldenText(t)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got == string(want) {
		return
	}
	gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
	for i := range min(len(gl), len(wl)) {
		if gl[i] != wl[i] {
			t.Fatalf("boundaries changed: %s line %d: got %q, want %q", path, i+1, gl[i], wl[i])
		}
	}
	t.Fatalf("boundaries changed: %s has %d lines, now %d", path, len(wl), len(gl))
}

func TestGoldenHasEnoughChunks(t *testing.T) {
	// Guards against a golden file that pins nothing.
	data, err := os.ReadFile(filepath.Join("testdata", "fastcdc-golden.txt"))
	if err != nil {
		t.Fatal(err)
	}
	cases, lines := 0, 0
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(l, "case "):
			cases++
		case l != "" && !strings.HasPrefix(l, "#"):
			f := strings.Fields(l)
			if _, err := strconv.ParseInt(f[0], 10, 64); err != nil || len(f) != 3 {
				t.Fatalf("bad line %q", l)
			}
			lines++
		}
	}
	if cases != len(goldenCases) || lines < 500 {
		t.Fatalf("%d cases, %d chunk lines", cases, lines)
	}
}

// Aligned FastCDC: Align 0 and 1 give the published boundaries; Align 2 and 4 cut only on
// element boundaries, within the bounds, and differ from the unaligned cuts only by rounding
// each cut down (so most chunks keep their content and the dedup behaviour of FastCDC).
func TestAlignedFastCDC(t *testing.T) {
	in := randomInput(4<<20, 21)
	base, err := NewFastCDC(DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	want := base.Split(in)
	for _, a := range []int{0, 1} {
		p := DefaultParams()
		p.Align = a
		c, err := NewFastCDC(p)
		if err != nil {
			t.Fatal(err)
		}
		sameChunks(t, want, c.Split(in))
	}
	for _, a := range []int{2, 4, 8} {
		p := DefaultParams()
		p.Align = a
		c, err := NewFastCDC(p)
		if err != nil {
			t.Fatal(err)
		}
		got := c.Split(in)
		checkCover(t, in, got, p.Min, p.Max)
		checkAligned(t, got, a)
		// Cuts that were already aligned stay where they were: the first chunk is the
		// unaligned first chunk rounded down.
		if n := want[0].Length - want[0].Length%a; got[0].Length != n {
			t.Fatalf("align %d: first chunk %d bytes, want %d", a, got[0].Length, n)
		}
		s, err := NewStream(bytes.NewReader(in), p)
		if err != nil {
			t.Fatal(err)
		}
		sameChunks(t, got, streamChunks(t, s))
	}
	for _, bad := range []Params{
		{Min: 16384, Avg: 65536, Max: 262144, Align: 3},
		{Min: 16386, Avg: 65536, Max: 262144, Align: 4},
		{Min: 16384, Avg: 65536, Max: 262144, Align: 16},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidParams) {
			t.Errorf("%+v: got %v, want ErrInvalidParams", bad, err)
		}
	}
	if AlignFor(2) != 2 || AlignFor(4) != 4 || AlignFor(3) != 0 || AlignFor(1) != 0 {
		t.Fatal("AlignFor")
	}
}

// stuckReader returns 0, nil forever, unless limit such reads have happened: then errGaveUp.
type stuckReader struct{ reads, limit int }

var errGaveUp = errors.New("the test reader gave up first")

func (r *stuckReader) Read([]byte) (int, error) {
	if r.reads++; r.reads > r.limit {
		return 0, errGaveUp
	}
	return 0, nil
}

// A reader that makes no progress stops a Stream with io.ErrNoProgress instead of spinning.
func TestStreamStuckReader(t *testing.T) {
	cdc, err := NewStream(&stuckReader{limit: 100_000}, DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	fixed, err := NewFixedStream(&stuckReader{limit: 100_000}, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*Stream{"fastcdc": cdc, "fixed": fixed} {
		if _, err := s.Next(); !errors.Is(err, io.ErrNoProgress) {
			t.Errorf("%s: Next over a stuck reader: %v", name, err)
		}
	}
}
