// CPU kernels for package cpu. See kernels.h for the worker protocol.
//
// Two implementations of every kernel live here: portable C (the "generic"
// path) and AVX2+FMA+F16C variants compiled with per-function target
// attributes and picked at run time. The file itself is compiled without
// -mavx2 so the binary runs on any x86-64 (and any other architecture: the
// SIMD half is compiled only on x86).
//
// Reduction order. Every dot product over k (matmul rows, attention scores)
// uses one canonical order, whatever the kernel shape, batch size or thread
// count: eight partial sums, lane j accumulating k = j, j+8, j+16, ... in
// increasing k; then the fixed tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7));
// then the k % 8 tail terms one by one. The SIMD path accumulates with fused
// multiply-add, the generic path with a rounded multiply and an add (the file
// is compiled as ISO C (-std=c11), where GCC never fuses on its
// own). Hence a token's matmul output does not depend on how many tokens
// share the call, which makes batched prefill bit-identical to one token at
// a time.

#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define DS_X86 1
#include <immintrin.h>
#endif

static int ds_simd = 0;      // SIMD kernels usable on this CPU
static int ds_generic = 0;   // forced off (tests)

int ds_init(void) {
#ifdef DS_X86
  __builtin_cpu_init();
  ds_simd = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c");
#endif
  return ds_simd;
}

void ds_set_generic(int on) { ds_generic = on; }
int ds_using_simd(void) { return ds_simd && !ds_generic; }

static int64_t next_unit(int64_t *ctr) {
  return __atomic_fetch_add(ctr, 1, __ATOMIC_RELAXED);
}

// ---------------------------------------------------------------------------
// Scalar conversions (exact IEEE binary16 <-> binary32, round to nearest even).

static inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0);  // NaNs come out quiet
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalize.
    int e = -1;
    do {
      e++;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t float_to_half(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  uint16_t sign = (uint16_t)((b >> 16) & 0x8000);
  int exp = (int)((b >> 23) & 0xff);
  uint32_t mant = b & 0x7fffff;
  if (exp == 0xff) {
    if (mant) return sign | 0x7e00 | (uint16_t)(mant >> 13);
    return sign | 0x7c00;
  }
  int e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    unsigned shift = (unsigned)(14 - e);
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return sign | (uint16_t)h;
  }
  uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return sign | (uint16_t)h;
}

static inline float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t load_u16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}

static inline size_t row_bytes(int type, int cols) {
  switch (type) {
    case DS_F32: return (size_t)cols * 4;
    case DS_F16:
    case DS_BF16: return (size_t)cols * 2;
    case DS_Q8_0: return (size_t)(cols / 32) * 34;
  }
  return 0;
}

// Weight element k of a row, as float32 (Q8_0: the rounded product d*q).
static inline float weight_at(int type, const uint8_t *row, int k) {
  switch (type) {
    case DS_F32: {
      float f;
      memcpy(&f, row + (size_t)k * 4, 4);
      return f;
    }
    case DS_F16: return half_to_float(load_u16(row + (size_t)k * 2));
    case DS_BF16: return bf16_to_float(load_u16(row + (size_t)k * 2));
    case DS_Q8_0: {
      const uint8_t *blk = row + (size_t)(k / 32) * 34;
      return half_to_float(load_u16(blk)) * (float)(int8_t)blk[2 + k % 32];
    }
  }
  return 0;
}

static inline void dequant_row(float *dst, int type, const uint8_t *row, int cols) {
  if (type == DS_F32) {
    memcpy(dst, row, (size_t)cols * 4);
    return;
  }
  if (type == DS_Q8_0) {
    for (int b = 0; b < cols / 32; b++) {
      const uint8_t *blk = row + (size_t)b * 34;
      float d = half_to_float(load_u16(blk));
      for (int i = 0; i < 32; i++) dst[b * 32 + i] = d * (float)(int8_t)blk[2 + i];
    }
    return;
  }
  for (int k = 0; k < cols; k++) dst[k] = weight_at(type, row, k);
}

// Canonical dot product, portable version.
static float dot_generic(const float *a, const float *b, int len) {
  float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int nv = len / 8;
  for (int i = 0; i < nv; i++)
    for (int j = 0; j < 8; j++) l[j] = l[j] + a[i * 8 + j] * b[i * 8 + j];
  float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
  float s = (a0 + a2) + (a1 + a3);
  for (int k = nv * 8; k < len; k++) s = s + a[k] * b[k];
  return s;
}

// ---------------------------------------------------------------------------
// Matmul: units.

#define GEMV_MAX_N 3   // n up to this: weights converted on the fly
#define UNIT_ROWS_GEMV 32
#define UNIT_ROWS_GEMM 16      // rows per packed weight block
#define UNIT_ROWS_GEMM_MAX 64  // rows per unit of large matrices: x streamed once per 64 rows
#define KCV 32         // k-chunk of the packed path, in 8-float vectors (256 cols)
#define KCV_MAX 48     // a last chunk this long is not split (288 cols: one chunk)
#define TT 96          // token tile of the packed path (multiple of 3)

// Rows per work unit. Units only split the work: results never depend on
// them.
static inline int unit_rows(int rows, int n) {
  if (n <= GEMV_MAX_N) return UNIT_ROWS_GEMV;
  return rows >= 1024 ? UNIT_ROWS_GEMM_MAX : UNIT_ROWS_GEMM;
}

int64_t ds_matmul_units(int rows, int n) {
  int ur = unit_rows(rows, n);
  return ((int64_t)rows + ur - 1) / ur;
}

static void matmul_generic(int type, int rows, int cols, const uint8_t *data,
                           float *out, const float *x, int n, int64_t *ctr) {
  size_t rb = row_bytes(type, cols);
  int ur = unit_rows(rows, n);
  int64_t units = ds_matmul_units(rows, n);
  float *w = malloc(((size_t)cols + 1) * sizeof(float));
  if (!w) abort();
  for (int64_t u; (u = next_unit(ctr)) < units;) {
    int r0 = (int)(u * ur), r1 = r0 + ur < rows ? r0 + ur : rows;
    for (int r = r0; r < r1; r++) {
      dequant_row(w, type, data + (size_t)r * rb, cols);
      for (int t = 0; t < n; t++)
        out[(size_t)t * rows + r] = dot_generic(w, x + (size_t)t * cols, cols);
    }
  }
  free(w);
}

#ifdef DS_X86
#define SIMD __attribute__((target("avx2,fma,f16c")))
#define SIMD_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

