package main

import (
	"github.com/driftstore/driftstore/backends"
	"github.com/driftstore/driftstore/engine"
)

// runEngine is an engine together with the compute backend it runs on; Close closes both, the
// engine first.
type runEngine struct {
	*engine.Engine
	sel *backends.Selected
}

// Close closes the engine, then releases the backend's device.
func (r *runEngine) Close() error {
	err := r.Engine.Close()
	if cerr := r.sel.Close(); err == nil {
		err = cerr
	}
	return err
}

// Reason says why this backend was chosen ("requested", or what auto found).
func (r *runEngine) Reason() string { return r.sel.Reason }

// newEngine opens the backend named by --backend ("auto" picks a GPU when one works) and an
// engine over it whose compiled-module cache lives in cacheDir. A backend named explicitly that
// cannot be used is an error saying why; there is no silent fallback. When auto chose, the
// choice and its reason go to stderr.
func (c *cli) newEngine(backend, cacheDir string) (*runEngine, error) {
	if err := backends.Check(backend); err != nil {
		return nil, usageError("--backend: %v", err)
	}
	sel, err := backends.Open(backend, backends.Options{})
	if err != nil {
		return nil, err
	}
	if (backend == "" || backend == backends.Auto) && !c.globals.json {
		if sel.Name() == backends.CPU {
			// The full reason lists each GPU backend's error; --backend NAME shows it.
			c.logf("backend: cpu (auto: no GPU backend works here; --backend cuda or metal says why)\n")
		} else {
			c.logf("backend: %s\n", sel)
		}
	}
	e, err := engine.New(engine.Options{Backend: sel.Backend, CacheDir: cacheDir})
	if err != nil {
		sel.Close()
		return nil, err
	}
	return &runEngine{Engine: e, sel: sel}, nil
}
