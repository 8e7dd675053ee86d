// Package engine runs driftstore's WebAssembly guest (package guest) in wasmtime with the host
// ops that do the model's math, on linear memory allocated by wasmmem so that the compute
// backend works on the guest's bytes in place.
//
// An Engine holds the wasmtime engine, the compiled guest module (cached on disk), the host-op
// linker and the backend. A Model is a GGUF model whose weights the backend has loaded; it is
// shared by Instances. An Instance is one guest: a store, its linear memory (a wasmmem
// Region), its conversation state (inside that memory) and a backend executor.
//
// Concurrency: Engine and Model are safe for concurrent use; an Instance is not (one
// goroutine at a time), but distinct instances run in parallel.
package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/zeebo/blake3"

	"github.com/driftstore/driftstore/guest"
	"github.com/driftstore/driftstore/wasmmem"
)

// Sentinel errors.
var (
	// ErrTrap: the guest trapped or a host op refused its arguments; the instance is dead
	// (every later call fails with this error too).
	ErrTrap = errors.New("guest trapped")
	// ErrGuest: the guest refused a request (bad state, bad tokens, context full); the
	// instance is still usable.
	ErrGuest = errors.New("guest error")
	// ErrClosed: the instance or engine was closed.
	ErrClosed = errors.New("closed")
)

// Options configures an Engine.
type Options struct {
	// CacheDir holds compiled guest modules (DATA/cache/modules). Empty: compile in memory
	// every time. Files there are native code that wasmtime maps and runs: the directory must
	// be writable only by the user.
	CacheDir string
	// Backend runs the host ops; nil means CPU().
	Backend Backend
	// Wasm is the guest module; nil means guest.Wasm. Tests use other modules.
	Wasm []byte
}

// ModuleLoad tells how the engine got its compiled guest module.
type ModuleLoad struct {
	FromCache bool          // deserialized from CacheDir rather than compiled
	Duration  time.Duration // compile (+ serialize and write) or deserialize time
	CachePath string        // the cache file, "" without a CacheDir
}

// Engine is a wasmtime engine with driftstore's memory creator, the compiled guest and the
// host-op linker. Close it after every Model and Instance made from it.
type Engine struct {
	wt      *wasmtime.Engine
	creator *wasmmem.Creator
	linker  *wasmtime.Linker
	module  *wasmtime.Module
	backend Backend
	load    ModuleLoad
	guestFP [32]byte

	mu     sync.Mutex
	closed bool
}

// configDesc names every engine setting that changes compiled code; it is part of the module
// cache key.
const configDesc = "wasmmem-creator;cow=off;cranelift-default;v1"

// New builds an engine: installs the wasmmem creator, loads the compiled guest from the cache
// (or compiles and caches it) and defines the host ops.
func New(opts Options) (*Engine, error) {
	b := opts.Backend
	if b == nil {
		b = CPU()
	}
	wasm := opts.Wasm
	if wasm == nil {
		wasm = guest.Wasm
	}
	cfg := wasmtime.NewConfig()
	creator := wasmmem.NewCreator(wasmmem.Options{})
	creator.Install(cfg)
	if h := b.RegionHook(); h != nil {
		creator.SetHook(h)
	}
	wt := wasmtime.NewEngineWithConfig(cfg)
	e := &Engine{wt: wt, creator: creator, backend: b, guestFP: blake3.Sum256(wasm)}
	if err := e.loadModule(wasm, opts.CacheDir); err != nil {
		wt.Close()
		return nil, err
	}
	l, err := newLinker(wt)
	if err != nil {
		e.module.Close()
		wt.Close()
		return nil, err
	}
	e.linker = l
	return e, nil
}

// ModuleLoad reports how the compiled module was obtained (cold compile or warm cache).
func (e *Engine) ModuleLoad() ModuleLoad { return e.load }

// GuestFingerprint is the BLAKE3-256 of the guest module the engine runs (guest.Fingerprint
// for the embedded guest): what a checkpoint records and a restore must match.
func (e *Engine) GuestFingerprint() [32]byte { return e.guestFP }

// Backend returns the engine's backend.
func (e *Engine) Backend() Backend { return e.backend }

// Creator returns the memory creator whose regions hold the instances' linear memories.
func (e *Engine) Creator() *wasmmem.Creator { return e.creator }

// Close releases the engine. Instances and models made from it must be closed first.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	e.linker.Close()
	e.module.Close()
	e.wt.Close()
	return nil
}

// wasmtimeVersion is the wasmtime-go module version linked in (part of the cache key).
func wasmtimeVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/bytecodealliance/wasmtime-go/v39" {
				if d.Replace != nil {
					return d.Path + "@" + d.Replace.Version + "=>" + d.Replace.Path
				}
				return d.Path + "@" + d.Version
			}
		}
	}
	return "github.com/bytecodealliance/wasmtime-go/v39@unknown"
}

// ModuleCacheKey is the hex BLAKE3 of the guest bytes, the wasmtime version and the engine
// configuration: the name of the compiled module in the cache directory.
func ModuleCacheKey(wasm []byte) string {
	h := blake3.New()
	h.Write([]byte("driftstore-module-cache-v2\x00"))
	h.Write(wasm)
	h.Write([]byte("\x00" + wasmtimeVersion() + "\x00" + configDesc))
	return fmt.Sprintf("%x", h.Sum(nil))
}

func (e *Engine) loadModule(wasm []byte, dir string) error {
	start := time.Now()
	if dir == "" {
		m, err := wasmtime.NewModule(e.wt, wasm)
		if err != nil {
			return fmt.Errorf("engine: compile guest: %w", err)
		}
		e.module = m
		e.load = ModuleLoad{Duration: time.Since(start)}
		return nil
	}
	path := filepath.Join(dir, ModuleCacheKey(wasm)+".cwasm")
	if m, ok := e.readCached(path); ok {
		e.module = m
		e.load = ModuleLoad{FromCache: true, Duration: time.Since(start), CachePath: path}
		return nil
	}
	// Missing, damaged or incompatible: compile and (re)place it.
	m, err := wasmtime.NewModule(e.wt, wasm)
	if err != nil {
		return fmt.Errorf("engine: compile guest: %w", err)
	}
	e.module = m
	ser, err := m.Serialize()
	if err == nil {
		sum := blake3.Sum256(ser)
		err = writeFileAtomic(path, append(ser, sum[:]...))
	}
	if err != nil {
		// The cache is an optimization: run without it.
		path = ""
	}
	e.load = ModuleLoad{Duration: time.Since(start), CachePath: path}
	return nil
}

// readCached loads a cache file: wasmtime's serialized module followed by the BLAKE3-256 of
// those bytes. The file is read into memory and verified before wasmtime sees it (wasmtime's
// own header check does not cover the code, and deserializing from a mapping would fault if
// the file were truncated underneath), so a damaged file is merely a miss.
func (e *Engine) readCached(path string) (*wasmtime.Module, bool) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 32 {
		return nil, false
	}
	ser, sum := b[:len(b)-32], b[len(b)-32:]
	if blake3.Sum256(ser) != [32]byte(sum) {
		return nil, false
	}
	m, err := wasmtime.NewModuleDeserialize(e.wt, ser)
	if err != nil {
		return nil, false
	}
	return m, true
}

// writeFileAtomic writes data to path through a synced temporary file and a rename, so
// readers see the old file, no file, or the whole new one. Concurrent writers are safe: the
// last rename wins and every candidate holds the same bytes.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
