package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/httpapi/apitest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/replicate"
)

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// compressible returns bytes that zstd shrinks: runs of a few symbols.
func compressible(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i < n; {
		run := 1 + r.IntN(32)
		c := byte('a' + r.IntN(4))
		for j := 0; j < run && i < n; j++ {
			b[i] = c
			i++
		}
	}
	return b
}

type call struct {
	method, path string
	body         []byte
	headers      map[string]string
}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    wire.ErrorDetail
}

func do(t *testing.T, base string, c call) answer {
	t.Helper()
	var rd io.Reader
	if c.body != nil {
		rd = bytes.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, base+c.path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: b}
	if resp.StatusCode >= 400 && c.method != http.MethodHead {
		var eb wire.ErrorBody
		if err := json.Unmarshal(b, &eb); err != nil || eb.Error.Code == "" {
			t.Fatalf("%s %s: %d with a body that is not a JSON error: %q", c.method, c.path, resp.StatusCode, b)
		}
		a.err = eb.Error
	}
	return a
}

func expect(t *testing.T, a answer, status int, code string) {
	t.Helper()
	if a.status != status || a.err.Code != code {
		t.Fatalf("got %d %q (%s), want %d %q", a.status, a.err.Code, a.err.Message, status, code)
	}
}

// fsckClean checks the daemon's data directory.
func fsckClean(t *testing.T, d *apitest.Daemon) {
	t.Helper()
	res, err := d.Repo.Fsck(context.Background(), index.FsckOptions{Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("fsck: %v", res.Problems)
	}
}

func countChunks(t *testing.T, d *apitest.Daemon) int {
	t.Helper()
	n := 0
	if err := d.Repo.Store().Walk(context.Background(), func(cas.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestChunkRoundTrip(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	data := compressible(1, 100000)
	dg := cas.Sum(data)
	path := wire.PathChunks + dg.String()

	expect(t, do(t, d.URL, call{method: "GET", path: path}), 404, wire.CodeChunkNotFound)
	if a := do(t, d.URL, call{method: "HEAD", path: path}); a.status != 404 {
		t.Fatalf("HEAD absent: %d", a.status)
	}
	if a := do(t, d.URL, call{method: "PUT", path: path, body: data, headers: map[string]string{"Driftstore-Hint": "0"}}); a.status != 201 {
		t.Fatalf("first PUT: %d %s", a.status, a.body)
	}
	if a := do(t, d.URL, call{method: "PUT", path: path, body: data}); a.status != 200 {
		t.Fatalf("second PUT (already present): %d", a.status)
	}
	a := do(t, d.URL, call{method: "HEAD", path: path})
	if a.status != 200 || a.header.Get(wire.HeaderSize) != "100000" {
		t.Fatalf("HEAD: %d size %q", a.status, a.header.Get(wire.HeaderSize))
	}
	if a := do(t, d.URL, call{method: "GET", path: path}); a.status != 200 || !bytes.Equal(a.body, data) {
		t.Fatalf("GET: %d, %d bytes", a.status, len(a.body))
	}
	// The stored form is smaller and decodes to the same content.
	for _, c := range []call{
		{method: "GET", path: path + "?stored=1"},
		{method: "GET", path: path, headers: map[string]string{"Accept": wire.MediaTypeStored}},
	} {
		a := do(t, d.URL, c)
		if a.status != 200 || a.header.Get(wire.HeaderCodec) != "2" || len(a.body) >= len(data) {
			t.Fatalf("GET stored: %d codec %q, %d bytes", a.status, a.header.Get(wire.HeaderCodec), len(a.body))
		}
		got, err := cas.Decode(nil, cas.CodecZstd, a.body, len(data))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("stored form does not decode to the chunk: %v", err)
		}
	}

	// The missing-set call.
	other := cas.Sum([]byte("other"))
	body, _ := json.Marshal(wire.MissingRequest{Digests: []cas.Digest{dg, other, other}})
	a = do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: body})
	var mr wire.MissingResponse
	if err := json.Unmarshal(a.body, &mr); err != nil || a.status != 200 || len(mr.Missing) != 1 || mr.Missing[0] != other {
		t.Fatalf("missing: %d %s", a.status, a.body)
	}
	// The same question as a binary digest list, answered in kind.
	a = do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: wire.AppendDigestList(nil, []cas.Digest{dg, other}),
		headers: map[string]string{"Content-Type": wire.MediaTypeDigests, "Accept": wire.MediaTypeDigests}})
	if a.status != 200 || !bytes.Equal(a.body, other[:]) {
		t.Fatalf("binary missing: %d %x", a.status, a.body)
	}
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: make([]byte, 33),
		headers: map[string]string{"Content-Type": wire.MediaTypeDigests}}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: make([]byte, 32*(wire.MaxMissingDigests+1)),
		headers: map[string]string{"Content-Type": wire.MediaTypeDigests}}), 413, wire.CodeTooLarge)
	fsckClean(t, d)
}

