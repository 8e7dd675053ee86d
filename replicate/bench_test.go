package replicate_test

import (
	"context"
	"testing"
	"time"

	"github.com/driftstore/driftstore/replicate/benchpush"
)

// The benchmarks run package benchpush, which `driftstore bench push` runs too; see it for
// what each measurement does.

const benchSize = 32 << 20 // uncompressed bytes of the benchmark session

// reportRate reports the stored bytes moved per second over the summed transfer times (the
// receivers' setup is outside them).
func reportRate(b *testing.B, stored int64, f func(context.Context) (time.Duration, error)) {
	b.Helper()
	var total time.Duration
	for range b.N {
		d, err := f(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		total += d
	}
	b.ReportMetric(float64(stored)*float64(b.N)/1e6/total.Seconds(), "MB/s")
	b.ReportMetric(total.Seconds()*1e9/float64(b.N), "transfer-ns/op")
}

// BenchmarkLoopback compares, in one run, a push and a pull of a 32 MiB float16 session between
// real daemons over loopback with a plain HTTP POST of the same stored bytes to a handler that
// writes them to one file. All report MB/s of the stored bytes. The receiving side syncs nothing
// except in the -sync variants, whose receiving data directory syncs as a real daemon's does
// (and the plain copy fsyncs its file and directory).
func BenchmarkLoopback(b *testing.B) {
	env, err := benchpush.Start(context.Background(), benchpush.Config{Size: benchSize, Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer env.Close()
	for _, mode := range []string{"", "-sync"} {
		env.SetNoSync(mode == "")
		b.Run("plain-http"+mode, func(b *testing.B) { reportRate(b, env.Stored, env.PlainCopy) })
		b.Run("push"+mode, func(b *testing.B) { reportRate(b, env.Stored, env.PushOnce) })
		b.Run("pull"+mode, func(b *testing.B) { reportRate(b, env.Stored, env.PullOnce) })
	}
}

// BenchmarkIncrementalPush pushes a 4 MiB session, then one more turn (256 KiB appended), and
// reports the request body bytes of the second push over the new stored bytes.
func BenchmarkIncrementalPush(b *testing.B) {
	ctx := context.Background()
	var in benchpush.Incremental
	for range b.N {
		env, err := benchpush.Start(ctx, benchpush.Config{Size: 4 << 20, NoSync: true, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		in, err = env.IncrementalPush(ctx)
		if cerr := env.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(in.WireOverNew, "wire/new")
	b.ReportMetric(float64(in.Overhead), "overhead-B")
	b.ReportMetric(float64(in.ManifestBytes), "manifest-B")
	b.ReportMetric(float64(in.Requests), "requests")
}

// BenchmarkMissing10k asks a daemon holding a 32 MiB session which of 10000 digests (its 1024
// chunks among them) it lacks; reported as requests per second, best of b.N rounds of 200ms.
func BenchmarkMissing10k(b *testing.B) {
	ctx := context.Background()
	env, err := benchpush.Start(ctx, benchpush.Config{Size: benchSize, NoSync: true, Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer env.Close()
	var best float64
	for range b.N {
		m, err := env.MissingRate(ctx, 200*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		best = max(best, m.PerSec)
	}
	b.ReportMetric(best, "req/s")
}
