//go:build linux

package cas

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// pageSize is the page cache's page size.
var pageSize = os.Getpagesize()

// iovMax is the most buffers one pwritev(2) takes (IOV_MAX on Linux).
const iovMax = 1024

// pwriteRun writes the buffers of iov back to back at off in pf's file with pwritev(2), as
// many calls as IOV_MAX and short writes need, and starts their writeback when pf.writeback is
// set and they come to writebackMin or more (see pwriteRecord). It changes iov's elements (not
// the bytes they hold).
func pwriteRun(pf *packFile, iov [][]byte, off int64) error {
	total := 0
	for _, b := range iov {
		total += len(b)
	}
	if pf.writeback && total >= writebackMin {
		// Up to the last whole page only: the next record is written into the partial page
		// that ends this write, and a page under writeback would hold that write until the
		// page had reached the disk, to be written again by the next barrier (one more disk
		// round trip in the barrier, measured ≈ 0.3 ms per checkpoint commit).
		if end := (off + int64(total)) &^ int64(pageSize-1); end > off {
			defer unix.SyncFileRange(int(pf.f.Fd()), off, end-off, unix.SYNC_FILE_RANGE_WRITE) // advisory: an error changes nothing
		}
	}
	fd := int(pf.f.Fd())
	for len(iov) > 0 && len(iov[0]) == 0 {
		iov = iov[1:]
	}
	for len(iov) > 0 {
		n, err := unix.Pwritev(fd, iov[:min(len(iov), iovMax)], off)
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
		for n > 0 { // the kernel never writes more than it was given
			k := min(n, len(iov[0]))
			iov[0] = iov[0][k:]
			n -= k
			if len(iov[0]) == 0 {
				iov = iov[1:]
			}
		}
		for len(iov) > 0 && len(iov[0]) == 0 {
			iov = iov[1:]
		}
	}
	return nil
}
