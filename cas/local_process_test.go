package cas_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

// The tests here re-run this test binary as a helper process (TestHelperProcess with
// CAS_HELPER set) to exercise what only separate processes can: racing writers and SIGKILL.

const helperEnv = "CAS_HELPER"

// helperChunk is the i-th chunk the helpers write: float16-like, distinct per i, 32-288 KiB.
func helperChunk(i int) []byte {
	return castest.KVFloat16(32<<10+(i%9)*32<<10, uint64(i))
}

func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for other tests")
	}
	dir := os.Getenv("CAS_DIR")
	s, err := cas.OpenLocal(dir, cas.LocalOptions{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	ctx := context.Background()
	switch mode {
	case "race":
		// Wait for the common start time, then put the same sequence of chunks as the other
		// helper.
		start, _ := strconv.ParseInt(os.Getenv("CAS_START"), 10, 64)
		time.Sleep(time.Until(time.Unix(0, start)))
		for i := range 40 {
			if _, err := s.Put(ctx, helperChunk(i), cas.HintFloat16); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
		fmt.Println("done")
	case "stream":
		// Put distinct chunks forever, reporting each one stored, until killed.
		w := bufio.NewWriter(os.Stdout)
		for i := 0; ; i++ {
			if _, err := s.Put(ctx, helperChunk(i), cas.HintFloat16); err != nil {
				fmt.Fprintln(w, "error", err)
				w.Flush()
				os.Exit(1)
			}
			fmt.Fprintln(w, "ok", i)
			w.Flush()
		}
	case "batch":
		// Put distinct chunks in batches of 8 through PutAll (two workers), reporting each
		// batch once committed, until killed.
		w := bufio.NewWriter(os.Stdout)
		for i := 0; ; i += 8 {
			var chunks [][]byte
			for k := range 8 {
				chunks = append(chunks, helperChunk(i+k))
			}
			if _, err := cas.PutAll(ctx, s, 2, chunks, cas.HintFloat16); err != nil {
				fmt.Fprintln(w, "error", err)
				w.Flush()
				os.Exit(1)
			}
			for k := range 8 {
				fmt.Fprintln(w, "ok", i+k)
			}
			w.Flush()
		}
	case "storedbatch":
		// As "batch", but the chunks arrive in stored form (as replication moves them) and go
		// through PutStoredAll: verified on two workers, one Commit per batch of 8.
		w := bufio.NewWriter(os.Stdout)
		for i := 0; ; i += 8 {
			var chunks []cas.StoredChunk
			for k := range 8 {
				data := helperChunk(i + k)
				codec, stored := cas.Encode(nil, data, cas.HintFloat16)
				chunks = append(chunks, cas.StoredChunk{Digest: cas.Sum(data), Codec: codec, Stored: stored})
			}
			if _, err := cas.PutStoredAll(ctx, s, 2, chunks); err != nil {
				fmt.Fprintln(w, "error", err)
				w.Flush()
				os.Exit(1)
			}
			for k := range 8 {
				fmt.Fprintln(w, "ok", i+k)
			}
			w.Flush()
		}
	}
	os.Exit(0)
}

func helper(t *testing.T, mode, dir string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + mode, "CAS_DIR=" + dir}, env...)...)
	return cmd
}

// verifyAll Gets every chunk in the store and fails on any error; it returns the digests.
func verifyAll(t *testing.T, s *cas.Local) map[cas.Digest]bool {
	t.Helper()
	seen := map[cas.Digest]bool{}
	err := s.Walk(context.Background(), func(info cas.Info) error {
		got, err := s.Get(context.Background(), info.Digest, nil)
		if err != nil {
			return err
		}
		if int64(len(got)) != info.Size {
			return fmt.Errorf("chunk %s: %d bytes, Info says %d", info.Digest, len(got), info.Size)
		}
		seen[info.Digest] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return seen
}

func TestTwoProcessesPutSameChunks(t *testing.T) {
	dir := t.TempDir()
	start := time.Now().Add(300 * time.Millisecond).UnixNano()
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for range 2 {
		cmd := helper(t, "race", dir, "CAS_START="+strconv.FormatInt(start, 10))
		out := new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil || !strings.Contains(outs[i].String(), "done") {
			t.Fatalf("helper %d: %v\n%s", i, err, outs[i])
		}
	}
	s, err := cas.OpenLocal(dir, cas.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := verifyAll(t, s)
	if len(seen) != 40 {
		t.Fatalf("%d chunks after two processes put the same 40", len(seen))
	}
	for i := range 40 {
		if !seen[cas.Sum(helperChunk(i))] {
			t.Fatalf("chunk %d missing", i)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*", ".tmp-*")); len(tmp) != 0 {
		t.Fatalf("temporary files left by clean exits: %v", tmp)
	}
}

func TestKilledDuringPuts(t *testing.T) { testKilled(t, "stream", []int{3, 11, 24}) }

// TestKilledDuringBatches kills a writer that stores chunks in batches (PutAll on a Local):
// every visible chunk must verify, and every batch acknowledged must be complete.
func TestKilledDuringBatches(t *testing.T) { testKilled(t, "batch", []int{8, 40, 96}) }

// TestKilledDuringStoredBatches kills a writer that stores chunks given in stored form in
// batches (PutStoredAll, Batch.PutStored on a Local): every visible chunk must verify, and
// every batch acknowledged must be complete.
func TestKilledDuringStoredBatches(t *testing.T) { testKilled(t, "storedbatch", []int{8, 40, 96}) }

func testKilled(t *testing.T, mode string, kills []int) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	acked := map[cas.Digest]bool{}
	// Kill the writer at a few different points; each run adds to the same store.
	for round, killAfter := range kills {
		cmd := helper(t, mode, dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "error") {
				t.Fatalf("helper: %s", line)
			}
			var i int
			if _, err := fmt.Sscanf(line, "ok %d", &i); err != nil {
				continue
			}
			acked[cas.Sum(helperChunk(i))] = true
			if n++; n == killAfter {
				// Let it get into the next Put (partway through encoding or writing), then kill.
				time.Sleep(time.Duration(round) * 2 * time.Millisecond)
				cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
		cmd.Wait()
		s, err := cas.OpenLocal(dir, cas.LocalOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen := verifyAll(t, s) // every visible chunk verifies
		for d := range acked {
			if !seen[d] {
				t.Fatalf("round %d: chunk %s was acknowledged but is gone", round, d)
			}
		}
		// Leftover temporary files are garbage for CleanTemp, never chunks.
		if _, err := s.CleanTemp(context.Background(), 0); err != nil {
			t.Fatal(err)
		}
	}
}
