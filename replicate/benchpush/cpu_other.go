//go:build !unix

package benchpush

import "time"

// processCPU is 0 where this package does not read the process's CPU time.
func processCPU() time.Duration { return 0 }
