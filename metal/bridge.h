// C interface of the Objective-C side of package metal (bridge_darwin_arm64.m). Plain C so that
// the Go file's cgo preamble needs no Objective-C. Objects (device context, buffers, queues)
// are opaque retained pointers; each is released exactly once with the matching function.
// Functions that can fail return NULL or -1 and write a NUL-terminated message into err
// (errlen bytes).

#ifndef DS_METAL_BRIDGE_H
#define DS_METAL_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#define DSM_MAX_BUFS 8
#define DSM_MAX_PARAMS 128

typedef struct dsm_ctx dsm_ctx;

// One kernel launch: buffers bound at indices 0..nbufs-1 (setBuffer:offset:atIndex:), the
// parameter bytes at index nbufs (setBytes:length:atIndex:, when plen > 0), then
// dispatchThreadgroups:grid threadsPerThreadgroup:tg.
typedef struct {
  int32_t kernel;
  int32_t nbufs;
  void *bufs[DSM_MAX_BUFS];
  uint64_t offs[DSM_MAX_BUFS];
  uint32_t grid[3];
  uint32_t tg[3];
  uint32_t plen;
  uint8_t params[DSM_MAX_PARAMS];
} dsm_dispatch;

// dsm_available reports whether MTLCreateSystemDefaultDevice returns a device.
int dsm_available(void);

// dsm_open opens the system default device and compiles src (Metal Shading Language, srclen
// bytes, fast math off); names lists the kernel functions, separated by '\n', in the order
// dsm_dispatch.kernel refers to them. It refuses devices without unified memory and kernels
// whose SIMD width is not simd_width.
dsm_ctx *dsm_open(const char *src, size_t srclen, const char *names, uint32_t simd_width, char *err,
                  size_t errlen);
void dsm_close(dsm_ctx *c);

// dsm_device_name writes the device's name.
void dsm_device_name(dsm_ctx *c, char *buf, size_t n);
// dsm_max_buffer_length is the device's maxBufferLength.
uint64_t dsm_max_buffer_length(dsm_ctx *c);

// dsm_wrap makes a buffer over the n bytes at address p without copying
// (newBufferWithBytesNoCopy, storage mode shared, no deallocator: the caller keeps the memory
// mapped, in place, until the buffer is released). p and n must be page-aligned. The address
// is an integer so that the Go side never turns an address into a Go pointer.
void *dsm_wrap(dsm_ctx *c, uintptr_t p, size_t n, char *err, size_t errlen);
// dsm_new_buffer makes a shared buffer of n bytes; *contents receives its CPU address.
void *dsm_new_buffer(dsm_ctx *c, size_t n, void **contents, char *err, size_t errlen);
// dsm_new_queue makes a command queue.
void *dsm_new_queue(dsm_ctx *c, char *err, size_t errlen);
// dsm_release releases a buffer or a queue (NULL is ignored).
void dsm_release(void *obj);

// dsm_run encodes the n launches into one compute pass of one command buffer on queue,
// commits it and waits for it to complete. Launches run in order, each seeing the memory
// effects of the previous ones. It returns 0, or -1 with the reason in err.
int dsm_run(dsm_ctx *c, void *queue, const dsm_dispatch *d, int n, char *err, size_t errlen);

#endif
