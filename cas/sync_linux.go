//go:build linux

package cas

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncAll makes the given files (and, on the second call of a batch, directory entries) under
// root durable. On Linux it is one syncfs(2) of root's file system: one journal commit for
// the whole batch, where an fsync per file costs one each. syncfs reports writeback errors
// of the file system since Linux 5.8.
func syncAll(root string, files []string) error {
	f, err := os.Open(root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: root, Err: err}
	}
	return nil
}

// syncAllDirs makes renames in the given directories durable: on Linux, one syncfs.
func syncAllDirs(root string, dirs []string) error { return syncAll(root, nil) }
