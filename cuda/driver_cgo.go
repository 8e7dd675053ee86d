//go:build linux && cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream, *CUevent;
typedef unsigned long long CUdeviceptr;

// The driver entry points driftstore uses, resolved with dlsym. Names with _v2 are what
// cuda.h's macros map the plain names to; their signatures are unchanged since CUDA 4.
#define DS_FUNCS(X) \
	X(cuInit, "cuInit", (unsigned), (a0)) \
	X(cuDriverGetVersion, "cuDriverGetVersion", (int*), (a0)) \
	X(cuDeviceGetCount, "cuDeviceGetCount", (int*), (a0)) \
	X(cuDeviceGet, "cuDeviceGet", (CUdevice*, int), (a0, a1)) \
	X(cuDeviceGetName, "cuDeviceGetName", (char*, int, CUdevice), (a0, a1, a2)) \
	X(cuDeviceGetAttribute, "cuDeviceGetAttribute", (int*, int, CUdevice), (a0, a1, a2)) \
	X(cuDeviceTotalMem, "cuDeviceTotalMem_v2", (size_t*, CUdevice), (a0, a1)) \
	X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", (CUcontext*, CUdevice), (a0, a1)) \
	X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", (CUdevice), (a0)) \
	X(cuCtxSetCurrent, "cuCtxSetCurrent", (CUcontext), (a0)) \
	X(cuCtxSynchronize, "cuCtxSynchronize", (void), ()) \
	X(cuModuleLoadDataEx, "cuModuleLoadDataEx", (CUmodule*, const void*, unsigned, int*, void**), (a0, a1, a2, a3, a4)) \
	X(cuModuleUnload, "cuModuleUnload", (CUmodule), (a0)) \
	X(cuModuleGetFunction, "cuModuleGetFunction", (CUfunction*, CUmodule, const char*), (a0, a1, a2)) \
	X(cuFuncSetAttribute, "cuFuncSetAttribute", (CUfunction, int, int), (a0, a1, a2)) \
	X(cuLaunchKernel, "cuLaunchKernel", (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void**, void**), (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)) \
	X(cuMemAlloc, "cuMemAlloc_v2", (CUdeviceptr*, size_t), (a0, a1)) \
	X(cuMemFree, "cuMemFree_v2", (CUdeviceptr), (a0)) \
	X(cuMemGetInfo, "cuMemGetInfo_v2", (size_t*, size_t*), (a0, a1)) \
	X(cuMemcpyHtoD, "cuMemcpyHtoD_v2", (CUdeviceptr, const void*, size_t), (a0, a1, a2)) \
	X(cuMemcpyDtoH, "cuMemcpyDtoH_v2", (void*, CUdeviceptr, size_t), (a0, a1, a2)) \
	X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", (CUdeviceptr, const void*, size_t, CUstream), (a0, a1, a2, a3)) \
	X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", (void*, CUdeviceptr, size_t, CUstream), (a0, a1, a2, a3)) \
	X(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2", (CUdeviceptr, CUdeviceptr, size_t, CUstream), (a0, a1, a2, a3)) \
	X(cuMemHostRegister, "cuMemHostRegister_v2", (void*, size_t, unsigned), (a0, a1, a2)) \
	X(cuMemHostUnregister, "cuMemHostUnregister", (void*), (a0)) \
	X(cuMemHostGetDevicePointer, "cuMemHostGetDevicePointer_v2", (CUdeviceptr*, void*, unsigned), (a0, a1, a2)) \
	X(cuStreamCreate, "cuStreamCreate", (CUstream*, unsigned), (a0, a1)) \
	X(cuStreamDestroy, "cuStreamDestroy_v2", (CUstream), (a0)) \
	X(cuStreamSynchronize, "cuStreamSynchronize", (CUstream), (a0)) \
	X(cuEventCreate, "cuEventCreate", (CUevent*, unsigned), (a0, a1)) \
	X(cuEventRecord, "cuEventRecord", (CUevent, CUstream), (a0, a1)) \
	X(cuEventSynchronize, "cuEventSynchronize", (CUevent), (a0)) \
	X(cuEventElapsedTime, "cuEventElapsedTime", (float*, CUevent, CUevent), (a0, a1, a2)) \
	X(cuEventDestroy, "cuEventDestroy_v2", (CUevent), (a0)) \
	X(cuGetErrorString, "cuGetErrorString", (CUresult, const char**), (a0, a1)) \
	X(cuGetErrorName, "cuGetErrorName", (CUresult, const char**), (a0, a1))

#define DS_PTR(name, sym, args, call) static CUresult (*p_##name) args;
DS_FUNCS(DS_PTR)

static void *ds_lib;
static char ds_loaderr[512];

// ds_load opens libcuda.so.1 and resolves every entry point. Returns NULL or an error text.
static const char *ds_load(void) {
	ds_lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!ds_lib) {
		const char *e = dlerror();
		snprintf(ds_loaderr, sizeof ds_loaderr, "%s", e ? e : "dlopen libcuda.so.1 failed");
		return ds_loaderr;
	}
#define DS_SYM(name, sym, args, call) \
	p_##name = (CUresult (*) args)dlsym(ds_lib, sym); \
	if (!p_##name) { snprintf(ds_loaderr, sizeof ds_loaderr, "libcuda.so.1 lacks %s", sym); return ds_loaderr; }
	DS_FUNCS(DS_SYM)
	// Newer drivers add a _v2 of cuEventElapsedTime; both take the same arguments.
	void *v2 = dlsym(ds_lib, "cuEventElapsedTime_v2");
	if (v2) p_cuEventElapsedTime = (CUresult (*)(float*, CUevent, CUevent))v2;
	return NULL;
}

// Each call makes ctx current on the calling thread first (goroutines move between threads).
static __thread CUcontext ds_cur;
static CUresult ds_bind(CUcontext ctx) {
	if (ctx == ds_cur) return 0;
	CUresult r = p_cuCtxSetCurrent(ctx);
	if (r == 0) ds_cur = ctx;
	return r;
}
#define BIND(ctx) do { CUresult _r = ds_bind(ctx); if (_r) return _r; } while (0)

static CUresult ds_init(void) { return p_cuInit(0); }
static CUresult ds_driver_version(int *v) { return p_cuDriverGetVersion(v); }
static CUresult ds_device_count(int *n) { return p_cuDeviceGetCount(n); }
static CUresult ds_device_get(CUdevice *d, int ord) { return p_cuDeviceGet(d, ord); }
static CUresult ds_device_name(char *buf, int n, CUdevice d) { return p_cuDeviceGetName(buf, n, d); }
static CUresult ds_device_attr(int *v, int attr, CUdevice d) { return p_cuDeviceGetAttribute(v, attr, d); }
static CUresult ds_device_mem(size_t *v, CUdevice d) { return p_cuDeviceTotalMem(v, d); }
static CUresult ds_ctx_retain(CUcontext *c, CUdevice d) { return p_cuDevicePrimaryCtxRetain(c, d); }
static CUresult ds_ctx_release(CUdevice d) { ds_cur = NULL; return p_cuDevicePrimaryCtxRelease(d); }
static CUresult ds_ctx_sync(CUcontext c) { BIND(c); return p_cuCtxSynchronize(); }

static CUresult ds_module_load(CUcontext c, CUmodule *m, const char *image, char *log, size_t logn) {
	BIND(c);
	int opts[2] = {5, 6}; // CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
	void *vals[2] = {log, (void *)(uintptr_t)logn};
	return p_cuModuleLoadDataEx(m, image, 2, opts, vals);
}
static CUresult ds_module_unload(CUcontext c, CUmodule m) { BIND(c); return p_cuModuleUnload(m); }
static CUresult ds_module_func(CUcontext c, CUfunction *f, CUmodule m, const char *name) {
	BIND(c); return p_cuModuleGetFunction(f, m, name);
}
static CUresult ds_func_attr(CUcontext c, CUfunction f, int attr, int v) {
	BIND(c); return p_cuFuncSetAttribute(f, attr, v);
}

// ds_launch passes the n parameters stored one per 8-byte slot (4-byte ones in the low half).
static CUresult ds_launch(CUcontext c, CUfunction f, unsigned gx, unsigned gy, unsigned gz,
		unsigned bx, unsigned by, unsigned bz, unsigned shmem, CUstream s, uint64_t *slots, int n) {
	void *params[32];
	for (int i = 0; i < n && i < 32; i++) params[i] = &slots[i];
	BIND(c);
	return p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, NULL);
}

