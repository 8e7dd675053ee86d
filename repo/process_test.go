package repo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/driftstore/driftstore/index"
)

// The tests in this file re-execute the test binary as a helper process (TestMain dispatches on
// DRIFTSTORE_REPO_HELPER), so that locks, SIGKILL and other users are real.

func TestMain(m *testing.M) {
	if mode := os.Getenv("DRIFTSTORE_REPO_HELPER"); mode != "" {
		os.Exit(helperMain(mode, os.Getenv("DRIFTSTORE_REPO_DIR")))
	}
	os.Exit(m.Run())
}

// helperMain runs one helper mode and returns the exit status.
func helperMain(mode, dir string) int {
	ctx := context.Background()
	switch mode {
	case "open": // try to open; exit 3 when the directory is in use
		start := time.Now()
		r, err := Open(dir, Options{LockTimeout: 200 * time.Millisecond})
		if err != nil {
			fmt.Printf("%v\n%d\n", err, time.Since(start).Milliseconds())
			if errors.Is(err, ErrInUse) {
				return 3
			}
			return 1
		}
		r.Close()
		return 0
	case "put-loop": // put distinct 1 MiB inputs forever, tagging each; print each ID
		r, err := Open(dir, Options{LockTimeout: 10 * time.Second, Workers: 2})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		seed, _ := strconv.Atoi(os.Getenv("DRIFTSTORE_REPO_SEED"))
		for i := 0; ; i++ {
			data := randBytes(uint64(seed*1000+i), 1<<20)
			copy(data, randBytes(1, 300_000)) // a shared prefix: some chunks dedup
			res, err := r.PutReader(ctx, "blob", bytes.NewReader(data), PutOptions{Tag: fmt.Sprintf("t%d-%d", seed, i%3)})
			if err != nil {
				fmt.Println(err)
				return 1
			}
			fmt.Println(res.ID)
		}
	case "put-once": // put the file named by DRIFTSTORE_REPO_FILE; print the ID
		r, err := Open(dir, Options{LockTimeout: 20 * time.Second, Workers: 2})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer r.Close()
		res, err := r.PutFiles(ctx, []string{os.Getenv("DRIFTSTORE_REPO_FILE")}, PutOptions{Tag: "same"})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Println(res.ID)
		return 0
	case "readonly": // run as a user who cannot write dir
		if _, err := Open(dir, Options{}); err == nil {
			fmt.Println("read-write open succeeded")
			return 1
		} else {
			fmt.Println("rw-error:", err)
		}
		r, err := Open(dir, Options{ReadOnly: true})
		if err != nil {
			fmt.Println("ro-open:", err)
			return 1
		}
		defer r.Close()
		id, err := r.Resolve("ro")
		if err != nil {
			fmt.Println("resolve:", err)
			return 1
		}
		var buf bytes.Buffer
		if _, err := r.Get(ctx, id, &buf, GetOptions{}); err != nil {
			fmt.Println("get:", err)
			return 1
		}
		if _, err := r.local.Put(ctx, []byte("new chunk"), 0); err == nil {
			fmt.Println("store put into a read-only directory succeeded")
			return 1
		}
		if _, err := r.PutReader(ctx, "x", strings.NewReader("new"), PutOptions{}); err == nil {
			fmt.Println("put succeeded")
			return 1
		}
		fmt.Println("ok", buf.Len())
		return 0
	}
	fmt.Println("unknown helper mode", mode)
	return 2
}

func helper(t *testing.T, mode, dir string, env ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{"DRIFTSTORE_REPO_HELPER=" + mode, "DRIFTSTORE_REPO_DIR=" + dir}, env...)...)
	return cmd
}

func TestSecondProcessGetsClearErrorQuickly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	r, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out, err := helper(t, "open", dir).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !strings.Contains(lines[0], "in use by another driftstore process (a daemon?): use --server URL") || !strings.Contains(lines[0], dir) {
		t.Fatalf("message: %q", lines[0])
	}
	if ms, _ := strconv.Atoi(lines[len(lines)-1]); ms > 5000 {
		t.Fatalf("second open took %d ms", ms)
	}
	// Once the first process lets go, the directory opens.
	r.Close()
	if out, err := helper(t, "open", dir).CombinedOutput(); err != nil {
		t.Fatalf("open after close: %v\n%s", err, out)
	}
}

