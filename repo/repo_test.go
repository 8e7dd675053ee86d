package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
	"github.com/driftstore/driftstore/chunker"
	"github.com/driftstore/driftstore/index"
)

// openTest opens a fresh data directory; at cleanup it checks it with fsck (unless the test
// damaged it on purpose and set *damaged).
func openTest(t *testing.T) (*Repo, *bool) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	r, err := Open(dir, Options{NoSync: true, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	damaged := new(bool)
	t.Cleanup(func() {
		if !*damaged && !t.Failed() {
			fsckClean(t, r)
		}
		r.Close()
	})
	return r, damaged
}

func fsckClean(t *testing.T, r *Repo) {
	t.Helper()
	res, err := r.Fsck(context.Background(), index.FsckOptions{})
	if err != nil {
		t.Fatalf("fsck: %v", err)
	}
	for _, p := range res.Problems {
		t.Errorf("fsck: %s", p)
	}
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func getBytes(t *testing.T, r *Repo, id index.ID, opts GetOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := r.Get(context.Background(), id, &buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("Get reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func TestPutGetRoundTrip(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	small := chunker.Params{Min: 1024, Avg: 4096, Max: 16384, Normalization: 1}
	specs := []ChunkerSpec{{}, {Method: ChunkFastCDC, Params: small}, {Method: ChunkFixed, Size: 5000}}
	for _, spec := range specs {
		for _, size := range []int{0, 1, 4095, 300_000} {
			data := randBytes(uint64(size), size)
			res, err := r.PutReader(ctx, "blob", bytes.NewReader(data), PutOptions{Chunker: spec})
			if err != nil {
				t.Fatalf("%v size %d: %v", spec, size, err)
			}
			if res.BytesIn != int64(size) {
				t.Fatalf("BytesIn = %d, want %d", res.BytesIn, size)
			}
			if got := getBytes(t, r, res.ID, GetOptions{}); !bytes.Equal(got, data) {
				t.Fatalf("%v size %d: content differs", spec, size)
			}
			again, err := r.PutReader(ctx, "blob", bytes.NewReader(data), PutOptions{Chunker: spec})
			if err != nil || again.ID != res.ID || again.NewBytes != 0 || again.UniqueNew != 0 {
				t.Fatalf("second put: %+v %v (first %+v)", again, err, res)
			}
		}
	}
}

func TestPutFilesRegionsAndTag(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	dir := t.TempDir()
	a, b := randBytes(1, 200_000), randBytes(2, 100_000)
	pa, pb := filepath.Join(dir, "a.bin"), filepath.Join(dir, "b.bin")
	os.WriteFile(pa, a, 0o644)
	os.WriteFile(pb, b, 0o644)
	res, err := r.PutFiles(ctx, []string{pa, pb}, PutOptions{Tag: "both"})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := r.Resolve("both"); err != nil || id != res.ID {
		t.Fatalf("Resolve(tag) = %s, %v", id, err)
	}
	if got := getBytes(t, r, res.ID, GetOptions{Region: "b.bin"}); !bytes.Equal(got, b) {
		t.Fatal("region b.bin differs")
	}
	if got := getBytes(t, r, res.ID, GetOptions{}); !bytes.Equal(got, append(append([]byte{}, a...), b...)) {
		t.Fatal("concatenation differs")
	}
	if _, err := r.Get(ctx, res.ID, io.Discard, GetOptions{Region: "nope"}); !errors.Is(err, ErrNoSuchRegion) {
		t.Fatalf("missing region: %v", err)
	}
	out := filepath.Join(dir, "out.bin")
	if _, err := r.GetFile(ctx, res.ID, out, GetOptions{Region: "a.bin"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, a) {
		t.Fatal("GetFile content differs")
	}
	in, err := r.Inspect(res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Regions) != 2 || in.Regions[0].Name != "a.bin" || in.Size != 300_000 || len(in.Tags) != 1 {
		t.Fatalf("Inspect: %+v", in)
	}
	var off int64
	for _, c := range in.Regions[0].Chunks {
		if c.Offset != off || c.StoredSize <= 0 || c.Codec == "unrecorded" {
			t.Fatalf("chunk detail %+v", c)
		}
		off += c.Length
	}
	list, err := r.List()
	if err != nil || len(list) != 1 || list[0].Tags[0] != "both" {
		t.Fatalf("List: %+v %v", list, err)
	}
	// Same base name twice.
	if _, err := r.PutFiles(ctx, []string{pa, pa}, PutOptions{}); err == nil {
		t.Fatal("two inputs with one name accepted")
	}
	if _, err := r.PutFiles(ctx, []string{filepath.Join(dir, "missing")}, PutOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := r.PutFiles(ctx, []string{pa}, PutOptions{Tag: ".bad"}); !errors.Is(err, index.ErrBadRefName) {
		t.Fatalf("bad tag: %v", err)
	}
}

func TestDedupAcrossPuts(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	base := randBytes(7, 1<<20)
	first, err := r.PutReader(ctx, "v1", bytes.NewReader(base), PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Insert 100 bytes in the middle: FastCDC resynchronises, so most chunks are shared.
	edited := append(append(append([]byte{}, base[:500_000]...), randBytes(8, 100)...), base[500_000:]...)
	second, err := r.PutReader(ctx, "v2", bytes.NewReader(edited), PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if second.NewBytes*4 > first.NewBytes || second.DedupRatio() < 4 {
		t.Fatalf("edit stored %d new bytes of %d (ratio %.2f)", second.NewBytes, first.NewBytes, second.DedupRatio())
	}
}

func TestResolve(t *testing.T) {
	r, _ := openTest(t)
	ctx := context.Background()
	res, err := r.PutReader(ctx, "x", bytes.NewReader([]byte("hello")), PutOptions{Tag: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{res.ID.String(), res.ID.Hex(), res.ID.Hex()[:8], "blake3:" + res.ID.Hex()[:6], "t1"} {
		if id, err := r.Resolve(s); err != nil || id != res.ID {
			t.Errorf("Resolve(%q) = %s, %v", s, id, err)
		}
	}
	absent := cas.Sum([]byte("absent"))
	cases := map[string]error{
		absent.String():                     index.ErrManifestNotFound,
		"blake3:" + strings.Repeat("z", 64): cas.ErrBadDigest,
		"nosuchtag":                         ErrUnknownName,
		"abc":                               ErrUnknownName, // shorter than MinPrefix
		"\x00\xff garbage":                  ErrUnknownName,
		"":                                  ErrUnknownName,
	}
	for s, want := range cases {
		if _, err := r.Resolve(s); !errors.Is(err, want) {
			t.Errorf("Resolve(%q) err = %v, want %v", s, err, want)
		}
	}
	// Make two manifests share a 4-digit prefix, then check the prefix is ambiguous.
	seen := map[string]index.ID{}
	for i := 0; ; i++ {
		id, err := r.ix.PutManifest(ctx, &index.Manifest{Kind: "file", Meta: map[string]index.Value{"n": index.Int64(int64(i))}})
		if err != nil {
			t.Fatal(err)
		}
		p := id.Hex()[:MinPrefix]
		if _, dup := seen[p]; dup {
			if _, err := r.Resolve(p); !errors.Is(err, ErrAmbiguous) {
				t.Fatalf("Resolve(%q) err = %v, want ErrAmbiguous", p, err)
			}
			break
		}
		seen[p] = id
	}
}

// TestCorruptChunkFile damages chunks on disk, in a new data directory (pack files) and in one
// made before them (one file per chunk, DIR/chunks): get names the first damaged chunk, leaves
// no output file, and fsck names every damaged chunk.
func TestCorruptChunkFile(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(map[bool]string{false: "packs", true: "legacy-chunks"}[legacy], func(t *testing.T) {
			testCorruptChunkFile(t, legacy)
		})
	}
}

func testCorruptChunkFile(t *testing.T, legacy bool) {
	dir := filepath.Join(t.TempDir(), "data")
	if legacy {
		if err := os.MkdirAll(filepath.Join(dir, "chunks"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r, err := Open(dir, Options{NoSync: true, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, isLocal := r.Store().(*cas.Local)
	if isLocal != legacy {
		t.Fatalf("store %T for a legacy directory %v", r.Store(), legacy)
	}
	storeDir := ChunkStoreDir(dir)
	ctx := context.Background()
	data := randBytes(3, 400_000)
	res, err := r.PutReader(ctx, "blob", bytes.NewReader(data), PutOptions{Chunker: ChunkerSpec{Method: ChunkFixed, Size: 100_000}})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := r.Inspect(res.ID)
	victim := in.Regions[0].Chunks[2].Digest
	castest.Corrupt(t, storeDir, victim)
	out := filepath.Join(t.TempDir(), "out.bin")
	_, err = r.GetFile(ctx, res.ID, out, GetOptions{})
	var ce *cas.CorruptError
	if !errors.As(err, &ce) || ce.Digest != victim || !strings.Contains(err.Error(), victim.String()) {
		t.Fatalf("get over a corrupt chunk: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("failed get left an output file")
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), "*"))
	if len(left) != 0 {
		t.Fatalf("failed get left files: %v", left)
	}
	fr, err := r.Fsck(ctx, index.FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(fr.Problems) != 1 || fr.Problems[0].Kind != index.ChunkCorrupt || fr.Problems[0].Digest != victim {
		t.Fatalf("fsck problems: %v", fr.Problems)
	}
	// Damage two more chunks: in a legacy directory truncate one file to nothing and replace
	// another with garbage; in packs flip a byte of each.
	for i, content := range [][]byte{{}, []byte("garbage garbage garbage")} {
		d := in.Regions[0].Chunks[i].Digest
		if legacy {
			l := r.Store().(*cas.Local)
			if err := os.WriteFile(l.Path(d), content, 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			castest.Corrupt(t, storeDir, d)
		}
		if _, err := r.Get(ctx, res.ID, io.Discard, GetOptions{}); err == nil || !strings.Contains(err.Error(), in.Regions[0].Chunks[0].Digest.String()) {
			t.Fatalf("get over damaged chunk %d: %v (want the first chunk %s named)", i, err, in.Regions[0].Chunks[0].Digest)
		}
	}
	fr, err = r.Fsck(ctx, index.FsckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	named := map[cas.Digest]bool{}
	for _, p := range fr.Problems {
		named[p.Digest] = true
	}
	for i := 0; i < 3; i++ {
		if d := in.Regions[0].Chunks[i].Digest; !named[d] {
			t.Errorf("fsck does not name damaged chunk %d %s: %v", i, d, fr.Problems)
		}
	}
}

// TestStoreLayout: a new data directory gets a pack store in DIR/packs and no DIR/chunks; it
// reopens with the same store; a directory with DIR/chunks keeps its cas.Local.
func TestStoreLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for range 2 {
		r, err := Open(dir, Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := r.Store().(*cas.Pack); !ok {
			t.Fatalf("new data directory: store %T", r.Store())
		}
		r.Close()
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("new data directory has DIR/chunks: %v", err)
	}
	if ChunkStoreDir(dir) != filepath.Join(dir, "packs") {
		t.Fatal(ChunkStoreDir(dir))
	}
	old := filepath.Join(t.TempDir(), "old")
	os.MkdirAll(filepath.Join(old, "chunks"), 0o755)
	r, err := Open(old, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok := r.Store().(*cas.Local); !ok {
		t.Fatalf("data directory with DIR/chunks: store %T", r.Store())
	}
	if _, err := os.Stat(filepath.Join(old, "packs")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("legacy data directory got DIR/packs: %v", err)
	}
}

func TestGarbageIndexFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.db"), bytes.Repeat([]byte("not a bolt file "), 512), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "index.db") {
		t.Fatalf("garbage index: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("truncated index opened")
	}
}

func TestGCRemovesUntaggedAfterGrace(t *testing.T) {
	r, reopened := openTest(t)
	ctx := context.Background()
	keep, _ := r.PutReader(ctx, "k", bytes.NewReader(randBytes(10, 200_000)), PutOptions{Tag: "keep"})
	drop, _ := r.PutReader(ctx, "d", bytes.NewReader(randBytes(11, 200_000)), PutOptions{})
	res, err := r.GC(ctx, index.GCOptions{})
	if err != nil || res.ManifestsDeleted != 0 {
		t.Fatalf("GC within grace: %+v %v", res, err)
	}
	res, err = r.GC(ctx, index.GCOptions{Grace: -1})
	if err != nil || res.ManifestsDeleted != 1 || res.ChunksDeleted == 0 {
		t.Fatalf("GC: %+v %v", res, err)
	}
	if _, err := r.Get(ctx, drop.ID, io.Discard, GetOptions{}); !errors.Is(err, index.ErrManifestNotFound) {
		t.Fatalf("dropped manifest: %v", err)
	}
	getBytes(t, r, keep.ID, GetOptions{})
	var n int
	r.local.Walk(ctx, func(cas.Info) error { n++; return nil })
	if in, _ := r.Inspect(keep.ID); n != in.UniqueChunks {
		t.Fatalf("store holds %d chunks after GC, the kept manifest names %d", n, in.UniqueChunks)
	}
	// The pack holding both uploads was more than half dead: GC compacted it.
	if res.PacksCompacted != 1 || res.BytesReclaimed <= 0 {
		t.Fatalf("GC did not compact the pack store: %+v", res)
	}
	*reopened = true // checked below instead of at cleanup
	r.Close()
	r, err = Open(r.Dir(), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	getBytes(t, r, keep.ID, GetOptions{})
	fsckClean(t, r)
}

func TestReadOnlyOption(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := Open(dir, Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a missing directory succeeded")
	}
	r, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, _ := r.PutReader(context.Background(), "x", bytes.NewReader([]byte("data")), PutOptions{})
	r.Close()
	ro, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got := getBytes(t, ro, res.ID, GetOptions{}); string(got) != "data" {
		t.Fatal("read-only get differs")
	}
	if _, err := ro.PutReader(context.Background(), "y", bytes.NewReader([]byte("more")), PutOptions{}); !errors.Is(err, index.ErrReadOnly) {
		t.Fatalf("put on read-only repo: %v", err)
	}
	fsckClean(t, ro)
}

func ExampleRepo_PutReader() {
	dir, _ := os.MkdirTemp("", "driftstore-example")
	defer os.RemoveAll(dir)
	r, _ := Open(dir, Options{})
	defer r.Close()
	res, _ := r.PutReader(context.Background(), "greeting", strings.NewReader("hello, world"), PutOptions{Tag: "hello"})
	var buf bytes.Buffer
	r.Get(context.Background(), res.ID, &buf, GetOptions{})
	fmt.Println(buf.String(), res.BytesIn)
	// Output: hello, world 12
}
