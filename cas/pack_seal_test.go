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

// TestPackSeal: chunks are stored sealed; GetSealed returns what Get returns, and refuses a
// payload changed at rest, raw or compressed; a record without a seal (as written before seals)
// is checked against its digest.
func TestPackSeal(t *testing.T) {
	ctx := context.Background()
	raw := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range raw {
		raw[i] = byte(rng.Uint32()) // incompressible: stored raw
	}
	cases := []struct {
		name  string
		data  []byte
		codec Codec
	}{
		{"raw", raw, CodecRaw},
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
				p, err := OpenPack(dir, PackOptions{})
				if err != nil {
					t.Fatal(err)
				}
				info, err := p.Put(ctx, c.data, HintNone)
				if err != nil || info.Codec != c.codec {
					t.Fatalf("put: %+v %v", info, err)
				}
				e := p.index[info.Digest]
				if !e.sealed {
					t.Fatal("record not sealed")
				}
				p.Close()
				path := filepath.Join(dir, packName(e.pack))
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if unsealed {
					h, err := parseRecordHeader(b[e.off:])
					if err != nil {
						t.Fatal(err)
					}
					h.sealed = false
					h.encode(b[e.off:])
					if err := os.WriteFile(path, b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				p, err = OpenPack(dir, PackOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if p.index[info.Digest].sealed == unsealed {
					t.Fatalf("sealed %v after reopen", p.index[info.Digest].sealed)
				}
				got, err := p.GetSealed(ctx, info.Digest, nil)
				if err != nil || !bytes.Equal(got, c.data) {
					t.Fatalf("GetSealed: %v", err)
				}
				p.Close()
				// One flipped bit in the middle of the payload.
				b[e.off+packHeaderSize+int64(e.length)/2] ^= 0x10
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
				p, err = OpenPack(dir, PackOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
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
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	info, err := p.Put(ctx, data, HintNone)
	if err != nil || info.Codec != CodecRaw {
		t.Fatalf("put: %+v %v", info, err)
	}
	e := p.index[info.Digest]
	p.Close()
	path := filepath.Join(dir, packName(e.pack))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	payload := b[e.off+packHeaderSize : e.off+packHeaderSize+int64(e.length)]
	payload[0] ^= 1
	h, err := parseRecordHeader(b[e.off:])
	if err != nil {
		t.Fatal(err)
	}
	h.crc = crc32.Checksum(payload, castagnoli)
	h.encode(b[e.off:])
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err = OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
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
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	data := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	info, err := p.Put(ctx, data, HintNone)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.GetSealed(ctx, info.Digest, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get: %v", err)
	}
	e := p.index[info.Digest]
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
