package cas_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	switch mode {
	case "put":
		if _, err := p.Put(bg, castest.Random(1000, 5), cas.HintNone); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	case "stream":
		// Put distinct chunks until killed, alternately one by one from two goroutines and in
		// batches of four (PutAll, two workers), printing "ok i" for each acknowledged chunk.
		base, _ := strconv.Atoi(os.Getenv("CAS_BASE"))
		w := bufio.NewWriter(os.Stdout)
		var mu sync.Mutex
		ack := func(i int) {
			mu.Lock()
			fmt.Fprintln(w, "ok", i)
			w.Flush()
			mu.Unlock()
		}
		for i := base; ; i += 4 {
			if i/4%2 == 0 {
				var wg sync.WaitGroup
				for k := range 4 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := p.Put(bg, helperChunk(i+k), cas.HintFloat16); err != nil {
							fmt.Println("error", err)
							os.Exit(1)
						}
						ack(i + k)
					}()
				}
				wg.Wait()
				continue
			}
			chunks := [][]byte{helperChunk(i), helperChunk(i + 1), helperChunk(i + 2), helperChunk(i + 3)}
			if _, err := cas.PutAll(bg, p, 2, chunks, cas.HintFloat16); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			for k := range 4 {
				ack(i + k)
			}
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

// TestPackKillDuringPuts SIGKILLs a writer at varying moments, three times over one store:
// after each kill the store reopens (repairing the torn tail), every chunk the writer was told
// is stored is present with its bytes, and every chunk present reads back intact.
func TestPackKillDuringPuts(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns writers")
	}
	dir := t.TempDir()
	acked := map[int]bool{}
	for round := range 3 {
		cmd := packHelper(t, "stream", dir, 2000)
		cmd.Env = append(cmd.Env, "CAS_BASE="+strconv.Itoa(round*100_000))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		want := 6 + 9*round // acknowledged chunks to wait for before the kill
		n := 0
		for n < want && sc.Scan() {
			var i int
			if _, err := fmt.Sscanf(sc.Text(), "ok %d", &i); err != nil {
				t.Fatalf("helper: %s", sc.Text())
			}
			acked[i] = true
			n++
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() { // acknowledgements printed before the kill landed
			var i int
			if _, err := fmt.Sscanf(sc.Text(), "ok %d", &i); err == nil {
				acked[i] = true
			}
		}
		cmd.Wait()
		p, err := cas.OpenPack(dir, cas.PackOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range acked {
			c := helperChunk(i)
			got, err := p.Get(bg, cas.Sum(c), nil)
			if err != nil || !bytes.Equal(got, c) {
				t.Fatalf("round %d: acknowledged chunk %d: %v", round, i, err)
			}
		}
		if err := p.Walk(bg, func(in cas.Info) error {
			_, err := p.Get(bg, in.Digest, nil)
			return err
		}); err != nil {
			t.Fatalf("round %d: a present chunk does not read back: %v", round, err)
		}
		p.Close()
	}
}
