package backends

import (
	"bytes"
	"errors"
	"flag"
	"math"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/driftstore/driftstore/cuda"
	"github.com/driftstore/driftstore/engine"
	"github.com/driftstore/driftstore/metal"
)

// gpus reports which GPU backends this machine should give: CUDA where the driver loads and
// sees a device, Metal where the build and the machine have it.
func gpus() (hasCUDA, hasMetal bool) {
	return cuda.Available() == nil, metal.Available()
}

func TestCPU(t *testing.T) {
	s, err := Open(CPU, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Name() != "cpu" || s.Reason != "requested" || s.Backend.Name() != "cpu" {
		t.Fatalf("--backend cpu gave %v", s)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestUnknownNames(t *testing.T) {
	for _, name := range []string{"gpu", "CPU", "Metal", " cuda", "auto,cpu"} {
		if err := Check(name); !errors.Is(err, ErrUnknown) {
			t.Errorf("Check(%q) = %v, want ErrUnknown", name, err)
		}
		s, err := Open(name, Options{})
		if !errors.Is(err, ErrUnknown) || s != nil {
			t.Errorf("Open(%q) = %v, %v; want ErrUnknown", name, s, err)
			continue
		}
		for _, n := range Names {
			if !strings.Contains(err.Error(), n) {
				t.Errorf("error %q does not list %q", err, n)
			}
		}
	}
	for _, name := range append([]string{""}, Names...) {
		if err := Check(name); err != nil {
			t.Errorf("Check(%q) = %v", name, err)
		}
	}
}

// TestExplicitGPU: --backend cuda and --backend metal open their GPU where there is one, and
// otherwise fail with an error saying why (never a silent CPU fallback).
func TestExplicitGPU(t *testing.T) {
	hasCUDA, hasMetal := gpus()
	s, err := Open(CUDA, Options{})
	switch {
	case hasCUDA && err != nil:
		t.Errorf("--backend cuda with a CUDA device: %v", err)
	case hasCUDA:
		if s.Name() != "cuda" || !strings.HasPrefix(s.Reason, "requested; CUDA device") {
			t.Errorf("--backend cuda gave %v", s)
		}
		s.Close()
	case err == nil:
		s.Close()
		t.Errorf("--backend cuda without a CUDA device gave %v", s)
	case !errors.Is(err, cuda.ErrUnavailable) || !strings.Contains(err.Error(), "--backend cuda"):
		t.Errorf("--backend cuda without a CUDA device: error %q does not wrap cuda.ErrUnavailable or name the flag", err)
	default:
		t.Logf("--backend cuda here: %v", err)
	}

	s, err = Open(Metal, Options{})
	switch {
	case hasMetal && err != nil:
		t.Errorf("--backend metal with a Metal device: %v", err)
	case hasMetal:
		if s.Name() != "metal" || !strings.HasPrefix(s.Reason, "requested; Metal device") {
			t.Errorf("--backend metal gave %v", s)
		}
		s.Close()
	case err == nil:
		s.Close()
		t.Errorf("--backend metal without Metal gave %v", s)
	case !errors.Is(err, metal.ErrUnavailable) || !strings.Contains(err.Error(), "--backend metal"):
		t.Errorf("--backend metal without Metal: error %q does not wrap metal.ErrUnavailable or name the flag", err)
	default:
		if runtime.GOOS != "darwin" && !strings.Contains(err.Error(), "macOS on Apple Silicon") {
			t.Errorf("--backend metal on %s: error %q does not say Metal needs macOS on Apple Silicon", runtime.GOOS, err)
		}
		t.Logf("--backend metal here: %v", err)
	}
}

// TestAuto: auto takes CUDA, else Metal, else the CPU, and says why.
func TestAuto(t *testing.T) {
	hasCUDA, hasMetal := gpus()
	want := CPU
	if hasCUDA {
		want = CUDA
	} else if hasMetal {
		want = Metal
	}
	for _, name := range []string{Auto, ""} {
		s, err := Open(name, Options{})
		if err != nil {
			t.Fatalf("Open(%q): %v", name, err)
		}
		t.Logf("Open(%q): %v", name, s)
		if s.Name() != want {
			t.Errorf("Open(%q) chose %s, want %s", name, s.Name(), want)
		}
		if !strings.HasPrefix(s.Reason, "auto: ") {
			t.Errorf("reason %q does not say auto chose", s.Reason)
		}
		if want == CPU && !(strings.Contains(s.Reason, "cuda") && strings.Contains(s.Reason, "metal")) {
			t.Errorf("reason %q does not say why CUDA and Metal were passed over", s.Reason)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}
}

// TestSelectedRunsModel: the backend auto chooses runs the built-in tiny model through the
// engine.
func TestSelectedRunsModel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a model run")
	}
	s, err := Open(Auto, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dir := t.TempDir()
	path, err := engine.BuiltinModelPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(engine.Options{Backend: s.Backend, CacheDir: engine.ModuleCacheDir(dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Backend().Name() != s.Name() {
		t.Fatalf("engine runs %s, selected %s", e.Backend().Name(), s.Name())
	}
	m, err := e.LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	in, err := m.NewInstance(engine.InstanceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := in.Prefill([]int32{1, 450, 4996, 17354}); err != nil {
		t.Fatal(err)
	}
	logits, err := in.Logits()
	if err != nil {
		t.Fatal(err)
	}
	var nonzero int
	for _, v := range logits {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("%s backend: non-finite logit %g", s.Name(), v)
		}
		if v != 0 {
			nonzero++
		}
	}
	if len(logits) != m.Hyper().Vocab || nonzero < len(logits)/2 {
		t.Fatalf("%s backend: %d logits, %d nonzero", s.Name(), len(logits), nonzero)
	}
}

func TestFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, Auto},
		{[]string{"--backend", "metal"}, Metal},
		{[]string{"-backend=cuda"}, CUDA},
	} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		p := Flag(fs)
		if err := fs.Parse(c.args); err != nil || *p != c.want {
			t.Errorf("%v: %q, %v; want %q", c.args, *p, err, c.want)
		}
	}
	var v string
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	FlagVar(fs, &v)
	if err := fs.Parse([]string{"--backend=cpu"}); err != nil || v != CPU {
		t.Errorf("FlagVar: %q, %v", v, err)
	}
	var help bytes.Buffer
	fs.SetOutput(&help)
	fs.PrintDefaults()
	for _, n := range Names {
		if !strings.Contains(help.String(), n) {
			t.Errorf("help %q does not mention %q", help.String(), n)
		}
	}
}

// TestShortKeepsUTF8: a long reason is cut at a character boundary, never inside one.
func TestShortKeepsUTF8(t *testing.T) {
	msg := strings.Repeat("a", 199) + strings.Repeat("é", 10) + "\nsecond line"
	got := short(errors.New(msg))
	if !utf8.ValidString(got) {
		t.Fatalf("short cut a character: %q", got)
	}
	if want := strings.Repeat("a", 199) + "…"; got != want {
		t.Fatalf("short = %q, want %q", got, want)
	}
	if got := short(errors.New("one\ntwo")); got != "one" {
		t.Fatalf("short kept %q, want the first line", got)
	}
}