func TestPutStoredForm(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	c, err := replicate.NewClient(d.URL, replicate.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := compressible(2, 50000)
	dg := cas.Sum(data)
	codec, stored := cas.Encode(nil, data, cas.HintNone)
	if codec != cas.CodecZstd {
		t.Fatalf("test data did not compress (codec %d)", codec)
	}
	// A stored form with one byte flipped is refused and nothing is written.
	bad := bytes.Clone(stored)
	bad[len(bad)/2] ^= 0x40
	if _, err := c.PutStored(ctx, dg, codec, bad); !isCode(err, wire.CodeDigestMismatch) {
		t.Fatalf("flipped stored form: %v", err)
	}
	if n := countChunks(t, d); n != 0 {
		t.Fatalf("%d chunks stored after a refused PUT", n)
	}
	created, err := c.PutStored(ctx, dg, codec, stored)
	if err != nil || !created {
		t.Fatalf("PutStored: %v created=%v", err, created)
	}
	gotCodec, gotStored, err := c.GetStored(ctx, dg)
	if err != nil || gotCodec != codec || !bytes.Equal(gotStored, stored) {
		t.Fatalf("GetStored: %v, codec %d: the stored bytes changed in transit", err, gotCodec)
	}
	got, err := c.GetChunk(ctx, dg, nil)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetChunk: %v", err)
	}
	// Raw bytes under another chunk's digest.
	if _, err := c.PutStored(ctx, cas.Sum([]byte("x")), cas.CodecRaw, []byte("y")); !isCode(err, wire.CodeDigestMismatch) {
		t.Fatalf("raw mismatch: %v", err)
	}
	fsckClean(t, d)
}

func isCode(err error, code string) bool {
	var e *replicate.Error
	return errors.As(err, &e) && e.Code == code
}

func TestAuth(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{Token: "s3cret-token"})
	data := []byte("some chunk")
	path := wire.PathChunks + cas.Sum(data).String()
	manifest, id := sampleManifest(t, data)
	for _, hdr := range []map[string]string{
		nil,
		{"Authorization": "Bearer wrong"},
		{"Authorization": "Bearer s3cret-token-and-more"},
		{"Authorization": "Bearer s3cret-toke"},
		{"Authorization": "s3cret-token"},
		{"Authorization": "Basic s3cret-token"},
	} {
		for _, c := range []call{
			{method: "PUT", path: path, body: data},
			{method: "GET", path: path},
			{method: "POST", path: wire.PathMissing, body: []byte(`{"digests":[]}`)},
			{method: "POST", path: wire.PathUpload, body: []byte("DSCS\x01\x00\x00")},
			{method: "PUT", path: wire.PathManifests + id.String(), body: manifest},
			{method: "PUT", path: wire.PathRefs + "/tag/x", body: []byte(`{"old":"","new":"` + id.String() + `"}`)},
			{method: "POST", path: wire.PathRefs + "/tag/x" + wire.PathCommitSuffix, body: wire.AppendRefCommit(nil, &wire.RefCommit{New: id, Manifests: [][]byte{manifest}})},
			{method: "GET", path: wire.PathRefs},
			{method: "GET", path: wire.PathHealth},
			{method: "GET", path: wire.PathMetrics},
			{method: "GET", path: "/no/such/route"},
		} {
			c.headers = hdr
			a := do(t, d.URL, c)
			expect(t, a, 401, wire.CodeUnauthorized)
			if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("401 without WWW-Authenticate: Bearer")
			}
		}
	}
	if n := countChunks(t, d); n != 0 {
		t.Fatalf("%d chunks written without a token", n)
	}
	ok := map[string]string{"Authorization": "Bearer s3cret-token"}
	if a := do(t, d.URL, call{method: "PUT", path: path, body: data, headers: ok}); a.status != 201 {
		t.Fatalf("PUT with the token: %d", a.status)
	}
	// The client reports 401 as ErrUnauthorized.
	c, _ := replicate.NewClient(d.URL, replicate.ClientOptions{Token: "nope"})
	if _, err := c.HasChunk(context.Background(), cas.Sum(data)); !errors.Is(err, replicate.ErrUnauthorized) {
		t.Fatalf("client with a wrong token: %v", err)
	}
}

