package cas

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPackCoalesce compares a Pack batch's record writes side by side: "each" writes
// every record alone as it is put (coalesceMax 0: the behaviour before coalescing), "run"
// gathers them in runs of coalesceSize (the default settings). 22 MiB of raw stored forms go through PutStoredAll (2 workers) into a
// fresh NoSync store per iteration, in records of 22 KB (a push of KV blocks) and 256 KiB.
// Besides ns/op it reports the process's CPU time per operation (cpu-ms/op), which is what
// the write path costs on a busy machine: compare the lines of one run.
func BenchmarkPackCoalesce(b *testing.B) {
	const total = 22 << 20
	for _, size := range []int{22 << 10, 256 << 10} {
		chunks := make([]StoredChunk, total/size)
		for i := range chunks {
			data := testChunk(size, byte(i))
			data[0], data[1] = byte(i), byte(i>>8) // distinct chunks
			chunks[i] = StoredChunk{Digest: Sum(data), Codec: CodecRaw, Stored: data}
		}
		modes := []struct {
			name         string
			runSize, max int
		}{
			{"each", coalesceSize, 0},
			{"run", coalesceSize, coalesceMax},
		}
		for _, m := range modes {
			b.Run(fmt.Sprintf("record=%dKiB/%s", size>>10, m.name), func(b *testing.B) {
				saveSize, saveMax := coalesceSize, coalesceMax
				coalesceSize, coalesceMax = m.runSize, m.max
				defer func() { coalesceSize, coalesceMax = saveSize, saveMax }()
				b.SetBytes(total)
				var cpu time.Duration
				for b.Loop() {
					b.StopTimer()
					p, err := OpenPack(b.TempDir(), PackOptions{NoSync: true})
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					start := cpuTime(b)
					if _, err := PutStoredAll(context.Background(), p, 2, chunks); err != nil {
						b.Fatal(err)
					}
					cpu += cpuTime(b) - start
					b.StopTimer()
					p.Close()
					b.StartTimer()
				}
				b.ReportMetric(float64(cpu.Microseconds())/1e3/float64(b.N), "cpu-ms/op")
			})
		}
	}
}
