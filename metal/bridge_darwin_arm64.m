//go:build darwin && arm64 && cgo

// Objective-C side of package metal: the few Metal calls the Go side needs, behind the plain C
// interface of bridge.h. Compiled with ARC (-fobjc-arc, set in backend_darwin.go); objects
// cross to Go as retained opaque pointers (__bridge_retained) and come back with
// CFBridgingRelease. Every entry point drains its own autorelease pool: cgo calls arrive on
// threads that have none.
//
// Written from Apple's Metal documentation; not compiled or run by its authors (see
// docs/metal.md).

#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <string.h>

#include "bridge.h"

@interface DSMContext : NSObject
@property(nonatomic, strong) id<MTLDevice> device;
@property(nonatomic, strong) NSArray<id<MTLComputePipelineState>> *pipelines;
@end

@implementation DSMContext
@end

static void dsm_set_err(char *err, size_t errlen, NSString *msg) {
  if (err == NULL || errlen == 0) {
    return;
  }
  const char *s = msg != nil ? [msg UTF8String] : NULL;
  if (s == NULL) {
    s = "unknown Metal error";
  }
  strncpy(err, s, errlen - 1);
  err[errlen - 1] = 0;
}

static DSMContext *dsm_from(dsm_ctx *c) { return (__bridge DSMContext *)(void *)c; }

int dsm_available(void) {
  @autoreleasepool {
    id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
    return dev != nil;
  }
}

dsm_ctx *dsm_open(const char *src, size_t srclen, const char *names, uint32_t simd_width, char *err,
                  size_t errlen) {
  @autoreleasepool {
    id<MTLDevice> dev = MTLCreateSystemDefaultDevice();
    if (dev == nil) {
      dsm_set_err(err, errlen, @"no Metal device (MTLCreateSystemDefaultDevice returned nil)");
      return NULL;
    }
    if (!dev.hasUnifiedMemory) {
      dsm_set_err(err, errlen,
                  [NSString stringWithFormat:@"%@ has no unified memory: zero-copy buffers need Apple Silicon",
                                             dev.name]);
      return NULL;
    }
    NSString *source = [[NSString alloc] initWithBytes:src length:srclen encoding:NSUTF8StringEncoding];
    if (source == nil) {
      dsm_set_err(err, errlen, @"kernel source is not UTF-8");
      return NULL;
    }
    MTLCompileOptions *opts = [[MTLCompileOptions alloc] init];
    // Fast math would let the compiler reassociate sums and use approximate exp: results would
    // drift from engine/cpu. fastMathEnabled = NO is the same as mathMode = safe on macOS 15+,
    // and exists on every version.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
    opts.fastMathEnabled = NO;
#pragma clang diagnostic pop
    NSError *e = nil;
    id<MTLLibrary> lib = [dev newLibraryWithSource:source options:opts error:&e];
    if (lib == nil) {
      dsm_set_err(err, errlen,
                  [NSString stringWithFormat:@"compile kernels.metal: %@", e != nil ? e.localizedDescription : @"?"]);
      return NULL;
    }
    NSArray<NSString *> *list = [[NSString stringWithUTF8String:names] componentsSeparatedByString:@"\n"];
    NSMutableArray<id<MTLComputePipelineState>> *pipes = [NSMutableArray arrayWithCapacity:list.count];
    for (NSString *name in list) {
      id<MTLFunction> fn = [lib newFunctionWithName:name];
      if (fn == nil) {
        dsm_set_err(err, errlen, [NSString stringWithFormat:@"kernel %@ not found in kernels.metal", name]);
        return NULL;
      }
      e = nil;
      id<MTLComputePipelineState> ps = [dev newComputePipelineStateWithFunction:fn error:&e];
      if (ps == nil) {
        dsm_set_err(err, errlen,
                    [NSString stringWithFormat:@"pipeline %@: %@", name, e != nil ? e.localizedDescription : @"?"]);
        return NULL;
      }
      if (ps.threadExecutionWidth != simd_width) {
        dsm_set_err(err, errlen,
                    [NSString stringWithFormat:@"kernel %@: SIMD width %lu, the kernels need %u", name,
                                               (unsigned long)ps.threadExecutionWidth, simd_width]);
        return NULL;
      }
      [pipes addObject:ps];
    }
    DSMContext *c = [[DSMContext alloc] init];
    c.device = dev;
    c.pipelines = pipes;
    return (dsm_ctx *)(__bridge_retained void *)c;
  }
}

void dsm_close(dsm_ctx *c) {
  if (c != NULL) {
    @autoreleasepool {
      (void)CFBridgingRelease((void *)c);
    }
  }
}

void dsm_device_name(dsm_ctx *c, char *buf, size_t n) {
  @autoreleasepool {
    dsm_set_err(buf, n, dsm_from(c).device.name);
  }
}

uint64_t dsm_max_buffer_length(dsm_ctx *c) {
  @autoreleasepool {
    return (uint64_t)dsm_from(c).device.maxBufferLength;
  }
}