SIMD_INLINE float hsum8(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  __m128 a = _mm_add_ps(lo, hi);                      // a_j = l_j + l_{j+4}
  __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));      // b0 = a0+a2, b1 = a1+a3
  __m128 c = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));  // b0 + b1
  return _mm_cvtss_f32(c);
}

SIMD_INLINE float fma1(float a, float b, float c) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

// exp of 8 floats: Cephes-style range reduction (x = n ln2 + r, |r| <=
// ln2/2) and a degree-6 polynomial, within 3 ulp of exp over the normal
// range; +Inf above 88.72283, 0 below -87.33654 (where exp is subnormal),
// NaN stays NaN.
SIMD_INLINE __m256 exp8(__m256 x) {
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // y * 2^n as two exact power-of-two products (n is in [-126, 128]).
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  __m256i bias = _mm256_set1_epi32(127);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23)));
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23)));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.72283f), _CMP_GT_OQ));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ));
  return y;
}

// Largest of len floats (exact: the order of comparisons does not matter).
SIMD_INLINE float max_simd(const float *x, int64_t len) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  float l[8];
  _mm256_storeu_ps(l, m);
  float r = l[0];
  for (int j = 1; j < 8; j++) r = l[j] > r ? l[j] : r;
  for (; i < len; i++) r = x[i] > r ? x[i] : r;
  return r;
}

// x[i] = exp(x[i] - m) for i < len; returns the sum of the results in the
// eight-lane order (lane j sums i = j, j+8, ...; the tree of hsum8; the tail
// as a ninth padded vector).
SIMD_INLINE float exp_shift_simd(float *x, int64_t len, float m) {
  __m256 mv = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < len) {
    float t[8];
    for (int j = 0; j < 8; j++) t[j] = i + j < len ? x[i + j] : -INFINITY;
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(t), mv));
    _mm256_storeu_ps(t, e);
    for (int j = 0; i + j < len; j++) x[i + j] = t[j];
    sum = _mm256_add_ps(sum, e);
  }
  return hsum8(sum);
}

// 8 weights starting at column 8*i of a row, as float32.
SIMD_INLINE __m256 load_w(int type, const uint8_t *row, int i) {
  switch (type) {
    case DS_F32: return _mm256_loadu_ps((const float *)row + (size_t)i * 8);
    case DS_F16:
      return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + (size_t)i * 16)));
    case DS_BF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + (size_t)i * 16))), 16));
    default: {  // DS_Q8_0
      const uint8_t *blk = row + (size_t)(i >> 2) * 34;
      float d = _cvtsh_ss(load_u16(blk));
      __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + (i & 3) * 8)));
      return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(d));
    }
  }
}

SIMD_INLINE float finish(__m256 acc, int type, const uint8_t *row, const float *x, int cols) {
  float s = hsum8(acc);
  for (int k = cols & ~7; k < cols; k++) s = fma1(weight_at(type, row, k), x[k], s);
  return s;
}

// hsum8 of eight vectors at once: lane r of the result is exactly
// hsum8(v[r]) (the same additions on the same operands; only the lanes they
// run in differ).
SIMD_INLINE __m256 hsum8x8(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4, __m256 v5,
                           __m256 v6, __m256 v7) {
  // a_j = l_j + l_{j+4}: [r0 a0..a3 | r1 a0..a3] etc.
  __m256 a01 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31));
  __m256 a23 = _mm256_add_ps(_mm256_permute2f128_ps(v2, v3, 0x20), _mm256_permute2f128_ps(v2, v3, 0x31));
  __m256 a45 = _mm256_add_ps(_mm256_permute2f128_ps(v4, v5, 0x20), _mm256_permute2f128_ps(v4, v5, 0x31));
  __m256 a67 = _mm256_add_ps(_mm256_permute2f128_ps(v6, v7, 0x20), _mm256_permute2f128_ps(v6, v7, 0x31));
  // b0 = a0 + a2, b1 = a1 + a3: [r0 b0 b1 r2 b0 b1 | r1 b0 b1 r3 b0 b1]
  __m256 b0123 = _mm256_add_ps(_mm256_shuffle_ps(a01, a23, 0x44), _mm256_shuffle_ps(a01, a23, 0xee));
  __m256 b4567 = _mm256_add_ps(_mm256_shuffle_ps(a45, a67, 0x44), _mm256_shuffle_ps(a45, a67, 0xee));
  // b0 + b1: [r0 r2 r4 r6 | r1 r3 r5 r7]
  __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b0123, b4567, 0x88), _mm256_shuffle_ps(b0123, b4567, 0xdd));
  return _mm256_permutevar8x32_ps(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Direct kernel: MR rows x NR tokens over all of k, converting weights in
// registers. Used when n is small (decode): weights are read exactly once.
//
// pf, if not NULL, is the start of MR rows read a little later: while the
// MR rows are read vector by vector, pf's rows are prefetched line by line
// at the same pace (short rows defeat the hardware stream prefetchers).
SIMD_INLINE void direct_kernel(int type, int MR, int NR, const uint8_t *row0, size_t rb,
                               const float *x, int cols, float *out, size_t ostride,
                               const uint8_t *pf) {
  const size_t vb = type == DS_F32 ? 32 : 16;  // bytes of 8 weights (not Q8_0)
  __m256 acc[8][GEMV_MAX_N];
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++) acc[r][j] = _mm256_setzero_ps();
  int nv = cols / 8;
  for (int i = 0; i < nv; i++) {
    __m256 xv[GEMV_MAX_N];
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++) xv[j] = _mm256_loadu_ps(x + (size_t)j * cols + (size_t)i * 8);
    if (pf)
      for (size_t o = 0; o < MR * vb; o += 64)
        _mm_prefetch((const char *)pf + (size_t)i * MR * vb + o, _MM_HINT_T0);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      __m256 w = load_w(type, row0 + (size_t)r * rb, i);
#pragma GCC unroll 3
      for (int j = 0; j < NR; j++) acc[r][j] = _mm256_fmadd_ps(w, xv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++)
      out[(size_t)j * ostride + r] =
          finish(acc[r][j], type, row0 + (size_t)r * rb, x + (size_t)j * cols, cols);
}

// Q8_0 direct kernel: one scale conversion per block and row; the weights
// are still the rounded products d*q, so the order matches the others.
SIMD_INLINE void direct_kernel_q8(int MR, int NR, const uint8_t *row0, size_t rb,
                                  const float *x, int cols, float *out, size_t ostride) {
  __m256 acc[8][GEMV_MAX_N];
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++) acc[r][j] = _mm256_setzero_ps();
  int nb = cols / 32;
  for (int b = 0; b < nb; b++) {
    __m256 xv[GEMV_MAX_N][4];
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++)
#pragma GCC unroll 4
      for (int s = 0; s < 4; s++) xv[j][s] = _mm256_loadu_ps(x + (size_t)j * cols + (size_t)b * 32 + s * 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      const uint8_t *blk = row0 + (size_t)r * rb + (size_t)b * 34;
      __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(blk)));
