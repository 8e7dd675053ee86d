//go:build race

package castest

// raceEnabled: the race detector makes sync.Pool drop items at random, so allocation bounds
// that rely on pooled buffers are not checked.
const raceEnabled = true