// sampleManifest returns the encoding of a one-region manifest over chunks, and its ID.
func sampleManifest(t *testing.T, chunks ...[]byte) ([]byte, index.ID) {
	t.Helper()
	m := &index.Manifest{Kind: "file", Regions: []index.Region{{Name: "r"}}}
	for _, c := range chunks {
		m.Regions[0].Chunks = append(m.Regions[0].Chunks, index.ChunkRef{Digest: cas.Sum(c), Length: int64(len(c))})
	}
	b, id, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b, id
}

func TestLimits(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{MaxChunkSize: 4096, MaxManifestSize: 1024, MaxJSONSize: 256})
	big := randBytes(3, 5000)
	path := wire.PathChunks + cas.Sum(big).String()
	expect(t, do(t, d.URL, call{method: "PUT", path: path, body: big}), 413, wire.CodeTooLarge)

	// Without a Content-Length (chunked), the limit applies while reading.
	req, _ := http.NewRequest("PUT", d.URL+path, io.MultiReader(bytes.NewReader(big)))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("chunked oversized PUT: %d", resp.StatusCode)
	}
	// An upload stream whose frame declares a chunk over the limit.
	var s bytes.Buffer
	w := wire.NewChunkStreamWriter(&s)
	w.WriteChunk(wire.StoredChunk{Digest: cas.Sum(big), Codec: cas.CodecRaw, Size: int64(len(big)), Stored: big})
	w.Close()
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathUpload, body: s.Bytes()}), 413, wire.CodeTooLarge)
	// Manifest, missing-set and ref bodies.
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathManifests + cas.Sum(big).String(), body: big}), 413, wire.CodeTooLarge)
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: bytes.Repeat([]byte(" "), wire.MaxMissingBody+1)}), 413, wire.CodeTooLarge)
	many := wire.MissingRequest{Digests: make([]cas.Digest, wire.MaxMissingDigests+1)}
	mb, _ := json.Marshal(many)
	if len(mb) <= wire.MaxMissingBody {
		expect(t, do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: mb}), 413, wire.CodeTooLarge)
	}
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathRefs + "/tag/x", body: bytes.Repeat([]byte(" "), 300)}), 413, wire.CodeTooLarge)
	if n := countChunks(t, d); n != 0 {
		t.Fatalf("%d chunks written by refused requests", n)
	}
}

func TestValidation(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	good := cas.Sum([]byte("x")).String()
	for _, p := range []string{
		wire.PathChunks + "abc",
		wire.PathChunks + "blake3:" + strings.ToUpper(good[7:]),
		wire.PathChunks + "sha256:" + good[7:],
		wire.PathChunks + "blake3:..%2F..%2F..%2Fetc%2Fpasswd",
		wire.PathChunks + "..%2F..%2Findex.db",
		wire.PathChunks + "%2e%2e",
		wire.PathManifests + "..%2Findex.db",
		wire.PathManifests + good[:40],
	} {
		for _, m := range []string{"GET", "PUT"} {
			a := do(t, d.URL, call{method: m, path: p, body: []byte("x")})
			if a.status != 400 || (a.err.Code != wire.CodeBadDigest) {
				t.Fatalf("%s %s: %d %q", m, p, a.status, a.err.Code)
			}
		}
	}
	for _, p := range []string{
		wire.PathRefs + "/tag/..",
		wire.PathRefs + "/tag/.hidden",
		wire.PathRefs + "/tag/a%2Fb",
		wire.PathRefs + "/tag/..%2F..%2Fx",
		wire.PathRefs + "/tag/" + strings.Repeat("n", 129),
		wire.PathRefs + "/tag/sp%20ace",
		wire.PathRefs + "/branch/x",
		wire.PathRefs + "/..%2Ftag/x",
	} {
		expect(t, do(t, d.URL, call{method: "GET", path: p}), 400, wire.CodeBadName)
		expect(t, do(t, d.URL, call{method: "PUT", path: p, body: []byte(`{"old":"","new":"` + good + `"}`)}), 400, wire.CodeBadName)
	}
	expect(t, do(t, d.URL, call{method: "GET", path: "/v1/manifests?ref=tag/../../x"}), 400, wire.CodeBadName)
	// Bodies.
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: []byte(`{"digests":["../x"]}`)}), 400, wire.CodeBadDigest)
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathMissing, body: []byte(`{"digests":[], "extra": 1}`)}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathUpload, body: []byte("not a stream")}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathRefs + "/tag/x", body: []byte(`{"old":"","new":"zzz"}`)}), 400, wire.CodeBadDigest)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathRefs + "/tag/x", body: []byte(`{"nope":1}`)}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathChunks + good, body: []byte("not x")}), 400, wire.CodeDigestMismatch)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathChunks + good, body: []byte("x"), headers: map[string]string{wire.HeaderCodec: "zero"}}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathChunks + good, body: []byte("x"), headers: map[string]string{wire.HeaderCodec: "200"}}), 415, wire.CodeUnsupported)
	// Routing errors are JSON too.
	expect(t, do(t, d.URL, call{method: "GET", path: "/v2/chunks/" + good}), 404, wire.CodeNotFound)
	expect(t, do(t, d.URL, call{method: "DELETE", path: wire.PathChunks + good}), 405, wire.CodeMethodNotAllowed)
	if n := countChunks(t, d); n != 0 {
		t.Fatalf("%d chunks written by refused requests", n)
	}
	fsckClean(t, d)
}