#pragma GCC unroll 4
      for (int s = 0; s < 4; s++) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + s * 8)));
        __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
#pragma GCC unroll 3
        for (int j = 0; j < NR; j++) acc[r][j] = _mm256_fmadd_ps(w, xv[j][s], acc[r][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++) out[(size_t)j * ostride + r] = hsum8(acc[r][j]);
}

static SIMD void direct_q8(int rows, int cols, const uint8_t *data, float *out, const float *x,
                           int n, int r0, int r1) {
  size_t rb = row_bytes(DS_Q8_0, cols);
  int r = r0;
  if (n == 1)
    for (; r + 8 <= r1; r += 8) direct_kernel_q8(8, 1, data + (size_t)r * rb, rb, x, cols, out + r, rows);
  for (; r + 4 <= r1; r += 4) {
    const uint8_t *w = data + (size_t)r * rb;
    if (n == 1) direct_kernel_q8(4, 1, w, rb, x, cols, out + r, rows);
    else if (n == 2) direct_kernel_q8(4, 2, w, rb, x, cols, out + r, rows);
    else direct_kernel_q8(4, 3, w, rb, x, cols, out + r, rows);
  }
  for (; r < r1; r++) {
    const uint8_t *w = data + (size_t)r * rb;
    if (n == 1) direct_kernel_q8(1, 1, w, rb, x, cols, out + r, rows);
    else if (n == 2) direct_kernel_q8(1, 2, w, rb, x, cols, out + r, rows);
    else direct_kernel_q8(1, 3, w, rb, x, cols, out + r, rows);
  }
}

// Prefetch distance of one-token decode, in blocks of 8 rows, and the
// longest row prefetched: long rows (the 1B shapes' 4 KiB) stream well on
// their own and only lose from it.
#define DIRECT_PF 2
#define DIRECT_PF_ROW 1024

#define DIRECT_FN(NAME, TYPE)                                                          \
  static SIMD void NAME(int rows, int cols, const uint8_t *data, float *out,           \
                        const float *x, int n, int r0, int r1) {                       \
    size_t rb = row_bytes(TYPE, cols);                                                 \
    int r = r0;                                                                        \
    if (n == 1)                                                                        \
      for (; r + 8 <= r1; r += 8)                                                      \
        direct_kernel(TYPE, 8, 1, data + (size_t)r * rb, rb, x, cols, out + r, rows,    \
                      rb <= DIRECT_PF_ROW && r + 8 * (DIRECT_PF + 1) <= rows              \
                          ? data + (size_t)(r + 8 * DIRECT_PF) * rb                    \
                          : NULL);                                                     \
    for (; r + 4 <= r1; r += 4) {                                                      \
      const uint8_t *w = data + (size_t)r * rb;                                        \
      if (n == 1) direct_kernel(TYPE, 4, 1, w, rb, x, cols, out + r, rows, NULL);            \
      else if (n == 2) direct_kernel(TYPE, 4, 2, w, rb, x, cols, out + r, rows, NULL);       \
      else direct_kernel(TYPE, 4, 3, w, rb, x, cols, out + r, rows, NULL);                   \
    }                                                                                  \
    for (; r < r1; r++) {                                                              \
      const uint8_t *w = data + (size_t)r * rb;                                        \
      if (n == 1) direct_kernel(TYPE, 1, 1, w, rb, x, cols, out + r, rows, NULL);            \
      else if (n == 2) direct_kernel(TYPE, 1, 2, w, rb, x, cols, out + r, rows, NULL);       \
      else direct_kernel(TYPE, 1, 3, w, rb, x, cols, out + r, rows, NULL);                   \
    }                                                                                  \
  }

DIRECT_FN(direct_f32, DS_F32)
DIRECT_FN(direct_f16, DS_F16)
DIRECT_FN(direct_bf16, DS_BF16)

// Packed path. For a unit of up to 16 rows, a token tile of up to TT tokens
// and a k-chunk of up to KCV vectors, the weights are converted once into
// wp, laid out [row quad][vector i][row in quad][8], and reused by every
// token of the tile. p holds the eight lane partial sums of every
// (row, token) of the tile across k-chunks, [row][token][8].

SIMD_INLINE void pack_kernel(int type, float *wp, const uint8_t *row0, size_t rb,
                             int nrows, int v0, int kv) {
  for (int r = 0; r < UNIT_ROWS_GEMM; r++) {
    float *dst = wp + (size_t)(r / 4) * kv * 32 + (r % 4) * 8;
    if (r >= nrows) {
      for (int i = 0; i < kv; i++) _mm256_store_ps(dst + (size_t)i * 32, _mm256_setzero_ps());
      continue;
    }
    const uint8_t *row = row0 + (size_t)r * rb;
    for (int i = 0; i < kv; i++) _mm256_store_ps(dst + (size_t)i * 32, load_w(type, row, v0 + i));
  }
}

SIMD_INLINE void micro_kernel(int NR, const float *wp, const float *x, size_t xs, float *p,
                              size_t ps, int kv, int init) {
  __m256 acc[4][3];
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++)
      acc[r][j] = init ? _mm256_setzero_ps() : _mm256_load_ps(p + r * ps + j * 8);
  for (int i = 0; i < kv; i++) {
    __m256 xv[3];
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++) xv[j] = _mm256_loadu_ps(x + j * xs + (size_t)i * 8);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      __m256 w = _mm256_load_ps(wp + (size_t)i * 32 + r * 8);
#pragma GCC unroll 3
      for (int j = 0; j < NR; j++) acc[r][j] = _mm256_fmadd_ps(w, xv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 3
    for (int j = 0; j < NR; j++) _mm256_store_ps(p + r * ps + j * 8, acc[r][j]);
}

static SIMD void micro3(const float *wp, const float *x, size_t xs, float *p, size_t ps,
                        int kv, int init) {
  micro_kernel(3, wp, x, xs, p, ps, kv, init);
}
static SIMD void micro2(const float *wp, const float *x, size_t xs, float *p, size_t ps,
                        int kv, int init) {
  micro_kernel(2, wp, x, xs, p, ps, kv, init);
}
static SIMD void micro1(const float *wp, const float *x, size_t xs, float *p, size_t ps,
                        int kv, int init) {
  micro_kernel(1, wp, x, xs, p, ps, kv, init);
}

