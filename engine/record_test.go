package engine

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRecordAtEndOfFullMemory: a guest's memory may be the full 4 GiB; an empty record in
// its last 4 bytes is empty, not (with off+4 wrapping to 0 in 32 bits) the whole memory.
// The 4 GiB are reserved, not committed: only the page holding the length is read.
func TestRecordAtEndOfFullMemory(t *testing.T) {
	const size = 1 << 32
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANON|unix.MAP_NORESERVE)
	if err != nil {
		t.Skipf("cannot reserve 4 GiB of address space: %v", err)
	}
	defer unix.Munmap(mem)
	rec, err := recordAt(mem, size-4)
	if err != nil || len(rec) != 0 {
		t.Fatalf("empty record at the end of 4 GiB: %d bytes, %v", len(rec), err)
	}
	if _, err := recordAt(mem, size-3); !errors.Is(err, ErrGuest) {
		t.Fatalf("record prefix past the end: %v", err)
	}
}

func TestRecordAt(t *testing.T) {
	mem := []byte{0, 0, 2, 0, 0, 0, 'h', 'i', 9, 0, 0, 0}
	if rec, err := recordAt(mem, 2); err != nil || string(rec) != "hi" {
		t.Fatalf("record at 2: %q, %v", rec, err)
	}
	if _, err := recordAt(mem, 8); !errors.Is(err, ErrGuest) {
		t.Fatalf("record of 9 bytes in 4 left: %v", err)
	}
	if _, err := recordAt(mem, 1<<32-1); !errors.Is(err, ErrGuest) {
		t.Fatalf("record offset past memory: %v", err)
	}
}