func TestManifestsAndRefs(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	ctx := context.Background()
	c, _ := replicate.NewClient(d.URL, replicate.ClientOptions{})
	a, b := randBytes(4, 3000), compressible(5, 7000)
	mb, id := sampleManifest(t, a, b)

	// Refused until every chunk is present, with the list of missing chunks.
	_, err := c.PutManifestBytes(ctx, mb)
	var e *replicate.Error
	if !errors.As(err, &e) || e.Status != 409 || e.Code != wire.CodeMissingChunks || len(e.Missing) != 2 || !errors.Is(err, index.ErrMissingChunks) {
		t.Fatalf("manifest before its chunks: %v", err)
	}
	if _, _, err := c.PutChunk(ctx, a, cas.HintNone); err != nil {
		t.Fatal(err)
	}
	_, err = c.PutManifestBytes(ctx, mb)
	if !errors.As(err, &e) || len(e.Missing) != 1 || e.Missing[0] != cas.Sum(b) {
		t.Fatalf("manifest with one chunk missing: %v", err)
	}
	if _, _, err := c.PutChunk(ctx, b, cas.HintNone); err != nil {
		t.Fatal(err)
	}
	// The ID in the URL must be the body's hash.
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathManifests + cas.Sum(a).String(), body: mb}), 400, wire.CodeDigestMismatch)
	// Not canonical: refused by the strict decoder.
	junk := append(bytes.Clone(mb), 0)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathManifests + cas.Sum(junk).String(), body: junk}), 400, wire.CodeBadManifest)
	if got, err := c.PutManifestBytes(ctx, mb); err != nil || got != id {
		t.Fatalf("put manifest: %v", err)
	}
	got, err := c.ManifestBytes(ctx, id)
	if err != nil || !bytes.Equal(got, mb) {
		t.Fatalf("get manifest: %v", err)
	}
	// A child whose parent is absent.
	orphan := &index.Manifest{Kind: "file", Parent: cas.Sum([]byte("nobody")), Regions: []index.Region{{Name: "r", Chunks: []index.ChunkRef{{Digest: cas.Sum(a), Length: int64(len(a))}}}}}
	ob, _, _ := orphan.Encode()
	if _, err := c.PutManifestBytes(ctx, ob); !errors.Is(err, index.ErrMissingParent) {
		t.Fatalf("orphan: %v", err)
	}
	// A child of id.
	child := &index.Manifest{Kind: "file", Parent: id, Regions: []index.Region{{Name: "r", Chunks: []index.ChunkRef{{Digest: cas.Sum(b), Length: int64(len(b))}}}}}
	cb, cid, _ := child.Encode()
	if _, err := c.PutManifestBytes(ctx, cb); err != nil {
		t.Fatal(err)
	}

	// Refs: create, conflict, move.
	if _, err := c.Ref(ctx, index.RefSession, "s1"); !errors.Is(err, index.ErrRefNotFound) {
		t.Fatalf("absent ref: %v", err)
	}
	if err := c.CompareAndSwapRef(ctx, index.RefSession, "s1", index.ID{}, id); err != nil {
		t.Fatal(err)
	}
	if err := c.CompareAndSwapRef(ctx, index.RefSession, "s1", index.ID{}, cid); !errors.Is(err, index.ErrConflict) || !isCode(err, wire.CodeConflict) {
		t.Fatalf("stale create: %v", err)
	}
	if head, _ := c.Ref(ctx, index.RefSession, "s1"); head != id {
		t.Fatalf("a refused update moved the ref to %s", head)
	}
	if err := c.CompareAndSwapRef(ctx, index.RefSession, "s1", id, cid); err != nil {
		t.Fatal(err)
	}
	if err := c.CompareAndSwapRef(ctx, index.RefTag, "t1", index.ID{}, cas.Sum([]byte("no such manifest"))); !errors.Is(err, index.ErrManifestNotFound) {
		t.Fatalf("ref to an absent manifest: %v", err)
	}
	chain, err := c.Chain(ctx, index.RefSession, "s1")
	if err != nil || len(chain) != 2 || chain[0] != cid || chain[1] != id {
		t.Fatalf("chain: %v %v", chain, err)
	}
	refs, err := c.Refs(ctx, 0)
	if err != nil || len(refs) != 1 || refs[0].Name != "s1" || refs[0].Target != cid || refs[0].Kind != index.RefSession {
		t.Fatalf("refs: %v %v", refs, err)
	}
	hist := do(t, d.URL, call{method: "GET", path: wire.PathRefs + "/session/s1/history"})
	if hist.status != 200 || bytes.Count(hist.body, []byte(`"seq"`)) != 2 {
		t.Fatalf("history: %d %s", hist.status, hist.body)
	}
	fsckClean(t, d)
}

