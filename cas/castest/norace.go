//go:build !race

package castest

const raceEnabled = false
