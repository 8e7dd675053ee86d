package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

var testCommitLimits = CommitLimits{MaxManifests: 8, MaxManifestSize: 1 << 10}

func TestRefCommitRoundTrip(t *testing.T) {
	for _, c := range []*RefCommit{
		{},
		{Old: cas.Sum([]byte("a")), New: cas.Sum([]byte("b")), Manifests: [][]byte{[]byte("m1"), {}, bytes.Repeat([]byte{7}, 1<<10)}},
	} {
		b := AppendRefCommit(nil, c)
		got, err := DecodeRefCommit(b, testCommitLimits)
		if err != nil {
			t.Fatal(err)
		}
		if got.Old != c.Old || got.New != c.New || len(got.Manifests) != len(c.Manifests) {
			t.Fatalf("got %+v, want %+v", got, c)
		}
		for i := range c.Manifests {
			if !bytes.Equal(got.Manifests[i], c.Manifests[i]) {
				t.Fatalf("manifest %d differs", i)
			}
		}
	}
}

func TestRefCommitRefused(t *testing.T) {
	good := AppendRefCommit(nil, &RefCommit{Manifests: [][]byte{[]byte("one"), []byte("two")}})
	tooMany := AppendRefCommit(nil, &RefCommit{Manifests: make([][]byte, 9)})
	tooBig := AppendRefCommit(nil, &RefCommit{Manifests: [][]byte{make([]byte, 1025)}})
	for name, b := range map[string][]byte{
		"empty":          nil,
		"other magic":    append([]byte("DSRC\x02"), good[5:]...),
		"short":          good[:40],
		"no count":       good[:69],
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
		"too many":       tooMany,
		"too big":        tooBig,
		"count past end": append(bytes.Clone(good[:69]), 0xff, 0x01),
	} {
		if _, err := DecodeRefCommit(b, testCommitLimits); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func FuzzRefCommit(f *testing.F) {
	f.Add(AppendRefCommit(nil, &RefCommit{Manifests: [][]byte{[]byte("one"), []byte("two")}}))
	f.Add(AppendRefCommit(nil, &RefCommit{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeRefCommit(b, testCommitLimits)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		// What decodes re-encodes to the same bytes (one encoding per commit).
		if again := AppendRefCommit(nil, c); !bytes.Equal(again, b) {
			t.Fatal("decoded commit re-encodes differently")
		}
	})
}
