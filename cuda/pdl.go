package cuda

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Programmatic dependent launch (PDL), on compute capability 9.0 and newer.
//
// Inside a CUDA graph each kernel normally starts only once the kernel before it has finished
// and its memory has been flushed; the next kernel's launch and block dispatch then sit on the
// critical path (on an H100 a graph of empty kernels runs at 1.04 µs a kernel, 0.68 with PDL:
// BENCHMARKS.md), and a decode step is ≈ 130 kernels of ≈ 3-25 µs. With PDL the graph's edges are programmatic (cuGraphAddDependencies_v2,
// CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC from CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC): the next
// kernel may be launched while the one before still runs, once every block of that one has
// executed griddepcontrol.launch_dependents, and each of its threads then waits in
// griddepcontrol.wait until the kernel before has completed and its memory is visible.
//
// So every kernel must begin with griddepcontrol.wait: nothing it reads or writes may be
// touched before it. The kernels are compiled once, for compute_80 (so they run on Ampere too,
// where griddepcontrol does not exist); for a device of compute capability ≥ 9.0 pdlPTX adds,
// at load time, at the head of every entry (after its declarations, before its first
// instruction) the wait followed by launch_dependents, and raises the module's target to
// sm_90. The wait comes first, so a kernel's threads touch no memory before the kernel before
// has completed: the order and the results are those of a graph without PDL (bit for bit);
// what moves is only when the next kernel's blocks are made resident. launch_dependents
// right after the wait lets the next kernel in once every block of this one runs, never
// earlier, so waiting blocks never take a slot one of this kernel's blocks needs. Outside a
// programmatic dependency (kernels launched one by one, the first node of a graph)
// griddepcontrol.wait returns at once.
//
// DRIFTSTORE_CUDA_PDL=0 turns it off (the graphs' edges are then full dependencies and the
// PTX is loaded as committed).

// pdlOff reports whether DRIFTSTORE_CUDA_PDL=0 turned programmatic dependent launch off.
var pdlOff = os.Getenv("DRIFTSTORE_CUDA_PDL") == "0"

// pdlPTX returns ptx with griddepcontrol.wait and griddepcontrol.launch_dependents at the head
// of every .entry and its target raised to sm_90, and the number of entries changed. It
// refuses PTX it does not recognize (no .version ≥ 7.8, no single .target sm_NN, an entry whose
// body does not open with '{' on a line of its own) rather than guess; ptx is not modified.
func pdlPTX(ptx []byte) ([]byte, int, error) {
	lines := bytes.SplitAfter(ptx, []byte("\n"))
	var out bytes.Buffer
	out.Grow(len(ptx) + 128*bytes.Count(ptx, []byte(".entry ")))
	var version, target, entries int
	const (
		outside = iota
		header  // after ".entry", before the body's '{'
		decls   // in the body, before its first instruction
	)
	state := outside
	for _, l := range lines {
		t := bytes.TrimSpace(l)
		switch {
		case state == outside && bytes.HasPrefix(t, []byte(".version ")):
			maj, min, ok := bytes.Cut(bytes.TrimPrefix(t, []byte(".version ")), []byte("."))
			a, err1 := strconv.Atoi(string(maj))
			b, err2 := strconv.Atoi(string(min))
			if !ok || err1 != nil || err2 != nil {
				return nil, 0, fmt.Errorf("cuda: pdl: PTX %q: unknown version", t)
			}
			if a*10+b < 78 {
				return nil, 0, fmt.Errorf("cuda: pdl: PTX %q: griddepcontrol needs 7.8 or later", t)
			}
			version++
		case state == outside && bytes.HasPrefix(t, []byte(".target sm_")):
			n, err := strconv.Atoi(string(bytes.TrimPrefix(t, []byte(".target sm_"))))
			if err != nil {
				return nil, 0, fmt.Errorf("cuda: pdl: PTX %q: unknown target", t)
			}
			target++
			if n < 90 {
				out.WriteString(".target sm_90\n")
				continue
			}
		case state == outside && bytes.Contains(t, []byte(".entry ")):
			state = header
		case state == header && bytes.Equal(t, []byte("{")):
			state = decls
		case state == header && len(t) > 0 && t[0] != '.' && t[0] != ')' && !bytes.HasPrefix(t, []byte("//")):
			return nil, 0, fmt.Errorf("cuda: pdl: PTX entry header line %q", t)
		case state == decls && len(t) > 0 && t[0] != '.' && !bytes.HasPrefix(t, []byte("//")):
			out.WriteString("\tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n")
			entries++
			state = outside
		}
		out.Write(l)
	}
	if version != 1 || target != 1 {
		return nil, 0, fmt.Errorf("cuda: pdl: PTX with %d .version and %d .target sm_NN lines, want one each", version, target)
	}
	if state != outside {
		return nil, 0, fmt.Errorf("cuda: pdl: PTX ends inside an entry")
	}
	return out.Bytes(), entries, nil
}