#define PACK_FN(NAME, TYPE)                                                            \
  static SIMD void NAME(float *wp, const uint8_t *row0, size_t rb, int nrows, int v0,  \
                        int kv) {                                                      \
    pack_kernel(TYPE, wp, row0, rb, nrows, v0, kv);                                    \
  }
PACK_FN(pack_f32, DS_F32)
PACK_FN(pack_f16, DS_F16)
PACK_FN(pack_bf16, DS_BF16)

// Q8_0 packing, one scale conversion per block (v0 and kv are multiples of
// 4 vectors, a block, since cols % 32 == 0). Same values as load_w.
static SIMD void pack_q8(float *wp, const uint8_t *row0, size_t rb, int nrows, int v0, int kv) {
  for (int r = 0; r < UNIT_ROWS_GEMM; r++) {
    float *dst = wp + (size_t)(r / 4) * kv * 32 + (r % 4) * 8;
    if (r >= nrows) {
      for (int i = 0; i < kv; i++) _mm256_store_ps(dst + (size_t)i * 32, _mm256_setzero_ps());
      continue;
    }
    const uint8_t *blk = row0 + (size_t)r * rb + (size_t)(v0 / 4) * 34;
    for (int i = 0; i < kv; i += 4, blk += 34) {
      __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(blk)));
#pragma GCC unroll 4
      for (int j = 0; j < 4; j++) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + j * 8)));
        _mm256_store_ps(dst + (size_t)(i + j) * 32, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
      }
    }
  }
}

// One unit of the packed path: rows [r0, r1) (at most UNIT_ROWS_GEMM_MAX),
// all tokens. Within a token tile and k-chunk, the x slice (TT tokens x
// KCV vectors) stays in cache while every 16-row block of the unit is
// packed and multiplied against it.
static SIMD void gemm_unit(int type, int rows, int cols, const uint8_t *data, float *out,
                           const float *x, int n, int r0, int r1, float *wp, float *p) {
  size_t rb = row_bytes(type, cols);
  int nrows = r1 - r0;
  int nv = cols / 8;
  const size_t ps = (size_t)TT * 8;
  for (int t0 = 0; t0 < n; t0 += TT) {
    int tn = n - t0 < TT ? n - t0 : TT;
    const float *xt = x + (size_t)t0 * cols;
    if (nv == 0) memset(p, 0, sizeof(float) * UNIT_ROWS_GEMM_MAX * TT * 8);
    for (int v0 = 0, kv; v0 < nv; v0 += kv) {
      kv = nv - v0 <= KCV_MAX ? nv - v0 : KCV;
      int init = v0 == 0;
      for (int b0 = 0; b0 < nrows; b0 += UNIT_ROWS_GEMM) {
        int bn = nrows - b0 < UNIT_ROWS_GEMM ? nrows - b0 : UNIT_ROWS_GEMM;
        const uint8_t *row0 = data + (size_t)(r0 + b0) * rb;
        switch (type) {
          case DS_F32: pack_f32(wp, row0, rb, bn, v0, kv); break;
          case DS_F16: pack_f16(wp, row0, rb, bn, v0, kv); break;
          case DS_BF16: pack_bf16(wp, row0, rb, bn, v0, kv); break;
          default: pack_q8(wp, row0, rb, bn, v0, kv); break;
        }
        int nquads = (bn + 3) / 4;
        float *pb = p + (size_t)b0 * ps;
        for (int t = 0; t < tn; t += 3) {
          const float *xs = xt + (size_t)t * cols + (size_t)v0 * 8;
          for (int q = 0; q < nquads; q++) {
            const float *w = wp + (size_t)q * kv * 32;
            float *pp = pb + ((size_t)q * 4 * TT + t) * 8;
            switch (tn - t) {
              case 1: micro1(w, xs, cols, pp, ps, kv, init); break;
              case 2: micro2(w, xs, cols, pp, ps, kv, init); break;
              default: micro3(w, xs, cols, pp, ps, kv, init); break;
            }
          }
        }
      }
    }
    // Token-major, so the stores to out are contiguous along rows.
    for (int t = 0; t < tn; t++) {
      float *o = out + (size_t)(t0 + t) * rows + r0;
      int r = 0;
      if (cols % 8 == 0)  // no tail terms: eight rows' sums at once
        for (; r + 8 <= nrows; r += 8) {
          const float *pr = p + ((size_t)r * TT + t) * 8;
          _mm256_storeu_ps(o + r, hsum8x8(_mm256_load_ps(pr), _mm256_load_ps(pr + ps),
                                          _mm256_load_ps(pr + 2 * ps), _mm256_load_ps(pr + 3 * ps),
                                          _mm256_load_ps(pr + 4 * ps), _mm256_load_ps(pr + 5 * ps),
                                          _mm256_load_ps(pr + 6 * ps), _mm256_load_ps(pr + 7 * ps)));
        }
      for (; r < nrows; r++)
        o[r] = finish(_mm256_load_ps(p + ((size_t)r * TT + t) * 8), type,
                      data + (size_t)(r0 + r) * rb, xt + (size_t)t * cols, cols);
    }
  }
}

static SIMD void matmul_simd(int type, int rows, int cols, const uint8_t *data, float *out,
                             const float *x, int n, int64_t *ctr) {
  int ur = unit_rows(rows, n);
  int64_t units = ds_matmul_units(rows, n);
  float *buf = NULL;
  if (n > GEMV_MAX_N) {
    buf = aligned_alloc(32, sizeof(float) * (UNIT_ROWS_GEMM * KCV_MAX * 8 + UNIT_ROWS_GEMM_MAX * TT * 8));
    if (!buf) abort();
  }
  for (int64_t u; (u = next_unit(ctr)) < units;) {
    int r0 = (int)(u * ur), r1 = r0 + ur < rows ? r0 + ur : rows;
    if (n > GEMV_MAX_N) {
      gemm_unit(type, rows, cols, data, out, x, n, r0, r1, buf, buf + UNIT_ROWS_GEMM * KCV_MAX * 8);
      continue;
    }
    switch (type) {
      case DS_F32: direct_f32(rows, cols, data, out, x, n, r0, r1); break;
      case DS_F16: direct_f16(rows, cols, data, out, x, n, r0, r1); break;
      case DS_BF16: direct_bf16(rows, cols, data, out, x, n, r0, r1); break;
      default: direct_q8(rows, cols, data, out, x, n, r0, r1); break;
    }
  }
  free(buf);
}
#endif  // DS_X86

