package cas

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// allocated returns the bytes of disk blocks the file at path holds, and its size.
func allocated(t *testing.T, path string) (blocks, size int64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512, st.Size
}

// TestPackPreallocates: a durable pack's active file has its blocks allocated ahead of its
// writes (its size unchanged: recovery reads only what was written), and Close releases what
// is left past the end; a NoSync pack allocates nothing ahead.
func TestPackPreallocates(t *testing.T) {
	ctx := context.Background()
	data := make([]byte, 512<<10) // random: stored raw
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	probe, err := os.Create(filepath.Join(t.TempDir(), "probe"))
	if err != nil {
		t.Fatal(err)
	}
	if err := allocateAhead(probe, 0, 1<<20); err != nil {
		t.Skipf("the temporary directory's file system allocates no blocks ahead: %v", err)
	}
	probe.Close()
	for _, noSync := range []bool{false, true} {
		dir := t.TempDir()
		p, err := OpenPack(dir, PackOptions{NoSync: noSync})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Put(ctx, data, HintNone); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, packName(1))
		blocks, size := allocated(t, path)
		if size < int64(len(data)) || size > int64(len(data))+4096 {
			t.Fatalf("noSync %v: pack of %d bytes for one %d-byte record", noSync, size, len(data))
		}
		if ahead := blocks >= size+preallocStep/2; ahead == noSync {
			t.Fatalf("noSync %v: %d bytes of blocks for a %d-byte file", noSync, blocks, size)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if blocks, size := allocated(t, path); blocks > size+1<<20 {
			t.Fatalf("noSync %v: after Close, %d bytes of blocks for a %d-byte file", noSync, blocks, size)
		}
		p, err = OpenPack(dir, PackOptions{NoSync: noSync})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := p.Get(ctx, Sum(data), nil); err != nil || len(got) != len(data) {
			t.Fatalf("noSync %v: reopened: %d bytes, %v", noSync, len(got), err)
		}
		p.Close()
	}
}

// TestNoPreallocationOnTmpfs: on tmpfs, where allocating ahead only zeroes pages early, a
// durable pack allocates nothing past its end.
func TestNoPreallocationOnTmpfs(t *testing.T) {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err != nil || st.Type != 0x01021994 {
		t.Skip("no tmpfs at /dev/shm")
	}
	if allocatesAhead("/dev/shm") {
		t.Fatal("allocatesAhead says yes on tmpfs")
	}
	dir, err := os.MkdirTemp("/dev/shm", "pack-")
	if err != nil {
		t.Skip(err)
	}
	defer os.RemoveAll(dir)
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	data := make([]byte, 512<<10)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if _, err := p.Put(context.Background(), data, HintNone); err != nil {
		t.Fatal(err)
	}
	if blocks, size := allocated(t, filepath.Join(dir, packName(1))); blocks > size+1<<20 {
		t.Fatalf("%d bytes of blocks for a %d-byte file on tmpfs", blocks, size)
	}
}
