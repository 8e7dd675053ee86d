package index

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"

	"github.com/driftstore/driftstore/cas"
)

// ProblemKind names one kind of inconsistency fsck finds.
type ProblemKind string

const (
	ChunkCorrupt          ProblemKind = "chunk-corrupt"           // stored bytes fail verification
	ChunkUnreadable       ProblemKind = "chunk-unreadable"        // the store could not read it
	ChunkMissing          ProblemKind = "chunk-missing"           // recorded, but not in the store
	ChunkRecordMismatch   ProblemKind = "chunk-record-mismatch"   // record and store disagree on size or codec
	ChunkRecordCorrupt    ProblemKind = "chunk-record-corrupt"    // a record that does not decode
	ManifestCorrupt       ProblemKind = "manifest-corrupt"        // bytes do not decode or do not hash to the ID
	ManifestMissingChunk  ProblemKind = "manifest-missing-chunk"  // names a chunk with no record
	ManifestChunkLength   ProblemKind = "manifest-chunk-length"   // chunk length differs from the record
	ManifestMissingParent ProblemKind = "manifest-missing-parent" // parent not in the index
	RefDangling           ProblemKind = "ref-dangling"            // ref names a missing manifest
	RefCorrupt            ProblemKind = "ref-corrupt"             // ref entry does not decode
	IndexPage             ProblemKind = "index-page"              // bbolt's own page check failed
)

// Problem is one inconsistency. Digest names the chunk or manifest concerned (zero when the
// problem has no digest), Manifest the manifest that refers to a chunk, Ref the ref concerned.
type Problem struct {
	Kind     ProblemKind `json:"kind"`
	Digest   cas.Digest  `json:"digest"`
	Manifest ID          `json:"manifest,omitzero"`
	Ref      string      `json:"ref,omitempty"`
	Detail   string      `json:"detail"`
}

func (p Problem) String() string {
	s := string(p.Kind)
	if !p.Digest.IsZero() {
		s += " " + p.Digest.String()
	}
	if !p.Manifest.IsZero() {
		s += " in manifest " + p.Manifest.String()
	}
	if p.Ref != "" {
		s += " ref " + p.Ref
	}
	return s + ": " + p.Detail
}

// FsckResult is what Fsck checked and found. Unrecorded chunks are garbage an interrupted writer
// left (GC removes them), not problems.
type FsckResult struct {
	Chunks     int       `json:"chunks"`     // chunks in the store, each re-hashed
	Bytes      int64     `json:"bytes"`      // their uncompressed bytes
	Records    int       `json:"records"`    // chunk records in the index
	Manifests  int       `json:"manifests"`  // manifests checked
	Refs       int       `json:"refs"`       // refs checked
	Unrecorded int       `json:"unrecorded"` // store chunks without a record (garbage)
	Problems   []Problem `json:"problems"`   // every inconsistency found
}

// OK reports whether no problem was found.
func (r *FsckResult) OK() bool { return len(r.Problems) == 0 }

// FsckOptions configure Fsck.
type FsckOptions struct {
	Workers int // chunks re-hashed at once; 0 means GOMAXPROCS
	// Progress, when set, is called with the uncompressed bytes re-hashed so far and the total,
	// from any goroutine, possibly concurrently.
	Progress func(done, total int64)
}