static CUresult ds_alloc(CUcontext c, CUdeviceptr *p, size_t n) { BIND(c); return p_cuMemAlloc(p, n); }
static CUresult ds_free(CUcontext c, CUdeviceptr p) { BIND(c); return p_cuMemFree(p); }
static CUresult ds_mem_info(CUcontext c, size_t *f, size_t *t) { BIND(c); return p_cuMemGetInfo(f, t); }
static CUresult ds_htod(CUcontext c, CUdeviceptr d, const void *h, size_t n) { BIND(c); return p_cuMemcpyHtoD(d, h, n); }
static CUresult ds_dtoh(CUcontext c, void *h, CUdeviceptr d, size_t n) { BIND(c); return p_cuMemcpyDtoH(h, d, n); }
static CUresult ds_htod_async(CUcontext c, CUdeviceptr d, const void *h, size_t n, CUstream s) {
	BIND(c); return p_cuMemcpyHtoDAsync(d, h, n, s);
}
static CUresult ds_dtoh_async(CUcontext c, uintptr_t h, CUdeviceptr d, size_t n, CUstream s) {
	BIND(c); return p_cuMemcpyDtoHAsync((void *)h, d, n, s);
}
static CUresult ds_dtod_async(CUcontext c, CUdeviceptr d, CUdeviceptr src, size_t n, CUstream s) {
	BIND(c); return p_cuMemcpyDtoDAsync(d, src, n, s);
}
// Registration takes addresses as integers: the memory is not Go's (wasmtime's or mmap'd).
static CUresult ds_host_register(CUcontext c, uintptr_t p, size_t n, unsigned flags) {
	BIND(c); return p_cuMemHostRegister((void *)p, n, flags);
}
static CUresult ds_host_unregister(CUcontext c, uintptr_t p) { BIND(c); return p_cuMemHostUnregister((void *)p); }
static CUresult ds_host_devptr(CUcontext c, CUdeviceptr *d, uintptr_t p) {
	BIND(c); return p_cuMemHostGetDevicePointer(d, (void *)p, 0);
}
static CUresult ds_stream_create(CUcontext c, CUstream *s, unsigned flags) { BIND(c); return p_cuStreamCreate(s, flags); }
static CUresult ds_stream_destroy(CUcontext c, CUstream s) { BIND(c); return p_cuStreamDestroy(s); }
static CUresult ds_stream_sync(CUcontext c, CUstream s) { BIND(c); return p_cuStreamSynchronize(s); }
static CUresult ds_event_create(CUcontext c, CUevent *e, unsigned flags) { BIND(c); return p_cuEventCreate(e, flags); }
static CUresult ds_event_record(CUcontext c, CUevent e, CUstream s) { BIND(c); return p_cuEventRecord(e, s); }
static CUresult ds_event_sync(CUcontext c, CUevent e) { BIND(c); return p_cuEventSynchronize(e); }
static CUresult ds_event_elapsed(CUcontext c, float *ms, CUevent a, CUevent b) { BIND(c); return p_cuEventElapsedTime(ms, a, b); }
static CUresult ds_event_destroy(CUcontext c, CUevent e) { BIND(c); return p_cuEventDestroy(e); }

