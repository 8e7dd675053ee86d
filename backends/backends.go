// Package backends chooses the compute backend of every command that runs a model:
// --backend auto|cpu|cuda|metal.
//
//   - cpu: the portable CPU kernels (engine.CPU).
//   - cuda: an NVIDIA GPU through the CUDA driver, loaded at run time (Linux).
//   - metal: the Apple GPU through Metal, zero-copy over unified memory (macOS on Apple Silicon).
//   - auto (the default): CUDA when a driver and a device work, else Metal when it works, else
//     the CPU. The Selected value says which was chosen and why.
//
// A backend named explicitly that cannot be used is an error that says why; it never falls
// back to another backend silently.
package backends

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/driftstore/driftstore/cuda"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/metal"
)

// Backend names.
const (
	Auto  = "auto"
	CPU   = "cpu"
	CUDA  = "cuda"
	Metal = "metal"
)

// Names lists the accepted --backend values.
var Names = []string{Auto, CPU, CUDA, Metal}

// Usage is the help text of --backend.
const Usage = "compute backend: auto (CUDA if a driver and GPU work, else Metal on Apple Silicon, else CPU), cpu, cuda or metal"

// ErrUnknown is returned (wrapped) for a backend name that is not one of Names.
var ErrUnknown = errors.New("backends: unknown backend")

// Options configures the GPU backends.
type Options struct {
	// CUDA configures the CUDA backend (GPU ordinal, KV placement).
	CUDA cuda.BackendOptions
}

// Selected is an opened backend. Pass Backend to engine.Options; Close it after every engine
// that uses it.
type Selected struct {
	Backend engine.Backend
	// Reason says why this backend: "requested", or for auto the device chosen or why each
	// GPU backend was passed over.
	Reason string
	close  func() error
}

// Name is the backend's name: "cpu", "cuda" or "metal".
func (s *Selected) Name() string { return s.Backend.Name() }

// String is "NAME (REASON)", for logs.
func (s *Selected) String() string { return fmt.Sprintf("%s (%s)", s.Name(), s.Reason) }

// Close releases the device (nothing for the CPU). Idempotent.
func (s *Selected) Close() error {
	if s == nil || s.close == nil {
		return nil
	}
	c := s.close
	s.close = nil
	return c()
}

// Check reports whether name is an accepted --backend value ("" counts as auto); commands call
// it to turn a bad value into a usage error before opening anything.
func Check(name string) error {
	switch name {
	case "", Auto, CPU, CUDA, Metal:
		return nil
	}
	return fmt.Errorf("%w %q: want one of %s", ErrUnknown, name, strings.Join(Names, ", "))
}

// Flag registers --backend (default auto) on fs with the shared help text.
func Flag(fs *flag.FlagSet) *string {
	return fs.String("backend", Auto, Usage)
}

// FlagVar registers --backend (default auto) into p, for flag structs registered through an
// interface (a *flag.FlagSet satisfies it).
func FlagVar(fs interface {
	StringVar(p *string, name, value, usage string)
}, p *string) {
	fs.StringVar(p, "backend", Auto, Usage)
}

// Open opens the named backend ("" means auto). For cuda and metal, the error says why the
// backend cannot be used and wraps cuda.ErrUnavailable or metal.ErrUnavailable where that is
// the cause; auto falls back to the CPU only after trying each GPU backend, and says why in
// Reason.
func Open(name string, opts Options) (*Selected, error) {
	if err := Check(name); err != nil {
		return nil, err
	}
	switch name {
	case CPU:
		return &Selected{Backend: engine.CPU(), Reason: "requested"}, nil
	case CUDA:
		s, err := openCUDA(opts)
		if err != nil {
			return nil, fmt.Errorf("backends: --backend cuda: %w", err)
		}
		s.Reason = "requested; " + s.Reason
		return s, nil
	case Metal:
		s, err := openMetal()
		if err != nil {
			return nil, fmt.Errorf("backends: --backend metal: %w", err)
		}
		s.Reason = "requested; " + s.Reason
		return s, nil
	}
	var why []string
	s, err := openCUDA(opts)
	if err == nil {
		s.Reason = "auto: " + s.Reason
		return s, nil
	}
	why = append(why, short(err))
	s, err = openMetal()
	if err == nil {
		s.Reason = "auto: " + s.Reason
		return s, nil
	}
	why = append(why, short(err))
	return &Selected{Backend: engine.CPU(), Reason: "auto: no GPU backend works here (" + strings.Join(why, "; ") + ")"}, nil
}

func openCUDA(opts Options) (*Selected, error) {
	b, err := cuda.NewBackend(opts.CUDA)
	if err != nil {
		return nil, err
	}
	i := b.Device().Info()
	return &Selected{Backend: b, Reason: fmt.Sprintf("CUDA device %d: %s", i.Ordinal, i.Name), close: b.Close}, nil
}

func openMetal() (*Selected, error) {
	b, err := metal.NewBackend()
	if err != nil {
		return nil, err
	}
	return &Selected{Backend: b, Reason: "Metal device " + b.Device(), close: b.Close}, nil
}

// short keeps the first line of an error, bounded, for Reason.
func short(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 200 {
		cut := 200
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut-- // never split a character: Reason goes into JSON and logs
		}
		s = s[:cut] + "…"
	}
	return s
}
