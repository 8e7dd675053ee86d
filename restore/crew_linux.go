package restore

import (
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// The crew (see DecodeWith): goroutines parked in the kernel on one futex word, woken all at
// once by one FUTEX_WAKE.
//
// A goroutine blocked in a raw futex syscall holds its thread, not a P; when the wake
// returns, each thread takes an idle P on its own, so the wake-ups overlap, where the Go
// scheduler's own wake-ups (new or readied goroutines) wake one thread at a time, each the
// next.
type crew struct {
	seq  uint32 // futex word: bumped once per batch
	cur  atomic.Pointer[batch]
	size int
	mu   sync.Mutex // one batch at a time
}

var (
	crewOnce sync.Once
	theCrew  *crew
)

const (
	futexWait = 128 | 0 // FUTEX_WAIT_PRIVATE
	futexWake = 128 | 1 // FUTEX_WAKE_PRIVATE
)

// wakeCrew offers batch b to up to n parked workers and wakes them; it returns how many it
// woke (0 when the crew is busy with another call's batch), which the caller passes to
// releaseCrew when its batch is done.
func wakeCrew(b *batch, n int) int {
	crewOnce.Do(func() {
		theCrew = &crew{size: runtime.GOMAXPROCS(0) - 1}
		for range theCrew.size {
			go theCrew.loop()
		}
	})
	c := theCrew
	if c.size == 0 || !c.mu.TryLock() {
		return 0
	}
	n = min(n, c.size)
	c.cur.Store(b)
	atomic.AddUint32(&c.seq, 1)
	syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(&c.seq)), futexWake, uintptr(n), 0, 0, 0)
	return n
}

// releaseCrew ends the batch wakeCrew offered (woken > 0): workers that wake later find
// nothing.
func releaseCrew(woken int) {
	if woken == 0 {
		return
	}
	theCrew.cur.Store(nil)
	theCrew.mu.Unlock()
}

// loop is a crew worker: it joins each batch it is woken for and parks again.
func (c *crew) loop() {
	seen := atomic.LoadUint32(&c.seq)
	for {
		s := atomic.LoadUint32(&c.seq)
		if s == seen {
			// Returns at once if seq moved since the load (EAGAIN), on a wake, or on a
			// signal (EINTR); each case loops to look again.
			syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(&c.seq)), futexWait, uintptr(s), 0, 0, 0)
			continue
		}
		seen = s
		if b := c.cur.Load(); b != nil {
			b.join()
		}
	}
}