static const char *ds_err_name(CUresult r) {
	const char *s = NULL;
	if (!p_cuGetErrorName || p_cuGetErrorName(r, &s) != 0 || !s) return "CUDA_ERROR_UNKNOWN_CODE";
	return s;
}
static const char *ds_err_string(CUresult r) {
	const char *s = NULL;
	if (!p_cuGetErrorString || p_cuGetErrorString(r, &s) != 0 || !s) return "";
	return s;
}
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

type (
	cuContext  = C.CUcontext
	cuModule   = C.CUmodule
	cuFunction = C.CUfunction
	cuStream   = C.CUstream
	cuEvent    = C.CUevent
)

var (
	loadOnce sync.Once
	loadErr  error
)

// load opens the driver library and runs cuInit once per process.
func load() error {
	loadOnce.Do(func() {
		if msg := C.ds_load(); msg != nil {
			loadErr = fmt.Errorf("%w: %s", ErrUnavailable, C.GoString(msg))
			return
		}
		if r := C.ds_init(); r != 0 {
			loadErr = fmt.Errorf("%w: cuInit: %w", ErrUnavailable, errOf("cuInit", r))
		}
	})
	return loadErr
}

func errOf(op string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: op, Code: int(r), Name: C.GoString(C.ds_err_name(r)), Msg: C.GoString(C.ds_err_string(r))}
}

