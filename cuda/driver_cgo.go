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
static int ds_graphs;

typedef void *CUgraph, *CUgraphExec, *CUgraphNode;
// CUDA_KERNEL_NODE_PARAMS_v2 (cuda.h, CUDA 12 and later).
typedef struct {
	CUfunction func;
	unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
	void **kernelParams;
	void **extra;
	void *kern;
	CUcontext ctx;
} ds_knode_params;

#define DS_GFUNCS(X) \
	X(cuGraphCreate, "cuGraphCreate", (CUgraph*, unsigned), (a0, a1)) \
	X(cuGraphDestroy, "cuGraphDestroy", (CUgraph), (a0)) \
	X(cuGraphAddKernelNode, "cuGraphAddKernelNode_v2", (CUgraphNode*, CUgraph, const CUgraphNode*, size_t, const ds_knode_params*), (a0, a1, a2, a3, a4)) \
	X(cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags", (CUgraphExec*, CUgraph, unsigned long long), (a0, a1, a2)) \
	X(cuGraphExecKernelNodeSetParams, "cuGraphExecKernelNodeSetParams_v2", (CUgraphExec, CUgraphNode, const ds_knode_params*), (a0, a1, a2)) \
	X(cuGraphLaunch, "cuGraphLaunch", (CUgraphExec, CUstream), (a0, a1)) \
	X(cuGraphExecDestroy, "cuGraphExecDestroy", (CUgraphExec), (a0))
DS_GFUNCS(DS_PTR)

// CUgraphEdgeData (cuda.h, CUDA 12.3 and later): an edge's ports and type.
typedef struct {
	unsigned char from_port, to_port, type, reserved[5];
} ds_edge_data;
static CUresult (*p_cuGraphAddDependencies_v2)(CUgraph, const CUgraphNode*, const CUgraphNode*, const ds_edge_data*, size_t);

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
	// Graphs are optional: without them every kernel is launched on its own.
#define DS_GSYM(name, sym, args, call) p_##name = (CUresult (*) args)dlsym(ds_lib, sym); if (!p_##name) ds_graphs = 0;
	ds_graphs = 1;
	DS_GFUNCS(DS_GSYM)
	// Programmatic edges (programmatic dependent launch) are optional too.
	p_cuGraphAddDependencies_v2 = (CUresult (*)(CUgraph, const CUgraphNode*, const CUgraphNode*, const ds_edge_data*, size_t))dlsym(ds_lib, "cuGraphAddDependencies_v2");
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

// ---- CUDA graphs: kernel runs recorded by package cuda, replayed as one launch ----
#define DS_MAXARGS 24

static int ds_has_graphs(void) { return ds_graphs; }
static int ds_has_pdl_edges(void) { return ds_graphs && p_cuGraphAddDependencies_v2 != NULL; }

// Kernel records, as package cuda keeps them: fns[k]; dims[7k..7k+6] = grid x,y,z, block
// x,y,z, dynamic shared bytes; args[DS_MAXARGS*k + i] = parameter i (one 8-byte slot each);
// nargs[k] parameters.
static void ds_fill(ds_knode_params *p, void **params, CUfunction f, const unsigned *d,
		uint64_t *a, int nargs) {
	for (int i = 0; i < nargs && i < DS_MAXARGS; i++) params[i] = &a[i];
	p->func = f;
	p->gridDimX = d[0]; p->gridDimY = d[1]; p->gridDimZ = d[2];
	p->blockDimX = d[3]; p->blockDimY = d[4]; p->blockDimZ = d[5];
	p->sharedMemBytes = d[6];
	p->kernelParams = params;
	p->extra = NULL;
	p->kern = NULL;
	p->ctx = NULL;
}

// ds_launch_many launches n recorded kernels in order on s.
static CUresult ds_launch_many(CUcontext c, CUstream s, int n, CUfunction *fns,
		const unsigned *dims, uint64_t *args, const int *nargs) {
	BIND(c);
	void *params[DS_MAXARGS];
	for (int k = 0; k < n; k++) {
		uint64_t *a = args + (size_t)k * DS_MAXARGS;
		for (int i = 0; i < nargs[k] && i < DS_MAXARGS; i++) params[i] = &a[i];
		const unsigned *d = dims + 7 * (size_t)k;
		CUresult r = p_cuLaunchKernel(fns[k], d[0], d[1], d[2], d[3], d[4], d[5], d[6], s, params, NULL);
		if (r) return r;
	}
	return 0;
}

// ds_graph_build makes a graph of n recorded kernels, each depending on the one before, and
// instantiates it; nodes receives the n node handles (for later parameter updates). With pdl
// the edges are programmatic (CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC from the upstream
// kernel's CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC): a kernel may be launched once every block
// of the one before has run griddepcontrol.launch_dependents, and waits for its completion
// in griddepcontrol.wait (package cuda's pdl.go).
static CUresult ds_graph_build(CUcontext c, int n, CUfunction *fns, const unsigned *dims,
		uint64_t *args, const int *nargs, int pdl, CUgraph *g, CUgraphExec *x, CUgraphNode *nodes) {
	BIND(c);
	*g = NULL;
	*x = NULL;
	if (pdl && !p_cuGraphAddDependencies_v2) return 801; // CUDA_ERROR_NOT_SUPPORTED
	CUresult r = p_cuGraphCreate(g, 0);
	if (r) return r;
	void *params[DS_MAXARGS];
	ds_knode_params p;
	ds_edge_data e = {1, 0, 1, {0}}; // from_port PROGRAMMATIC, to_port 0, type PROGRAMMATIC
	for (int k = 0; k < n && !r; k++) {
		ds_fill(&p, params, fns[k], dims + 7 * (size_t)k, args + (size_t)k * DS_MAXARGS, nargs[k]);
		if (!pdl) {
			r = p_cuGraphAddKernelNode(&nodes[k], *g, k ? &nodes[k - 1] : NULL, k ? 1 : 0, &p);
			continue;
		}
		r = p_cuGraphAddKernelNode(&nodes[k], *g, NULL, 0, &p);
		if (!r && k) r = p_cuGraphAddDependencies_v2(*g, &nodes[k - 1], &nodes[k], &e, 1);
	}
	if (!r) r = p_cuGraphInstantiateWithFlags(x, *g, 0);
	if (r) { p_cuGraphDestroy(*g); *g = NULL; *x = NULL; }
	return r;
}

// ds_graph_run sets the parameters of the nchg kernels listed in chg (indexes into the
// records and nodes), then launches the graph on s.
static CUresult ds_graph_run(CUcontext c, CUstream s, CUgraphExec x, CUgraphNode *nodes,
		int nchg, const int *chg, CUfunction *fns, const unsigned *dims, uint64_t *args,
		const int *nargs) {
	BIND(c);
	void *params[DS_MAXARGS];
	ds_knode_params p;
	for (int i = 0; i < nchg; i++) {
		int k = chg[i];
		ds_fill(&p, params, fns[k], dims + 7 * (size_t)k, args + (size_t)k * DS_MAXARGS, nargs[k]);
		CUresult r = p_cuGraphExecKernelNodeSetParams(x, nodes[k], &p);
		if (r) return r;
	}
	return p_cuGraphLaunch(x, s);
}

static CUresult ds_graph_free(CUcontext c, CUgraph g, CUgraphExec x) {
	BIND(c);
	CUresult r = 0;
	if (x) r = p_cuGraphExecDestroy(x);
	if (g) { CUresult r2 = p_cuGraphDestroy(g); if (!r) r = r2; }
	return r;
}

// ---- cuBLAS, loaded at run time (optional): the few entry points the large products use ----
typedef void *cublasHandle_t;
#define DS_BFUNCS(X) \
	X(cublasCreate, "cublasCreate_v2", (cublasHandle_t*), (a0)) \
	X(cublasDestroy, "cublasDestroy_v2", (cublasHandle_t), (a0)) \
	X(cublasSetStream, "cublasSetStream_v2", (cublasHandle_t, CUstream), (a0, a1)) \
	X(cublasSetWorkspace, "cublasSetWorkspace_v2", (cublasHandle_t, void*, size_t), (a0, a1, a2)) \
	X(cublasGetVersion, "cublasGetVersion_v2", (cublasHandle_t, int*), (a0, a1)) \
	X(cublasGemmEx, "cublasGemmEx", (cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int, const void*, void*, int, int, int, int), (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18))
DS_BFUNCS(DS_PTR)

static void *ds_blas_lib;
static char ds_blas_err[512];

// ds_blas_open opens the cuBLAS library at path (a soname or a full path; for a full path,
// pre is its libcublasLt in the same folder, opened first so the dependency resolves, or
// NULL) and resolves its entry points. Returns NULL or an error text; on error nothing stays
// open.
static const char *ds_blas_open(const char *path, const char *pre) {
	void *lt = NULL;
	if (pre) lt = dlopen(pre, RTLD_LAZY | RTLD_LOCAL);
	void *h = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
	if (!h) {
		const char *e = dlerror();
		snprintf(ds_blas_err, sizeof ds_blas_err, "%s", e ? e : "dlopen failed");
		if (lt) dlclose(lt);
		return ds_blas_err;
	}
#define DS_BSYM(name, sym, args, call) \
	p_##name = (CUresult (*) args)dlsym(h, sym); \
	if (!p_##name) { snprintf(ds_blas_err, sizeof ds_blas_err, "%s lacks %s", path, sym); dlclose(h); if (lt) dlclose(lt); return ds_blas_err; }
	DS_BFUNCS(DS_BSYM)
	ds_blas_lib = h;
	return NULL;
}

// cuBLAS keeps its own notion of the current context (the runtime's); it is the primary
// context that package cuda retains, once made current on the calling thread.
static CUresult ds_blas_create(CUcontext c, cublasHandle_t *h) { BIND(c); return p_cublasCreate(h); }
static CUresult ds_blas_destroy(CUcontext c, cublasHandle_t h) { BIND(c); return p_cublasDestroy(h); }
static CUresult ds_blas_version(CUcontext c, cublasHandle_t h, int *v) { BIND(c); return p_cublasGetVersion(h, v); }
// ds_blas_bind puts the handle on stream s with the given workspace (cublasSetStream resets the
// workspace to the library's own pool, so the workspace is set after it).
static CUresult ds_blas_bind(CUcontext c, cublasHandle_t h, CUstream s, CUdeviceptr ws, size_t wsn) {
	BIND(c);
	CUresult r = p_cublasSetStream(h, s);
	if (r) return r;
	return p_cublasSetWorkspace(h, (void *)(uintptr_t)ws, wsn);
}
// ds_blas_gemm: C[m][n] (column-major, ldc) = A^T B with A [k][m] F16 (column-major, lda: the
// row-major [m][k] weights), B [k][n] F16 (ldb), C float32; compute type 32F, host scalars.
static CUresult ds_blas_gemm(CUcontext c, cublasHandle_t h, int m, int n, int k, CUdeviceptr a,
		int lda, CUdeviceptr b, int ldb, CUdeviceptr cc, int ldc) {
	BIND(c);
	const float alpha = 1.0f, beta = 0.0f;
	// CUBLAS_OP_T = 1, CUBLAS_OP_N = 0; CUDA_R_16F = 2, CUDA_R_32F = 0;
	// CUBLAS_COMPUTE_32F = 68; CUBLAS_GEMM_DEFAULT = -1.
	return p_cublasGemmEx(h, 1, 0, m, n, k, &alpha, (const void *)(uintptr_t)a, 2, lda,
		(const void *)(uintptr_t)b, 2, ldb, &beta, (void *)(uintptr_t)cc, 0, ldc, 68, -1);
}

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
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

type (
	cuContext   = C.CUcontext
	cuModule    = C.CUmodule
	cuFunction  = C.CUfunction
	cuStream    = C.CUstream
	cuEvent     = C.CUevent
	cuGraph     = C.CUgraph
	cuGraphExec = C.CUgraphExec
	cuGraphNode = C.CUgraphNode
	blasHandle  = C.cublasHandle_t
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

// maxArgs is the number of parameter slots of a kernel record (DS_MAXARGS).
const maxArgs = 24

// graphsAvailable reports whether the driver has the graph entry points (after load).
func graphsAvailable() bool { return C.ds_has_graphs() != 0 }

// pdlEdgesAvailable reports whether the driver can make programmatic graph edges (after load).
func pdlEdgesAvailable() bool { return C.ds_has_pdl_edges() != 0 }

// launchMany launches recorded kernels in order (see kernelRecs for the layout).
func (d *drvDevice) launchMany(s cuStream, r *kernelRecs, lo, hi int) error {
	if hi <= lo {
		return nil
	}
	return errOf("cuLaunchKernel", C.ds_launch_many(d.ctx, s, C.int(hi-lo), &r.fns[lo],
		(*C.uint)(unsafe.Pointer(&r.dims[7*lo])), (*C.uint64_t)(unsafe.Pointer(&r.args[maxArgs*lo])),
		(*C.int)(unsafe.Pointer(&r.nargs[lo]))))
}

// graphBuild makes and instantiates a graph of the recorded kernels [lo, hi), in order, with
// programmatic edges if pdl (pdl.go); nodes (hi-lo long) receives their node handles.
func (d *drvDevice) graphBuild(r *kernelRecs, lo, hi int, nodes []cuGraphNode, pdl bool) (cuGraph, cuGraphExec, error) {
	var g C.CUgraph
	var x C.CUgraphExec
	p := C.int(0)
	if pdl {
		p = 1
	}
	err := errOf("cuGraph (build)", C.ds_graph_build(d.ctx, C.int(hi-lo), &r.fns[lo],
		(*C.uint)(unsafe.Pointer(&r.dims[7*lo])), (*C.uint64_t)(unsafe.Pointer(&r.args[maxArgs*lo])),
		(*C.int)(unsafe.Pointer(&r.nargs[lo])), p, &g, &x, &nodes[0]))
	return g, x, err
}

// graphRun updates the nodes listed in chg (indexes relative to lo) with the records
// [lo, hi) and launches the graph on s.
func (d *drvDevice) graphRun(s cuStream, x cuGraphExec, nodes []cuGraphNode, chg []int32, r *kernelRecs, lo, hi int) error {
	var cp *C.int
	if len(chg) > 0 {
		cp = (*C.int)(unsafe.Pointer(&chg[0]))
	}
	return errOf("cuGraph (update, launch)", C.ds_graph_run(d.ctx, s, x, &nodes[0], C.int(len(chg)), cp,
		&r.fns[lo], (*C.uint)(unsafe.Pointer(&r.dims[7*lo])), (*C.uint64_t)(unsafe.Pointer(&r.args[maxArgs*lo])),
		(*C.int)(unsafe.Pointer(&r.nargs[lo]))))
}

func (d *drvDevice) graphFree(g cuGraph, x cuGraphExec) error {
	return errOf("cuGraphExecDestroy", C.ds_graph_free(d.ctx, g, x))
}

// blasOpen opens the cuBLAS library at path (pre: its libcublasLt to open first, or "") and
// resolves the entry points; once per process, by loadBLAS.
func blasOpen(path, pre string) error {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	var cpre *C.char
	if pre != "" {
		cpre = C.CString(pre)
		defer C.free(unsafe.Pointer(cpre))
	}
	if msg := C.ds_blas_open(cp, cpre); msg != nil {
		return errors.New(C.GoString(msg))
	}
	return nil
}

func blasErrOf(op string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return &Error{Op: op, Code: int(r), Name: blasStatusName(int(r))}
}

func (d *drvDevice) blasCreate() (blasHandle, error) {
	var h C.cublasHandle_t
	return h, blasErrOf("cublasCreate", C.ds_blas_create(d.ctx, &h))
}

func (d *drvDevice) blasDestroy(h blasHandle) error {
	return blasErrOf("cublasDestroy", C.ds_blas_destroy(d.ctx, h))
}

func (d *drvDevice) blasVersion(h blasHandle) (int, error) {
	var v C.int
	return int(v), blasErrOf("cublasGetVersion", C.ds_blas_version(d.ctx, h, &v))
}

// blasBind puts h on stream s with the workspace [ws, ws+wsn) of device memory.
func (d *drvDevice) blasBind(h blasHandle, s cuStream, ws DevPtr, wsn int) error {
	return blasErrOf("cublasSetStream/SetWorkspace", C.ds_blas_bind(d.ctx, h, s, C.CUdeviceptr(ws), C.size_t(wsn)))
}

// blasGemm enqueues, on h's stream, out[j][i] = sum_l a[i][l] * b[j][l] for i < m, j < n, l < k:
// a is [m] rows of F16 (row stride lda elements), b [n] rows of F16 (ldb), out [n] rows of
// float32 (ldc).
func (d *drvDevice) blasGemm(h blasHandle, m, n, k int, a DevPtr, lda int, b DevPtr, ldb int, out DevPtr, ldc int) error {
	return blasErrOf("cublasGemmEx", C.ds_blas_gemm(d.ctx, h, C.int(m), C.int(n), C.int(k),
		C.CUdeviceptr(a), C.int(lda), C.CUdeviceptr(b), C.int(ldb), C.CUdeviceptr(out), C.int(ldc)))
}
