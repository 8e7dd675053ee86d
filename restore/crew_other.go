//go:build !linux

package restore

// wakeCrew: there is no crew outside Linux; DecodeWith starts goroutines for every worker.
func wakeCrew(b *batch, n int) int { return 0 }

func releaseCrew(woken int) {}