void ds_matmul_worker(int type, int rows, int cols, const void *data, float *out,
                      const float *x, int n, int64_t *ctr) {
#ifdef DS_X86
  if (ds_using_simd()) {
    matmul_simd(type, rows, cols, data, out, x, n, ctr);
    return;
  }
#endif
  matmul_generic(type, rows, cols, data, out, x, n, ctr);
}

// ---------------------------------------------------------------------------
// Attention. A unit is a tile of up to ATT_TT query tokens and one KV head:
// every query head of the tile sharing that KV head is processed together,
// so each K and V row is converted once per tile. Each (token, head) still
// computes its scores, softmax and weighted sum on its own, in the same
// order whatever the tile: row t's result depends only on q row t, its
// position and the cache.

#define ATT_TT 4

typedef struct {
  float *out;
  const float *q;
  int nheads, pos0, bsize, nkv, hd, kvtype, ratio;
  size_t es, rowb, voff, maxctx;
  void **blocks;
  float scale;
  float *scores;  // [ATT_TT*ratio][maxctx]
  float *o;       // [ATT_TT*ratio][hd]
  float *kv;      // [hd]
  float *sums;    // [ATT_TT*ratio]
  const uint8_t **kp;  // [maxctx] K row of each position for the current KV head
} att_ctx;

// att_rows fills c->kp with the K row of KV head g for positions [0, end);
// the V row is at c->kp[p] + c->voff.
static void att_rows(att_ctx *c, int g, int end) {
  size_t off = (size_t)g * c->hd * c->es;
  for (int b = 0, p = 0; p < end; b++) {
    const uint8_t *row = (const uint8_t *)c->blocks[b] + off;
    for (int i = 0; i < c->bsize && p < end; i++, p++) c->kp[p] = row + (size_t)i * c->rowb;
  }
}

static inline const uint8_t *kv_row(const att_ctx *c, int p, int isv) {
  return c->kp[p] + (isv ? c->voff : 0);
}

// Softmax over each (token, head) row of scores, in place; sums[] gets the
// float32 normalizer. Shared by both paths.
static void att_softmax(att_ctx *c, int t0, int tn) {
  for (int ti = 0; ti < tn; ti++) {
    int ctx = c->pos0 + t0 + ti + 1;
    for (int h = 0; h < c->ratio; h++) {
      float *s = c->scores + (size_t)(ti * c->ratio + h) * c->maxctx;
      float m = s[0];
      for (int p = 1; p < ctx; p++) m = s[p] > m ? s[p] : m;
      float sum = 0;
      for (int p = 0; p < ctx; p++) {
        s[p] = expf(s[p] - m);
        sum += s[p];
      }
      c->sums[ti * c->ratio + h] = sum;
    }
  }
}

static void att_store(att_ctx *c, int t0, int tn, int g) {
  for (int ti = 0; ti < tn; ti++)
    for (int h = 0; h < c->ratio; h++) {
      float inv = 1.0f / c->sums[ti * c->ratio + h];
      const float *o = c->o + (size_t)(ti * c->ratio + h) * c->hd;
      float *dst = c->out + (size_t)(t0 + ti) * c->nheads * c->hd + (size_t)(g * c->ratio + h) * c->hd;
      for (int d = 0; d < c->hd; d++) dst[d] = o[d] * inv;
    }
}

static void kv_row_to_float(float *dst, const uint8_t *src, int hd, int kvtype) {
  if (kvtype == DS_F16) {
    for (int d = 0; d < hd; d++) dst[d] = half_to_float(load_u16(src + 2 * d));
  } else {
    memcpy(dst, src, (size_t)hd * 4);
  }
}

static void att_tile_generic(att_ctx *c, int t0, int tn, int g) {
  int hd = c->hd, ratio = c->ratio;
  int end = c->pos0 + t0 + tn;  // positions [0, end) are read
  for (int p = 0; p < end; p++) {
    const uint8_t *src = kv_row(c, p, 0);
    kv_row_to_float(c->kv, src, hd, c->kvtype);
    for (int ti = p - c->pos0 - t0 > 0 ? p - c->pos0 - t0 : 0; ti < tn; ti++)
      for (int h = 0; h < ratio; h++)
        c->scores[(size_t)(ti * ratio + h) * c->maxctx + p] =
            dot_generic(c->q + ((size_t)(t0 + ti) * c->nheads + g * ratio + h) * hd, c->kv, hd) * c->scale;
  }
  att_softmax(c, t0, tn);
  memset(c->o, 0, sizeof(float) * (size_t)tn * ratio * hd);
  for (int p = 0; p < end; p++) {
    const uint8_t *src = kv_row(c, p, 1);
    kv_row_to_float(c->kv, src, hd, c->kvtype);
    for (int ti = p - c->pos0 - t0 > 0 ? p - c->pos0 - t0 : 0; ti < tn; ti++)
      for (int h = 0; h < ratio; h++) {
        float w = c->scores[(size_t)(ti * ratio + h) * c->maxctx + p];
        float *o = c->o + (size_t)(ti * ratio + h) * hd;
        for (int d = 0; d < hd; d++) o[d] = o[d] + w * c->kv[d];
      }
  }
  att_store(c, t0, tn, g);
}

#ifdef DS_X86
// 8 K or V values from a cache row, as float32.
SIMD_INLINE __m256 load_kv8(const uint8_t *row, int d, int kvtype) {
  if (kvtype == DS_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * (size_t)d)));
  return _mm256_loadu_ps((const float *)row + d);
}

SIMD_INLINE float load_kv1(const uint8_t *row, int d, int kvtype) {
  if (kvtype == DS_F16) return _cvtsh_ss(load_u16(row + 2 * (size_t)d));
  float f;
  memcpy(&f, row + 4 * (size_t)d, 4);
  return f;
}

// Prefetch distance in positions: KV rows of one head sit a whole position
// (all KV heads) apart, so the hardware stride prefetchers lose them at
// every page.
#define ATT_PF 8

SIMD_INLINE void prefetch_row(const uint8_t *row, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)row + o, _MM_HINT_T0);
}

