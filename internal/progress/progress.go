// Package progress draws a one-line progress bar on a terminal, for long CLI operations.
//
// A Bar draws only when its writer is a terminal; otherwise every method is a cheap no-op, so
// callers create one unconditionally. A nil *Bar is valid and does nothing. All methods are safe
// for concurrent use: workers may call Add from any goroutine.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
)

// redrawEvery limits how often the line is redrawn.
const redrawEvery = 100 * time.Millisecond

// Bar is a progress bar for a count of bytes (or of anything, with Units).
type Bar struct {
	mu      sync.Mutex // guards every field below
	w       io.Writer
	label   string
	total   int64 // 0: unknown
	done    int64
	start   time.Time
	drawn   time.Time // last redraw
	enabled bool
	bytes   bool // format counts as bytes
	width   int  // length of the last line drawn, to blank it out
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}

// New returns a bar that counts bytes toward total (0 when unknown), labelled label, drawn on w
// only when w is a terminal.
func New(w io.Writer, label string, total int64) *Bar {
	return &Bar{w: w, label: label, total: total, start: time.Now(), enabled: IsTerminal(w), bytes: true}
}

// Force makes the bar draw even when its writer is not a terminal (for tests and for callers
// that know better). It returns b.
func (b *Bar) Force() *Bar {
	if b != nil {
		b.mu.Lock()
		b.enabled = true
		b.mu.Unlock()
	}
	return b
}

// Units makes the bar count plain items instead of bytes. It returns b.
func (b *Bar) Units() *Bar {
	if b != nil {
		b.mu.Lock()
		b.bytes = false
		b.mu.Unlock()
	}
	return b
}

// Add counts n more.
func (b *Bar) Add(n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done += n
	b.maybeDraw(false)
}

// Set sets the count done so far and, when total > 0, the total.
func (b *Bar) Set(done, total int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = done
	if total > 0 {
		b.total = total
	}
	b.maybeDraw(false)
}

// Finish draws the final state and ends the line. Calling it again does nothing more.
func (b *Bar) Finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.enabled {
		return
	}
	b.maybeDraw(true)
	fmt.Fprint(b.w, "\n")
	b.enabled = false
}

// maybeDraw redraws when enough time has passed or force is set. b.mu must be held.
func (b *Bar) maybeDraw(force bool) {
	if !b.enabled {
		return
	}
	now := time.Now()
	if !force && now.Sub(b.drawn) < redrawEvery {
		return
	}
	b.drawn = now
	line := b.render(now)
	pad := ""
	if n := b.width - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	b.width = len(line)
	fmt.Fprintf(b.w, "\r%s%s", line, pad)
}

func (b *Bar) count(n int64) string {
	if b.bytes {
		return Bytes(n)
	}
	return fmt.Sprint(n)
}

// render formats one line: label, bar, percentage, counts and rate.
func (b *Bar) render(now time.Time) string {
	var sb strings.Builder
	sb.WriteString(b.label)
	el := now.Sub(b.start).Seconds()
	if b.total > 0 {
		frac := float64(b.done) / float64(b.total)
		frac = min(max(frac, 0), 1)
		const width = 30
		full := int(frac * width)
		sb.WriteString(" [")
		sb.WriteString(strings.Repeat("=", full))
		if full < width {
			sb.WriteString(">")
			sb.WriteString(strings.Repeat(" ", width-full-1))
		}
		fmt.Fprintf(&sb, "] %3.0f%% %s/%s", frac*100, b.count(b.done), b.count(b.total))
	} else {
		fmt.Fprintf(&sb, " %s", b.count(b.done))
	}
	if el > 0 && b.bytes {
		fmt.Fprintf(&sb, " %s/s", Bytes(int64(float64(b.done)/el)))
	}
	return sb.String()
}

// Bytes formats n bytes with a binary unit: "512 B", "1.5 KiB", "3.00 GiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := -1
	for (f >= unit || f <= -unit) && i < len(units)-1 {
		f /= unit
		i++
	}
	switch {
	case f >= 100 || f <= -100:
		return fmt.Sprintf("%.0f %s", f, units[i])
	case f >= 10 || f <= -10:
		return fmt.Sprintf("%.1f %s", f, units[i])
	}
	return fmt.Sprintf("%.2f %s", f, units[i])
}
