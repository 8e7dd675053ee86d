package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/driftstore/driftstore/checkpoint/cptest"
)

// Three hosts in network namespaces: each daemon runs in a namespace of its own with its own
// address, the namespaces joined by veth pairs to a bridge in a fourth one. Only addresses
// inside these namespaces are used. Processes run there with `ip netns exec`, re-running this
// test binary as a helper (TestNetnsHelper).

const (
	helperEnv     = "DRIFTSTORE_NETNS_HELPER" // "main": run the CLI with helperArgsEnv; "fetch": GET a URL
	helperArgsEnv = "DRIFTSTORE_NETNS_ARGS"   // JSON array of arguments
)

// TestNetnsHelper is not a test: it is the process that TestThreeHostsNetns starts inside a
// namespace.
func TestNetnsHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process of TestThreeHostsNetns; runs only when that test starts it")
	}
	var args []string
	if err := json.Unmarshal([]byte(os.Getenv(helperArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "helper args:", err)
		os.Exit(2)
	}
	switch mode {
	case "main":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := runMain(ctx, args, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	case "fetch": // args: URL TOKEN
		req, _ := http.NewRequest(http.MethodGet, args[0], nil)
		req.Header.Set("Authorization", "Bearer "+args[1])
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(os.Stdout, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(2)
}

type netns struct {
	t      *testing.T
	prefix string
	names  []string
}

func (n *netns) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (n *netns) name(host string) string { return n.prefix + "-" + host }

// helper returns the command that runs this test binary as a helper in namespace host.
func (n *netns) helper(host, mode string, args ...string) *exec.Cmd {
	a, _ := json.Marshal(args)
	cmd := exec.Command("ip", "netns", "exec", n.name(host), os.Args[0], "-test.run=^TestNetnsHelper$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperArgsEnv+"="+string(a))
	return cmd
}

// cli runs a driftstore command in namespace host and returns its exit code and output.
func (n *netns) cli(host string, args ...string) (int, string, string) {
	cmd := n.helper(host, "main", args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		n.t.Fatalf("%v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

func (n *netns) fetch(host, url, token string) (string, error) {
	out, err := n.helper(host, "fetch", url, token).Output()
	return string(out), err
}

var (
	chunksReceivedRE = regexp.MustCompile(`(?m)^driftstore_chunks_received_total (\d+)$`)
	inFlightRE       = regexp.MustCompile(`(?m)^driftstore_http_requests_in_flight (\d+)$`)
)

func TestThreeHostsNetns(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("inside a helper process")
	}
	if os.Geteuid() != 0 {
		t.Skip("network-namespace test needs root (ip netns, veth pairs); skipped")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("network-namespace test needs %q on PATH; skipped", tool)
		}
	}
	n := &netns{t: t, prefix: fmt.Sprintf("dsnt%d", os.Getpid())}
	if out, err := exec.Command("ip", "netns", "add", n.name("hub")).CombinedOutput(); err != nil {
		t.Skipf("cannot create network namespaces here (%v: %s); skipped", err, strings.TrimSpace(string(out)))
	}
	n.names = append(n.names, n.name("hub"))
	t.Cleanup(func() {
		for _, ns := range n.names {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	// hub: a bridge; a, b, c: eth0 on the bridge, 10.213.0.1-3/24.
	n.ip("-n", n.name("hub"), "link", "add", "br0", "type", "bridge")
	n.ip("-n", n.name("hub"), "link", "set", "br0", "up")
	addr := map[string]string{}
	for i, h := range []string{"a", "b", "c"} {
		ns := n.name(h)
		n.ip("netns", "add", ns)
		n.names = append(n.names, ns)
		n.ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "h"+h, "netns", n.name("hub"))
		n.ip("-n", n.name("hub"), "link", "set", "h"+h, "master", "br0")
		n.ip("-n", n.name("hub"), "link", "set", "h"+h, "up")
		addr[h] = fmt.Sprintf("10.213.0.%d", i+1)
		n.ip("-n", ns, "addr", "add", addr[h]+"/24", "dev", "eth0")
		n.ip("-n", ns, "link", "set", "eth0", "up")
		n.ip("-n", ns, "link", "set", "lo", "up")
	}

	work := t.TempDir()
	model, err := cptest.SmallModel(work, 1)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte("netns-token"), 0o600)
	url := map[string]string{}
	for _, h := range []string{"a", "b", "c"} {
		dir := filepath.Join(work, h)
		seedModuleCache(t, dir)
		url[h] = n.startDaemon(h, "--data", dir, "serve", "--addr", addr[h]+":7700", "--model", model,
			"--token-file", tokFile, "--threads", "1", "--log-level", "warn")
	}
	on := func(host, server string, args ...string) (int, string, string) {
		return n.cli(host, append([]string{"--data", filepath.Join(work, "unused-"+host), "--server", url[server], "--token-file", tokFile}, args...)...)
	}
	turn := func(code int, out, errOut string) runResult {
		t.Helper()
		var r runResult
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("run: exit %d: %s%s", code, out, errOut)
		}
		return r
	}
	prompt := make([]string, 1500)
	for i, v := range cptest.Tokens(1500, 512, 9) {
		prompt[i] = strconv.Itoa(int(v))
	}
	turn(on("a", "a", "run", "--session", "s", "--tokens", strings.Join(prompt, ","), "-n", "4", "--json"))
	if code, out, errOut := on("a", "a", "push", "--session", "s", "--to", url["b"]); code != 0 {
		t.Fatalf("push A→B: exit %d: %s%s", code, out, errOut)
	}

	// B replicates to C continuously, over a slow link to C; C is cut off mid-transfer.
	slow := false
	for _, q := range [][]string{{"netem", "rate", "1mbit"}, {"tbf", "rate", "1mbit", "burst", "16kbit", "latency", "400ms"}} {
		if exec.Command("tc", append([]string{"-n", n.name("hub"), "qdisc", "add", "dev", "hc", "root"}, q...)...).Run() == nil {
			slow = true
			break
		}
	}
	if !slow {
		t.Skip("network-namespace test needs the netem or tbf qdisc to slow a link down; skipped")
	}
	watch := n.helper("b", "main", "--data", filepath.Join(work, "unused-b"), "--server", url["b"], "--token-file", tokFile,
		"replicate", "--all", "--to", url["c"], "--watch", "--interval", "200ms")
	var watchOut strings.Builder
	watch.Stdout, watch.Stderr = &watchOut, &watchOut
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	watchDone := make(chan error, 1)
	go func() { watchDone <- watch.Wait() }()
	defer func() {
		watch.Process.Signal(syscall.SIGTERM)
		select {
		case <-watchDone:
		case <-time.After(20 * time.Second):
			watch.Process.Kill()
		}
	}()
	// metric reads one of C's metrics; -1 when C does not answer.
	metric := func(re *regexp.Regexp) int {
		m, err := n.fetch("b", url["c"]+"/metrics", "netns-token")
		if err != nil {
			return -1
		}
		if sm := re.FindStringSubmatch(m); sm != nil {
			v, _ := strconv.Atoi(sm[1])
			return v
		}
		return -1
	}
	// Cut C off while the chunk upload is under way: a request besides the metrics read itself
	// in flight at C (the upload takes seconds over the slow link, the rest milliseconds).
	deadline := time.Now().Add(60 * time.Second)
	for metric(inFlightRE) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no transfer to C seen: %s", watchOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.ip("-n", n.name("c"), "link", "set", "eth0", "down")
	if r := metric(chunksReceivedRE); r != -1 {
		t.Fatalf("C still answers with its link down (%d chunks received)", r)
	}
	// While C is away, the session moves on at A and reaches B.
	turn(on("a", "a", "run", "--session", "s", "--tokens", "7", "-n", "5", "--json"))
	if code, out, errOut := on("a", "a", "push", "--session", "s", "--to", url["b"]); code != 0 {
		t.Fatalf("second push A→B: exit %d: %s%s", code, out, errOut)
	}
	time.Sleep(time.Second)
	n.ip("-n", n.name("c"), "link", "set", "eth0", "up")
	if out, err := exec.Command("tc", "-n", n.name("hub"), "qdisc", "del", "dev", "hc", "root").CombinedOutput(); err != nil {
		t.Fatalf("tc qdisc del: %v: %s", err, out)
	}

	// C catches up: its head becomes B's (A's).
	headOf := func(host, server string) string {
		body, err := n.fetch(host, url[server]+"/v1/refs/session/s", "netns-token")
		if err != nil {
			return ""
		}
		var r struct {
			Head string `json:"head"`
		}
		json.Unmarshal([]byte(body), &r)
		return r.Head
	}
	want := headOf("a", "b")
	if want == "" || want != headOf("a", "a") {
		t.Fatalf("B's head %q is not A's %q", want, headOf("a", "a"))
	}
	deadline = time.Now().Add(90 * time.Second)
	for headOf("b", "c") != want {
		if time.Now().After(deadline) {
			t.Fatalf("C did not catch up after its link returned (head %q, want %q): %s", headOf("b", "c"), want, watchOut.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("C was cut off mid-upload and caught up at %s (%d chunks received in all); replicator said:\n%s",
		want, metric(chunksReceivedRE), watchOut.String())
	// And the session continues on C exactly as on A.
	onA := turn(on("a", "a", "run", "--session", "s", "--tokens", "8", "-n", "6", "--json"))
	onC := turn(on("c", "c", "run", "--session", "s", "--tokens", "8", "-n", "6", "--json"))
	if !slices.Equal(onA.Tokens, onC.Tokens) || onA.Checkpoint != onC.Checkpoint {
		t.Fatalf("continued on A %v (%s), on C %v (%s)", onA.Tokens, onA.Checkpoint, onC.Tokens, onC.Checkpoint)
	}
	if code, out, errOut := on("c", "c", "fsck"); code != 0 {
		t.Fatalf("fsck on C: exit %d: %s%s", code, out, errOut)
	}
}

var netnsServingRE = regexp.MustCompile(`serving .* on (http://[0-9.]+:\d+)`)

// startDaemon runs `driftstore serve` in namespace host and returns its URL; it is stopped with
// SIGTERM at the end of the test and must exit 0.
func (n *netns) startDaemon(host string, args ...string) string {
	t := n.t
	t.Helper()
	cmd := n.helper(host, "main", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb syncBuffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := netnsServingRE.FindStringSubmatch(sc.Text()); m != nil {
				urlc <- m[1]
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon on %s: %v: %s", host, err, errb.String())
			}
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			t.Errorf("daemon on %s did not stop", host)
		}
	})
	select {
	case u := <-urlc:
		return u
	case err := <-done:
		t.Fatalf("daemon on %s exited: %v: %s", host, err, errb.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("daemon on %s did not start: %s", host, errb.String())
	}
	return ""
}