// Scores of one query head against positions [0, ctx): four positions at a
// time for instruction-level parallelism, each dot product in the
// canonical order. kvt is a compile-time constant in each instantiation.
SIMD_INLINE void att_scores_simd(const att_ctx *c, const float *qh, int ctx, float *s, int kvt) {
  int hd = c->hd, nv = hd / 8;
  const uint8_t *const *kp = c->kp;
  int p = 0;
  size_t rowbytes = (size_t)hd * (kvt == DS_F16 ? 2 : 4);
  for (; p + 4 <= ctx; p += 4) {
    const uint8_t *k0 = kp[p], *k1 = kp[p + 1], *k2 = kp[p + 2], *k3 = kp[p + 3];
    if (p + ATT_PF + 4 <= ctx)
      for (int j = 0; j < 4; j++) prefetch_row(kp[p + ATT_PF + j], rowbytes);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < nv; i++) {
      __m256 qv = _mm256_loadu_ps(qh + i * 8);
      a0 = _mm256_fmadd_ps(qv, load_kv8(k0, i * 8, kvt), a0);
      a1 = _mm256_fmadd_ps(qv, load_kv8(k1, i * 8, kvt), a1);
      a2 = _mm256_fmadd_ps(qv, load_kv8(k2, i * 8, kvt), a2);
      a3 = _mm256_fmadd_ps(qv, load_kv8(k3, i * 8, kvt), a3);
    }
    float r0 = hsum8(a0), r1 = hsum8(a1), r2 = hsum8(a2), r3 = hsum8(a3);
    for (int d = nv * 8; d < hd; d++) {
      r0 = fma1(qh[d], load_kv1(k0, d, kvt), r0);
      r1 = fma1(qh[d], load_kv1(k1, d, kvt), r1);
      r2 = fma1(qh[d], load_kv1(k2, d, kvt), r2);
      r3 = fma1(qh[d], load_kv1(k3, d, kvt), r3);
    }
    s[p] = r0 * c->scale;
    s[p + 1] = r1 * c->scale;
    s[p + 2] = r2 * c->scale;
    s[p + 3] = r3 * c->scale;
  }
  for (; p < ctx; p++) {
    const uint8_t *k0 = kp[p];
    __m256 a0 = _mm256_setzero_ps();
    for (int i = 0; i < nv; i++) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i * 8), load_kv8(k0, i * 8, kvt), a0);
    float r0 = hsum8(a0);
    for (int d = nv * 8; d < hd; d++) r0 = fma1(qh[d], load_kv1(k0, d, kvt), r0);
    s[p] = r0 * c->scale;
  }
}

// VN*8 dimensions of o = sum_p s[p] * V[p], sequential in p, accumulated in
// registers. base is the byte offset of the first dimension in a V row.
SIMD_INLINE void att_values_block(const uint8_t *const *kp, size_t base, const float *s, int ctx,
                                  float *o, int kvt, int VN) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int i = 0; i < VN; i++) acc[i] = _mm256_setzero_ps();
  size_t bytes = (size_t)VN * 8 * (kvt == DS_F16 ? 2 : 4);
  for (int p = 0; p < ctx; p++) {
    const uint8_t *vr = kp[p] + base;
    if (p + ATT_PF < ctx) prefetch_row(kp[p + ATT_PF] + base, bytes);
    __m256 w = _mm256_set1_ps(s[p]);
#pragma GCC unroll 8
    for (int i = 0; i < VN; i++) acc[i] = _mm256_fmadd_ps(w, load_kv8(vr, i * 8, kvt), acc[i]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < VN; i++) _mm256_storeu_ps(o + i * 8, acc[i]);
}

// o = sum_p s[p] * V[p], sequential in p, up to 64 dimensions at a time.
SIMD_INLINE void att_values_simd(const att_ctx *c, const float *s, int ctx, float *o, int kvt) {
  int hd = c->hd, nv = hd / 8;
  size_t es = kvt == DS_F16 ? 2 : 4;
  for (int v0 = 0; v0 < nv; v0 += 8) {
    size_t base = c->voff + (size_t)v0 * 8 * es;
    float *ov = o + v0 * 8;
    switch (nv - v0 < 8 ? nv - v0 : 8) {
      case 1: att_values_block(c->kp, base, s, ctx, ov, kvt, 1); break;
      case 2: att_values_block(c->kp, base, s, ctx, ov, kvt, 2); break;
      case 3: att_values_block(c->kp, base, s, ctx, ov, kvt, 3); break;
      case 4: att_values_block(c->kp, base, s, ctx, ov, kvt, 4); break;
      case 5: att_values_block(c->kp, base, s, ctx, ov, kvt, 5); break;
      case 6: att_values_block(c->kp, base, s, ctx, ov, kvt, 6); break;
      case 7: att_values_block(c->kp, base, s, ctx, ov, kvt, 7); break;
      default: att_values_block(c->kp, base, s, ctx, ov, kvt, 8); break;
    }
  }
  for (int d = nv * 8; d < hd; d++) {
    float a = 0;
    for (int p = 0; p < ctx; p++) a = fma1(s[p], load_kv1(c->kp[p] + c->voff, d, kvt), a);
    o[d] = a;
  }
}

// Two (token, head) rows of o = sum_p s[p] * V[p] at once, for VN*8
// dimensions: each V vector is loaded and converted once for both while
// both contexts last, then the longer one goes on alone. Each output is
// still accumulated sequentially in p, exactly as att_values_block does.
SIMD_INLINE void att_values2_block(const uint8_t *const *kp, size_t base, const float *s0,
                                   const float *s1, int ctx0, int ctx1, float *o0, float *o1,
                                   int kvt, int VN) {
  __m256 a0[6], a1[6];
#pragma GCC unroll 6
  for (int i = 0; i < VN; i++) a0[i] = a1[i] = _mm256_setzero_ps();
  size_t bytes = (size_t)VN * 8 * (kvt == DS_F16 ? 2 : 4);
  int cm = ctx0 < ctx1 ? ctx0 : ctx1;
  int p = 0;
  for (; p < cm; p++) {
    const uint8_t *vr = kp[p] + base;
    if (p + ATT_PF < cm) prefetch_row(kp[p + ATT_PF] + base, bytes);
    __m256 w0 = _mm256_set1_ps(s0[p]), w1 = _mm256_set1_ps(s1[p]);
#pragma GCC unroll 6
    for (int i = 0; i < VN; i++) {
      __m256 v = load_kv8(vr, i * 8, kvt);
      a0[i] = _mm256_fmadd_ps(w0, v, a0[i]);
      a1[i] = _mm256_fmadd_ps(w1, v, a1[i]);
    }
  }
  for (int q = p; q < ctx0; q++) {
    __m256 w0 = _mm256_set1_ps(s0[q]);
#pragma GCC unroll 6
    for (int i = 0; i < VN; i++) a0[i] = _mm256_fmadd_ps(w0, load_kv8(kp[q] + base, i * 8, kvt), a0[i]);
  }
  for (int q = p; q < ctx1; q++) {
    __m256 w1 = _mm256_set1_ps(s1[q]);
#pragma GCC unroll 6
    for (int i = 0; i < VN; i++) a1[i] = _mm256_fmadd_ps(w1, load_kv8(kp[q] + base, i * 8, kvt), a1[i]);
  }
#pragma GCC unroll 6
  for (int i = 0; i < VN; i++) {
    _mm256_storeu_ps(o0 + i * 8, a0[i]);
    _mm256_storeu_ps(o1 + i * 8, a1[i]);
  }
}

