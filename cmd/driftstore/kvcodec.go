package main

import (
	"flag"

	"github.com/driftstore/driftstore/checkpoint"
)

// kvCodecFlag registers --kv-codec on fs (commands whose sessions write checkpoints) and
// returns a function that parses its value after fs is parsed.
func kvCodecFlag(fs *flag.FlagSet) func() (checkpoint.KVCodec, error) {
	v := fs.String("kv-codec", "float", "how checkpoints store KV blocks: float (float16 byte planes, ~16% smaller at rest) or raw (restores at copy speed)")
	return func() (checkpoint.KVCodec, error) {
		codec, err := checkpoint.ParseKVCodec(*v)
		if err != nil {
			return "", usageError("--kv-codec: %v", err)
		}
		return codec, nil
	}
}