func drvDriverVersion() (int, error) {
	var v C.int
	return int(v), errOf("cuDriverGetVersion", C.ds_driver_version(&v))
}

func drvDeviceCount() (int, error) {
	var n C.int
	return int(n), errOf("cuDeviceGetCount", C.ds_device_count(&n))
}

type drvDevice struct {
	dev C.CUdevice
	ctx C.CUcontext
}

func drvOpenDevice(ordinal int) (*drvDevice, error) {
	var d drvDevice
	if err := errOf("cuDeviceGet", C.ds_device_get(&d.dev, C.int(ordinal))); err != nil {
		return nil, err
	}
	if err := errOf("cuDevicePrimaryCtxRetain", C.ds_ctx_retain(&d.ctx, d.dev)); err != nil {
		return nil, err
	}
	return &d, nil
}

func (d *drvDevice) release() error {
	return errOf("cuDevicePrimaryCtxRelease", C.ds_ctx_release(d.dev))
}

func (d *drvDevice) name() string {
	var buf [256]C.char
	if C.ds_device_name(&buf[0], C.int(len(buf)), d.dev) != 0 {
		return "unknown"
	}
	return C.GoString(&buf[0])
}

func (d *drvDevice) attr(a int) (int, error) {
	var v C.int
	return int(v), errOf("cuDeviceGetAttribute", C.ds_device_attr(&v, C.int(a), d.dev))
}

func (d *drvDevice) totalMem() (int64, error) {
	var v C.size_t
	return int64(v), errOf("cuDeviceTotalMem", C.ds_device_mem(&v, d.dev))
}

func (d *drvDevice) memInfo() (free, total int64, err error) {
	var f, t C.size_t
	err = errOf("cuMemGetInfo", C.ds_mem_info(d.ctx, &f, &t))
	return int64(f), int64(t), err
}

func (d *drvDevice) sync() error { return errOf("cuCtxSynchronize", C.ds_ctx_sync(d.ctx)) }

func (d *drvDevice) loadModule(ptx []byte) (cuModule, error) {
	img := C.CString(string(ptx))
	defer C.free(unsafe.Pointer(img))
	var log [8192]C.char
	var m C.CUmodule
	if r := C.ds_module_load(d.ctx, &m, img, &log[0], C.size_t(len(log))); r != 0 {
		return nil, fmt.Errorf("%w: %s", errOf("cuModuleLoadDataEx", r), C.GoString(&log[0]))
	}
	return m, nil
}

func (d *drvDevice) unloadModule(m cuModule) error {
	return errOf("cuModuleUnload", C.ds_module_unload(d.ctx, m))
}

func (d *drvDevice) function(m cuModule, name string) (cuFunction, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var f C.CUfunction
	if err := errOf("cuModuleGetFunction "+name, C.ds_module_func(d.ctx, &f, m, cs)); err != nil {
		return nil, err
	}
	return f, nil
}

func (d *drvDevice) setMaxDynamicShared(f cuFunction, bytes int) error {
	// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
	return errOf("cuFuncSetAttribute", C.ds_func_attr(d.ctx, f, 8, C.int(bytes)))
}

// launch enqueues f on s. args holds one 8-byte slot per kernel parameter.
func (d *drvDevice) launch(f cuFunction, grid, block [3]uint32, shmem uint32, s cuStream, args *argSlots) error {
	r := C.ds_launch(d.ctx, f, C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]), C.uint(shmem), s,
		(*C.uint64_t)(unsafe.Pointer(&args.v[0])), C.int(args.n))
	return errOf("cuLaunchKernel", r)
}

func (d *drvDevice) alloc(n int) (DevPtr, error) {
	var p C.CUdeviceptr
	if err := errOf("cuMemAlloc", C.ds_alloc(d.ctx, &p, C.size_t(n))); err != nil {
		return 0, err
	}
	return DevPtr(p), nil
}

