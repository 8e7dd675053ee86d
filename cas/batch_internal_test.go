package cas

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
	"time"
)

// A batch's chunks are temporary files until Commit, then chunks under their names, with no
// temporary file left; a plain Put of a chunk the batch is writing waits for the batch.
func TestLocalBatchVisibleOnlyAfterCommit(t *testing.T) {
	l := openTemp(t)
	b := l.NewBatch()
	defer b.Discard()
	var chunks [][]byte
	for i := range 20 {
		chunks = append(chunks, f16ish(10_000+i*1000))
	}
	chunks = append(chunks, testBytes(70_000, 4)) // raw
	var infos []Info
	for _, c := range chunks {
		info, err := b.Put(ctx, c, HintFloat16)
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
	}
	for _, in := range infos {
		if ok, _ := l.Has(ctx, in.Digest); ok {
			t.Fatalf("chunk %s visible before Commit", in.Digest)
		}
	}
	if n := len(tempFiles(t, l)); n != len(chunks) {
		t.Fatalf("%d temporary files for %d chunks before Commit", n, len(chunks))
	}
	// A plain Put of a batch's chunk waits for the batch's claim.
	putDone := make(chan error, 1)
	go func() {
		_, err := l.Put(ctx, chunks[0], HintFloat16)
		putDone <- err
	}()
	select {
	case err := <-putDone:
		t.Fatalf("plain Put of a chunk claimed by an open batch returned early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-putDone; err != nil {
		t.Fatal(err)
	}
	for i, in := range infos {
		got, err := l.Get(ctx, in.Digest, nil)
		if err != nil || !bytes.Equal(got, chunks[i]) {
			t.Fatalf("chunk %d after Commit: %v", i, err)
		}
	}
	if tmp := tempFiles(t, l); len(tmp) != 0 {
		t.Fatalf("temporary files after Commit: %v", tmp)
	}
}

// A Commit that fails partway leaves the chunks renamed so far complete and the rest absent,
// with no temporary files; putting them again works.
func TestLocalBatchCommitFails(t *testing.T) {
	l := openTemp(t)
	b := l.NewBatch()
	var chunks [][]byte
	for i := range 10 {
		chunks = append(chunks, testBytes(20_000, byte(i)))
		if _, err := b.Put(ctx, chunks[i], HintNone); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	testHookBeforeRename = func(string) error {
		if n++; n > 4 {
			return syscall.ENOSPC
		}
		return nil
	}
	err := b.Commit(ctx)
	testHookBeforeRename = nil
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Commit with a failing disk: %v", err)
	}
	b.Discard()
	present := 0
	for _, c := range chunks {
		got, err := l.Get(ctx, Sum(c), nil)
		switch {
		case err == nil && bytes.Equal(got, c):
			present++
		case errors.Is(err, ErrNotFound):
		default:
			t.Fatalf("after a failed Commit: %v", err)
		}
	}
	if present != 4 {
		t.Fatalf("%d chunks visible after a Commit that failed at the fifth", present)
	}
	if tmp := tempFiles(t, l); len(tmp) != 0 {
		t.Fatalf("temporary files after a failed Commit: %v", tmp)
	}
	if _, err := PutAll(ctx, l, 3, chunks, HintNone); err != nil {
		t.Fatal(err)
	}
}
