package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

var testLimits = StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 1<<20 + 4096, MaxChunks: 1000}

func encodeStream(t testing.TB, chunks []StoredChunk, trailer bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewChunkStreamWriter(&buf)
	for _, c := range chunks {
		if _, err := w.WriteChunk(c); err != nil {
			t.Fatal(err)
		}
	}
	if trailer {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	} else if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func decodeStream(b []byte, lim StreamLimits) ([]StoredChunk, error) {
	r := NewChunkStreamReader(bytes.NewReader(b), lim)
	var out []StoredChunk
	for {
		c, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		c.Stored = bytes.Clone(c.Stored)
		out = append(out, c)
	}
}

func sampleChunks() []StoredChunk {
	var out []StoredChunk
	for i, s := range []string{"", "a", strings.Repeat("xyz", 1000), string(make([]byte, 70000))} {
		out = append(out, StoredChunk{Digest: cas.Sum([]byte(s)), Codec: cas.CodecRaw, Size: int64(len(s)) + int64(i), Stored: []byte(s)})
	}
	return out
}

func TestChunkStreamRoundTrip(t *testing.T) {
	in := sampleChunks()
	got, err := decodeStream(encodeStream(t, in, true), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("got %d chunks, want %d", len(got), len(in))
	}
	for i := range in {
		if got[i].Digest != in[i].Digest || got[i].Codec != in[i].Codec || got[i].Size != in[i].Size || !bytes.Equal(got[i].Stored, in[i].Stored) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	// An empty stream is valid.
	got, err = decodeStream(encodeStream(t, nil, true), testLimits)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty stream: %v, %d chunks", err, len(got))
	}
}

func TestChunkStreamTruncated(t *testing.T) {
	in := sampleChunks()
	full := encodeStream(t, in, true)
	// Without the trailer: all frames arrive, then an unexpected EOF.
	got, err := decodeStream(encodeStream(t, in, false), testLimits)
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != len(in) {
		t.Fatalf("no trailer: %d chunks, err %v", len(got), err)
	}
	// Every cut inside the stream is an unexpected EOF, never a clean end, and the frames
	// before the cut decode whole.
	for cut := 0; cut < len(full)-1; cut += 97 {
		got, err := decodeStream(full[:cut], testLimits)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: err %v", cut, err)
		}
		for i, c := range got {
			if !bytes.Equal(c.Stored, in[i].Stored) {
				t.Fatalf("cut at %d: chunk %d differs", cut, i)
			}
		}
	}
}