// TestCommitRef: a ref commit stores a chain of manifests and moves the ref in one request;
// a stale old head, a missing chunk, a missing parent, a bad manifest or a malformed body
// commit nothing, each with its code; a body past the manifest limit is 413.
func TestCommitRef(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{MaxManifestSize: 4096})
	ctx := context.Background()
	c, _ := replicate.NewClient(d.URL, replicate.ClientOptions{})
	a, b := randBytes(7, 3000), compressible(8, 5000)
	for _, data := range [][]byte{a, b} {
		if _, _, err := c.PutChunk(ctx, data, cas.HintNone); err != nil {
			t.Fatal(err)
		}
	}
	pb, pid := sampleManifest(t, a)
	child := &index.Manifest{Kind: "file", Parent: pid, Regions: []index.Region{{Name: "r", Chunks: []index.ChunkRef{
		{Digest: cas.Sum(a), Length: int64(len(a))}, {Digest: cas.Sum(b), Length: int64(len(b))}}}}}
	cb, cid, err := child.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ghost := []byte("a chunk never sent")
	gb, gid := sampleManifest(t, a, ghost)
	orphan := &index.Manifest{Kind: "file", Parent: cas.Sum([]byte("nobody")), Regions: []index.Region{{Name: "r", Chunks: []index.ChunkRef{{Digest: cas.Sum(a), Length: int64(len(a))}}}}}
	ob, oid, _ := orphan.Encode()
	path := wire.PathRefs + "/session/s" + wire.PathCommitSuffix
	post := func(rc *wire.RefCommit) answer {
		return do(t, d.URL, call{method: "POST", path: path, body: wire.AppendRefCommit(nil, rc)})
	}
	for _, f := range []struct {
		name   string
		rc     *wire.RefCommit
		body   []byte
		status int
		code   string
	}{
		{"stale old", &wire.RefCommit{Old: pid, New: cid, Manifests: [][]byte{pb, cb}}, nil, 409, wire.CodeConflict},
		{"missing chunk", &wire.RefCommit{New: gid, Manifests: [][]byte{pb, gb}}, nil, 409, wire.CodeMissingChunks},
		{"missing parent", &wire.RefCommit{New: oid, Manifests: [][]byte{ob}}, nil, 409, wire.CodeMissingParent},
		{"bad manifest", &wire.RefCommit{New: pid, Manifests: [][]byte{append(bytes.Clone(pb), 0)}}, nil, 400, wire.CodeBadManifest},
		{"absent target", &wire.RefCommit{New: cid, Manifests: [][]byte{pb}}, nil, 404, wire.CodeManifestNotFound},
		{"malformed", nil, []byte("DSRC\x01short"), 400, wire.CodeBadRequest},
		{"too large", nil, make([]byte, 4096+wire.CommitOverhead+1), 413, wire.CodeTooLarge},
	} {
		var got answer
		if f.rc != nil {
			got = post(f.rc)
		} else {
			got = do(t, d.URL, call{method: "POST", path: path, body: f.body})
		}
		if got.status != f.status || got.err.Code != f.code {
			t.Fatalf("%s: got %d %q (%s), want %d %q", f.name, got.status, got.err.Code, got.err.Message, f.status, f.code)
		}
		for _, id := range []index.ID{pid, cid, gid, oid} {
			if has, err := c.HasManifest(ctx, id); has || err != nil {
				t.Fatalf("%s: manifest %s stored (%v)", f.name, id, err)
			}
		}
		if _, err := c.Ref(ctx, index.RefSession, "s"); !errors.Is(err, index.ErrRefNotFound) {
			t.Fatalf("%s: ref moved (%v)", f.name, err)
		}
	}
	if got := post(&wire.RefCommit{New: cid, Manifests: [][]byte{pb, cb}}); got.status != 200 {
		t.Fatalf("commit: %d %s", got.status, got.body)
	}
	chain, err := c.Chain(ctx, index.RefSession, "s")
	if err != nil || len(chain) != 2 || chain[0] != cid || chain[1] != pid {
		t.Fatalf("chain %v, %v", chain, err)
	}
	// Through the client, again from where the ref is: nothing new to store, the ref moves on.
	if err := c.CommitRef(ctx, index.RefSession, "s", cid, pid, nil); err != nil {
		t.Fatal(err)
	}
	if head, _ := c.Ref(ctx, index.RefSession, "s"); head != pid {
		t.Fatalf("head %s, want %s", head, pid)
	}
	fsckClean(t, d)
}

