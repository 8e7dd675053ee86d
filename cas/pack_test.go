package cas_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"testing"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/cas/castest"
)

var bg = context.Background()

func openPack(t testing.TB, dir string, opts cas.PackOptions) *cas.Pack {
	t.Helper()
	p, err := cas.OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestPackConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store {
		return openPack(t, t.TempDir(), cas.PackOptions{MaxPackSize: 4 << 20})
	})
}

// TestPackPreadConformance runs the suite with Gets that pread instead of reading through the
// pack files' mappings.
func TestPackPreadConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store {
		return openPack(t, t.TempDir(), cas.PackOptions{MaxPackSize: 4 << 20, NoMap: true})
	})
}

// TestPackReopenedConformance runs the suite on stores that were written, closed and reopened
// before use (the suite's data then shares the packs with what the reopen scanned), with small
// packs so that the suite rolls over many of them. NoSync keeps it quick (the suite above runs
// the synced paths).
func TestPackReopenedConformance(t *testing.T) {
	castest.Run(t, func(t *testing.T) cas.Store {
		dir := t.TempDir()
		opts := cas.PackOptions{MaxPackSize: 256 << 10, NoSync: true}
		p, err := cas.OpenPack(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.Put(bg, castest.Random(5000, 4242), cas.HintNone)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Delete(bg, d.Digest); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		return openPack(t, dir, opts)
	})
}

// putMany puts n distinct chunks of mixed codecs and returns them by digest.
func putMany(t *testing.T, s cas.Store, n int, seed uint64) map[cas.Digest][]byte {
	t.Helper()
	out := map[cas.Digest][]byte{}
	for i := range n {
		data, hint := castest.KVFloat16(8<<10+i*64, seed+uint64(i)), cas.HintFloat16
		if i%3 == 0 {
			data, hint = castest.Random(5000+i, seed+uint64(i)), cas.HintNone
		}
		info, err := s.Put(bg, data, hint)
		if err != nil {
			t.Fatal(err)
		}
		out[info.Digest] = data
	}
	return out
}

// checkExactly fails t unless s holds exactly the chunks of want, each reading back intact.
func checkExactly(t *testing.T, s cas.Store, want map[cas.Digest][]byte) {
	t.Helper()
	n := 0
	if err := s.Walk(bg, func(in cas.Info) error {
		n++
		data, ok := want[in.Digest]
		if !ok {
			return fmt.Errorf("unexpected chunk %s", in.Digest)
		}
		got, err := s.Get(bg, in.Digest, nil)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, data) {
			return fmt.Errorf("chunk %s: wrong bytes", in.Digest)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("%d chunks, want %d", n, len(want))
	}
}

func packFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "pack-*.dsp"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPackReopenAndRollOver: small packs roll over; a reopen finds every chunk, with the same
// Info (write time included), and appends to the newest pack.
func TestPackReopenAndRollOver(t *testing.T) {
	dir := t.TempDir()
	opts := cas.PackOptions{MaxPackSize: 64 << 10}
	p, err := cas.OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := putMany(t, p, 40, 1)
	infos, err := cas.PutAll(bg, p, 2, [][]byte{castest.Random(70<<10, 99), castest.KVFloat16(30<<10, 98)}, cas.HintFloat16)
	if err != nil {
		t.Fatal(err)
	}
	want[infos[0].Digest], want[infos[1].Digest] = castest.Random(70<<10, 99), castest.KVFloat16(30<<10, 98)
	before := map[cas.Digest]cas.Info{}
	p.Walk(bg, func(in cas.Info) error { before[in.Digest] = in; return nil })
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	files := packFiles(t, dir)
	if len(files) < 5 {
		t.Fatalf("%d pack files for ~400 KiB in 64 KiB packs", len(files))
	}
	for _, f := range files[:len(files)-1] {
		if st, _ := os.Stat(f); st.Size() > 70<<10+1024 { // one over-size record may stand alone
			t.Fatalf("%s is %d bytes, over MaxPackSize", f, st.Size())
		}
	}
	p = openPack(t, dir, opts)
	checkExactly(t, p, want)
	p.Walk(bg, func(in cas.Info) error {
		if b := before[in.Digest]; b != in && !b.ModTime.Equal(in.ModTime) {
			t.Errorf("Info after reopen %+v, before %+v", in, b)
		}
		return nil
	})
	extra := castest.Random(1000, 7)
	if _, err := p.Put(bg, extra, cas.HintNone); err != nil {
		t.Fatal(err)
	}
	if n := len(packFiles(t, dir)); n != len(files) && n != len(files)+1 {
		t.Fatalf("%d pack files after one more small put, had %d", n, len(files))
	}
}

// TestPackCorruptPayload: a flipped payload byte on disk makes Get fail with a *CorruptError
// naming the chunk (Has and Stat still say present: they do not read), for every codec.
func TestPackCorruptPayload(t *testing.T) {
	dir := t.TempDir()
	p := openPack(t, dir, cas.PackOptions{})
	for _, c := range []struct {
		data []byte
		hint cas.Hint
	}{
		{castest.Random(50_000, 1), cas.HintNone},
		{bytes.Repeat([]byte("compressible "), 5000), cas.HintNone},
		{castest.KVFloat16(64<<10, 2), cas.HintFloat16},
	} {
		info, err := p.Put(bg, c.data, c.hint)
		if err != nil {
			t.Fatal(err)
		}
		castest.Corrupt(t, dir, info.Digest)
		_, err = p.Get(bg, info.Digest, nil)
		var ce *cas.CorruptError
		if !errors.As(err, &ce) || ce.Digest != info.Digest || !strings.Contains(err.Error(), info.Digest.String()) {
			t.Fatalf("%s: Get of a corrupt chunk: %v", info.Codec, err)
		}
		// A Put of the same content finds it present (Local behaves the same: fsck finds it).
		if ok, _ := p.Has(bg, info.Digest); !ok {
			t.Fatal("corrupt chunk vanished")
		}
	}
}

// TestPackDeleteCompactReopen: deleted chunks free their packs through Compact; survivors move
// and read back; nothing deleted comes back after a reopen, and a chunk put again after its
// deletion stays.
func TestPackDeleteCompactReopen(t *testing.T) {
	dir := t.TempDir()
	opts := cas.PackOptions{MaxPackSize: 48 << 10}
	p, err := cas.OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	all := putMany(t, p, 60, 10)
	keep := map[cas.Digest][]byte{}
	var reput cas.Digest
	i := 0
	for d, data := range all {
		i++
		switch {
		case i%4 == 0:
			keep[d] = data
		case reput.IsZero():
			reput = d
			if err := p.Delete(bg, d); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Put(bg, data, cas.HintNone); err != nil { // after its deletion
				t.Fatal(err)
			}
			keep[d] = data
		default:
			if err := p.Delete(bg, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	filesBefore := len(packFiles(t, dir))
	st, err := p.Compact(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Packs == 0 || st.BytesReclaimed <= 0 {
		t.Fatalf("Compact after deleting 3/4 of the chunks: %+v", st)
	}
	if n := len(packFiles(t, dir)); n >= filesBefore {
		t.Fatalf("%d pack files after Compact, %d before", n, filesBefore)
	}
	checkExactly(t, p, keep)
	if st2, err := p.Compact(bg); err != nil || st2.Packs > 1 {
		t.Fatalf("second Compact: %+v, %v", st2, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = openPack(t, dir, opts)
	checkExactly(t, p, keep)
	// Deleting everything and compacting leaves the store empty, across a reopen.
	for d := range keep {
		if err := p.Delete(bg, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Compact(bg); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p = openPack(t, dir, opts)
	checkExactly(t, p, nil)
}

// TestPackConcurrentCompact runs Gets, Puts and Deletes while Compact moves chunks: every Get
// of a chunk not deleted returns its bytes.
func TestPackConcurrentCompact(t *testing.T) {
	dir := t.TempDir()
	p := openPack(t, dir, cas.PackOptions{MaxPackSize: 32 << 10, NoSync: true})
	all := putMany(t, p, 80, 20)
	var ids []cas.Digest
	for d := range all {
		ids = append(ids, d)
	}
	for _, d := range ids[:50] {
		p.Delete(bg, d)
	}
	stop := make(chan struct{})
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := ids[50+(i*7+w)%30]
				got, err := p.Get(bg, d, nil)
				if err != nil || !bytes.Equal(got, all[d]) {
					errc <- fmt.Errorf("Get %s during Compact: %v", d, err)
					return
				}
			}
		}()
	}
	for range 3 {
		if _, err := p.Compact(bg); err != nil {
			t.Fatal(err)
		}
		putMany(t, p, 5, 500)
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// TestPackReadOnly: readers share the lock; their writes fail with ErrReadOnly; a writer cannot
// open meanwhile.
func TestPackReadOnly(t *testing.T) {
	dir := t.TempDir()
	p, err := cas.OpenPack(dir, cas.PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := putMany(t, p, 5, 1)
	p.Close()
	r1 := openPack(t, dir, cas.PackOptions{ReadOnly: true})
	r2 := openPack(t, dir, cas.PackOptions{ReadOnly: true})
	checkExactly(t, r1, want)
	checkExactly(t, r2, want)
	if _, err := r1.Put(bg, []byte("new"), cas.HintNone); !errors.Is(err, cas.ErrReadOnly) {
		t.Fatalf("Put on a read-only store: %v", err)
	}
	for d := range want {
		if err := r1.Delete(bg, d); !errors.Is(err, cas.ErrReadOnly) {
			t.Fatalf("Delete on a read-only store: %v", err)
		}
		break
	}
	if _, err := cas.OpenPack(dir, cas.PackOptions{}); !errors.Is(err, cas.ErrLocked) {
		t.Fatalf("writer while readers hold the store: %v", err)
	}
}

// TestPackDiscardedBatchStaysGone: a discarded batch's chunks are not present, also after a
// reopen (their records are tombstoned, not just forgotten), while a committed one's are.
func TestPackDiscardedBatchStaysGone(t *testing.T) {
	dir := t.TempDir()
	p, err := cas.OpenPack(dir, cas.PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept, dropped := castest.Random(3000, 1), castest.Random(3000, 2)
	b := p.NewBatch()
	if _, err := b.Put(bg, dropped, cas.HintNone); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Put(bg, kept, cas.HintNone); err != nil { // its sync covers dropped's bytes too
		t.Fatal(err)
	}
	b.Discard()
	p.Close()
	p = openPack(t, dir, cas.PackOptions{})
	checkExactly(t, p, map[cas.Digest][]byte{cas.Sum(kept): kept})
}

// TestPackBatchCoalescedRollOver: a batch of many more records than one run buffer holds (and
// one record too large for a run, and for a pack), into packs small enough to roll over several
// times, put by two workers while another batch that shares one of its chunks is discarded and
// plain Puts wait on chunks both batches claimed. No chunk is visible before Commit, every pack
// stays within MaxPackSize (but the one holding the oversized record alone), and after a reopen
// the store holds exactly the committed chunks and the plain Puts', intact.
func TestPackBatchCoalescedRollOver(t *testing.T) {
	const maxPack = 700 << 10 // under a run: runs are cut at pack ends
	dir := t.TempDir()
	p := openPack(t, dir, cas.PackOptions{MaxPackSize: maxPack})
	ctx, cancel := context.WithTimeout(bg, time.Minute) // a deadlock fails instead of hanging
	defer cancel()

	var kept [][]byte // about 6 MiB in records of 20-33 KB, raw and compressed
	for i := range 240 {
		if i%2 == 0 {
			kept = append(kept, castest.Random(20_000+i*50, uint64(i)))
		} else {
			kept = append(kept, castest.KVFloat16(32<<10, uint64(i)))
		}
	}
	big := castest.Random(2<<20, 999) // raw: a record over both the run size and MaxPackSize
	kept = append(kept, big)
	var dropped [][]byte // about 1.8 MiB: one run written before the Discard, the rest buffered
	for i := range 60 {
		dropped = append(dropped, castest.Random(30_000, 5000+uint64(i)))
	}
	shared := kept[7]                            // put by the discarded batch first
	afterDiscard := castest.Random(25_000, 6000) // claimed by the discarded batch, then put plainly
	want := map[cas.Digest][]byte{cas.Sum(afterDiscard): afterDiscard}
	for _, c := range kept {
		want[cas.Sum(c)] = c
	}

	a, d := p.NewBatch(), p.NewBatch()
	defer a.Discard()
	defer d.Discard()
	for _, c := range append([][]byte{shared, afterDiscard}, dropped...) {
		if _, err := d.Put(ctx, c, cas.HintNone); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Put(ctx, kept[0], cas.HintNone); err != nil { // a claims kept[0]
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	plain := func(c []byte) { // waits for the batch that claimed c to end
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Put(ctx, c, cas.HintNone); err != nil {
				t.Errorf("plain Put of a chunk claimed by a batch: %v", err)
			}
		}()
	}
	plain(kept[0])
	plain(afterDiscard)
	var next atomic.Int64
	var workers sync.WaitGroup
	for range 2 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for i := int(next.Add(1) - 1); i < len(kept); i = int(next.Add(1) - 1) {
				hint := cas.HintNone
				if i%2 == 1 {
					hint = cas.HintFloat16
				}
				if _, err := a.Put(ctx, kept[i], hint); err != nil {
					t.Errorf("batch put %d: %v", i, err)
				}
			}
		}()
	}
	d.Discard() // while a's workers put
	workers.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i, c := range kept {
		if ok, _ := p.Has(ctx, cas.Sum(c)); ok {
			t.Fatalf("chunk %d of the batch is visible before Commit", i)
		}
	}
	if err := a.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	checkExactly(t, p, want)

	files := packFiles(t, dir)
	if len(files) < 5 {
		t.Fatalf("%d pack files, want the batch to roll over at least 4 times", len(files))
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		// Sync markers (and tombstones, without a payload) may follow the last record.
		const slack = 4 * 64
		alone := 64 + int64(len(big))
		if st.Size() > maxPack+slack && (st.Size() < alone || st.Size() > alone+slack) {
			t.Errorf("%s: %d bytes, over MaxPackSize %d", filepath.Base(f), st.Size(), maxPack)
		}
	}
	p.Close()
	checkExactly(t, openPack(t, dir, cas.PackOptions{MaxPackSize: maxPack}), want)
}
