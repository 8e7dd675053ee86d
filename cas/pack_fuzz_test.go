package cas_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

// samplePack returns the bytes of a real pack file: chunks of every codec, a deletion and sync
// markers; the fuzzer mutates it.
func samplePack(f *testing.F) []byte {
	dir := f.TempDir()
	p, err := cas.OpenPack(dir, cas.PackOptions{})
	if err != nil {
		f.Fatal(err)
	}
	a, _ := p.Put(bg, castest.Random(300, 1), cas.HintNone)
	p.Put(bg, bytes.Repeat([]byte("abc"), 200), cas.HintNone)
	p.Put(bg, castest.KVFloat16(1024, 2), cas.HintFloat16)
	p.Delete(bg, a.Digest)
	b := p.NewBatch()
	b.Put(bg, castest.Random(100, 3), cas.HintNone)
	b.Commit(bg)
	p.Close()
	data, err := os.ReadFile(filepath.Join(dir, "pack-00000001.dsp"))
	if err != nil {
		f.Fatal(err)
	}
	return data
}

// FuzzPackOpen opens a store whose only pack file holds arbitrary bytes: it must never panic,
// every chunk it reports must read back with its digest's content or fail with a *CorruptError
// naming it, and the store must take a new chunk and find it again after a reopen.
func FuzzPackOpen(f *testing.F) {
	seed := samplePack(f)
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(seed[:len(seed)-70])
	damaged := bytes.Clone(seed) // the second chunk's header destroyed inside the synced prefix
	damaged[300+2*64+2] ^= 0xff
	f.Add(damaged)
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte("DSPK"), 40))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "pack-00000001.dsp"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := cas.OpenPack(dir, cas.PackOptions{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		walk := func() int {
			n := 0
			err := p.Walk(bg, func(in cas.Info) error {
				n++
				got, err := p.Get(bg, in.Digest, nil)
				var ce *cas.CorruptError
				switch {
				case err == nil:
					if cas.Sum(got) != in.Digest || int64(len(got)) != in.Size {
						t.Fatalf("chunk %s served with wrong bytes", in.Digest)
					}
				case errors.As(err, &ce):
					if ce.Digest != in.Digest {
						t.Fatalf("corrupt error names %s for %s", ce.Digest, in.Digest)
					}
				default:
					t.Fatalf("Get %s: %v", in.Digest, err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		n := walk()
		extra := []byte("a chunk put after a fuzzed open")
		if _, err := p.Put(bg, extra, cas.HintNone); err != nil {
			t.Fatal(err)
		}
		p.Close()
		p, err = cas.OpenPack(dir, cas.PackOptions{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := p.Get(bg, cas.Sum(extra), nil); err != nil || !bytes.Equal(got, extra) {
			t.Fatalf("chunk put after the fuzzed open: %v", err)
		}
		if m := walk(); m < n {
			t.Fatalf("%d chunks after reopen, %d before", m, n)
		}
	})
}