// TestKillDuringPut kills a writer at random moments; each time the data directory must be
// consistent (fsck clean; unrecorded chunks are allowed garbage) and every committed manifest
// must read back verified.
func TestKillDuringPut(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var committed int
	for round := 0; round < 6; round++ {
		cmd := helper(t, "put-loop", dir, fmt.Sprintf("DRIFTSTORE_REPO_SEED=%d", round))
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait for at least one put in half the rounds, so kills land both early and mid-stream.
		if round%2 == 1 {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			if line == "" {
				t.Fatalf("round %d: helper printed nothing", round)
			}
		}
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		go io.Copy(io.Discard, stdout)
		cmd.Wait()

		r, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		res, err := r.Fsck(context.Background(), index.FsckOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.Problems {
			t.Errorf("round %d: fsck: %s", round, p)
		}
		list, err := r.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			n, err := r.Get(context.Background(), e.ID, io.Discard, GetOptions{})
			if err != nil || n != e.Size {
				t.Errorf("round %d: manifest %s: %d bytes, %v", round, e.ID, n, err)
			}
		}
		committed = len(list)
		r.Close()
	}
	t.Logf("%d manifests committed across the kills", committed)
}

func TestSamePutFromTwoProcesses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	file := filepath.Join(t.TempDir(), "same.bin")
	data := randBytes(42, 3<<20)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := 0; i < 2; i++ {
		cmd := helper(t, "put-once", dir, "DRIFTSTORE_REPO_FILE="+file)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("writer %d: %v\n%s", i, err, outs[i])
		}
	}
	a, b := strings.TrimSpace(outs[0].String()), strings.TrimSpace(outs[1].String())
	if a != b || !strings.HasPrefix(a, "blake3:") {
		t.Fatalf("writers disagree: %q vs %q", a, b)
	}
	r, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fsckClean(t, r)
	id, err := r.Resolve("same")
	if err != nil || id.String() != a {
		t.Fatalf("tag: %s %v", id, err)
	}
	if got := getBytes(t, r, id, GetOptions{}); !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	h, _ := r.Index().RefHistory(index.RefTag, "same")
	if len(h) != 1 {
		t.Fatalf("tag history has %d entries, want 1 (the second put is a no-op move)", len(h))
	}
}

// TestReadOnlyDataDir makes the data directory unwritable and runs a helper as an unprivileged
// user (root ignores permissions): writes must fail cleanly, reads must work, and the directory
// must stay consistent.
func TestReadOnlyDataDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "data")
	r, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.PutReader(context.Background(), "x", bytes.NewReader(randBytes(5, 500_000)), PutOptions{Tag: "ro"})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	setModes := func(dirMode, fileMode os.FileMode) {
		filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if info.IsDir() {
				return os.Chmod(p, dirMode)
			}
			return os.Chmod(p, fileMode)
		})
	}
	setModes(0o555, 0o444)
	t.Cleanup(func() { setModes(0o755, 0o644) })

	cmd := helper(t, "readonly", dir)
	if os.Geteuid() == 0 {
		// Run the helper as nobody; it needs to reach the test binary and the directory.
		exe, _ := os.Executable()
		bin := filepath.Join(base, "helper.test")
		raw, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, raw, 0o755); err != nil {
			t.Fatal(err)
		}
		for p := base; p != "/" && p != "."; p = filepath.Dir(p) {
			if st, err := os.Stat(p); err == nil && st.Mode().Perm()&0o005 != 0o005 {
				os.Chmod(p, st.Mode().Perm()|0o005)
				defer os.Chmod(p, st.Mode().Perm())
			}
		}
		cmd.Path = bin
		cmd.Args[0] = bin
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if os.Geteuid() == 0 && strings.Contains(err.Error(), "operation not permitted") {
			t.Skipf("cannot switch to an unprivileged user here: %v", err)
		}
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "rw-error:") || !strings.Contains(string(out), "ok 500000") {
		t.Fatalf("helper output:\n%s", out)
	}
	setModes(0o755, 0o644)
	r, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	fsckClean(t, r)
	getBytes(t, r, res.ID, GetOptions{})
}
