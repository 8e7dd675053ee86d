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
