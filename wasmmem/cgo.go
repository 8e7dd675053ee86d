package wasmmem

// The C side (creator.c) does all the mmap/mprotect work; see wasmmem.h for
// the wasmtime C API declarations it relies on (pinned to wasmtime-go v39).

// #include <stdlib.h>
// #include "wasmmem.h"
import "C"

import (
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

var pageSize = int(C.dsw_page_size())

// installs maps the id given to the C creator at each Install to its Creator.
// The entry is dropped when wasmtime finalizes that creator (engine or
// config freed); by then every region of the engine has been released.
var (
	installsMu sync.RWMutex
	installs   = map[uintptr]*Creator{}
	nextID     uintptr
)

func creatorByID(id C.uintptr_t) *Creator {
	installsMu.RLock()
	defer installsMu.RUnlock()
	return installs[uintptr(id)]
}

// Install makes c the memory creator of cfg and turns copy-on-write memory
// images off (wasmtime aborts instantiation otherwise). Call it before
// wasmtime.NewEngineWithConfig(cfg). It panics if cfg was already used to
// build an engine, or if wasmtime-go's Config layout is not the one this
// package was written against.
func (c *Creator) Install(cfg *wasmtime.Config) {
	p := configPtr(cfg)
	if p == nil {
		panic("wasmmem: Install on a Config that was already used")
	}
	cfg.SetMemoryInitCOWSet(false)
	installsMu.Lock()
	nextID++
	id := nextID
	installs[id] = c
	installsMu.Unlock()
	C.dsw_install(p, C.uintptr_t(id), C.size_t(c.align), C.size_t(c.maxBytes))
	runtime.KeepAlive(cfg)
}

// configPtr returns the wasm_config_t* inside a *wasmtime.Config.
//
// Pinned to wasmtime-go v39.0.1, where Config is
//
//	type Config struct { _ptr *C.wasm_config_t }
//
// wasmtime-go offers no accessor, so read the field through unsafe after
// checking (once, and in TestConfigLayout) that the layout is still that.
func configPtr(cfg *wasmtime.Config) *C.wasm_config_t {
	if err := checkConfigLayout(); err != nil {
		panic(err)
	}
	return *(**C.wasm_config_t)(unsafe.Pointer(cfg))
}

var checkConfigLayout = sync.OnceValue(func() error {
	t := reflect.TypeFor[wasmtime.Config]()
	if t.NumField() != 1 || t.Field(0).Name != "_ptr" || t.Field(0).Type.Kind() != reflect.Pointer ||
		t.Field(0).Offset != 0 || t.Size() != unsafe.Sizeof(uintptr(0)) {
		return fmt.Errorf("wasmmem: wasmtime.Config layout changed (%d fields, size %d); "+
			"configPtr was written for wasmtime-go v39's {_ptr *C.wasm_config_t}", t.NumField(), t.Size())
	}
	return nil
})

func errString(err error) *C.char {
	if err == nil {
		return nil
	}
	return C.CString(err.Error()) // freed by creator.c
}

//export dswGoRegionCreated
func dswGoRegionCreated(id C.uintptr_t, base unsafe.Pointer, size, capacity, guard C.size_t) *C.char {
	c := creatorByID(id)
	if c == nil {
		return errString(fmt.Errorf("wasmmem: creator %d is gone", id))
	}
	return errString(c.created(base, int(size), int(capacity), int(guard)))
}

//export dswGoRegionGrew
func dswGoRegionGrew(id C.uintptr_t, base unsafe.Pointer, oldLen, newLen C.size_t) *C.char {
	c := creatorByID(id)
	if c == nil {
		return errString(fmt.Errorf("wasmmem: creator %d is gone", id))
	}
	return errString(c.grew(base, int(oldLen), int(newLen)))
}

//export dswGoRegionReleased
func dswGoRegionReleased(id C.uintptr_t, base unsafe.Pointer) {
	if c := creatorByID(id); c != nil {
		c.released(base)
	}
}

//export dswGoCreatorFinalized
func dswGoCreatorFinalized(id C.uintptr_t) {
	installsMu.Lock()
	delete(installs, uintptr(id))
	installsMu.Unlock()
}
