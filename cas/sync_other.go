//go:build !linux

package cas

import "os"

// syncAll makes the given files durable: an fsync of each (no syncfs here).
func syncAll(root string, files []string) error {
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// syncAllDirs makes renames in the given directories durable: an fsync of each.
func syncAllDirs(root string, dirs []string) error { return syncAll(root, dirs) }
