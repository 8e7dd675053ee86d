package replicate

import (
	"context"
	"fmt"

	"github.com/driftstore/driftstore/index"
)

// RefName names one ref.
type RefName struct {
	Kind index.RefKind
	Name string
}

func (r RefName) String() string { return r.Kind.String() + "/" + r.Name }

// Replicate copies the named refs from src to dst, one after another, and returns one result
// per ref. With no names it copies every ref src has (sessions and tags) at the time of the
// call. A ref that fails does not stop the others; its error is in its result.
func Replicate(ctx context.Context, src, dst Peer, names []RefName, opts Options) ([]Result, error) {
	if len(names) == 0 {
		refs, err := src.Refs(ctx, 0)
		if err != nil {
			return nil, fmt.Errorf("list source refs: %w", err)
		}
		for _, r := range refs {
			names = append(names, RefName{r.Kind, r.Name})
		}
	}
	out := make([]Result, 0, len(names))
	for _, n := range names {
		st, err := Copy(ctx, src, dst, n.Kind, n.Name, opts)
		out = append(out, Result{Ref: n, Stats: st, Err: err})
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
	}
	return out, nil
}

// Result is the outcome of copying one ref.
type Result struct {
	Ref   RefName
	Stats Stats
	Err   error
}
