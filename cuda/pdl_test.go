package cuda

import (
	"bytes"
	"strings"
	"testing"
)

// TestPDLPTX checks pdlPTX on the committed kernels: every entry gains griddepcontrol.wait then
// griddepcontrol.launch_dependents before its first instruction (after its declarations only),
// the target becomes sm_90, and nothing else changes. Needs no GPU.
func TestPDLPTX(t *testing.T) {
	out, n, err := pdlPTX(kernelsPTX)
	if err != nil {
		t.Fatal(err)
	}
	if want := bytes.Count(kernelsPTX, []byte(".entry ")); n != want || want == 0 {
		t.Fatalf("%d entries changed, the PTX has %d", n, want)
	}
	const ins = "\tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n"
	if c := strings.Count(string(out), ins); c != n {
		t.Fatalf("%d insertions for %d entries", c, n)
	}
	// Undone, the PTX is the input byte for byte.
	back := strings.ReplaceAll(string(out), ins, "")
	back = strings.Replace(back, ".target sm_90\n", ".target sm_80\n", 1)
	if back != string(kernelsPTX) {
		t.Fatal("pdlPTX changed more than the target and the insertions")
	}
	// Each insertion opens its entry's body: between the '{' and it only declarations,
	// comments and blank lines.
	for _, ent := range strings.Split(string(out), ".entry ")[1:] {
		name, _, _ := strings.Cut(ent, "(")
		_, body, ok := strings.Cut(ent, "\n{\n")
		head, _, ok2 := strings.Cut(body, ins)
		if !ok || !ok2 {
			t.Fatalf("entry %s: no body or no insertion", name)
		}
		for _, l := range strings.Split(head, "\n") {
			if l = strings.TrimSpace(l); l != "" && l[0] != '.' && !strings.HasPrefix(l, "//") {
				t.Fatalf("entry %s: instruction %q before griddepcontrol.wait", name, l)
			}
		}
	}
}

// TestPDLPTXRefuses: PTX that pdlPTX does not recognize is refused, not guessed at.
func TestPDLPTXRefuses(t *testing.T) {
	const entry = ".visible .entry k(\n\t.param .u64 k_param_0\n)\n{\n\t.reg .b32 %r<2>;\n\tret;\n}\n"
	for _, c := range []struct{ name, ptx string }{
		{"no version", ".target sm_80\n" + entry},
		{"old version", ".version 7.7\n.target sm_80\n" + entry},
		{"bad version", ".version x.y\n.target sm_80\n" + entry},
		{"no target", ".version 9.0\n" + entry},
		{"two targets", ".version 9.0\n.target sm_80\n.target sm_86\n" + entry},
		{"bad target", ".version 9.0\n.target sm_8x\n" + entry},
		{"no body", ".version 9.0\n.target sm_80\n.visible .entry k(\n)\nret;\n"},
		{"unterminated", ".version 9.0\n.target sm_80\n.visible .entry k(\n)\n{\n\t.reg .b32 %r<2>;\n"},
	} {
		if _, _, err := pdlPTX([]byte(c.ptx)); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	out, n, err := pdlPTX([]byte(".version 9.0\n.target sm_80\n" + entry))
	if err != nil || n != 1 || !strings.Contains(string(out), ".target sm_90\n") {
		t.Fatalf("minimal PTX: %d entries, %v:\n%s", n, err, out)
	}
}