func (d *drvDevice) free(p DevPtr) error {
	return errOf("cuMemFree", C.ds_free(d.ctx, C.CUdeviceptr(p)))
}

// htod copies src (any host memory, Go's included: the call returns once it is copied).
func (d *drvDevice) htod(dst DevPtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return errOf("cuMemcpyHtoD", C.ds_htod(d.ctx, C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src))))
}

func (d *drvDevice) dtoh(dst []byte, src DevPtr) error {
	if len(dst) == 0 {
		return nil
	}
	return errOf("cuMemcpyDtoH", C.ds_dtoh(d.ctx, unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst))))
}

// htodAsync enqueues a copy from host memory. From pageable memory (a Go slice) the driver
// stages the bytes before it returns, so src may be reused at once.
func (d *drvDevice) htodAsync(dst DevPtr, src []byte, s cuStream) error {
	if len(src) == 0 {
		return nil
	}
	return errOf("cuMemcpyHtoDAsync", C.ds_htod_async(d.ctx, C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), s))
}

// dtohAsyncAddr enqueues a copy into host memory at addr, which must stay valid (and, for
// the copy to be asynchronous, registered) until the stream passes it.
func (d *drvDevice) dtohAsyncAddr(addr uintptr, src DevPtr, n int, s cuStream) error {
	return errOf("cuMemcpyDtoHAsync", C.ds_dtoh_async(d.ctx, C.uintptr_t(addr), C.CUdeviceptr(src), C.size_t(n), s))
}

func (d *drvDevice) dtodAsync(dst, src DevPtr, n int, s cuStream) error {
	return errOf("cuMemcpyDtoDAsync", C.ds_dtod_async(d.ctx, C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), s))
}

// hostRegister pins [addr, addr+n) and maps it for the device (PORTABLE|DEVICEMAP).
func (d *drvDevice) hostRegister(addr uintptr, n int) (DevPtr, error) {
	const flags = 0x01 | 0x02 // CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP
	if err := errOf("cuMemHostRegister", C.ds_host_register(d.ctx, C.uintptr_t(addr), C.size_t(n), flags)); err != nil {
		return 0, err
	}
	var p C.CUdeviceptr
	if err := errOf("cuMemHostGetDevicePointer", C.ds_host_devptr(d.ctx, &p, C.uintptr_t(addr))); err != nil {
		C.ds_host_unregister(d.ctx, C.uintptr_t(addr))
		return 0, err
	}
	return DevPtr(p), nil
}

func (d *drvDevice) hostUnregister(addr uintptr) error {
	return errOf("cuMemHostUnregister", C.ds_host_unregister(d.ctx, C.uintptr_t(addr)))
}

func (d *drvDevice) streamCreate() (cuStream, error) {
	var s C.CUstream
	// CU_STREAM_NON_BLOCKING: no implicit ordering with the legacy default stream.
	return s, errOf("cuStreamCreate", C.ds_stream_create(d.ctx, &s, 1))
}

func (d *drvDevice) streamDestroy(s cuStream) error {
	return errOf("cuStreamDestroy", C.ds_stream_destroy(d.ctx, s))
}

func (d *drvDevice) streamSync(s cuStream) error {
	return errOf("cuStreamSynchronize", C.ds_stream_sync(d.ctx, s))
}

func (d *drvDevice) eventCreate() (cuEvent, error) {
	var e C.CUevent
	return e, errOf("cuEventCreate", C.ds_event_create(d.ctx, &e, 0))
}

func (d *drvDevice) eventRecord(e cuEvent, s cuStream) error {
	return errOf("cuEventRecord", C.ds_event_record(d.ctx, e, s))
}

func (d *drvDevice) eventSync(e cuEvent) error {
	return errOf("cuEventSynchronize", C.ds_event_sync(d.ctx, e))
}

func (d *drvDevice) eventElapsed(a, b cuEvent) (float32, error) {
	var ms C.float
	err := errOf("cuEventElapsedTime", C.ds_event_elapsed(d.ctx, &ms, a, b))
	return float32(ms), err
}

func (d *drvDevice) eventDestroy(e cuEvent) error {
	return errOf("cuEventDestroy", C.ds_event_destroy(d.ctx, e))
}
