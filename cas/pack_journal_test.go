package cas

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// journalOf lists the payloads JournalEntries gives, and its error.
func journalOf(t *testing.T, p *Pack) ([]string, error) {
	t.Helper()
	var got []string
	err := p.JournalEntries(func(b []byte) error {
		got = append(got, string(b))
		return nil
	})
	return got, err
}

func TestPackJournalEntries(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// Small packs, so that entries and their chunks spread over several files.
	opts := PackOptions{MaxPackSize: 4 << 10}
	p, err := OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 0; i < 6; i++ {
		b := p.NewBatch()
		for j := 0; j < 3; j++ {
			if _, err := b.Put(ctx, fmt.Appendf(nil, "chunk %d.%d %0999d", i, j, i), HintNone); err != nil {
				t.Fatal(err)
			}
		}
		payload := fmt.Sprintf("entry %d", i)
		release, err := b.(JournalBatch).CommitJournal(ctx, []byte(payload))
		if err != nil {
			t.Fatal(err)
		}
		release()
		want = append(want, payload)
	}
	// A cancelled entry (its commit failed) is never listed.
	jr, err := p.writeJournal([]byte("cancelled"))
	if err != nil {
		t.Fatal(err)
	}
	p.cancelJournal(jr)
	// An empty batch still carries its entry.
	release, err := p.NewBatch().(JournalBatch).CommitJournal(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	release()
	want = append(want, "")
	if got, err := journalOf(t, p); err != nil || len(got) != 0 {
		t.Fatalf("entries of this incarnation listed: %q %v", got, err)
	}
	p.Close()

	p, err = OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	got, err := journalOf(t, p)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("entries %q %v, want %q", got, err, want)
	}
	// Every chunk is there too.
	n := 0
	if err := p.Walk(ctx, func(Info) error { n++; return nil }); err != nil || n != 18 {
		t.Fatalf("%d chunks, %v", n, err)
	}
	first := p.journal[0]
	p.Close()

	// A flipped byte in a durable entry's payload: the others are listed, then the damage
	// is reported.
	path := filepath.Join(dir, packName(first.pack))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[first.off+packHeaderSize] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err = OpenPack(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	got, err = journalOf(t, p)
	var ce *CorruptError
	if !errors.As(err, &ce) || !slices.Equal(got, want[1:]) {
		t.Fatalf("after damage: %q %v", got, err)
	}
}

// TestPackJournalTornTail: an entry whose bytes did not all reach the file is cut off with the
// tail, as a torn chunk is.
func TestPackJournalTornTail(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := p.NewBatch()
	if _, err := b.Put(ctx, []byte("kept"), HintNone); err != nil {
		t.Fatal(err)
	}
	if _, err := b.(JournalBatch).CommitJournal(ctx, []byte("durable")); err != nil {
		t.Fatal(err)
	}
	jr, err := p.writeJournal([]byte("torn entry payload"))
	if err != nil {
		t.Fatal(err)
	}
	path, end := jr.pf.path, jr.end()
	p.Close()
	if err := os.Truncate(path, end-3); err != nil {
		t.Fatal(err)
	}
	p, err = OpenPack(dir, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got, err := journalOf(t, p); err != nil || !slices.Equal(got, []string{"durable"}) {
		t.Fatalf("entries %q %v", got, err)
	}
}