func TestUploadStream(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{RecordBatch: 2})
	ctx := context.Background()
	var chunks []wire.StoredChunk
	for i := range 5 {
		data := compressible(uint64(10+i), 20000+i)
		codec, stored := cas.Encode(nil, data, cas.HintNone)
		chunks = append(chunks, wire.StoredChunk{Digest: cas.Sum(data), Codec: codec, Size: int64(len(data)), Stored: stored})
	}
	// Frame 3 (index 3) has a flipped byte: the three before it are committed, it and the one
	// after are not.
	var s bytes.Buffer
	w := wire.NewChunkStreamWriter(&s)
	for i, ch := range chunks {
		if i == 3 {
			ch.Stored = bytes.Clone(ch.Stored)
			ch.Stored[len(ch.Stored)/2] ^= 1
		}
		w.WriteChunk(ch)
	}
	w.Close()
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathUpload, body: s.Bytes()}), 400, wire.CodeDigestMismatch)
	c, _ := replicate.NewClient(d.URL, replicate.ClientOptions{})
	all := []cas.Digest{chunks[0].Digest, chunks[1].Digest, chunks[2].Digest, chunks[3].Digest, chunks[4].Digest}
	miss, err := c.Missing(ctx, all)
	if err != nil || len(miss) != 2 || miss[0] != all[3] || miss[1] != all[4] {
		t.Fatalf("after a refused frame, missing %v (%v)", miss, err)
	}
	// A stream cut off in the middle of frame 4 (index 3) commits the three before it.
	d2 := apitest.Start(t, t.TempDir(), httpapi.Config{})
	s.Reset()
	w = wire.NewChunkStreamWriter(&s)
	for _, ch := range chunks {
		w.WriteChunk(ch)
	}
	w.Close()
	cut := s.Len() - len(chunks[4].Stored) - 40 - len(chunks[3].Stored)/2
	a := do(t, d2.URL, call{method: "POST", path: wire.PathUpload, body: s.Bytes()[:cut]})
	if a.status != 400 {
		t.Fatalf("truncated stream: %d %s", a.status, a.body)
	}
	c2, _ := replicate.NewClient(d2.URL, replicate.ClientOptions{})
	miss, err = c2.Missing(ctx, all)
	if err != nil || len(miss) != 2 {
		t.Fatalf("after a cut stream, missing %d (%v)", len(miss), err)
	}
	// The whole stream: 2 new, 3 deduplicated.
	res, err := c2.Upload(ctx, func(sw *wire.ChunkStreamWriter) error {
		for _, ch := range chunks {
			if _, err := sw.WriteChunk(ch); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || res.Chunks != 5 || res.Stored != 2 || res.Deduped != 3 {
		t.Fatalf("upload: %+v %v", res, err)
	}
	// Download returns the stored forms unchanged.
	i := 0
	err = c2.Download(ctx, all, wire.StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 1 << 20}, func(ch wire.StoredChunk) error {
		if ch.Digest != chunks[i].Digest || ch.Codec != chunks[i].Codec || !bytes.Equal(ch.Stored, chunks[i].Stored) {
			t.Errorf("download chunk %d differs", i)
		}
		i++
		return nil
	})
	if err != nil || i != 5 {
		t.Fatalf("download: %d chunks, %v", i, err)
	}
	err = c2.Download(ctx, []cas.Digest{cas.Sum([]byte("absent"))}, wire.StreamLimits{MaxChunkSize: 1 << 20, MaxStoredSize: 1 << 20}, func(wire.StoredChunk) error { return nil })
	if !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("download of an absent chunk: %v", err)
	}
	fsckClean(t, d)
	fsckClean(t, d2)
}

