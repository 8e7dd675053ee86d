package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

func sampleManifest() *Manifest {
	return &Manifest{
		Kind:   "checkpoint",
		Parent: cas.Sum([]byte("parent")),
		Regions: []Region{
			{Name: "layer0.k", Chunks: []ChunkRef{{cas.Sum([]byte("a")), 4096}, {cas.Sum([]byte("b")), 100}}},
			{Name: "layer0.v", Chunks: []ChunkRef{{cas.Sum([]byte("a")), 4096}}},
			{Name: "empty"},
		},
		Meta: map[string]Value{
			"model.fingerprint": DigestValue(cas.Sum([]byte("model"))),
			"position":          Int64(-7),
			"tokens":            Bytes([]byte{1, 2, 3, 4}),
			"sampler.temp":      Float64(0.7),
			"sampler.seed":      Uint64(math.MaxUint64),
			"greedy":            Bool(true),
			"note":              String("héllo"),
		},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := sampleManifest()
	data, id, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if id != cas.Sum(data) {
		t.Fatalf("ID %s is not the BLAKE3 of the bytes", id)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	again, id2, err := got.Encode()
	if err != nil || !bytes.Equal(again, data) || id2 != id {
		t.Fatalf("re-encode differs: err=%v", err)
	}
	if got.Kind != m.Kind || got.Parent != m.Parent || len(got.Regions) != 3 || got.Size() != 4096*2+100 {
		t.Fatalf("decoded %+v", got)
	}
	for k, v := range m.Meta {
		if !got.Meta[k].Equal(v) {
			t.Errorf("meta %q: got %v want %v", k, got.Meta[k].Interface(), v.Interface())
		}
	}
	if s, ok := got.Meta["note"].AsString(); !ok || s != "héllo" {
		t.Errorf("AsString = %q, %v", s, ok)
	}
	if _, ok := got.Meta["note"].AsInt64(); ok {
		t.Error("AsInt64 on a string value reported ok")
	}
	if len(got.Digests()) != 2 {
		t.Errorf("Digests = %d, want 2 distinct", len(got.Digests()))
	}
	// Same content, map built in another order: same bytes.
	m2 := sampleManifest()
	m2.Meta = map[string]Value{}
	for _, k := range []string{"tokens", "note", "greedy", "sampler.seed", "sampler.temp", "position", "model.fingerprint"} {
		m2.Meta[k] = m.Meta[k]
	}
	if _, id3, _ := m2.Encode(); id3 != id {
		t.Fatal("metadata order changed the ID")
	}
}

func TestManifestEncodeRefuses(t *testing.T) {
	cases := map[string]func(m *Manifest){
		"empty kind":       func(m *Manifest) { m.Kind = "" },
		"upper kind":       func(m *Manifest) { m.Kind = "File" },
		"dup region":       func(m *Manifest) { m.Regions[1].Name = m.Regions[0].Name },
		"empty region":     func(m *Manifest) { m.Regions[0].Name = "" },
		"zero length":      func(m *Manifest) { m.Regions[0].Chunks[0].Length = 0 },
		"negative length":  func(m *Manifest) { m.Regions[0].Chunks[0].Length = -1 },
		"huge length":      func(m *Manifest) { m.Regions[0].Chunks[0].Length = MaxChunkLength + 1 },
		"untyped value":    func(m *Manifest) { m.Meta["x"] = Value{} },
		"NaN":              func(m *Manifest) { m.Meta["x"] = Float64(math.NaN()) },
		"bad utf8 key":     func(m *Manifest) { m.Meta["\xff"] = Int64(1) },
		"bad utf8 string":  func(m *Manifest) { m.Meta["x"] = String("\xff") },
		"too big bytes":    func(m *Manifest) { m.Meta["x"] = Bytes(make([]byte, MaxValueBytes+1)) },
		"long region name": func(m *Manifest) { m.Regions[0].Name = strings.Repeat("r", MaxNameLen+1) },
	}
	for name, mut := range cases {
		m := sampleManifest()
		mut(m)
		if _, _, err := m.Encode(); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: Encode err = %v, want ErrBadManifest", name, err)
		}
	}
}

func TestManifestDecodeRefusesEveryTruncation(t *testing.T) {
	data, _, err := sampleManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(data); i++ {
		if _, err := Decode(data[:i]); !errors.Is(err, ErrBadManifest) {
			t.Fatalf("prefix of %d bytes: err = %v", i, err)
		}
	}
	if _, err := Decode(append(bytes.Clone(data), 0)); !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), "trailing") {
		t.Fatalf("trailing byte: err = %v", err)
	}
}

