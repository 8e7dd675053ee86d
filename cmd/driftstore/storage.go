package main

import (
	"context"
	"io"

	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/replicate"
	"github.com/driftstore/driftstore/repo"
)

// storage is what the storage subcommands (put, get, ls, inspect, gc, fsck) need from a data
// directory. *repo.Repo provides it locally (localStorage); with --server a daemon provides it
// through the HTTP API (remoteStorage). Result types are repo's in both cases.
type storage interface {
	Dir() string // the data directory, or the daemon's URL
	List() ([]repo.Entry, error)
	Resolve(s string) (index.ID, error)
	Inspect(id index.ID) (*repo.Inspection, error)
	Get(ctx context.Context, id index.ID, w io.Writer, opts repo.GetOptions) (int64, error)
	GetFile(ctx context.Context, id index.ID, path string, opts repo.GetOptions) (int64, error)
	PutFiles(ctx context.Context, paths []string, opts repo.PutOptions) (repo.PutResult, error)
	GC(ctx context.Context, opts index.GCOptions) (repo.GCResult, error)
	Fsck(ctx context.Context, opts index.FsckOptions) (*index.FsckResult, error)
	Close() error
}

var (
	_ storage = (*repo.Repo)(nil)
	_ storage = remoteStorage{}
)

// openStorage opens the daemon named by --server, or else the data directory (see openRepo).
func (c *cli) openStorage(readOnly bool) (storage, error) {
	if c.globals.server != "" {
		cl, err := c.newClient(c.globals.server, c.globals.tokenFile)
		if err != nil {
			return nil, err
		}
		return remoteStorage{ctx: c.ctx, c: cl}, nil
	}
	return c.openRepo(readOnly)
}

// remoteStorage is a daemon as storage. Methods without a context use the command's.
type remoteStorage struct {
	ctx context.Context
	c   *replicate.Client
}

func (r remoteStorage) Dir() string                        { return r.c.URL() }
func (r remoteStorage) List() ([]repo.Entry, error)        { return r.c.Catalog(r.ctx) }
func (r remoteStorage) Resolve(s string) (index.ID, error) { return r.c.Resolve(r.ctx, s) }
func (r remoteStorage) Inspect(id index.ID) (*repo.Inspection, error) {
	return r.c.Inspect(r.ctx, id)
}
func (r remoteStorage) Get(ctx context.Context, id index.ID, w io.Writer, opts repo.GetOptions) (int64, error) {
	return r.c.Get(ctx, id, w, opts)
}
func (r remoteStorage) GetFile(ctx context.Context, id index.ID, path string, opts repo.GetOptions) (int64, error) {
	return r.c.GetFile(ctx, id, path, opts)
}
func (r remoteStorage) PutFiles(ctx context.Context, paths []string, opts repo.PutOptions) (repo.PutResult, error) {
	return r.c.PutFiles(ctx, paths, opts)
}
func (r remoteStorage) GC(ctx context.Context, opts index.GCOptions) (repo.GCResult, error) {
	return r.c.GC(ctx, opts)
}
func (r remoteStorage) Fsck(ctx context.Context, opts index.FsckOptions) (*index.FsckResult, error) {
	return r.c.Fsck(ctx, opts)
}
func (r remoteStorage) Close() error { return nil }
