package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadOnlyCommandsKeepAMissingDataDirMissing: commands that only read refuse a data
// directory that does not exist, saying so, and create nothing.
func TestReadOnlyCommandsKeepAMissingDataDirMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	for _, args := range [][]string{
		{"ls"}, {"fsck"}, {"gc"}, {"inspect", "x"}, {"get", "x", "-o", filepath.Join(t.TempDir(), "out")},
		{"checkpoint", "--session", "a"}, {"fork", "--session", "b", "--from", "x"},
	} {
		code, _, errOut := modelRun(t, append([]string{"--data", dir}, args...)...)
		if code != 1 || !strings.Contains(errOut, "no data directory at "+dir) {
			t.Errorf("%v: exit %d, stderr %q; want 1 saying there is no data directory", args, code, errOut)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("%v created %s (stat: %v)", args, dir, err)
		}
	}
}
