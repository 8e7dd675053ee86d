package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/driftstore/driftstore/repo"
)

// openRepo opens the data directory named by --data. Commands that can work through a daemon
// call openStorage (or their own client) when --server is set; any other reaching here with
// --server is refused plainly. Commands that only read refuse a data directory that does not
// exist rather than create an empty one.
func (c *cli) openRepo(readOnly bool) (*repo.Repo, error) {
	if c.globals.server != "" {
		return nil, fmt.Errorf("%s: --server is not supported by this command yet; run it where the data directory is, without --server", c.command.name)
	}
	if c.globals.data == "" {
		return nil, usageError("no data directory: set --data or $DRIFTSTORE_DATA")
	}
	if c.command != nil && readsOnly[c.command.name] {
		if _, err := os.Stat(c.globals.data); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no data directory at %s: nothing is stored there yet (--data or $DRIFTSTORE_DATA names another)", c.globals.data)
		}
	}
	return repo.Open(c.globals.data, repo.Options{ReadOnly: readOnly})
}

// readsOnly names the commands that never need to create a data directory.
var readsOnly = map[string]bool{"ls": true, "inspect": true, "get": true, "fsck": true, "gc": true, "checkpoint": true, "fork": true}

// sizeFlag is a byte count flag that accepts suffixes: 65536, 64KiB, 64K, 1MiB, 1MB, 2GiB.
// K, M, G alone and KiB, MiB, GiB are binary (1024); KB, MB, GB are decimal (1000).
type sizeFlag struct {
	n   int64
	set bool
}

func (s *sizeFlag) String() string {
	if s == nil || !s.set {
		return ""
	}
	return strconv.FormatInt(s.n, 10)
}

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	s.n, s.set = n, true
	return nil
}

var errBadSize = errors.New("bad size")

// parseSize parses a byte count with an optional unit suffix (see sizeFlag).
func parseSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[strings.ToLower(unit)]
	if num == "" || mult == 0 {
		return 0, fmt.Errorf("%w %q: want a number with an optional unit (64KiB, 1MiB, 1MB)", errBadSize, v)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%w %q: %v", errBadSize, v, err)
	}
	f *= mult
	if f != math.Trunc(f) || f > math.MaxInt64/2 {
		return 0, fmt.Errorf("%w %q: not a whole number of bytes in range", errBadSize, v)
	}
	return int64(f), nil
}

// jsonRatio turns a ratio into something JSON can carry: null for infinity.
func jsonRatio(r float64) *float64 {
	if math.IsInf(r, 0) || math.IsNaN(r) {
		return nil
	}
	return &r
}

// fmtRatio formats a ratio for people.
func fmtRatio(r float64) string {
	if math.IsInf(r, 1) {
		return "∞ (nothing new stored)"
	}
	return fmt.Sprintf("%.2fx", r)
}

// statSize returns a file's size, for progress totals.
func statSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func itoa(n int) string { return strconv.Itoa(n) }
