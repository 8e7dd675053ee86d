package cas

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

// Tests of the pack format that need to write records by hand.

func testChunk(n int, seed byte) []byte {
	h := blake3.New()
	h.Write([]byte{seed})
	out := make([]byte, n)
	h.Digest().Read(out)
	return out
}

func packSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// forgedRecord returns a chunk record with a valid header (correct CRC) for digest d whose
// payload is payload, raw.
func forgedRecord(d Digest, payload []byte) []byte {
	b := make([]byte, packHeaderSize+len(payload))
	h := recordHeader{kind: kindChunk, codec: CodecRaw, digest: d, a: uint64(len(payload)), b: uint32(len(payload)), time: time.Now().UnixNano()}
	h.encode(b)
	copy(b[packHeaderSize:], payload)
	return b
}

// TestPackTornTail damages the tail of the newest pack in the ways a crash or a bad disk can,
// and checks that reopening keeps every acknowledged chunk, never reports a chunk whose bytes
// are wrong, truncates the tail and appends after it.
func TestPackTornTail(t *testing.T) {
	ctx := context.Background()
	good := [][]byte{testChunk(10_000, 1), testChunk(20_000, 2), testChunk(30_000, 3)}
	extra := testChunk(40_000, 4)
	cases := []struct {
		name   string
		damage func(t *testing.T, path string, size int64) // size: the file after the good chunks
		gone   bool                                        // extra (written after) is lost
	}{
		{"truncated-header", func(t *testing.T, path string, size int64) {
			os.Truncate(path, size+packHeaderSize/2)
		}, true},
		{"truncated-payload", func(t *testing.T, path string, size int64) {
			os.Truncate(path, size+packHeaderSize+1000)
		}, true},
		{"garbage-record-valid-header", func(t *testing.T, path string, size int64) {
			// A well-formed header naming extra's digest, over other bytes of the same length.
			os.Truncate(path, size)
			appendFile(t, path, forgedRecord(Sum(extra), testChunk(len(extra), 9)))
		}, true},
		{"valid-header-payload-past-eof", func(t *testing.T, path string, size int64) {
			os.Truncate(path, size)
			rec := forgedRecord(Sum(extra), extra)
			appendFile(t, path, rec[:len(rec)-1])
		}, true},
		{"zeros-after", func(t *testing.T, path string, size int64) {
			appendFile(t, path, make([]byte, 5000))
		}, false},
		{"flipped-byte-in-unsynced-record", func(t *testing.T, path string, size int64) {
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			var b [1]byte
			f.ReadAt(b[:], size+packHeaderSize+100)
			b[0] ^= 1
			f.WriteAt(b[:], size+packHeaderSize+100)
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p, err := OpenPack(dir, PackOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range good {
				if _, err := p.Put(ctx, g, HintNone); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, packName(1))
			size := packSize(t, path)
			// extra goes in through a batch never committed: written, not synced, no marker.
			// Its run is written here as a Put that fills the run buffer would write it.
			b := p.NewBatch()
			if _, err := b.Put(ctx, extra, HintNone); err != nil {
				t.Fatal(err)
			}
			if err := b.(*packBatch).writeRun(b.(*packBatch).takeRun()); err != nil {
				t.Fatal(err)
			}
			p.Close() // a crash, as far as the files are concerned: no Commit, no Discard
			c.damage(t, path, size)

			p, err = OpenPack(dir, PackOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			for _, g := range good {
				got, err := p.Get(ctx, Sum(g), nil)
				if err != nil || !bytes.Equal(got, g) {
					t.Fatalf("acknowledged chunk after reopen: %v", err)
				}
			}
			has, _ := p.Has(ctx, Sum(extra))
			if has == c.gone {
				t.Fatalf("unacknowledged chunk present %v, want %v", has, !c.gone)
			}
			if has {
				if got, err := p.Get(ctx, Sum(extra), nil); err != nil || !bytes.Equal(got, extra) {
					t.Fatalf("complete unacknowledged chunk: %v", err)
				}
			} else if end := packSize(t, path); end != size {
				t.Fatalf("pack is %d bytes after recovery, want the torn tail cut at %d", end, size)
			}
			// Appends continue after the cut, and survive another reopen.
			more := testChunk(5000, 5)
			if _, err := p.Put(ctx, more, HintNone); err != nil {
				t.Fatal(err)
			}
			p.Close()
			p, err = OpenPack(dir, PackOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			for _, g := range append(good, more) {
				if got, err := p.Get(ctx, Sum(g), nil); err != nil || !bytes.Equal(got, g) {
					t.Fatalf("chunk after recovery and reopen: %v", err)
				}
			}
		})
	}
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestPackDamageInsideSyncedPrefix: a header destroyed where a sync marker vouches for the
// bytes is damage, not a torn write: the pack is not truncated, the store opens, reads what
// comes before and after the damage, appends to a new pack and never compacts the damaged one.
func TestPackDamageInsideSyncedPrefix(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := testChunk(3000, 1), testChunk(3000, 2)
	p.Put(ctx, a, HintNone)
	_, boff, _, _ := p.Locate(Sum(b)) // not yet there
	if boff != 0 {
		t.Fatal("Locate of an absent chunk")
	}
	p.Put(ctx, b, HintNone)
	path, boff, _, err := p.Locate(Sum(b))
	if err != nil {
		t.Fatal(err)
	}
	c3 := testChunk(3000, 3)
	p.Put(ctx, c3, HintNone) // its marker vouches for b
	p.Close()
	size := packSize(t, path)
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte("XXXX"), boff-packHeaderSize) // b's header magic
	f.Close()

	p, err = OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got, err := p.Get(ctx, Sum(a), nil); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("chunk before the damage: %v", err)
	}
	if _, err := p.Get(ctx, Sum(b), nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("chunk with a damaged header: %v", err)
	}
	if packSize(t, path) != size {
		t.Fatal("a pack damaged inside its synced prefix was truncated")
	}
	if got, err := p.Get(ctx, Sum(c3), nil); err != nil || !bytes.Equal(got, c3) {
		t.Fatalf("chunk after the damage not recovered: %v", err)
	}
	// Compact never removes the damaged pack (it would lose what only resync finds).
	if err := p.Delete(ctx, Sum(a)); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := p.Get(ctx, Sum(c3), nil); err != nil || !bytes.Equal(got, c3) {
		t.Fatalf("recovered chunk after Compact: %v", err)
	}
	c := testChunk(100, 7)
	if _, err := p.Put(ctx, c, HintNone); err != nil {
		t.Fatal(err)
	}
	if where, _, _, _ := p.Locate(Sum(c)); where == path {
		t.Fatal("appended to a damaged pack")
	}
}

func TestParseRecordHeaderRoundTrip(t *testing.T) {
	d := Sum([]byte("x"))
	for _, h := range []recordHeader{
		{kind: kindChunk, codec: CodecZstd, digest: d, a: 1000, b: 10, time: 12345},
		{kind: kindChunk, codec: CodecRaw, digest: d, a: 0, b: 0, time: 1},
		{kind: kindTombstone, digest: d, a: 4096, b: 3, time: 2},
		{kind: kindSync, a: 640, time: 3},
	} {
		var b [packHeaderSize]byte
		h.encode(b[:])
		got, err := parseRecordHeader(b[:])
		if err != nil || got != h {
			t.Fatalf("%+v: parsed %+v, %v", h, got, err)
		}
		for i := range b { // every single-bit flip is refused
			b[i] ^= 4
			if _, err := parseRecordHeader(b[:]); err == nil {
				t.Fatalf("%+v: flipped byte %d accepted", h, i)
			}
			b[i] ^= 4
		}
	}
}

// TestPackBatchRunWriteFails: when the write of a batch's run fails (here the pack's file is
// swapped for a read-only one, so pwritev fails), the Put that wrote the run fails, the batch
// is broken (later Puts and Commit fail too), nothing of it becomes visible, no pin is left on
// the pack, and the store goes on in a new pack.
func TestPackBatchRunWriteFails(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	first := testChunk(1000, 1)
	if _, err := p.Put(ctx, first, HintNone); err != nil {
		t.Fatal(err)
	}
	pf := p.active
	ro, err := os.Open(pf.path)
	if err != nil {
		t.Fatal(err)
	}
	rw := pf.f
	pf.f = ro
	defer func() { pf.f = rw; ro.Close() }()

	b := p.NewBatch()
	defer b.Discard()
	var put [][]byte
	var failed error
	for i := 0; failed == nil && i < 100; i++ {
		c := testChunk(100_000, byte(10+i))
		_, failed = b.Put(ctx, c, HintNone)
		put = append(put, c)
	}
	if failed == nil {
		t.Fatal("no Put wrote the run")
	}
	if _, err := b.Put(ctx, testChunk(1000, 2), HintNone); err == nil {
		t.Fatal("a Put after the run failed succeeded")
	}
	if err := b.Commit(ctx); err == nil {
		t.Fatal("Commit after a failed run succeeded")
	}
	for i, c := range put {
		if ok, _ := p.Has(ctx, Sum(c)); ok {
			t.Fatalf("chunk %d of the failed batch is visible", i)
		}
	}
	p.mu.Lock()
	pins, broken := pf.pins, pf.err != nil
	p.mu.Unlock()
	if pins != 0 || !broken {
		t.Fatalf("after the failed run: %d pins, pack broken %v", pins, broken)
	}
	again := testChunk(3000, 3)
	if _, err := p.Put(ctx, again, HintNone); err != nil {
		t.Fatalf("Put after a failed batch: %v", err)
	}
	if p.active == pf {
		t.Fatal("the broken pack is still appended to")
	}
	for _, c := range [][]byte{first, again} {
		if got, err := p.Get(ctx, Sum(c), nil); err != nil || !bytes.Equal(got, c) {
			t.Fatalf("chunk after the failed batch: %v", err)
		}
	}
}
