//go:build !unix

package cas

// mapping: no mapped reads here; Gets pread.
func (p *Pack) mapping(pf *packFile) []byte { return nil }

func (pf *packFile) unmap() error { return nil }

func readMapped(d Digest, fn func() error) error { return fn() }
