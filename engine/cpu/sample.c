// Sampler selection kernels: see sample.h. Generic C, plus AVX2 scans picked at run time
// (ds_using_simd, kernels.c). Both give the same answers: only comparisons, no arithmetic.

#include "sample.h"

#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define DS_SAMPLE_X86 1
#include <immintrin.h>
#endif

static inline uint64_t sort_key(float l, int64_t id) {
  if (l != l) l = -__builtin_inff();
  if (l == 0) l = 0;  // -0 -> +0
  uint32_t u;
  memcpy(&u, &l, 4);
  if (u & 0x80000000u)
    u = ~u;
  else
    u |= 0x80000000u;
  return ((uint64_t)(~u) << 32) | (uint32_t)id;
}

static inline float key_logit(uint64_t key) {
  uint32_t u = ~(uint32_t)(key >> 32);
  if (u & 0x80000000u)
    u &= ~0x80000000u;
  else
    u = ~u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static int64_t argmax_generic(const float *x, int64_t n) {
  int64_t best = 0;
  float bl = x[0];
  if (bl != bl) bl = -__builtin_inff();
  for (int64_t i = 0; i < n; i++) {
    if (x[i] > bl) {
      best = i;
      bl = x[i];
    }
  }
  return best;
}

// first index >= i with x[index] > t, or n
static int64_t first_greater_generic(const float *x, int64_t i, int64_t n, float t) {
  for (; i < n; i++)
    if (x[i] > t) return i;
  return n;
}

#ifdef DS_SAMPLE_X86
__attribute__((target("avx2"))) static int64_t argmax_avx2(const float *x, int64_t n) {
  // Pass 1: the largest non-NaN value (max_ps returns its second operand when either is NaN,
  // so a NaN in x never enters the accumulators).
  __m256 a0 = _mm256_set1_ps(-__builtin_inff()), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_max_ps(_mm256_loadu_ps(x + i), a0);
    a1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_max_ps(_mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_max_ps(_mm256_loadu_ps(x + i + 24), a3);
  }
  a0 = _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3));
  float lanes[8];
  _mm256_storeu_ps(lanes, a0);
  float m = lanes[0];
  for (int j = 1; j < 8; j++)
    if (lanes[j] > m) m = lanes[j];
  for (; i < n; i++)
    if (x[i] > m) m = x[i];
  if (m == -__builtin_inff()) return 0;  // all NaN or -Inf: the first element
  // Pass 2: the first element equal to it (±0 compare equal).
  __m256 mv = _mm256_set1_ps(m);
  for (i = 0; i + 8 <= n; i += 8) {
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), mv, _CMP_EQ_OQ));
    if (mask) return i + __builtin_ctz(mask);
  }
  for (; i < n; i++)
    if (x[i] == m) return i;
  return 0;  // unreachable
}

__attribute__((target("avx2"))) static int64_t first_greater_avx2(const float *x, int64_t i, int64_t n, float t) {
  __m256 tv = _mm256_set1_ps(t);
  for (; i + 32 <= n; i += 32) {
    __m256 c0 = _mm256_cmp_ps(_mm256_loadu_ps(x + i), tv, _CMP_GT_OQ);
    __m256 c1 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 8), tv, _CMP_GT_OQ);
    __m256 c2 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 16), tv, _CMP_GT_OQ);
    __m256 c3 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 24), tv, _CMP_GT_OQ);
    __m256 any = _mm256_or_ps(_mm256_or_ps(c0, c1), _mm256_or_ps(c2, c3));
    if (_mm256_movemask_ps(any)) break;
  }
  for (; i + 8 <= n; i += 8) {
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), tv, _CMP_GT_OQ));
    if (mask) return i + __builtin_ctz(mask);
  }
  return first_greater_generic(x, i, n, t);
}
#endif

int64_t ds_argmax(const float *x, int64_t n) {
#ifdef DS_SAMPLE_X86
  if (ds_using_simd()) return argmax_avx2(x, n);
#endif
  return argmax_generic(x, n);
}

static void sift_up(uint64_t *h, int64_t j) {
  while (j > 0) {
    int64_t p = (j - 1) / 2;
    if (h[p] >= h[j]) return;
    uint64_t t = h[p];
    h[p] = h[j];
    h[j] = t;
    j = p;
  }
}

static void sift_down(uint64_t *h, int64_t n) {
  int64_t j = 0;
  for (;;) {
    int64_t l = 2 * j + 1;
    if (l >= n) return;
    int64_t w = l;
    if (l + 1 < n && h[l + 1] > h[l]) w = l + 1;
    if (h[j] >= h[w]) return;
    uint64_t t = h[j];
    h[j] = h[w];
    h[w] = t;
    j = w;
  }
}

void ds_topk_keys(const float *x, int64_t n, int64_t k, uint64_t *keys) {
  for (int64_t i = 0; i < k; i++) {
    keys[i] = sort_key(x[i], i);
    sift_up(keys, i);
  }
  // Indexes arrive in ascending order, so an element beats the worst kept only with a
  // strictly larger value (a NaN never does).
  float root = key_logit(keys[0]);
  int simd = ds_using_simd();
  for (int64_t i = k; i < n; i++) {
#ifdef DS_SAMPLE_X86
    i = simd ? first_greater_avx2(x, i, n, root) : first_greater_generic(x, i, n, root);
#else
    (void)simd;
    i = first_greater_generic(x, i, n, root);
#endif
    if (i >= n) break;
    keys[0] = sort_key(x[i], i);
    sift_down(keys, k);
    root = key_logit(keys[0]);
  }
}
