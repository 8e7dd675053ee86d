package replicate

import (
	"context"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/index"
)

// Local is a data directory's index as a transfer Peer.
type Local struct {
	ix *index.Index
}

// NewLocal wraps ix.
func NewLocal(ix *index.Index) *Local { return &Local{ix: ix} }

var (
	_ Peer = (*Local)(nil)
	_ Peer = (*Client)(nil)
)

func (l *Local) Ref(_ context.Context, kind index.RefKind, name string) (index.ID, error) {
	return l.ix.Ref(kind, name)
}

func (l *Local) HasManifest(_ context.Context, id index.ID) (bool, error) {
	return l.ix.HasManifest(id)
}

func (l *Local) ManifestBytes(_ context.Context, id index.ID) ([]byte, error) {
	return l.ix.ManifestBytes(id)
}

func (l *Local) PutManifestBytes(ctx context.Context, data []byte) (index.ID, error) {
	return l.ix.PutManifestBytes(ctx, data)
}

// Missing answers from the index's chunk records, as a daemon does.
func (l *Local) Missing(_ context.Context, ds []cas.Digest) ([]cas.Digest, error) {
	return l.ix.MissingChunks(ds)
}

func (l *Local) CompareAndSwapRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID) error {
	return l.ix.CompareAndSwapRef(ctx, kind, name, expected, target)
}

// CommitRef commits manifests (canonical bytes, parents first) and moves the ref in one index
// transaction.
func (l *Local) CommitRef(ctx context.Context, kind index.RefKind, name string, expected, target index.ID, manifests [][]byte) error {
	es := make([]*index.Encoded, len(manifests))
	for i, m := range manifests {
		var err error
		if es[i], err = index.DecodeEncoded(m); err != nil {
			return err
		}
	}
	return l.ix.Commit(ctx, index.Commit{Manifests: es, Ref: &index.RefMove{Kind: kind, Name: name, Expected: expected, Target: target}})
}

// Refs lists the index's refs of one kind (0: all).
func (l *Local) Refs(_ context.Context, kind index.RefKind) ([]index.Ref, error) {
	return l.ix.Refs(kind)
}