// Fsck checks the store and the index against each other: it re-hashes every chunk in the store
// (through Get, which verifies), compares chunk records with the store both ways, decodes every
// manifest and checks its ID, that every chunk it names is recorded with a matching size and
// that its parent exists, and that every ref names a manifest; it also runs bbolt's page check.
// Problems are listed in the result; the error is for failures to check at all (or ctx). Fsck
// holds HoldGC, so garbage collection cannot run meanwhile; writers may.
func (ix *Index) Fsck(ctx context.Context, opts FsckOptions) (*FsckResult, error) {
	release := ix.HoldGC()
	defer release()
	res := &FsckResult{}
	var mu sync.Mutex // guards res.Problems while workers run
	add := func(p Problem) {
		mu.Lock()
		res.Problems = append(res.Problems, p)
		mu.Unlock()
	}

	if err := ix.Check(); err != nil {
		add(Problem{Kind: IndexPage, Detail: err.Error()})
	}

	// 1. Snapshot the index (records first: a record implies its chunk was already stored).
	records := make(map[cas.Digest]ChunkRecord)
	err := ix.view(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			d, ok := digestKey(k)
			if !ok {
				add(Problem{Kind: ChunkRecordCorrupt, Detail: fmt.Sprintf("key %x is not a digest", k)})
				return nil
			}
			r, err := decodeChunkRecord(d, v)
			if err != nil {
				add(Problem{Kind: ChunkRecordCorrupt, Digest: d, Detail: err.Error()})
				return nil
			}
			records[d] = r
			return nil
		}); err != nil {
			return err
		}
		res.Records = len(records)
		mb := tx.Bucket(bucketManifests)
		if err := mb.ForEach(func(k, v []byte) error {
			res.Manifests++
			id, ok := digestKey(k)
			if !ok {
				add(Problem{Kind: ManifestCorrupt, Detail: fmt.Sprintf("key %x is not an ID", k)})
				return nil
			}
			v, err := storedBytes(mb, v)
			if err != nil {
				add(Problem{Kind: ManifestCorrupt, Digest: id, Detail: err.Error()})
				return nil
			}
			if sum := cas.Sum(v); sum != id {
				add(Problem{Kind: ManifestCorrupt, Digest: id, Detail: "stored bytes hash to " + sum.String()})
				return nil
			}
			m, err := Decode(v)
			if err != nil {
				add(Problem{Kind: ManifestCorrupt, Digest: id, Detail: err.Error()})
				return nil
			}
			if !m.Parent.IsZero() && mb.Get(m.Parent[:]) == nil {
				add(Problem{Kind: ManifestMissingParent, Digest: m.Parent, Manifest: id, Detail: "parent manifest not found"})
			}
			for _, r := range m.Regions {
				for i, c := range r.Chunks {
					rec, ok := records[c.Digest]
					switch {
					case !ok:
						add(Problem{Kind: ManifestMissingChunk, Digest: c.Digest, Manifest: id,
							Detail: fmt.Sprintf("region %q chunk %d has no record", r.Name, i)})
					case rec.Size != c.Length:
						add(Problem{Kind: ManifestChunkLength, Digest: c.Digest, Manifest: id,
							Detail: fmt.Sprintf("region %q chunk %d: length %d, recorded size %d", r.Name, i, c.Length, rec.Size)})
					}
				}
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
			res.Refs++
			r, err := decodeRef(k, v)
			if err != nil {
				add(Problem{Kind: RefCorrupt, Ref: fmt.Sprintf("%q", trunc(string(k))), Detail: err.Error()})
				return nil
			}
			if mb.Get(r.Target[:]) == nil {
				add(Problem{Kind: RefDangling, Digest: r.Target, Ref: r.Kind.String() + " " + r.Name, Detail: "names a missing manifest"})
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("fsck: read index: %w", err)
	}

	// 2. Walk the store; compare with the records.
	var infos []cas.Info
	var total int64
	inStore := make(map[cas.Digest]struct{})
	if err := ix.store.Walk(ctx, func(in cas.Info) error {
		infos = append(infos, in)
		inStore[in.Digest] = struct{}{}
		total += in.Size
		return nil
	}); err != nil {
		return nil, fmt.Errorf("fsck: walk store: %w", err)
	}
	res.Chunks = len(infos)
	for _, in := range infos {
		rec, ok := records[in.Digest]
		if !ok {
			res.Unrecorded++
			continue
		}
		if rec.Size != in.Size || rec.StoredSize != in.StoredSize || rec.Codec != in.Codec {
			add(Problem{Kind: ChunkRecordMismatch, Digest: in.Digest, Detail: fmt.Sprintf(
				"record: size %d, stored %d, codec %d; store: size %d, stored %d, codec %d",
				rec.Size, rec.StoredSize, rec.Codec, in.Size, in.StoredSize, in.Codec)})
		}
	}
	for d := range records {
		if _, ok := inStore[d]; !ok {
			add(Problem{Kind: ChunkMissing, Digest: d, Detail: "recorded but not in the chunk store"})
		}
	}

	// 3. Re-hash every stored chunk, in parallel.
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var done atomic.Int64
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			var buf []byte
			for {
				i := int(next.Add(1) - 1)
				if i >= len(infos) {
					return nil
				}
				if err := gctx.Err(); err != nil {
					return err
				}
				in := infos[i]
				if int64(cap(buf)) < in.Size && in.Size <= MaxChunkLength {
					buf = make([]byte, 0, in.Size)
				}
				_, err := ix.store.Get(gctx, in.Digest, buf)
				var ce *cas.CorruptError
				switch {
				case err == nil:
				case errors.As(err, &ce):
					add(Problem{Kind: ChunkCorrupt, Digest: in.Digest, Detail: ce.Reason})
				case errors.Is(err, cas.ErrNotFound):
					// Deleted since the walk (GC is excluded, so a concurrent repair): a missing
					// recorded chunk is reported above if it was recorded.
				case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
					return err
				default:
					add(Problem{Kind: ChunkUnreadable, Digest: in.Digest, Detail: err.Error()})
				}
				n := done.Add(in.Size)
				if opts.Progress != nil {
					opts.Progress(n, total)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("fsck: %w", err)
	}
	res.Bytes = total
	sortProblems(res.Problems)
	return res, nil
}

func sortProblems(ps []Problem) {
	// Deterministic output: by kind, then digest, then detail.
	less := func(a, b Problem) bool {
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Digest != b.Digest {
			return string(a.Digest[:]) < string(b.Digest[:])
		}
		return a.Detail < b.Detail
	}
	sort.Slice(ps, func(i, j int) bool { return less(ps[i], ps[j]) })
}
