package replicate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/httpapi/apitest"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/repo"
)

const benchSize = 32 << 20 // uncompressed bytes of the benchmark session

// benchSource is a local data directory holding one float16-like session of benchSize bytes.
func benchSource(b *testing.B) (*repo.Repo, index.ID, int64) {
	b.Helper()
	local := openLocal(b)
	id := putSession(b, local, "s", index.ID{}, kvLike(99, benchSize))
	m, _ := local.Index().Manifest(id)
	var stored int64
	for _, d := range m.Digests() {
		info, err := local.Store().Stat(context.Background(), d)
		if err != nil {
			b.Fatal(err)
		}
		stored += info.StoredSize
	}
	return local, id, stored
}

// BenchmarkLoopback compares, in one run, a push and a pull of a 32 MiB session over loopback
// with a plain HTTP POST of as many bytes as the push puts on the wire (its chunks' stored
// bytes) to a handler that writes them to one file. All report MB/s of the stored bytes; the
// receiving side syncs nothing (NoSync) except in the -sync variants, whose receiving data
// directory syncs as a real daemon's does (chunk files, directories, index). The -memstore
// variants keep the receiving side's chunks in memory (cas.Memory; the index is still bbolt on
// disk), which isolates the transfer path from the cost of one chunk file per chunk.
func BenchmarkLoopback(b *testing.B) {
	local, id, stored := benchSource(b)
	b.Run("plain-http", func(b *testing.B) {
		payload := make([]byte, stored)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		dir := b.TempDir()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, err := os.Create(filepath.Join(dir, "copy"))
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			_, err = io.Copy(f, r.Body)
			f.Close()
			if err != nil {
				http.Error(w, err.Error(), 500)
			}
		})}
		go srv.Serve(ln)
		defer srv.Close()
		url := "http://" + ln.Addr().String() + "/copy"
		b.SetBytes(stored)
		b.ResetTimer()
		for range b.N {
			resp, err := http.Post(url, "application/octet-stream", bytes.NewReader(payload))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatal(resp.Status)
			}
		}
	})
	for _, mode := range []string{"", "-memstore", "-sync"} {
		start := apitest.Start
		switch mode {
		case "-memstore":
			start = apitest.StartMemory
		case "-sync":
			start = apitest.StartSync
		}
		b.Run("push"+mode, func(b *testing.B) {
			benchPush(b, local, start, stored)
		})
		b.Run("pull"+mode, func(b *testing.B) {
			benchPull(b, local, start, mode, id, stored)
		})
	}
}

func benchPush(b *testing.B, local *repo.Repo, start func(testing.TB, string, httpapi.Config) *apitest.Daemon, stored int64) {
	ctx := context.Background()
	{
		b.SetBytes(stored)
		for range b.N {
			b.StopTimer()
			d := start(b, b.TempDir(), httpapi.Config{})
			c := client(b, d.URL, nil, "")
			b.StartTimer()
			st, err := replicate.Push(ctx, local.Index(), c, index.RefSession, "s", replicate.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if st.Bytes != stored {
				b.Fatalf("pushed %d stored bytes, want %d", st.Bytes, stored)
			}
			b.StopTimer()
			d.Stop()
			b.StartTimer()
		}
	}
}

// benchPull pulls from a daemon into a fresh local data directory: NoSync, syncing (mode
// "-sync") or with its chunks in memory ("-memstore").
func benchPull(b *testing.B, local *repo.Repo, start func(testing.TB, string, httpapi.Config) *apitest.Daemon, mode string, id index.ID, stored int64) {
	ctx := context.Background()
	{
		d := start(b, b.TempDir(), httpapi.Config{})
		c := client(b, d.URL, nil, "")
		if _, err := replicate.Push(ctx, local.Index(), c, index.RefSession, "s", replicate.Options{}); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(stored)
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			var dst *index.Index
			switch mode {
			case "-memstore":
				ix, err := index.Open(filepath.Join(b.TempDir(), "index.db"), cas.NewMemory(), index.Options{NoSync: true})
				if err != nil {
					b.Fatal(err)
				}
				defer ix.Close()
				dst = ix
			case "-sync":
				r, err := repo.Open(b.TempDir(), repo.Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				dst = r.Index()
			default:
				dst = openLocal(b).Index()
			}
			b.StartTimer()
			st, err := replicate.Pull(ctx, c, dst, index.RefSession, "s", replicate.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if st.Head != id || st.Bytes != stored {
				b.Fatalf("pulled %d stored bytes, want %d", st.Bytes, stored)
			}
		}
	}
}

// BenchmarkIncrementalPush pushes a session, then one more turn (256 KiB appended to 4 MiB),
// and reports the request body bytes of the second push over the new stored bytes.
func BenchmarkIncrementalPush(b *testing.B) {
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		local := openLocal(b)
		d := apitest.Start(b, b.TempDir(), httpapi.Config{})
		base := kvLike(4, 4<<20)
		id1 := putSession(b, local, "s", index.ID{}, base)
		if _, err := replicate.Push(ctx, local.Index(), client(b, d.URL, nil, ""), index.RefSession, "s", replicate.Options{}); err != nil {
			b.Fatal(err)
		}
		more := append(bytes.Clone(base), kvLike(5, 256<<10)...)
		res, err := local.PutReader(ctx, "kv", bytes.NewReader(more), repo.PutOptions{Parent: id1, Kind: "checkpoint", Hint: cas.HintFloat16,
			Chunker: repo.ChunkerSpec{Method: repo.ChunkFixed, Size: 64 << 10}})
		if err != nil {
			b.Fatal(err)
		}
		if err := local.Index().CompareAndSwapRef(ctx, index.RefSession, "s", id1, res.ID); err != nil {
			b.Fatal(err)
		}
		wc := newCounter()
		b.StartTimer()
		if _, err := replicate.Push(ctx, local.Index(), client(b, d.URL, wc, ""), index.RefSession, "s", replicate.Options{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		mb, _ := local.Index().ManifestBytes(res.ID)
		b.ReportMetric(float64(wc.up.Load())/float64(res.NewBytes), "wire/new")
		b.ReportMetric(float64(wc.up.Load()-res.NewBytes), "overhead-B")
		b.ReportMetric(float64(len(mb)), "manifest-B")
		b.ReportMetric(float64(wc.requests.Load()), "requests")
		d.Stop()
		b.StartTimer()
	}
}

// BenchmarkMissing10k asks a daemon that has 5000 chunks recorded which of 10000 digests
// (half of them its own) it lacks; one op is one request.
func BenchmarkMissing10k(b *testing.B) {
	ctx := context.Background()
	d := apitest.Start(b, b.TempDir(), httpapi.Config{})
	store, ix := d.Repo.Store(), d.Repo.Index()
	ds := make([]cas.Digest, 0, wire.MaxMissingDigests)
	infos := make([]cas.Info, 0, 5000)
	for i := range 5000 {
		data := kvLike(uint64(1000+i), 256)
		info, err := store.Put(ctx, data, cas.HintNone)
		if err != nil {
			b.Fatal(err)
		}
		infos = append(infos, info)
		ds = append(ds, info.Digest, cas.Sum(append(data, 1)))
	}
	if err := ix.RecordChunks(ctx, infos); err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(wire.MissingRequest{Digests: ds})
	c := client(b, d.URL, nil, "")
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for range b.N {
		miss, err := c.Missing(ctx, ds)
		if err != nil {
			b.Fatal(err)
		}
		if len(miss) != 5000 {
			b.Fatalf("%d missing, want 5000", len(miss))
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
