package cas_test

import (
	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

func TestMemoryConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store { return cas.NewMemory() })
}

func TestLocalConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store {
		s, err := cas.OpenLocal(t.TempDir(), cas.LocalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// plainStore is a Memory seen only through the Store interface: no batches, no stored forms.
// It runs the suite over the fallbacks (NewBatch's Put-per-chunk batch, ReadStored by Get and
// Encode, WriteStored by Decode, verify and Put).
type plainStore struct{ cas.Store }

func TestFallbackConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store { return plainStore{cas.NewMemory()} })
}