// NextInto reads a frame's stored bytes into the caller's buffer when they fit, into the
// reader's own buffer otherwise, and leaves the caller's buffer alone on a cut.
func TestChunkStreamNextInto(t *testing.T) {
	in := sampleChunks() // stored lengths 0, 1, 3000, 70000
	full := encodeStream(t, in, true)
	r := NewChunkStreamReader(bytes.NewReader(full), testLimits)
	buf := make([]byte, 0, 4000)
	var owned [][]byte
	for i := 0; ; i++ {
		before := len(buf)
		c, out, err := r.NextInto(buf)
		if err == io.EOF {
			if i != len(in) {
				t.Fatalf("EOF after %d chunks", i)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.Stored, in[i].Stored) || c.Digest != in[i].Digest {
			t.Fatalf("chunk %d differs", i)
		}
		fits := len(in[i].Stored) > 0 && len(in[i].Stored) <= cap(buf)-before
		if fits != (len(out) == before+len(c.Stored) && len(c.Stored) > 0) {
			t.Fatalf("chunk %d (%d bytes, %d free): buffer grew from %d to %d", i, len(c.Stored), cap(buf)-before, before, len(out))
		}
		if fits {
			if &c.Stored[0] != &out[before] || cap(c.Stored) != len(c.Stored) {
				t.Fatalf("chunk %d: Stored does not alias the caller's buffer", i)
			}
			owned = append(owned, c.Stored)
		}
		buf = out
	}
	if len(owned) != 2 || !bytes.Equal(owned[0], in[1].Stored) || !bytes.Equal(owned[1], in[2].Stored) {
		t.Fatalf("%d chunks read into the caller's buffer, or overwritten since", len(owned))
	}
	// Cut inside the third frame's bytes: an unexpected EOF, the buffer as it was.
	r = NewChunkStreamReader(bytes.NewReader(full[:len(full)-70000-40-1500]), testLimits)
	buf = make([]byte, 0, 4000)
	for {
		_, out, err := r.NextInto(buf)
		if err != nil {
			if !errors.Is(err, io.ErrUnexpectedEOF) || len(out) != len(buf) || len(buf) != 1 {
				t.Fatalf("cut stream: %v, buffer %d → %d bytes", err, len(buf), len(out))
			}
			break
		}
		buf = out
	}
}

func TestChunkStreamRefuses(t *testing.T) {
	in := sampleChunks()
	full := encodeStream(t, in, true)
	bad := bytes.Clone(full)
	bad[0] = 'X'
	if _, err := decodeStream(bad, testLimits); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad magic: %v", err)
	}
	if _, err := decodeStream(full, StreamLimits{MaxChunkSize: 100, MaxStoredSize: 1 << 20}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("size over limit: %v", err)
	}
	if _, err := decodeStream(full, StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 100}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("stored over limit: %v", err)
	}
	if _, err := decodeStream(full, StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 1 << 20, MaxChunks: 2}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("count over limit: %v", err)
	}
	// A trailer that miscounts.
	one := encodeStream(t, in[:1], false)
	one = append(one, tagTrailer, 5)
	if _, err := decodeStream(one, testLimits); !errors.Is(err, ErrMalformed) {
		t.Fatalf("miscount: %v", err)
	}
	// A frame that claims a large stored length but sends little must not allocate it.
	var lie bytes.Buffer
	lie.WriteString(streamMagic)
	lie.WriteByte(tagFrame)
	lie.Write(make([]byte, 33))
	lie.Write([]byte{0x80, 0x80, 0x40}) // size 1 MiB
	lie.Write([]byte{0x80, 0x80, 0x40}) // stored 1 MiB
	lie.WriteString("tiny")
	if _, err := decodeStream(lie.Bytes(), testLimits); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("lying length: %v", err)
	}
	// Non-canonical varint.
	var nc bytes.Buffer
	nc.WriteString(streamMagic)
	nc.WriteByte(tagFrame)
	nc.Write(make([]byte, 33))
	nc.Write([]byte{0x81, 0x00, 0x00})
	if _, err := decodeStream(nc.Bytes(), testLimits); !errors.Is(err, ErrMalformed) {
		t.Fatalf("non-canonical varint: %v", err)
	}
}

func TestParseMissingRequest(t *testing.T) {
	d1, d2 := cas.Sum([]byte("1")), cas.Sum([]byte("2"))
	body, _ := json.Marshal(MissingRequest{Digests: []cas.Digest{d1, d2}})
	got, err := ParseMissingRequest(body, 10)
	if err != nil || len(got) != 2 || got[0] != d1 || got[1] != d2 {
		t.Fatalf("got %v, %v", got, err)
	}
	for name, tc := range map[string]struct {
		body string
		want error
	}{
		"bad digest":    {`{"digests":["blake3:00"]}`, cas.ErrBadDigest},
		"upper hex":     {`{"digests":["blake3:` + strings.ToUpper(d1.Hex()) + `"]}`, cas.ErrBadDigest},
		"traversal":     {`{"digests":["../../etc/passwd"]}`, cas.ErrBadDigest},
		"unknown field": {`{"digests":[],"x":1}`, ErrMalformed},
		"trailing":      {`{"digests":[]} {}`, ErrMalformed},
		"not json":      {`digests`, ErrMalformed},
		"too many":      {`{"digests":["` + d1.String() + `","` + d1.String() + `","` + d2.String() + `"]}`, ErrTooLarge},
	} {
		if _, err := ParseMissingRequest([]byte(tc.body), 2); !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", name, err, tc.want)
		}
	}
	if _, err := ReadMissingRequest(strings.NewReader(strings.Repeat(" ", MaxMissingBody+1)), 0); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized body: %v", err)
	}
}

