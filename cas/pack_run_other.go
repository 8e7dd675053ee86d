//go:build !linux

package cas

// pwriteRun writes the buffers of iov back to back at off in pf's file, one pwrite each.
func pwriteRun(pf *packFile, iov [][]byte, off int64) error {
	for _, b := range iov {
		if _, err := pf.f.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}