// att_values_simd for two (token, head) rows sharing a KV head.
SIMD_INLINE void att_values2_simd(const att_ctx *c, const float *s0, const float *s1, int ctx0,
                                  int ctx1, float *o0, float *o1, int kvt) {
  int hd = c->hd, nv = hd / 8;
  size_t es = kvt == DS_F16 ? 2 : 4;
  for (int v0 = 0; v0 < nv; v0 += 6) {
    size_t base = c->voff + (size_t)v0 * 8 * es;
    float *p0 = o0 + v0 * 8, *p1 = o1 + v0 * 8;
    switch (nv - v0 < 6 ? nv - v0 : 6) {
      case 1: att_values2_block(c->kp, base, s0, s1, ctx0, ctx1, p0, p1, kvt, 1); break;
      case 2: att_values2_block(c->kp, base, s0, s1, ctx0, ctx1, p0, p1, kvt, 2); break;
      case 3: att_values2_block(c->kp, base, s0, s1, ctx0, ctx1, p0, p1, kvt, 3); break;
      case 4: att_values2_block(c->kp, base, s0, s1, ctx0, ctx1, p0, p1, kvt, 4); break;
      case 5: att_values2_block(c->kp, base, s0, s1, ctx0, ctx1, p0, p1, kvt, 5); break;
      default: att_values2_block(c->kp, base, s0, s1, ctx0, ctx1, p0, p1, kvt, 6); break;
    }
  }
  for (int d = nv * 8; d < hd; d++) {
    float a = 0, b = 0;
    for (int p = 0; p < ctx0; p++) a = fma1(s0[p], load_kv1(c->kp[p] + c->voff, d, kvt), a);
    for (int p = 0; p < ctx1; p++) b = fma1(s1[p], load_kv1(c->kp[p] + c->voff, d, kvt), b);
    o0[d] = a;
    o1[d] = b;
  }
}

// Scores of four query heads sharing a KV head: each K row is loaded once
// for the four. Same per-dot order as att_scores_simd.
SIMD_INLINE void att_scores4_simd(const att_ctx *c, const float *q0, const float *q1,
                                  const float *q2, const float *q3, int ctx, float *s0, float *s1,
                                  float *s2, float *s3, int kvt) {
  int hd = c->hd, nv = hd / 8;
  size_t rowbytes = (size_t)hd * (kvt == DS_F16 ? 2 : 4);
  int p = 0;
  if (hd % 8 == 0) {
    // Two positions at a time, the eight sums reduced together (hsum8x8
    // does hsum8's additions; with no tail terms the score is the sum
    // times scale, as below).
    const __m256 sc = _mm256_set1_ps(c->scale);
    for (; p + 2 <= ctx; p += 2) {
      const uint8_t *k0 = c->kp[p], *k1 = c->kp[p + 1];
      if (p + ATT_PF + 1 < ctx) {
        prefetch_row(c->kp[p + ATT_PF], rowbytes);
        prefetch_row(c->kp[p + ATT_PF + 1], rowbytes);
      }
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int i = 0; i < nv; i++) {
        __m256 kv0 = load_kv8(k0, i * 8, kvt), kv1 = load_kv8(k1, i * 8, kvt);
        __m256 qv = _mm256_loadu_ps(q0 + i * 8);
        a0 = _mm256_fmadd_ps(qv, kv0, a0);
        b0 = _mm256_fmadd_ps(qv, kv1, b0);
        qv = _mm256_loadu_ps(q1 + i * 8);
        a1 = _mm256_fmadd_ps(qv, kv0, a1);
        b1 = _mm256_fmadd_ps(qv, kv1, b1);
        qv = _mm256_loadu_ps(q2 + i * 8);
        a2 = _mm256_fmadd_ps(qv, kv0, a2);
        b2 = _mm256_fmadd_ps(qv, kv1, b2);
        qv = _mm256_loadu_ps(q3 + i * 8);
        a3 = _mm256_fmadd_ps(qv, kv0, a3);
        b3 = _mm256_fmadd_ps(qv, kv1, b3);
      }
      float r[8];
      _mm256_storeu_ps(r, _mm256_mul_ps(hsum8x8(a0, a1, a2, a3, b0, b1, b2, b3), sc));
      s0[p] = r[0], s1[p] = r[1], s2[p] = r[2], s3[p] = r[3];
      s0[p + 1] = r[4], s1[p + 1] = r[5], s2[p + 1] = r[6], s3[p + 1] = r[7];
    }
  }
  for (; p < ctx; p++) {
    const uint8_t *k = c->kp[p];
    if (p + ATT_PF < ctx) prefetch_row(c->kp[p + ATT_PF], rowbytes);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < nv; i++) {
      __m256 kv = load_kv8(k, i * 8, kvt);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i * 8), kv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + i * 8), kv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + i * 8), kv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + i * 8), kv, a3);
    }
    float r0 = hsum8(a0), r1 = hsum8(a1), r2 = hsum8(a2), r3 = hsum8(a3);
    for (int d = nv * 8; d < hd; d++) {
      float kd = load_kv1(k, d, kvt);
      r0 = fma1(q0[d], kd, r0);
      r1 = fma1(q1[d], kd, r1);
      r2 = fma1(q2[d], kd, r2);
      r3 = fma1(q3[d], kd, r3);
    }
    s0[p] = r0 * c->scale;
    s1[p] = r1 * c->scale;
    s2[p] = r2 * c->scale;
    s3[p] = r3 * c->scale;
  }
}

static SIMD void att_softmax_simd(att_ctx *c, int t0, int tn) {
  for (int ti = 0; ti < tn; ti++) {
    int ctx = c->pos0 + t0 + ti + 1;
    for (int h = 0; h < c->ratio; h++) {
      float *s = c->scores + (size_t)(ti * c->ratio + h) * c->maxctx;
      c->sums[ti * c->ratio + h] = exp_shift_simd(s, ctx, max_simd(s, ctx));
    }
  }
}

