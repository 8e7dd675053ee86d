//go:build unix

package cas

import (
	"os"

	"golang.org/x/sys/unix"
)

// errWouldBlock is what flockNB returns while another process holds the lock.
var errWouldBlock = unix.EWOULDBLOCK

// flockNB takes an flock on f without waiting: shared or exclusive.
func flockNB(f *os.File, shared bool) error {
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err != unix.EINTR {
			return err
		}
	}
}
