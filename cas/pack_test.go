package cas_test

import (
	"context"

	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

var bg = context.Background()

func openPack(t testing.TB, dir string, opts cas.PackOptions) *cas.Pack {
	t.Helper()
	p, err := cas.OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestPackConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store {
		return openPack(t, t.TempDir(), cas.PackOptions{MaxPackSize: 4 << 20})
	})
}

// TestPackReopenedConformance runs the suite on stores that were written, closed and reopened
// before use (the suite's data then shares the packs with what the reopen scanned), with small
// packs so that the suite rolls over many of them.
func TestPackReopenedConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store {
		dir := t.TempDir()
		p, err := cas.OpenPack(dir, cas.PackOptions{MaxPackSize: 256 << 10})
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.Put(bg, castest.Random(5000, 4242), cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Delete(bg, d.Digest); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		return openPack(t, dir, cas.PackOptions{MaxPackSize: 256 << 10})
	})
}
