package wasmmem

import (
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// BenchmarkInstantiate measures NewInstance + Store.Close for a module with a
// small memory and for one with a 16 MiB memory and 64 KiB of data, with the
// wasmmem creator and with wasmtime's default allocator (copy-on-write memory
// images on, as shipped, and off, as wasmmem requires).
func BenchmarkInstantiate(b *testing.B) {
	modules := map[string]string{
		"small": testWAT,
		"16MiB": `(module (memory (export "mem") 256) (data (i32.const 4096) "` +
			strings.Repeat(`\2a`, 64<<10) + `"))`,
	}
	for _, mod := range []string{"small", "16MiB"} {
		for _, mode := range []string{"wasmmem", "default", "default-nocow"} {
			b.Run(mod+"/"+mode, func(b *testing.B) {
				cfg := wasmtime.NewConfig()
				var c *Creator
				switch mode {
				case "wasmmem":
					c = NewCreator(Options{})
					c.Install(cfg)
				case "default-nocow":
					cfg.SetMemoryInitCOWSet(false)
				}
				engine := wasmtime.NewEngineWithConfig(cfg)
				wasm, err := wasmtime.Wat2Wasm(modules[mod])
				if err != nil {
					b.Fatal(err)
				}
				module, err := wasmtime.NewModule(engine, wasm)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					store := wasmtime.NewStore(engine)
					if _, err := wasmtime.NewInstance(store, module, nil); err != nil {
						b.Fatal(err)
					}
					store.Close()
				}
				if c != nil && c.Live() != 0 {
					b.Fatalf("Live %d", c.Live())
				}
			})
		}
	}
}