void *dsm_wrap(dsm_ctx *c, uintptr_t p, size_t n, char *err, size_t errlen) {
  @autoreleasepool {
    // The region (or the mapped file) outlives the buffer: no deallocator.
    id<MTLBuffer> b = [dsm_from(c).device newBufferWithBytesNoCopy:(void *)p
                                                             length:n
                                                            options:MTLResourceStorageModeShared
                                                        deallocator:nil];
    if (b == nil) {
      dsm_set_err(err, errlen,
                  [NSString stringWithFormat:@"newBufferWithBytesNoCopy(%#lx, %lu) failed", (unsigned long)p, (unsigned long)n]);
      return NULL;
    }
    return (__bridge_retained void *)b;
  }
}

void *dsm_new_buffer(dsm_ctx *c, size_t n, void **contents, char *err, size_t errlen) {
  @autoreleasepool {
    id<MTLBuffer> b = [dsm_from(c).device newBufferWithLength:n options:MTLResourceStorageModeShared];
    if (b == nil) {
      dsm_set_err(err, errlen, [NSString stringWithFormat:@"newBufferWithLength(%lu) failed", (unsigned long)n]);
      return NULL;
    }
    *contents = b.contents;
    return (__bridge_retained void *)b;
  }
}

void *dsm_new_queue(dsm_ctx *c, char *err, size_t errlen) {
  @autoreleasepool {
    id<MTLCommandQueue> q = [dsm_from(c).device newCommandQueue];
    if (q == nil) {
      dsm_set_err(err, errlen, @"newCommandQueue failed");
      return NULL;
    }
    return (__bridge_retained void *)q;
  }
}

void dsm_release(void *obj) {
  if (obj != NULL) {
    @autoreleasepool {
      (void)CFBridgingRelease(obj);
    }
  }
}

int dsm_run(dsm_ctx *c, void *queue, const dsm_dispatch *d, int n, char *err, size_t errlen) {
  @autoreleasepool {
    DSMContext *ctx = dsm_from(c);
    // Check every launch before encoding anything, so that no encoder is left open on error.
    for (int i = 0; i < n; i++) {
      const dsm_dispatch *x = &d[i];
      if (x->kernel < 0 || (NSUInteger)x->kernel >= ctx.pipelines.count || x->nbufs < 0 ||
          x->nbufs > DSM_MAX_BUFS || x->plen > DSM_MAX_PARAMS) {
        dsm_set_err(err, errlen, [NSString stringWithFormat:@"bad launch %d (kernel %d)", i, x->kernel]);
        return -1;
      }
      NSUInteger threads = (NSUInteger)x->tg[0] * x->tg[1] * x->tg[2];
      id<MTLComputePipelineState> ps = ctx.pipelines[(NSUInteger)x->kernel];
      if (threads == 0 || threads > ps.maxTotalThreadsPerThreadgroup) {
        dsm_set_err(err, errlen,
                    [NSString stringWithFormat:@"launch %d: %lu threads per threadgroup, the pipeline allows %lu", i,
                                               (unsigned long)threads,
                                               (unsigned long)ps.maxTotalThreadsPerThreadgroup]);
        return -1;
      }
      for (int j = 0; j < x->nbufs; j++) {
        if (x->bufs[j] == NULL) {
          dsm_set_err(err, errlen, [NSString stringWithFormat:@"launch %d: buffer %d missing", i, j]);
          return -1;
        }
      }
    }
    id<MTLCommandQueue> q = (__bridge id<MTLCommandQueue>)queue;
    // commandBuffer (not commandBufferWithUnretainedReferences): the command buffer keeps every
    // buffer it uses alive until it completes.
    id<MTLCommandBuffer> cb = [q commandBuffer];
    if (cb == nil) {
      dsm_set_err(err, errlen, @"commandBuffer failed");
      return -1;
    }
    id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];  // serial dispatch
    if (enc == nil) {
      dsm_set_err(err, errlen, @"computeCommandEncoder failed");
      return -1;
    }
    for (int i = 0; i < n; i++) {
      const dsm_dispatch *x = &d[i];
      if (x->grid[0] == 0 || x->grid[1] == 0 || x->grid[2] == 0) {
        continue;
      }
      [enc setComputePipelineState:ctx.pipelines[(NSUInteger)x->kernel]];
      for (int j = 0; j < x->nbufs; j++) {
        [enc setBuffer:(__bridge id<MTLBuffer>)x->bufs[j] offset:(NSUInteger)x->offs[j] atIndex:(NSUInteger)j];
      }
      if (x->plen > 0) {
        [enc setBytes:x->params length:x->plen atIndex:(NSUInteger)x->nbufs];
      }
      [enc dispatchThreadgroups:MTLSizeMake(x->grid[0], x->grid[1], x->grid[2])
          threadsPerThreadgroup:MTLSizeMake(x->tg[0], x->tg[1], x->tg[2])];
    }
    [enc endEncoding];
    [cb commit];
    [cb waitUntilCompleted];
    if (cb.status != MTLCommandBufferStatusCompleted) {
      NSError *e = cb.error;
      dsm_set_err(err, errlen,
                  [NSString stringWithFormat:@"command buffer status %ld: %@", (long)cb.status,
                                             e != nil ? e.localizedDescription : @"no error given"]);
      return -1;
    }
    return 0;
  }
}
