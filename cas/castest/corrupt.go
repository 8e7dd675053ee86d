package castest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/driftstore/driftstore/cas"
)

// Corrupt flips one bit of a byte in the middle of chunk d's stored payload on disk, whether
// storeDir holds a cas.Pack (pack files) or a cas.Local (one file per chunk), so that the next
// Get of d fails with a *cas.CorruptError. The store may be open in this process: the pack
// index is read from the files (without taking the store's lock), and a Pack keeps chunk
// locations in memory, which the byte flip does not move. Fails t when d is not found.
func Corrupt(t testing.TB, storeDir string, d cas.Digest) {
	t.Helper()
	path, off, err := locate(storeDir, d)
	if err != nil {
		t.Fatalf("corrupt %s: %v", d, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("corrupt %s: %v", d, err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatalf("corrupt %s: %v", d, err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatalf("corrupt %s: %v", d, err)
	}
}

// locate finds the file and offset of a byte in the middle of d's payload.
func locate(storeDir string, d cas.Digest) (string, int64, error) {
	if packs, _ := filepath.Glob(filepath.Join(storeDir, "pack-*.dsp")); len(packs) > 0 {
		path, off, n, err := cas.LocatePacked(storeDir, d)
		if err != nil {
			return "", 0, err
		}
		if n == 0 {
			return "", 0, fmt.Errorf("chunk %s has an empty payload: nothing to corrupt", d)
		}
		return path, off + int64(n/2), nil
	}
	l, err := cas.OpenLocal(storeDir, cas.LocalOptions{})
	if err != nil {
		return "", 0, err
	}
	path := l.Path(d)
	st, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	const header = 16 // Local's chunk file header (see cas/local.go)
	if st.Size() <= header {
		return "", 0, fmt.Errorf("chunk %s has an empty payload: nothing to corrupt", d)
	}
	return path, header + (st.Size()-header)/2, nil
}
