package progress

import (
	"bytes"
	"strings"
	"sync"
	"testing"
)

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.00 KiB", 1536: "1.50 KiB",
		10 << 20: "10.0 MiB", 300 << 30: "300 GiB", -2048: "-2.00 KiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestBarSilentOffTerminal(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "put", 100)
	b.Add(50)
	b.Finish()
	if buf.Len() != 0 {
		t.Fatalf("drew on a non-terminal: %q", buf.String())
	}
	var nilBar *Bar
	nilBar.Add(1)
	nilBar.Finish()
}

func TestBarDrawsWhenForced(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "put", 1000).Force()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Go(func() { b.Add(250) })
	}
	wg.Wait()
	b.Finish()
	b.Finish()
	out := buf.String()
	if !strings.Contains(out, "100%") || !strings.Contains(out, "1000 B/1000 B") || strings.Count(out, "\n") != 1 {
		t.Fatalf("final line: %q", out)
	}
	buf.Reset()
	u := New(&buf, "files", 0).Force().Units()
	u.Set(3, 0)
	u.Finish()
	if !strings.Contains(buf.String(), "files 3") {
		t.Fatalf("units line: %q", buf.String())
	}
}
