package cas_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

// TestPackHelperProcess is the helper process of the tests below (CAS_PACK_HELPER set): it
// opens the pack store in CAS_DIR with a lock timeout of CAS_LOCK_MS, and reports.
func TestPackHelperProcess(t *testing.T) {
	mode := os.Getenv("CAS_PACK_HELPER")
	if mode == "" {
		t.Skip("helper process for other tests")
	}
	ms, _ := strconv.Atoi(os.Getenv("CAS_LOCK_MS"))
	start := time.Now()
	p, err := cas.OpenPack(os.Getenv("CAS_DIR"), cas.PackOptions{LockTimeout: time.Duration(ms) * time.Millisecond})
	if err != nil {
		fmt.Printf("error %v\n%d\n", err, time.Since(start).Milliseconds())
		if errors.Is(err, cas.ErrLocked) {
			os.Exit(3)
		}
		os.Exit(1)
	}
	if mode == "put" {
		if _, err := p.Put(bg, castest.Random(1000, 5), cas.HintNone); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	p.Close()
	fmt.Println("ok")
	os.Exit(0)
}

func packHelper(t *testing.T, mode, dir string, lockMS int) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestPackHelperProcess$")
	cmd.Env = append(os.Environ(), "CAS_PACK_HELPER="+mode, "CAS_DIR="+dir, "CAS_LOCK_MS="+strconv.Itoa(lockMS))
	return cmd
}

// TestPackSecondProcess: while one process has the store open for writing, a second one gets
// ErrLocked after its lock timeout (not a hang); once the first closes it, the second opens,
// writes, and the first sees the write after reopening.
func TestPackSecondProcess(t *testing.T) {
	dir := t.TempDir()
	p, err := cas.OpenPack(dir, cas.PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Put(bg, []byte("first"), cas.HintNone); err != nil {
		t.Fatal(err)
	}
	out, err := packHelper(t, "put", dir, 100).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "locked by another process") {
		t.Fatalf("second process while the store is held: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if ms, _ := strconv.Atoi(lines[len(lines)-1]); ms > 5000 {
		t.Fatalf("second open took %d ms", ms)
	}
	p.Close()
	if out, err := packHelper(t, "put", dir, 0).CombinedOutput(); err != nil || !bytes.Contains(out, []byte("ok")) {
		t.Fatalf("second process after close: %v\n%s", err, out)
	}
	p = openPack(t, dir, cas.PackOptions{})
	if ok, _ := p.Has(bg, cas.Sum(castest.Random(1000, 5))); !ok {
		t.Fatal("the second process's chunk is missing")
	}
}