// TestUploadGroupRefusesOnlyTheBadChunk: the chunks of one group are verified together and go
// through one batch; a flipped byte in the middle refuses that chunk (400, never committed or
// recorded) while the group's chunks that verified are committed and recorded.
func TestUploadGroupRefusesOnlyTheBadChunk(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	var all []cas.Digest
	var s bytes.Buffer
	w := wire.NewChunkStreamWriter(&s)
	for i := range 9 {
		data := compressible(uint64(40+i), 30000+i)
		codec, stored := cas.Encode(nil, data, cas.HintNone)
		if i == 4 {
			stored[len(stored)/2] ^= 1
		}
		all = append(all, cas.Sum(data))
		w.WriteChunk(wire.StoredChunk{Digest: cas.Sum(data), Codec: codec, Size: int64(len(data)), Stored: stored})
	}
	w.Close()
	expect(t, do(t, d.URL, call{method: "POST", path: wire.PathUpload, body: s.Bytes()}), 400, wire.CodeDigestMismatch)
	miss, err := d.Index.MissingChunks(all)
	if err != nil || len(miss) != 1 || miss[0] != all[4] {
		t.Fatalf("after a group with one flipped chunk, missing %v (%v), want only chunk 4", miss, err)
	}
	if ok, _ := d.Repo.Store().Has(context.Background(), all[4]); ok {
		t.Fatal("the flipped chunk was committed")
	}
	fsckClean(t, d)
}

func TestMetrics(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	data := []byte("metric chunk")
	do(t, d.URL, call{method: "PUT", path: wire.PathChunks + cas.Sum(data).String(), body: data})
	do(t, d.URL, call{method: "PUT", path: wire.PathChunks + cas.Sum(data).String(), body: data})
	a := do(t, d.URL, call{method: "GET", path: wire.PathMetrics})
	if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: %d %q", a.status, a.header.Get("Content-Type"))
	}
	text := string(a.body)
	for _, want := range []string{
		`driftstore_http_requests_total{route="/v1/chunks/:digest",method="PUT",code="201"} 1`,
		`driftstore_http_requests_total{route="/v1/chunks/:digest",method="PUT",code="200"} 1`,
		`driftstore_chunks_received_total 2`,
		`driftstore_chunks_stored_total 1`,
		`driftstore_chunks_deduped_total 1`,
		`driftstore_http_request_bytes_total 24`,
		`driftstore_http_request_duration_seconds_count{route="/v1/chunks/:digest"} 2`,
		`# TYPE driftstore_http_request_duration_seconds histogram`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	// Every non-comment line is "name{labels} value" or "name value".
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if f := strings.Fields(line); len(f) != 2 {
			t.Errorf("bad exposition line %q", line)
		}
	}
}

// TestGracefulShutdown: a write in flight when shutdown begins completes; afterwards the data
// directory is consistent.
func TestGracefulShutdown(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	data := randBytes(7, 200000)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", d.URL+wire.PathChunks+cas.Sum(data).String(), pr)
	req.ContentLength = int64(len(data))
	var wg sync.WaitGroup
	var status int
	var reqErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			reqErr = err
			return
		}
		status = resp.StatusCode
		resp.Body.Close()
	}()
	pw.Write(data[:1000])
	// Wait until the server is handling it (the metrics request itself is the other one).
	for i := 0; ; i++ {
		m := do(t, d.URL, call{method: "GET", path: wire.PathMetrics})
		if strings.Contains(string(m.body), "driftstore_http_requests_in_flight 2\n") {
			break
		}
		if i == 1000 {
			t.Fatal("the PUT never reached the handler")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dir := d.Dir
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- d.Shutdown(ctx)
	}()
	time.Sleep(50 * time.Millisecond) // let Shutdown close the listener
	pw.Write(data[1000:])
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	wg.Wait()
	if reqErr != nil || status != 201 {
		t.Fatalf("in-flight write: status %d, %v", status, reqErr)
	}
	d2 := apitest.Start(t, dir, httpapi.Config{})
	if a := do(t, d2.URL, call{method: "GET", path: wire.PathChunks + cas.Sum(data).String()}); a.status != 200 || !bytes.Equal(a.body, data) {
		t.Fatalf("chunk after restart: %d", a.status)
	}
	fsckClean(t, d2)
}