// The (token, head) rows of a tile, numbered k = ti*ratio + h, are taken
// four at a time for the scores (each K row loaded once for the four; a
// group scores up to its longest context, and the extra positions of the
// shorter rows are scratch the softmax and values never read) and two at a
// time for the values.
SIMD_INLINE void att_tile_simd(att_ctx *c, int t0, int tn, int g, int kvt) {
  int hd = c->hd, ratio = c->ratio, rows = tn * ratio;
  int ctx0 = c->pos0 + t0 + 1;  // context of the tile's first token
#define ATT_Q(k) (c->q + ((size_t)(t0 + (k) / ratio) * c->nheads + g * ratio + (k) % ratio) * hd)
#define ATT_S(k) (c->scores + (size_t)(k) * c->maxctx)
#define ATT_CTX(k) (ctx0 + (k) / ratio)
  int k = 0;
  for (; k + 4 <= rows; k += 4)
    att_scores4_simd(c, ATT_Q(k), ATT_Q(k + 1), ATT_Q(k + 2), ATT_Q(k + 3), ATT_CTX(k + 3),
                     ATT_S(k), ATT_S(k + 1), ATT_S(k + 2), ATT_S(k + 3), kvt);
  for (; k < rows; k++) att_scores_simd(c, ATT_Q(k), ATT_CTX(k), ATT_S(k), kvt);
  att_softmax_simd(c, t0, tn);
  k = 0;
  for (; k + 2 <= rows; k += 2)
    att_values2_simd(c, ATT_S(k), ATT_S(k + 1), ATT_CTX(k), ATT_CTX(k + 1), c->o + (size_t)k * hd,
                     c->o + (size_t)(k + 1) * hd, kvt);
  for (; k < rows; k++) att_values_simd(c, ATT_S(k), ATT_CTX(k), c->o + (size_t)k * hd, kvt);
#undef ATT_Q
#undef ATT_S
#undef ATT_CTX
  att_store(c, t0, tn, g);
}

static SIMD void att_tile_simd_f16(att_ctx *c, int t0, int tn, int g) { att_tile_simd(c, t0, tn, g, DS_F16); }
static SIMD void att_tile_simd_f32(att_ctx *c, int t0, int tn, int g) { att_tile_simd(c, t0, tn, g, DS_F32); }
#endif

int64_t ds_attention_units(int n, int nkv) { return (int64_t)(n + ATT_TT - 1) / ATT_TT * nkv; }

void ds_attention_worker(float *out, const float *q, int n, int nheads, int pos0, int bsize,
                         int nkv, int hd, int kvtype, void **blocks, int64_t *ctr) {
  att_ctx c;
  c.out = out;
  c.q = q;
  c.nheads = nheads;
  c.pos0 = pos0;
  c.bsize = bsize;
  c.nkv = nkv;
  c.hd = hd;
  c.kvtype = kvtype;
  c.ratio = nheads / nkv;
  c.es = kvtype == DS_F16 ? 2 : 4;
  c.rowb = (size_t)nkv * hd * c.es;
  c.voff = (size_t)bsize * c.rowb;
  c.maxctx = (size_t)pos0 + n;
  c.blocks = blocks;
  c.scale = 1.0f / sqrtf((float)hd);
  size_t heads = (size_t)(n < ATT_TT ? n : ATT_TT) * c.ratio;
  float *buf = malloc(sizeof(float) * (heads * c.maxctx + heads * hd + hd + heads));
  c.kp = malloc(sizeof(*c.kp) * c.maxctx);
  if (!buf || !c.kp) abort();
  c.scores = buf;
  c.o = c.scores + heads * c.maxctx;
  c.kv = c.o + heads * hd;
  c.sums = c.kv + hd;
  int64_t units = ds_attention_units(n, nkv);
  for (int64_t u; (u = next_unit(ctr)) < units;) {
    int t0 = (int)(u / nkv) * ATT_TT, g = (int)(u % nkv);
    int tn = n - t0 < ATT_TT ? n - t0 : ATT_TT;
    att_rows(&c, g, pos0 + t0 + tn);
#ifdef DS_X86
    if (ds_using_simd()) {
      if (kvtype == DS_F16) att_tile_simd_f16(&c, t0, tn, g);
      else att_tile_simd_f32(&c, t0, tn, g);
      continue;
    }
#endif
    att_tile_generic(&c, t0, tn, g);
  }
  free(buf);
  free(c.kp);
}

// ---------------------------------------------------------------------------
// Elementwise kernels and softmax.

#ifdef DS_X86
static SIMD void swiglu_simd(float *out, const float *gate, const float *up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    __m256 sg = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(sg, _mm256_loadu_ps(up + i)));
  }
  if (i < n) {  // the tail through the same vector code
    float g[8] = {0}, u[8] = {0}, o[8];
    for (int j = 0; i + j < n; j++) g[j] = gate[i + j], u[j] = up[i + j];
    swiglu_simd(o, g, u, 8);
    for (int j = 0; i + j < n; j++) out[i + j] = o[j];
  }
}

static SIMD void softmax_simd(float *x, int64_t n) {
  float m = max_simd(x, n);
  exp_shift_simd(x, n, m);
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += x[i];
  __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  for (; i < n; i++) x[i] *= (float)(1.0 / sum);
}
#endif

void ds_swiglu(float *out, const float *gate, const float *up, int64_t n) {
#ifdef DS_X86
  if (ds_using_simd()) {
    swiglu_simd(out, gate, up, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) {
    float g = gate[i];
    float s = g / (1.0f + expf(-g));
    out[i] = s * up[i];
  }
}

// Softmax in place: exp(x - max) in float32, normalized by the float64 sum
// taken in index order.
void ds_softmax(float *x, int64_t n) {
  if (n <= 0) return;
#ifdef DS_X86
  if (ds_using_simd()) {
    softmax_simd(x, n);
    return;
  }
#endif
  float m = x[0];
  for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = expf(x[i] - m);
    sum += x[i];
  }
  float inv = (float)(1.0 / sum);
  for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

#ifdef DS_X86
static SIMD void f16_to_f32_simd(float *dst, const uint16_t *src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}
static SIMD void f32_to_f16_simd(uint16_t *dst, const float *src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#endif

void ds_f16_to_f32(float *dst, const uint16_t *src, int64_t n) {
#ifdef DS_X86
  if (ds_using_simd()) {
    f16_to_f32_simd(dst, src, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) dst[i] = half_to_float(src[i]);
}

void ds_f32_to_f16(uint16_t *dst, const float *src, int64_t n) {
#ifdef DS_X86
  if (ds_using_simd()) {
    f32_to_f16_simd(dst, src, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}
