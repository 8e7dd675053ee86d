//go:build linux

package cas

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fdatasync makes f's data (and the metadata needed to read it, such as its size) durable.
func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// pwriteRecord writes a then b at off in pf's file with pwritev(2), without copying them
// into one buffer.
func pwriteRecord(pf *packFile, a, b []byte, off int64) error {
	fd := int(pf.f.Fd())
	iov := [][]byte{a, b}
	if len(b) == 0 {
		iov = iov[:1]
	}
	for len(iov) > 0 {
		n, err := unix.Pwritev(fd, iov, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "pwritev", Path: pf.path, Err: err}
		}
		if n == 0 {
			return fmt.Errorf("pwritev %s: wrote nothing", pf.path)
		}
		off += int64(n)
		for n > 0 && len(iov) > 0 {
			k := min(n, len(iov[0]))
			iov[0] = iov[0][k:]
			n -= k
			if len(iov[0]) == 0 {
				iov = iov[1:]
			}
		}
	}
	return nil
}

// syncDirPath makes the entries of directory dir durable.
func syncDirPath(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
