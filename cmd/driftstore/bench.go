package main

import (
	"fmt"
	"sort"
	"strings"
)

// benchmark is one `driftstore bench NAME` subcommand. Files named bench_NAME.go register them
// from init with registerBench.
type benchmark struct {
	name    string
	args    string // synopsis after "bench NAME"
	summary string
	run     func(c *cli, args []string) error
}

var benchmarks = map[string]*benchmark{}

// registerBench adds a benchmark; registering a name twice panics.
func registerBench(b *benchmark) {
	if _, dup := benchmarks[b.name]; dup {
		panic("driftstore: benchmark registered twice: " + b.name)
	}
	benchmarks[b.name] = b
}

func benchNames() string {
	names := make([]string, 0, len(benchmarks))
	for n := range benchmarks {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, "|")
}

func init() {
	register(&command{
		name:    "bench",
		args:    "NAME [flags]  (NAME: see 'driftstore bench --help')",
		summary: "run a benchmark and print a table (--json for machines)",
		run: func(c *cli, args []string) error {
			if len(args) == 0 || strings.HasPrefix(args[0], "-") {
				if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
					fmt.Fprintf(c.stdout, "Usage: driftstore bench %s [flags]\n\n", benchNames())
					for _, n := range strings.Split(benchNames(), "|") {
						fmt.Fprintf(c.stdout, "  %-10s %s\n", n, benchmarks[n].summary)
					}
					return nil
				}
				return usageError("bench needs a benchmark name: %s", benchNames())
			}
			b, ok := benchmarks[args[0]]
			if !ok {
				return usageError("unknown benchmark %q: want %s", args[0], benchNames())
			}
			c.command = &command{name: "bench " + b.name, args: b.args, summary: b.summary}
			return b.run(c, args[1:])
		},
	})
}
