package main

import (
	"flag"

	"github.com/driftstore/driftstore/checkpoint"
)

// kvCodecAuto is --kv-codec's default, resolved by resolveKVCodec once the backend is known:
// raw KV blocks on a GPU backend, float on the CPU. On a GPU host a restore must keep up with a
// prefill of tens of thousands of tokens a second, and the float codec decodes at under 1 GB/s
// per core (BENCHMARKS.md: on the H100 host raw restores are about twice as fast); on a small
// CPU host the float codec's ~16% fewer bytes at rest win, and its restores stay far ahead of
// re-prefill.
const kvCodecAuto checkpoint.KVCodec = "auto"

// kvCodecFlag registers --kv-codec on fs (commands whose sessions write checkpoints) and
// returns a function that parses its value after fs is parsed (kvCodecAuto for auto).
func kvCodecFlag(fs *flag.FlagSet) func() (checkpoint.KVCodec, error) {
	v := fs.String("kv-codec", "auto", "how checkpoints store KV blocks: float (float16 byte planes, ~16% smaller at rest), raw (restores at copy speed) or auto (raw on a GPU backend, float on the CPU)")
	return func() (checkpoint.KVCodec, error) {
		if *v == string(kvCodecAuto) {
			return kvCodecAuto, nil
		}
		codec, err := checkpoint.ParseKVCodec(*v)
		if err != nil {
			return "", usageError("--kv-codec: %v (or auto)", err)
		}
		return codec, nil
	}
}

// resolveKVCodec turns kvCodecAuto into the codec for backend ("cpu", "cuda", "metal"); other
// values are returned as they are.
func resolveKVCodec(c checkpoint.KVCodec, backend string) checkpoint.KVCodec {
	if c != kvCodecAuto {
		return c
	}
	if backend == "cuda" || backend == "metal" {
		return checkpoint.KVCodecRaw
	}
	return checkpoint.KVCodecFloat
}
