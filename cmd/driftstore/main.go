// Command driftstore keeps, moves and resumes the state of LLM inference: it runs models inside a
// WebAssembly sandbox and turns their KV cache into content-addressed checkpoints.
//
// Each subcommand lives in a file of its own in this folder and registers itself from init.
// A subcommand file holds flags and output only; the work is done by the packages it calls.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand. run parses its own flags with c.flagSet and does the work.
type command struct {
	name    string // as typed: "put", "model"
	args    string // synopsis after the name: "FILE... [--tag NAME]"
	summary string // one line for the command list
	run     func(c *cli, args []string) error
}

var commands = map[string]*command{}

func register(cmd *command) {
	if _, dup := commands[cmd.name]; dup {
		panic("driftstore: command registered twice: " + cmd.name)
	}
	commands[cmd.name] = cmd
}

// errUsage marks an error in how the command was called; main exits with status 2 for it.
var errUsage = errors.New("usage")

// usageError returns an error that prints as msg and exits with status 2.
func usageError(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runMain runs one invocation and returns the exit status: 0 on success, 1 on failure, 2 on a
// usage error.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{ctx: ctx, stdout: stdout, stderr: stderr}
	c.globals.defaults()

	// Global flags may come before the subcommand name as well as after it.
	pre := flag.NewFlagSet("driftstore", flag.ContinueOnError)
	pre.SetOutput(io.Discard)
	c.globals.register(pre)
	if err := pre.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.topUsage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "driftstore: %v\n\n", err)
		c.topUsage(stderr)
		return 2
	}
	rest := pre.Args()
	if len(rest) == 0 {
		c.topUsage(stderr)
		return 2
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			if cmd, ok := commands[rest[1]]; ok {
				return c.finish(cmd.run(c, []string{"--help"}))
			}
		}
		c.topUsage(stdout)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "driftstore: unknown command %q\n\n", name)
		c.topUsage(stderr)
		return 2
	}
	c.command = cmd
	return c.finish(cmd.run(c, rest[1:]))
}

// finish turns a subcommand's error into an exit status and a message on stderr.
func (c *cli) finish(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(c.stderr, "driftstore: %v\n", err)
		if c.command != nil {
			fmt.Fprintf(c.stderr, "run 'driftstore %s --help' for usage\n", c.command.name)
		}
		return 2
	case errors.Is(err, errSilentFailure):
		return 1
	default:
		fmt.Fprintf(c.stderr, "driftstore: %v\n", err)
		return 1
	}
}

// errSilentFailure makes the process exit 1 without another message: the command has already
// reported what went wrong (fsck, for one).
var errSilentFailure = errors.New("failed")

func (c *cli) topUsage(w io.Writer) {
	fmt.Fprintf(w, `driftstore keeps, moves and resumes the state of LLM inference.

Usage: driftstore [global flags] COMMAND [flags] [args]

Commands:
`)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nGlobal flags (before or after COMMAND):\n")
	fs := flag.NewFlagSet("driftstore", flag.ContinueOnError)
	var g globals
	g.defaults()
	g.register(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprintf(w, "\nRun 'driftstore COMMAND --help' for a command's flags.\n")
}

// flagSet returns a FlagSet for the running subcommand with the global flags already on it.
func (c *cli) flagSet() *flag.FlagSet {
	name, args, summary := "driftstore", "", ""
	if c.command != nil {
		name, args, summary = c.command.name, c.command.args, c.command.summary
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: driftstore %s %s\n\n%s\n\nFlags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	c.globals.register(fs)
	return fs
}

// parse parses args into fs. --help prints usage to stdout and returns flag.ErrHelp.
func (c *cli) parse(fs *flag.FlagSet, args []string) error {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(c.stdout)
			fs.Usage()
			return flag.ErrHelp
		}
	}
	fs.SetOutput(io.Discard)
	if err := parseInterspersed(fs, args); err != nil {
		return usageError("%v", err)
	}
	fs.SetOutput(c.stderr)
	return nil
}

// parseInterspersed parses flags that may appear before, between and after positional
// arguments ("put a.bin --tag x b.bin"). A lone "--" ends flag parsing.
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

// cli carries what every subcommand needs: the globals, the context and the output streams.
type cli struct {
	ctx     context.Context
	stdout  io.Writer
	stderr  io.Writer
	command *command
	globals globals
}

// printf writes human output to stdout; it writes nothing when --json is set.
func (c *cli) printf(format string, a ...any) {
	if !c.globals.json {
		fmt.Fprintf(c.stdout, format, a...)
	}
}

// logf writes progress and notes to stderr.
func (c *cli) logf(format string, a ...any) {
	fmt.Fprintf(c.stderr, format, a...)
}

// splitList splits "a,b,c" into trimmed, non-empty parts.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
