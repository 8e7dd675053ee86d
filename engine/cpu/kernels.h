// C kernels behind package cpu. Every exported function is either a whole
// single-threaded kernel or a "worker": the Go pool calls a worker once on
// each of its threads with the same arguments, and the workers share the
// work by taking units from the atomic counter *ctr until none are left.
// Units are independent outputs, so which thread computes a unit never
// changes the result.
#ifndef DS_CPU_KERNELS_H
#define DS_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define DS_F32 0
#define DS_F16 1
#define DS_Q8_0 8
#define DS_BF16 30

// ds_init picks the AVX2/FMA/F16C kernels when the CPU and OS support them.
// Returns 1 if they were picked.
int ds_init(void);
// ds_set_generic forces (1) or releases (0) the portable kernels; tests only.
void ds_set_generic(int on);
int ds_using_simd(void);

// Number of units ds_matmul_worker splits (rows, n) into.
int64_t ds_matmul_units(int rows, int n);
void ds_matmul_worker(int type, int rows, int cols, const void *data,
                      float *out, const float *x, int n, int64_t *ctr);

// Units of ds_attention_worker: tiles of query tokens times KV heads.
int64_t ds_attention_units(int n, int nkv);
void ds_attention_worker(float *out, const float *q, int n, int nheads,
                         int pos0, int bsize, int nkv, int hd, int kvtype,
                         void **blocks, int64_t *ctr);

void ds_swiglu(float *out, const float *gate, const float *up, int64_t n);
void ds_softmax(float *x, int64_t n);
void ds_f16_to_f32(float *dst, const uint16_t *src, int64_t n);
void ds_f32_to_f16(uint16_t *dst, const float *src, int64_t n);

#endif