// The admin routes decode their bodies strictly: a misspelt option is refused, not ignored (a
// GC asked for as a dry run must not delete anything).
func TestAdminBodiesAreStrict(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	data := randBytes(21, 5000)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathChunks + cas.Sum(data).String(), body: data}), 201, "")
	expect(t, do(t, d.URL, call{method: "POST", path: "/v1/gc", body: []byte(`{"grace":-1,"dryrun":true}`)}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "POST", path: "/v1/gc", body: []byte(`{"grace":-1,"dry_run":true} {}`)}), 400, wire.CodeBadRequest)
	expect(t, do(t, d.URL, call{method: "POST", path: "/v1/fsck", body: []byte(`{"worker":2}`)}), 400, wire.CodeBadRequest)
	if n := countChunks(t, d); n != 1 {
		t.Fatalf("%d chunks after refused GC requests, want 1", n)
	}
	expect(t, do(t, d.URL, call{method: "POST", path: "/v1/gc", body: []byte(`{"grace":-1,"dry_run":true}`)}), 200, "")
	expect(t, do(t, d.URL, call{method: "POST", path: "/v1/fsck", body: []byte(``)}), 200, "")
	if n := countChunks(t, d); n != 1 {
		t.Fatalf("%d chunks after a dry-run GC, want 1", n)
	}
}

// A ref update is one JSON object and nothing after it.
func TestRefUpdateRefusesTrailingData(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	data := randBytes(22, 3000)
	body, id := sampleManifest(t, data)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathChunks + cas.Sum(data).String(), body: data}), 201, "")
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathManifests + id.String(), body: body}), 201, "")
	for _, b := range []string{``, `{"old":"","new":"` + id.String() + `"} x`, `{"old":"","new":"` + id.String() + `"}}`} {
		expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathRefs + "/tag/t", body: []byte(b)}), 400, wire.CodeBadRequest)
	}
	expect(t, do(t, d.URL, call{method: "GET", path: wire.PathRefs + "/tag/t"}), 404, wire.CodeRefNotFound)
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathRefs + "/tag/t", body: []byte(`{"old":"","new":"` + id.String() + `"}` + "\n")}), 200, "")
}

// Clients choose the method: methods outside the standard ones share one label, so that
// requests with made-up methods cannot grow the metrics without bound.
func TestMetricsMethodLabelIsBounded(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{})
	for i := range 20 {
		do(t, d.URL, call{method: "M" + strings.Repeat("X", i), path: "/nowhere"})
	}
	text := string(do(t, d.URL, call{method: "GET", path: wire.PathMetrics}).body)
	if strings.Contains(text, `method="MX`) {
		t.Fatalf("a made-up method became a label:\n%s", text)
	}
	if want := `driftstore_http_requests_total{route="unmatched",method="other",code="404"} 20`; !strings.Contains(text, want) {
		t.Fatalf("metrics lack %q:\n%s", want, text)
	}
}

// MaxChunkSize bounds a chunk's decoded size also when it arrives in a stored form that is
// much smaller.
func TestStoredFormOverMaxChunkSize(t *testing.T) {
	d := apitest.Start(t, t.TempDir(), httpapi.Config{MaxChunkSize: 4096})
	data := bytes.Repeat([]byte("driftstore "), 5000)
	codec, stored := cas.Encode(nil, data, cas.HintNone)
	if codec != cas.CodecZstd || len(stored) > 4096 {
		t.Fatalf("test data: codec %d, %d stored bytes", codec, len(stored))
	}
	dg := cas.Sum(data).String()
	expect(t, do(t, d.URL, call{method: "PUT", path: wire.PathChunks + dg, body: stored,
		headers: map[string]string{wire.HeaderCodec: strconv.Itoa(int(codec))}}), 413, wire.CodeTooLarge)
	expect(t, do(t, d.URL, call{method: "HEAD", path: wire.PathChunks + dg}), 404, "")
}
