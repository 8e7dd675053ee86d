// The memory creator proper: reservation, commit and grow are plain
// mmap/mprotect in C, so the callbacks wasmtime makes on its own schedule
// (get_memory runs often) never enter Go. Go is entered once per event
// (created, grew, released) to keep the registry and run the hook.

#include "wasmmem.h"
#include "_cgo_export.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif

// Reservation used when wasmtime leaves the choice to us (reserved == 0).
#define DSW_DEFAULT_RESERVE ((size_t)4 << 30)

typedef struct {
  uintptr_t id;
  size_t align;
  size_t max_bytes;
  size_t page;
} dsw_creator;

typedef struct {
  uint8_t *base;
  size_t size;      // accessible bytes, what wasmtime sees
  size_t committed; // bytes from base that are PROT_READ|PROT_WRITE (size rounded up to a page)
  size_t capacity;  // reserved bytes, excluding the guard
  size_t map_len;   // capacity + guard, from base
  uint8_t *raw;     // the whole reservation: [raw, raw+raw_len) contains [base, base+map_len)
  size_t raw_len;
  size_t max_bytes;
  size_t page;
  uintptr_t id;
} dsw_region;

size_t dsw_page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static size_t round_up(size_t n, size_t to) { return (n + to - 1) & ~(to - 1); }

static wasmtime_error_t *errorf(const char *what, size_t a, size_t b, int err) {
  char buf[256];
  if (err)
    snprintf(buf, sizeof buf, "wasmmem: %s (%zu, %zu): %s", what, a, b, strerror(err));
  else
    snprintf(buf, sizeof buf, "wasmmem: %s (%zu, %zu)", what, a, b);
  return wasmtime_error_new(buf);
}

static wasmtime_error_t *go_error(char *msg) {
  wasmtime_error_t *e = wasmtime_error_new(msg);
  free(msg);
  return e;
}

static uint8_t *dsw_get_memory(void *env, size_t *byte_size, size_t *byte_capacity) {
  dsw_region *r = env;
  *byte_size = r->size;
  *byte_capacity = r->capacity;
  return r->base;
}

static wasmtime_error_t *dsw_grow_memory(void *env, size_t new_size) {
  dsw_region *r = env;
  if (new_size <= r->size)
    return NULL;
  if (new_size > r->capacity)
    return errorf("grow past the reservation", new_size, r->capacity, 0);
  if (r->max_bytes && new_size > r->max_bytes)
    return errorf("grow past MaxBytes", new_size, r->max_bytes, 0);
  size_t old_size = r->size, old_committed = r->committed;
  size_t commit = round_up(new_size, r->page);
  if (commit > old_committed &&
      mprotect(r->base + old_committed, commit - old_committed, PROT_READ | PROT_WRITE) != 0)
    return errorf("mprotect on grow", old_committed, commit, errno);
  r->size = new_size;
  r->committed = commit;
  char *msg = dswGoRegionGrew(r->id, r->base, old_size, new_size);
  if (msg == NULL)
    return NULL;
  // The hook refused: undo, and drop whatever was touched so a later grow
  // hands the guest zeroed pages again.
  if (commit > old_committed) {
    madvise(r->base + old_committed, commit - old_committed, MADV_DONTNEED);
    mprotect(r->base + old_committed, commit - old_committed, PROT_NONE);
  }
  r->size = old_size;
  r->committed = old_committed;
  return go_error(msg);
}

static void dsw_release_memory(void *env) {
  dsw_region *r = env;
  dswGoRegionReleased(r->id, r->base);
  munmap(r->raw, r->raw_len);
  free(r);
}

static wasmtime_error_t *dsw_new_memory(void *env, const wasm_memorytype_t *ty, size_t minimum,
                                        size_t maximum, size_t reserved, size_t guard,
                                        wasmtime_linear_memory_t *ret) {
  (void)ty;
  dsw_creator *c = env;
  size_t page = c->page;
  size_t cap = reserved;
  if (cap == 0) {
    // wasmtime does not need a fixed reservation for this memory; we still
    // never move, so reserve for the largest size it may reach.
    cap = maximum;
    if (c->max_bytes && cap > c->max_bytes)
      cap = c->max_bytes;
    if (cap > DSW_DEFAULT_RESERVE)
      cap = DSW_DEFAULT_RESERVE;
    if (cap < minimum)
      cap = minimum;
  }
  if (cap > SIZE_MAX / 2 || guard > SIZE_MAX / 4)
    return errorf("reservation too large", cap, guard, 0);
  cap = round_up(cap, page);
  guard = round_up(guard, page);
  if (minimum > cap)
    return errorf("minimum size exceeds the reservation", minimum, cap, 0);
  if (c->max_bytes && minimum > c->max_bytes)
    return errorf("minimum size exceeds MaxBytes", minimum, c->max_bytes, 0);

  size_t map_len = cap + guard;
  if (map_len == 0)
    map_len = page;
  size_t total = map_len + c->align;
  uint8_t *raw = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED)
    return errorf("mmap reservation", total, 0, errno);
  // The slack before and after the aligned span stays reserved (PROT_NONE)
  // and is unmapped with the rest on release: trimming it costs a munmap per
  // instance for nothing.
  uint8_t *base = (uint8_t *)round_up((uintptr_t)raw, c->align);

  size_t commit = round_up(minimum, page);
  if (commit && mprotect(base, commit, PROT_READ | PROT_WRITE) != 0) {
    int err = errno;
    munmap(raw, total);
    return errorf("mprotect initial commit", commit, 0, err);
  }
  dsw_region *r = calloc(1, sizeof *r);
  if (r == NULL) {
    munmap(raw, total);
    return errorf("out of memory", sizeof *r, 0, ENOMEM);
  }
  r->base = base;
  r->size = minimum;
  r->committed = commit;
  r->capacity = cap;
  r->map_len = map_len;
  r->raw = raw;
  r->raw_len = total;
  r->max_bytes = c->max_bytes;
  r->page = page;
  r->id = c->id;

  char *msg = dswGoRegionCreated(c->id, base, minimum, cap, guard);
  if (msg != NULL) {
    munmap(raw, total);
    free(r);
    return go_error(msg);
  }
  ret->env = r;
  ret->get_memory = dsw_get_memory;
  ret->grow_memory = dsw_grow_memory;
  ret->finalizer = dsw_release_memory;
  return NULL;
}

static void dsw_creator_finalize(void *env) {
  dsw_creator *c = env;
  dswGoCreatorFinalized(c->id);
  free(c);
}

void dsw_install(wasm_config_t *cfg, uintptr_t id, size_t align, size_t max_bytes) {
  dsw_creator *c = calloc(1, sizeof *c);
  if (c == NULL)
    abort();
  c->id = id;
  c->align = align;
  c->max_bytes = max_bytes;
  c->page = dsw_page_size();
  wasmtime_memory_creator_t mc = {
      .env = c,
      .new_memory = dsw_new_memory,
      .finalizer = dsw_creator_finalize,
  };
  wasmtime_config_host_memory_creator_set(cfg, &mc);
}
