//go:build !(darwin && arm64 && cgo)

package metal

import (
	"fmt"
	"runtime"

	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/wasmmem"
)

func unavailable() error {
	if runtime.GOOS == "darwin" && runtime.GOARCH == "arm64" {
		return fmt.Errorf("%w: this driftstore was built without cgo (CGO_ENABLED=0); Metal needs cgo", ErrUnavailable)
	}
	return fmt.Errorf("%w: Metal needs macOS on Apple Silicon (darwin/arm64); this build is %s/%s", ErrUnavailable, runtime.GOOS, runtime.GOARCH)
}

// Available reports whether this machine has a Metal device: never, in this build.
func Available() bool { return false }

// Backend is the Metal backend; this build has none, so no value of it is ever made.
type Backend struct{}

var _ engine.Backend = (*Backend)(nil)

// NewBackend returns an error wrapping ErrUnavailable that says why.
func NewBackend() (*Backend, error) { return nil, unavailable() }

// Name is "metal".
func (*Backend) Name() string { return "metal" }

// Device is empty: there is no device.
func (*Backend) Device() string { return "" }

// Wrapped reports no wrapped bytes.
func (*Backend) Wrapped() (regions, weights int64) { return 0, 0 }

// Load fails: there is no device.
func (*Backend) Load(*engine.Tensors) (engine.Weights, error) { return nil, unavailable() }

// RegionHook is nil.
func (*Backend) RegionHook() wasmmem.Hook { return nil }

// Close does nothing.
func (*Backend) Close() error { return nil }