func FuzzChunkStream(f *testing.F) {
	f.Add(encodeStream(f, sampleChunks()[:3], true))
	f.Add(encodeStream(f, sampleChunks()[:2], false))
	f.Add([]byte(streamMagic))
	f.Add([]byte(streamMagic + "\x00\x00"))
	lim := StreamLimits{MaxChunkSize: 1 << 16, MaxStoredSize: 1 << 16, MaxChunks: 64}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeStream(b, lim)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		// A stream that decodes cleanly re-encodes to the same bytes (the format is canonical).
		if re := encodeStream(t, got, true); !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", b, re)
		}
	})
}

func FuzzMissingRequest(f *testing.F) {
	d := cas.Sum([]byte("x"))
	f.Add([]byte(`{"digests":["` + d.String() + `"]}`))
	f.Add([]byte(`{"digests":[]}`))
	f.Add([]byte(`{"digests":null}`))
	f.Add([]byte(`{"digests":["blake3:` + strings.Repeat("0", 64) + `"]} `))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseMissingRequest(b, 16)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if len(got) > 16 {
			t.Fatalf("%d digests accepted over the limit", len(got))
		}
		// What was accepted survives a round trip.
		re, _ := json.Marshal(MissingRequest{Digests: got})
		again, err := ParseMissingRequest(re, 16)
		if err != nil || len(again) != len(got) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range got {
			if again[i] != got[i] {
				t.Fatalf("round trip changed digest %d", i)
			}
		}
	})
}

func FuzzDigestList(f *testing.F) {
	f.Add(AppendDigestList(nil, []cas.Digest{cas.Sum([]byte("a")), cas.Sum([]byte("b"))}))
	f.Add([]byte{})
	f.Add(make([]byte, 33))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseDigestList(b, 8)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if len(got) > 8 || !bytes.Equal(AppendDigestList(nil, got), b) {
			t.Fatalf("accepted %d digests that do not re-encode to the input", len(got))
		}
	})
}

// TestChunkStreamNextWith: get is asked for each non-empty frame's length before its bytes are
// read; a buffer it returns receives them, nil leaves them in the reader's buffer, and one too
// small is an error.
func TestChunkStreamNextWith(t *testing.T) {
	in := sampleChunks() // stored lengths 0, 1, 3000, 70000
	full := encodeStream(t, in, true)
	r := NewChunkStreamReader(bytes.NewReader(full), testLimits)
	var asked []int
	bufs := map[int][]byte{}
	for i := 0; ; i++ {
		c, err := r.NextWith(func(n int) []byte {
			asked = append(asked, n)
			if n > 5000 {
				return nil
			}
			b := make([]byte, n+10)
			bufs[i] = b
			return b
		})
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.Stored, in[i].Stored) || c.Digest != in[i].Digest || c.Size != in[i].Size {
			t.Fatalf("chunk %d differs", i)
		}
		if b, ok := bufs[i]; ok && (&c.Stored[0] != &b[0] || cap(c.Stored) != len(c.Stored)) {
			t.Fatalf("chunk %d: Stored is not the caller's buffer", i)
		}
	}
	if len(asked) != 3 || asked[0] != 1 || asked[1] != 3000 || asked[2] != 70000 {
		t.Fatalf("get asked for %v", asked)
	}
	r = NewChunkStreamReader(bytes.NewReader(full), testLimits)
	for {
		_, err := r.NextWith(func(n int) []byte { return make([]byte, 0, n-1) })
		if err == nil {
			continue
		}
		if err == io.EOF || errors.Is(err, ErrMalformed) {
			t.Fatalf("a buffer too small: %v", err)
		}
		break
	}
}