func TestManifestDecodeRefusesNonCanonical(t *testing.T) {
	head := func(nmeta uint64) []byte {
		b := []byte(manifestMagic)
		b = appendStr(b, "file")
		b = append(b, make([]byte, 32)...)
		b = binary.AppendUvarint(b, 1)
		b = appendStr(b, "f")
		b = binary.AppendUvarint(b, 1)
		d := cas.Sum([]byte("x"))
		return append(b, d[:]...)
	}
	good := append(head(0), 5, 0)
	if _, err := Decode(good); err != nil {
		t.Fatalf("canonical form refused: %v", err)
	}
	cases := map[string][]byte{
		"overlong varint":   append(head(0), 0x85, 0x00, 0),
		"unsorted metadata": append(append(head(0), 5, 2), 1, 'b', 2, 2, 1, 'a', 2, 2),
		"duplicate key":     append(append(head(0), 5, 2), 1, 'a', 2, 2, 1, 'a', 2, 2),
		"bool 2":            append(append(head(0), 5, 1), 1, 'a', 5, 2),
		"unknown type":      append(append(head(0), 5, 1), 1, 'a', 99, 2),
		"NaN":               append(append(head(0), 5, 1), 1, 'a', 6, 1, 0, 0, 0, 0, 0, 0xf8, 0x7f),
		"wrong magic":       []byte("XXX\x01"),
		"empty":             nil,
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrBadManifest) {
			t.Errorf("%s: accepted (err %v)", name, err)
		}
	}
	if _, err := Decode([]byte("DSM\x07rest")); err == nil || !strings.Contains(err.Error(), "version 7") {
		t.Errorf("newer version: err = %v", err)
	}
}

func TestManifestDecodeHugeCounts(t *testing.T) {
	// A tiny input claiming 2^40 chunks must be refused before allocating.
	b := []byte(manifestMagic)
	b = appendStr(b, "file")
	b = append(b, make([]byte, 32)...)
	b = binary.AppendUvarint(b, 1)
	b = appendStr(b, "r")
	b = binary.AppendUvarint(b, 1<<40)
	if _, err := Decode(b); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("err = %v", err)
	}
}

// FuzzDecode: any input either decodes to a manifest that re-encodes to the same bytes, or is
// refused with ErrBadManifest; never a panic.
func FuzzDecode(f *testing.F) {
	data, _, _ := sampleManifest().Encode()
	f.Add(data)
	empty, _, _ := (&Manifest{Kind: "file"}).Encode()
	f.Add(empty)
	f.Add([]byte("DSM\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("error does not wrap ErrBadManifest: %v", err)
			}
			return
		}
		again, id, err := m.Encode()
		if err != nil || !bytes.Equal(again, b) || id != cas.Sum(b) {
			t.Fatalf("decoded manifest does not re-encode to its bytes (err %v)", err)
		}
	})
}

// TestWriteSeedCorpus keeps testdata/fuzz/FuzzDecode in step with the encoder when run with
// DRIFTSTORE_WRITE_CORPUS=1; otherwise it checks the committed seeds still decode.
func TestWriteSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	data, _, _ := sampleManifest().Encode()
	if os.Getenv("DRIFTSTORE_WRITE_CORPUS") == "1" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte) {
			body := "go test fuzz v1\n[]byte(" + quoteBytes(b) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write("sample-checkpoint", data)
		write("truncated", data[:len(data)/2])
		empty, _, _ := (&Manifest{Kind: "file"}).Encode()
		write("empty-file", empty)
		return
	}
	if _, err := os.Stat(filepath.Join(dir, "sample-checkpoint")); err != nil {
		t.Fatalf("seed corpus missing (regenerate with DRIFTSTORE_WRITE_CORPUS=1): %v", err)
	}
}

func quoteBytes(b []byte) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, c := range b {
		sb.WriteString(`\x`)
		sb.WriteString("0123456789abcdef"[c>>4 : c>>4+1])
		sb.WriteString("0123456789abcdef"[c&15 : c&15+1])
	}
	sb.WriteByte('"')
	return sb.String()
}
