// Declarations shared by the cgo preamble and creator.c.
//
// The wasmtime types and functions below are declared here, not included from
// wasmtime-go's bundled headers, and must match the wasmtime C API of
// wasmtime-go v39.0.1 exactly (build/include/wasmtime/config.h, error.h,
// wasm.h). The symbols resolve at the final link against the libwasmtime that
// github.com/bytecodealliance/wasmtime-go/v39 links.
#ifndef DRIFTSTORE_WASMMEM_H
#define DRIFTSTORE_WASMMEM_H

#include <stddef.h>
#include <stdint.h>

// wasm.h: opaque types.
typedef struct wasm_config_t wasm_config_t;
typedef struct wasm_memorytype_t wasm_memorytype_t;
// wasmtime/error.h
typedef struct wasmtime_error wasmtime_error_t;
extern wasmtime_error_t *wasmtime_error_new(const char *);

// wasmtime/config.h
typedef uint8_t *(*wasmtime_memory_get_callback_t)(void *env, size_t *byte_size,
                                                   size_t *byte_capacity);
typedef wasmtime_error_t *(*wasmtime_memory_grow_callback_t)(void *env,
                                                             size_t new_size);
typedef struct wasmtime_linear_memory {
  void *env;
  wasmtime_memory_get_callback_t get_memory;
  wasmtime_memory_grow_callback_t grow_memory;
  void (*finalizer)(void *);
} wasmtime_linear_memory_t;
typedef wasmtime_error_t *(*wasmtime_new_memory_callback_t)(
    void *env, const wasm_memorytype_t *ty, size_t minimum, size_t maximum,
    size_t reserved_size_in_bytes, size_t guard_size_in_bytes,
    wasmtime_linear_memory_t *memory_ret);
typedef struct wasmtime_memory_creator {
  void *env;
  wasmtime_new_memory_callback_t new_memory;
  void (*finalizer)(void *);
} wasmtime_memory_creator_t;
extern void wasmtime_config_host_memory_creator_set(wasm_config_t *,
                                                    wasmtime_memory_creator_t *);

// creator.c
//
// dsw_install sets a memory creator on cfg whose regions report to the Go
// creator registered under id. align is a power of two and a multiple of the
// OS page size; max_bytes 0 means no cap below the reservation.
void dsw_install(wasm_config_t *cfg, uintptr_t id, size_t align, size_t max_bytes);
size_t dsw_page_size(void);

#endif
