package cas

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var ctx = context.Background()

func testBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// f16ish is float16-like data: a low-entropy high byte, a random low byte.
func f16ish(n int) []byte {
	b := testBytes(n, 9)
	for i := 1; i < n; i += 2 {
		b[i] = 0x30 + b[i]%4
	}
	return b
}

func openTemp(t *testing.T) *Local {
	t.Helper()
	l, err := OpenLocal(t.TempDir(), LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func tempFiles(t *testing.T, l *Local) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(l.Dir(), "*", ".tmp-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func wantCorrupt(t *testing.T, err error, d Digest, what string) {
	t.Helper()
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Digest != d || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%s: got %v, want a *CorruptError naming %s", what, err, d)
	}
	if !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("%s: error %q does not name the chunk", what, err)
	}
}

func TestLocalCorruptFiles(t *testing.T) {
	inputs := []struct {
		data []byte
		hint Hint
		want Codec
	}{
		{testBytes(10_000, 1), HintNone, CodecRaw},
		{bytes.Repeat([]byte("0123456789abcdef"), 5000), HintNone, CodecZstd},
		{f16ish(40_001), HintFloat16, CodecF16Planes},
	}
	corruptions := []struct {
		name      string
		mangle    func(b []byte) []byte
		badHeader bool
	}{
		{"flip-payload-byte", func(b []byte) []byte { b[headerSize+(len(b)-headerSize)/2] ^= 0x01; return b }, false},
		{"flip-last-byte", func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }, false},
		{"truncate-payload", func(b []byte) []byte { return b[:headerSize+(len(b)-headerSize)/2] }, false},
		{"truncate-in-header", func(b []byte) []byte { return b[:10] }, true},
		{"empty", func(b []byte) []byte { return nil }, true},
		{"garbage", func(b []byte) []byte { return testBytes(len(b), 77) }, true},
		{"bad-magic", func(b []byte) []byte { b[0] = 'X'; return b }, true},
		{"bad-version", func(b []byte) []byte { b[4] = 9; return b }, true},
		{"bad-codec", func(b []byte) []byte { b[5] = 0; return b }, true},
		{"huge-size", func(b []byte) []byte { b[15] = 0x7f; return b }, true},
		{"wrong-size", func(b []byte) []byte { b[8]++; return b }, false},
		{"appended", func(b []byte) []byte { return append(b, 1, 2, 3) }, false},
	}
	for _, in := range inputs {
		for _, c := range corruptions {
			l := openTemp(t)
			info, err := l.Put(ctx, in.data, in.hint)
			if err != nil {
				t.Fatal(err)
			}
			if info.Codec != in.want {
				t.Fatalf("codec %s, want %s", info.Codec, in.want)
			}
			d := info.Digest
			what := in.want.String() + "/" + c.name
			b, err := os.ReadFile(l.Path(d))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(l.Path(d), c.mangle(b), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = l.Get(ctx, d, make([]byte, 0, len(in.data)))
			wantCorrupt(t, err, d, what+": Get")
			if _, _, err := l.GetStored(ctx, d); c.badHeader {
				wantCorrupt(t, err, d, what+": GetStored")
			}
			_, err = l.Stat(ctx, d)
			if c.badHeader {
				wantCorrupt(t, err, d, what+": Stat")
			}
			// Walk still reports the chunk, so fsck can name it.
			found := false
			if err := l.Walk(ctx, func(i Info) error {
				found = found || i.Digest == d
				if c.badHeader && (i.Size != -1 || i.Codec != 0) {
					t.Errorf("%s: Walk reports %+v for a bad header", what, i)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if !found {
				t.Fatalf("%s: Walk lost the corrupt chunk", what)
			}
			// A bad header reads as absent to Put, which repairs the chunk.
			if c.badHeader {
				if _, err := l.Put(ctx, in.data, in.hint); err != nil {
					t.Fatal(err)
				}
				got, err := l.Get(ctx, d, nil)
				if err != nil || !bytes.Equal(got, in.data) {
					t.Fatalf("%s: Put did not repair: %v", what, err)
				}
			}
		}
	}
}

func TestLocalFailedWriteLeavesNothing(t *testing.T) {
	l := openTemp(t)
	data := testBytes(50_000, 3)
	d := Sum(data)
	testHookBeforeRename = func(string) error { return syscall.ENOSPC }
	_, err := l.Put(ctx, data, HintNone)
	testHookBeforeRename = nil
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("Put with a failing disk: %v", err)
	}
	if _, err := os.Stat(l.Path(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("failed Put left a file under the final name: %v", err)
	}
	if tmp := tempFiles(t, l); len(tmp) != 0 {
		t.Fatalf("failed Put left temporary files: %v", tmp)
	}
	if ok, _ := l.Has(ctx, d); ok {
		t.Fatal("Has reports a chunk whose Put failed")
	}
	if _, err := l.Put(ctx, data, HintNone); err != nil {
		t.Fatalf("Put after the disk recovered: %v", err)
	}
	if got, err := l.Get(ctx, d, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
}

func TestLocalShardNotADirectory(t *testing.T) {
	l := openTemp(t)
	data := testBytes(1000, 4)
	d := Sum(data)
	if err := os.WriteFile(l.shardDir(d), []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Put(ctx, data, HintNone); err == nil {
		t.Fatal("Put succeeded with its shard directory blocked by a file")
	}
	if n := 0; l.Walk(ctx, func(Info) error { n++; return nil }) != nil || n != 0 {
		t.Fatal("store not consistent after a failed Put")
	}
	if _, err := l.Get(ctx, d, nil); err == nil {
		t.Fatal("Get of a chunk whose Put failed succeeded")
	}
}

func TestLocalReadOnlyDirectory(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions; TestLocalFailedWriteLeavesNothing covers failed writes")
	}
	l := openTemp(t)
	kept := testBytes(1000, 5)
	if _, err := l.Put(ctx, kept, HintNone); err != nil {
		t.Fatal(err)
	}
	shards, _ := filepath.Glob(filepath.Join(l.Dir(), "??"))
	for _, p := range append(shards, l.Dir()) {
		os.Chmod(p, 0o555)
	}
	t.Cleanup(func() {
		for _, p := range append(shards, l.Dir()) {
			os.Chmod(p, 0o755)
		}
	})
	for i := range 20 {
		data := testBytes(1000, byte(10+i))
		if _, err := l.Put(ctx, data, HintNone); err == nil {
			t.Fatal("Put into a read-only store succeeded")
		}
		if ok, _ := l.Has(ctx, Sum(data)); ok {
			t.Fatal("failed Put is visible")
		}
	}
	if tmp := tempFiles(t, l); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	ro, err := OpenLocal(l.Dir(), LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ro.Get(ctx, Sum(kept), nil); err != nil || !bytes.Equal(got, kept) {
		t.Fatalf("read-only store does not serve reads: %v", err)
	}
}

func TestCleanTemp(t *testing.T) {
	l := openTemp(t)
	data := testBytes(1000, 6)
	d := Sum(data)
	var tmp string
	testHookBeforeRename = func(p string) error { tmp = p; return errors.New("crash") }
	l.Put(ctx, data, HintNone)
	testHookBeforeRename = nil
	// Leave a temporary file behind the way a crash would.
	if err := os.WriteFile(tmp, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := l.CleanTemp(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("CleanTemp removed a young file: %d, %v", n, err)
	}
	if n, err := l.CleanTemp(ctx, 0); err != nil || n != 1 {
		t.Fatalf("CleanTemp: %d, %v", n, err)
	}
	if ok, _ := l.Has(ctx, d); ok {
		t.Fatal("temporary file counted as a chunk")
	}
}

func TestPlanesRoundTrip(t *testing.T) {
	for n := 0; n < 80; n++ {
		src := testBytes(n, byte(n))
		lo, hi := make([]byte, (n+1)/2), make([]byte, n/2)
		splitPlanes(lo, hi, src)
		for i := range src {
			want := lo[i/2]
			if i%2 == 1 {
				want = hi[i/2]
			}
			if src[i] != want {
				t.Fatalf("n=%d: byte %d in the wrong plane", n, i)
			}
		}
		out := make([]byte, n)
		joinPlanes(out, lo, hi)
		if !bytes.Equal(out, src) {
			t.Fatalf("n=%d: join(split(x)) != x", n)
		}
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	data := f16ish(10_000)
	for _, codec := range []Codec{CodecZstd, CodecF16Planes} {
		stored, err := EncodeWith(nil, data, codec)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := Decode(nil, codec, stored, len(data)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip: %v", codec, err)
		}
		if _, err := Decode(nil, codec, stored, len(data)+1); err == nil {
			t.Fatalf("%s: wrong size accepted", codec)
		}
		for cut := 0; cut < len(stored); cut += 1 + len(stored)/50 {
			if got, err := Decode(nil, codec, stored[:cut], -1); err == nil && Sum(got) == Sum(data) {
				t.Fatalf("%s: truncated to %d decodes to the chunk", codec, cut)
			}
		}
		for i := 0; i < 200; i++ {
			g := testBytes(len(stored), byte(i))
			Decode(nil, codec, g, -1) // must not panic
		}
	}
}

// A shard directory made by a batch that was discarded (so its root sync never ran) must not
// count as durable: the next Put into that shard syncs the root before reporting success.
func TestLocalShardOfDiscardedBatchIsSynced(t *testing.T) {
	l := openTemp(t)
	first := testBytes(1000, 1)
	d := Sum(first)
	b := NewBatch(l)
	if _, err := b.Put(ctx, first, HintNone); err != nil {
		t.Fatal(err)
	}
	b.Discard()
	if _, err := os.Stat(l.shardDir(d)); err != nil {
		t.Fatalf("the batch did not make the shard directory: %v", err)
	}
	var second []byte
	for i := 0; ; i++ {
		second = append(testBytes(1000, 2), byte(i), byte(i>>8))
		if Sum(second)[0] == d[0] {
			break
		}
	}
	var synced []string
	testHookSyncDir = func(dir string) { synced = append(synced, dir) }
	defer func() { testHookSyncDir = nil }()
	if _, err := l.Put(ctx, second, HintNone); err != nil {
		t.Fatal(err)
	}
	for _, dir := range synced {
		if dir == l.Dir() {
			return
		}
	}
	t.Fatalf("Put into a shard whose creation was never synced synced only %v, not the root", synced)
}
