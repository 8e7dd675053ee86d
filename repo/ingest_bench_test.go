package repo_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"syscall"
	"testing"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/repo"
	"github.com/driftstore/driftstore/repo/benchstore"
)

// BenchmarkIngest measures Put as `driftstore put` runs it (synced) of 64 MiB of float16
// KV-like data without a hint (the default codec choice) and of random data, with 1 and 2
// workers, into a fresh data directory under $INGEST_BENCH_DIR (default: the test's temp dir).
func BenchmarkIngest(b *testing.B) {
	kv := make([]byte, 64<<20)
	benchstore.KVFloat16(kv, 1)
	rnd := make([]byte, 64<<20)
	benchstore.Random(rnd, 2)
	base := os.Getenv("INGEST_BENCH_DIR")
	for _, ds := range []struct {
		name string
		data []byte
	}{{"f16-kv", kv}, {"random", rnd}} {
		for _, w := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/workers=%d", ds.name, w), func(b *testing.B) {
				b.SetBytes(int64(len(ds.data)))
				var cpu time.Duration
				var idle, total float64
				var waited, elapsed time.Duration
				for b.Loop() {
					b.StopTimer()
					dir := b.TempDir()
					if base != "" {
						var err error
						if dir, err = os.MkdirTemp(base, "ingest-"); err != nil {
							b.Fatal(err)
						}
					}
					r, err := repo.Open(filepath.Join(dir, "data"), repo.Options{Workers: w})
					if err != nil {
						b.Fatal(err)
					}
					idle0, total0 := schedIdle()
					wait0, start := runqueueWait(), time.Now()
					b.StartTimer()
					cpu0 := cpuTime()
					if _, err := r.PutReader(context.Background(), "in", bytes.NewReader(ds.data), repo.PutOptions{Hint: cas.HintNone}); err != nil {
						b.Fatal(err)
					}
					cpu += cpuTime() - cpu0
					waited += runqueueWait() - wait0
					elapsed += time.Since(start)
					b.StopTimer()
					idle1, total1 := schedIdle()
					idle, total = idle+idle1-idle0, total+total1-total0
					b.StartTimer()
					b.StopTimer()
					r.Close()
					if base != "" {
						os.RemoveAll(dir)
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(len(ds.data)), "cpu-ns/B")
				if total > 0 {
					b.ReportMetric(100*idle/total, "%P-idle")
				}
				if elapsed > 0 {
					b.ReportMetric(float64(waited)/float64(elapsed), "runq-wait-cores")
				}
			})
		}
	}
}

// schedIdle returns the Go scheduler's idle and total CPU seconds so far (runtime/metrics
// /cpu/classes/idle and /cpu/classes/total): the share of GOMAXPROCS the process left unused,
// whatever else ran on the machine.
// It runs a garbage collection first: the runtime updates those metrics at collections.
func schedIdle() (idle, total float64) {
	runtime.GC()
	s := []metrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}, {Name: "/cpu/classes/total:cpu-seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64(), s[1].Value.Float64()
}

// runqueueWait returns the time the process's threads spent runnable but waiting for a CPU
// (the second field of /proc/self/task/*/schedstat, Linux): other load on the machine. 0 where
// schedstat is missing.
func runqueueWait() time.Duration {
	tasks, _ := os.ReadDir("/proc/self/task")
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		var run, wait int64
		if _, err := fmt.Sscan(string(b), &run, &wait); err == nil {
			sum += time.Duration(wait)
		}
	}
	return sum
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
