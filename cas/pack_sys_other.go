//go:build !linux && unix

package cas

import (
	"errors"
	"os"
)

// fdatasync makes f durable: an fsync here (no fdatasync).
func fdatasync(f *os.File) error { return f.Sync() }

// pwriteRecord writes a then b at off in pf's file: two pwrites.
func pwriteRecord(pf *packFile, a, b []byte, off int64) error {
	if _, err := pf.f.WriteAt(a, off); err != nil {
		return err
	}
	if len(b) > 0 {
		if _, err := pf.f.WriteAt(b, off+int64(len(a))); err != nil {
			return err
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

// allocateAhead: not on this system (no fallocate); the pack goes on without.
func allocateAhead(f *os.File, off, n int64) error { return errors.ErrUnsupported }

// releaseAhead: nothing was allocated ahead.
func releaseAhead(f *os.File) error { return nil }

// allocatesAhead: never here (see allocateAhead).
func allocatesAhead(dir string) bool { return false }
