package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"

	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

// The storage commands against a daemon (driftstore --server URL put|get|ls|inspect|gc|fsck):
// the same operations as *repo.Repo, with the same result types, over the HTTP API.

// Catalog lists the daemon's manifests as repo.Repo.List does.
func (c *Client) Catalog(ctx context.Context) ([]repo.Entry, error) {
	var out []repo.Entry
	return out, c.getJSON(ctx, "/v1/catalog", &out)
}

// Resolve turns a full ID, tag or unique ID prefix into a manifest ID, as repo.Repo.Resolve.
func (c *Client) Resolve(ctx context.Context, name string) (index.ID, error) {
	var out struct {
		ID index.ID `json:"id"`
	}
	err := c.getJSON(ctx, "/v1/resolve?name="+url.QueryEscape(name), &out)
	return out.ID, err
}

// Inspect describes manifest id as repo.Repo.Inspect does, Manifest included.
func (c *Client) Inspect(ctx context.Context, id index.ID) (*repo.Inspection, error) {
	var in repo.Inspection
	if err := c.getJSON(ctx, wire.PathManifests+id.String()+"/inspect", &in); err != nil {
		return nil, err
	}
	m, err := c.Manifest(ctx, id)
	if err != nil {
		return nil, err
	}
	in.Manifest = m
	return &in, nil
}

// GC runs garbage collection on the daemon.
func (c *Client) GC(ctx context.Context, opts index.GCOptions) (repo.GCResult, error) {
	var out repo.GCResult
	err := c.sendJSON(ctx, http.MethodPost, "/v1/gc", wire.GCRequest{Grace: opts.Grace, DryRun: opts.DryRun}, &out, false)
	return out, err
}

// Fsck runs fsck on the daemon. Progress is not reported remotely.
func (c *Client) Fsck(ctx context.Context, opts index.FsckOptions) (*index.FsckResult, error) {
	var out index.FsckResult
	if err := c.sendJSON(ctx, http.MethodPost, "/v1/fsck", wire.FsckRequest{Workers: opts.Workers}, &out, false); err != nil {
		return nil, err
	}
	return &out, nil
}

// Get writes the content of manifest id to w, as repo.Repo.Get: one region (opts.Region) or
// all, concatenated. Chunks are fetched opts.Workers at a time (default 8), each verified
// against its digest, and written in order.
func (c *Client) Get(ctx context.Context, id index.ID, w io.Writer, opts repo.GetOptions) (int64, error) {
	m, err := c.Manifest(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", id, err)
	}
	var refs []index.ChunkRef
	found := opts.Region == ""
	for _, r := range m.Regions {
		if opts.Region == "" || r.Name == opts.Region {
			refs = append(refs, r.Chunks...)
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("get %s: %w: %q", id, repo.ErrNoSuchRegion, opts.Region)
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = 8
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		b   []byte
		err error
	}
	// A window of at most 2×workers chunks in flight or waiting to be written.
	slots := make(chan chan result, 2*workers)
	sem := make(chan struct{}, workers)
	go func() {
		defer close(slots)
		for _, ref := range refs {
			ch := make(chan result, 1)
			select {
			case slots <- ch:
			case <-ctx.Done():
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				ch <- result{err: ctx.Err()}
				return
			}
			go func(ref index.ChunkRef) {
				defer func() { <-sem }()
				b, err := c.GetChunk(ctx, ref.Digest, make([]byte, 0, ref.Length))
				if err == nil && int64(len(b)) != ref.Length {
					err = fmt.Errorf("chunk %s: %d bytes, the manifest says %d", ref.Digest, len(b), ref.Length)
				}
				ch <- result{b, err}
			}(ref)
		}
	}()
	var n int64
	for ch := range slots {
		r := <-ch
		if r.err != nil {
			return n, fmt.Errorf("get %s: %w", id, r.err)
		}
		k, err := w.Write(r.b)
		n += int64(k)
		if err != nil {
			return n, fmt.Errorf("get %s: %w", id, err)
		}
		if opts.Progress != nil {
			opts.Progress(int64(k))
		}
	}
	return n, ctx.Err()
}

// GetFile writes manifest id's content to path atomically, as repo.Repo.GetFile.
func (c *Client) GetFile(ctx context.Context, id index.ID, path string, opts repo.GetOptions) (int64, error) {
	return repo.WriteFile(path, func(w io.Writer) (int64, error) { return c.Get(ctx, id, w, opts) })
}

// PutFiles stores files on the daemon as one manifest, as repo.Repo.PutFiles does, sending
// only the chunks the daemon lacks: the files are chunked and compressed here, into a
// temporary data directory (removed afterwards), exactly as a local put would, so the manifest
// and its ID are the same; then the missing chunks and the manifest are uploaded and, with
// opts.Tag, the tag is moved. In the result, UniqueNew and NewBytes count what the daemon did
// not have (what was sent).
func (c *Client) PutFiles(ctx context.Context, paths []string, opts repo.PutOptions) (repo.PutResult, error) {
	tmp, err := os.MkdirTemp("", "driftstore-put-")
	if err != nil {
		return repo.PutResult{}, err
	}
	defer os.RemoveAll(tmp)
	r, err := repo.Open(tmp, repo.Options{NoSync: true})
	if err != nil {
		return repo.PutResult{}, err
	}
	defer r.Close()
	tag := opts.Tag
	opts.Tag = ""
	if !opts.Parent.IsZero() {
		return repo.PutResult{}, fmt.Errorf("put through a daemon: a parent manifest is not supported")
	}
	res, err := r.PutFiles(ctx, paths, opts)
	if err != nil {
		return res, err
	}
	st, err := CopyManifest(ctx, NewLocal(r.Index()), c, res.ID, Options{})
	if err != nil {
		return res, fmt.Errorf("upload %s: %w", res.ID, err)
	}
	res.UniqueNew, res.NewBytes = st.ChunksSent, st.Bytes
	if tag != "" {
		if err := c.moveTag(ctx, tag, res.ID); err != nil {
			return res, err
		}
	}
	return res, nil
}

// moveTag points tag at id wherever it points now (as a local put --tag does), with
// compare-and-swap so that a concurrent change is not silently lost.
func (c *Client) moveTag(ctx context.Context, tag string, id index.ID) error {
	cur, err := c.Ref(ctx, index.RefTag, tag)
	if err != nil && !errors.Is(err, index.ErrRefNotFound) {
		return err
	}
	if cur == id {
		return nil
	}
	return c.CompareAndSwapRef(ctx, index.RefTag, tag, cur, id)
}
