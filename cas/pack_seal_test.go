package cas

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// randomBytes returns n incompressible bytes (a chunk stored raw).
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// rewriteRecord changes the record of entry e in the closed store at dir behind its back: fn
// may change the header (re-encoded with a valid header CRC) and the payload in place.
func rewriteRecord(t *testing.T, dir string, e packEntry, fn func(h *recordHeader, payload []byte)) {
	t.Helper()
	path := filepath.Join(dir, packName(e.pack))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseRecordHeader(b[e.off:])
	if err != nil {
		t.Fatal(err)
	}
	fn(&h, b[e.off+packHeaderSize:e.off+packHeaderSize+int64(e.length)])
	h.encode(b[e.off:])
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// putOne stores data in a new pack store at dir, closes it and returns its Info and entry.
func putOne(t *testing.T, dir string, data []byte) (Info, packEntry) {
	t.Helper()
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Put(context.Background(), data, HintNone)
	if err != nil {
		t.Fatal(err)
	}
	e := p.index[info.Digest]
	if !e.sealed {
		t.Fatal("record not sealed")
	}
	return info, e
}

func reopen(t *testing.T, dir string) *Pack {
	t.Helper()
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestPackSeal: chunks are stored sealed; GetSealed returns what Get returns, and refuses a
// payload changed at rest, raw or compressed; a record without a seal (as written before seals)
// is checked against its digest.
func TestPackSeal(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		data  []byte
		codec Codec
	}{
		{"raw", randomBytes(64<<10, 1), CodecRaw},
		{"zstd", bytes.Repeat([]byte("driftstore seals its chunks "), 2048), CodecZstd},
	}
	for _, c := range cases {
		for _, unsealed := range []bool{false, true} {
			name := c.name
			if unsealed {
				name += "/version1"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				info, e := putOne(t, dir, c.data)
				if info.Codec != c.codec {
					t.Fatalf("stored as %s", info.Codec)
				}
				if unsealed {
					rewriteRecord(t, dir, e, func(h *recordHeader, _ []byte) { h.sealed = false })
				}
				p := reopen(t, dir)
				if p.index[info.Digest].sealed == unsealed {
					t.Fatalf("sealed %v after reopen", p.index[info.Digest].sealed)
				}
				if got, err := p.GetSealed(ctx, info.Digest, nil); err != nil || !bytes.Equal(got, c.data) {
					t.Fatalf("GetSealed: %v", err)
				}
				p.Close()
				// One flipped bit in the middle of the payload.
				rewriteRecord(t, dir, e, func(_ *recordHeader, payload []byte) { payload[len(payload)/2] ^= 0x10 })
				p = reopen(t, dir)
				for what, get := range map[string]func(context.Context, Digest, []byte) ([]byte, error){"Get": p.Get, "GetSealed": p.GetSealed} {
					var ce *CorruptError
					if _, err := get(ctx, info.Digest, nil); !errors.As(err, &ce) || ce.Digest != info.Digest {
						t.Fatalf("%s of a damaged payload: %v", what, err)
					}
				}
			})
		}
	}
}

// TestPackSealIsNoDefenceAgainstRewrites documents the seal's limit: a payload rewritten on
// purpose with its seal recomputed passes GetSealed; Get, which hashes the content, refuses it.
func TestPackSealIsNoDefenceAgainstRewrites(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := randomBytes(4096, 3)
	info, e := putOne(t, dir, data)
	rewriteRecord(t, dir, e, func(h *recordHeader, payload []byte) {
		payload[0] ^= 1
		h.crc = crc32.Checksum(payload, castagnoli)
	})
	p := reopen(t, dir)
	if got, err := p.GetSealed(ctx, info.Digest, nil); err != nil || bytes.Equal(got, data) {
		t.Fatalf("GetSealed of a resealed rewrite: %v (equal to the original: %v)", err, bytes.Equal(got, data))
	}
	var ce *CorruptError
	if _, err := p.Get(ctx, info.Digest, nil); !errors.As(err, &ce) {
		t.Fatalf("Get of a resealed rewrite: %v", err)
	}
}

// TestPackMappedReadFault: a mapped page that cannot be read (here: the file cut short behind
// the store's back, which the lock normally prevents; an I/O error under the page cache acts
// alike) fails the Get with an error instead of killing the process with SIGBUS.
func TestPackMappedReadFault(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := randomBytes(64<<10, 5)
	info, e := putOne(t, dir, data)
	p := reopen(t, dir)
	if got, err := p.GetSealed(ctx, info.Digest, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v", err)
	}
	if p.packs[e.pack].m == nil {
		t.Skip("pack files are not mapped here")
	}
	if err := os.Truncate(filepath.Join(dir, packName(e.pack)), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetSealed(ctx, info.Digest, nil); err == nil || !strings.Contains(err.Error(), "fault") {
		t.Fatalf("get of a vanished page: %v", err)
	}
}
