package main

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"runtime"
)

// globals are the flags every subcommand accepts.
type globals struct {
	data      string // data directory
	server    string // daemon URL; when set, commands talk to it instead of opening data
	tokenFile string // bearer token for the daemon
	json      bool   // one JSON object on stdout instead of human output
}

func (g *globals) defaults() {
	g.data = os.Getenv("DRIFTSTORE_DATA")
	if g.data == "" {
		g.data = defaultDataDir()
	}
	g.server = os.Getenv("DRIFTSTORE_SERVER")
	g.tokenFile = os.Getenv("DRIFTSTORE_TOKEN_FILE")
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.data, "data", g.data, "data directory (env DRIFTSTORE_DATA)")
	fs.StringVar(&g.server, "server", g.server, "URL of a running driftstore daemon to use instead of the data directory (env DRIFTSTORE_SERVER)")
	fs.StringVar(&g.tokenFile, "token-file", g.tokenFile, "file holding the bearer token for --server (env DRIFTSTORE_TOKEN_FILE)")
	fs.BoolVar(&g.json, "json", g.json, "print one JSON object on stdout instead of human output")
}

// defaultDataDir is $XDG_DATA_HOME/driftstore, else ~/.local/share/driftstore
// (~/Library/Application Support/driftstore on macOS).
func defaultDataDir() string {
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "driftstore")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "driftstore-data"
	}
	if runtime.GOOS == "darwin" {
		return filepath.Join(home, "Library", "Application Support", "driftstore")
	}
	return filepath.Join(home, ".local", "share", "driftstore")
}

// printJSON writes v as one JSON object on stdout.
func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
