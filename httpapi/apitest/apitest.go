// Package apitest runs real driftstore daemons for tests: each a data directory of its own
// (repo.Open), served by httpapi on a random port of 127.0.0.1, with real HTTP.
package apitest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi"
	"github.com/driftstore/driftstore/index"
	"github.com/driftstore/driftstore/repo"
)

// Daemon is one running server. Its fields are valid while it runs (between Start or Restart
// and Stop).
type Daemon struct {
	Dir    string
	Addr   string       // host:port
	URL    string       // http://host:port
	Repo   *repo.Repo   // nil for a daemon started with StartMemory
	Index  *index.Index // the served index
	Server *httpapi.Server
	Config httpapi.Config // as given to Start; Index is filled in on each start

	t      testing.TB
	done   chan error
	memory *cas.Memory // the chunk store of a StartMemory daemon, kept across restarts
	sync   bool        // StartSync: the data directory syncs
	closer closer      // closes what start opened
}

// Start opens dir and serves it on 127.0.0.1 with a random port. cfg.Index is set by Start.
// The daemon is stopped at the end of the test if still running.
func Start(t testing.TB, dir string, cfg httpapi.Config) *Daemon {
	t.Helper()
	d := &Daemon{Dir: dir, Config: cfg, t: t}
	d.start("127.0.0.1:0")
	t.Cleanup(func() {
		if d.Server != nil {
			d.Stop()
		}
	})
	return d
}

// StartMemory is Start with the chunks kept in memory (cas.Memory) and only the index on disk:
// for benchmarks of the transfer path without the chunk files' cost.
func StartMemory(t testing.TB, dir string, cfg httpapi.Config) *Daemon {
	t.Helper()
	d := &Daemon{Dir: dir, Config: cfg, t: t, memory: cas.NewMemory()}
	d.start("127.0.0.1:0")
	t.Cleanup(func() {
		if d.Server != nil {
			d.Stop()
		}
	})
	return d
}

// StartSync is Start with the data directory opened as a real daemon opens it: chunk files,
// directories and the index synced to disk (Start skips the syncs). For benchmarks of the
// durable write path.
func StartSync(t testing.TB, dir string, cfg httpapi.Config) *Daemon {
	t.Helper()
	d := &Daemon{Dir: dir, Config: cfg, t: t, sync: true}
	d.start("127.0.0.1:0")
	t.Cleanup(func() {
		if d.Server != nil {
			d.Stop()
		}
	})
	return d
}

// closer is the data directory of a running daemon.
type closer interface{ Close() error }

func (d *Daemon) start(addr string) {
	d.t.Helper()
	var c closer
	if d.memory != nil {
		ix, err := index.Open(filepath.Join(d.Dir, "index.db"), d.memory, index.Options{NoSync: true})
		if err != nil {
			d.t.Fatalf("open index in %s: %v", d.Dir, err)
		}
		d.Index, c = ix, ix
	} else {
		r, err := repo.Open(d.Dir, repo.Options{NoSync: !d.sync, LockTimeout: 2 * time.Second})
		if err != nil {
			d.t.Fatalf("open %s: %v", d.Dir, err)
		}
		d.Repo, d.Index, c = r, r.Index(), r
	}
	cfg := d.Config
	cfg.Index = d.Index
	cfg.Repo = d.Repo
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := httpapi.New(cfg)
	if err != nil {
		c.Close()
		d.t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond) // the old listener's port may still be closing
	}
	if err != nil {
		c.Close()
		d.t.Fatalf("listen %s: %v", addr, err)
	}
	d.Server, d.closer = srv, c
	d.Addr = ln.Addr().String()
	d.URL = "http://" + d.Addr
	d.done = make(chan error, 1)
	go func() { d.done <- srv.Serve(ln) }()
}

// Stop closes every connection at once (as a crash of the daemon would cut them), waits for
// the handlers to return and closes the data directory.
func (d *Daemon) Stop() {
	d.t.Helper()
	if d.Server == nil {
		return
	}
	if err := d.Server.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		d.t.Errorf("close server: %v", err)
	}
	if err := <-d.done; err != nil {
		d.t.Errorf("serve: %v", err)
	}
	if err := d.closer.Close(); err != nil {
		d.t.Errorf("close data directory: %v", err)
	}
	d.Server, d.Repo, d.Index = nil, nil, nil
}

// Shutdown stops the daemon gracefully (see httpapi.Server.Shutdown) and closes the data
// directory.
func (d *Daemon) Shutdown(ctx context.Context) error {
	err := d.Server.Shutdown(ctx)
	<-d.done
	d.closer.Close()
	d.Server, d.Repo, d.Index = nil, nil, nil
	return err
}

// Restart starts the daemon again on the same data directory and address.
func (d *Daemon) Restart() {
	d.t.Helper()
	d.start(d.Addr)
}
