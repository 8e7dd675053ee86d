// driftstore's compute kernels in Metal Shading Language, compiled at run time by the metal
// package (newLibraryWithSource, fast math off). Semantics follow engine/cpu (package doc
// there); buffer indices and parameter structs match metal/backend_darwin.go and
// metal/plan.go. Every parameter struct has only 4-byte fields, in the order the Go side
// writes them.
//
// Determinism: no atomics. Dot products: lane l of a SIMD group accumulates its own elements
// in increasing order, then simd_sum reduces the 32 lanes (a fixed hardware order); an output
// depends only on its own inputs, never on the batch size or the launch geometry.

#include <metal_stdlib>
using namespace metal;

// Launch geometry (metal/metal.go has the same constants).
#define MM_SG 4u    // matmul: SIMD groups (= weight rows) per threadgroup
#define MM_TT 8u    // matmul: tokens per SIMD group
#define AT_SG 4u    // attention: SIMD groups (= query heads) per threadgroup
#define AT_MAXD 8u  // attention: head_dim / 32 values held per lane, at most

// Weight types, by GGML id.
#define T_F32 0u
#define T_F16 1u
#define T_Q8_0 8u
#define T_BF16 30u

static inline float bf16_to_float(ushort u) { return as_type<float>(uint(u) << 16); }

// Elements c..c+3 of a weight row in GGML layout, as float32. c is a multiple of 4. Q8_0: blocks
// of 34 bytes (an f16 scale, then 32 int8), value = the rounded float32 product scale * q.
static inline float4 load_w4(uint wtype, device const uchar *row, uint c) {
    if (wtype == T_F32) {
        device const float *p = (device const float *)row + c;
        return float4(p[0], p[1], p[2], p[3]);
    }
    if (wtype == T_F16) {
        device const half *p = (device const half *)row + c;
        return float4(float(p[0]), float(p[1]), float(p[2]), float(p[3]));
    }
    if (wtype == T_BF16) {
        device const ushort *p = (device const ushort *)row + c;
        return float4(bf16_to_float(p[0]), bf16_to_float(p[1]), bf16_to_float(p[2]), bf16_to_float(p[3]));
    }
    device const uchar *blk = row + (c / 32) * 34;
    float d = float(*(device const half *)blk);
    device const char *q = (device const char *)(blk + 2) + (c % 32);
    return float4(d * float(q[0]), d * float(q[1]), d * float(q[2]), d * float(q[3]));
}

// ---------------------------------------------------------------------------------------------
// MatMul: out[t][r] = W[r] . x[t] for t < n. One SIMD group per weight row and up to MM_TT
// tokens; lane l takes columns 4l..4l+3 of every 128, so a row is read once for MM_TT tokens.
// Buffers: 0 out (float), 1 x (float), 2 weights (row-major, GGML layout), 3 params.

struct MatMulParams {
    uint rows;
    uint cols;       // a multiple of 4 (checked when the weights load)
    uint n;
    uint row_bytes;
};

static inline void matmul_body(uint wtype, device float *out, device const float *x,
                               device const uchar *w, constant MatMulParams &p, uint2 tg, uint sg,
                               uint lane) {
    const uint r = tg.x * MM_SG + sg;
    const uint t0 = tg.y * MM_TT;
    if (r >= p.rows || t0 >= p.n) {
        return;  // uniform across the SIMD group
    }
    const uint nt = min(MM_TT, p.n - t0);
    device const uchar *row = w + ulong(r) * p.row_bytes;
    float acc[MM_TT];
    for (uint j = 0; j < MM_TT; j++) {
        acc[j] = 0.0f;
    }
    for (uint c = lane * 4; c < p.cols; c += 4 * 32) {
        const float4 wv = load_w4(wtype, row, c);
        for (uint j = 0; j < MM_TT; j++) {
            if (j < nt) {
                device const float *xr = x + ulong(t0 + j) * p.cols + c;
                float a = acc[j];
                a += wv.x * xr[0];
                a += wv.y * xr[1];
                a += wv.z * xr[2];
                a += wv.w * xr[3];
                acc[j] = a;
            }
        }
    }
    for (uint j = 0; j < MM_TT; j++) {
        if (j < nt) {
            const float s = simd_sum(acc[j]);
            if (lane == 0) {
                out[ulong(t0 + j) * p.rows + r] = s;
            }
        }
    }
}

#define MATMUL_KERNEL(NAME, WTYPE)                                                          \
    kernel void NAME(device float *out [[buffer(0)]], device const float *x [[buffer(1)]], \
                     device const uchar *w [[buffer(2)]],                                  \
                     constant MatMulParams &p [[buffer(3)]],                               \
                     uint2 tg [[threadgroup_position_in_grid]],                            \
                     uint sg [[simdgroup_index_in_threadgroup]],                           \
                     uint lane [[thread_index_in_simdgroup]]) {                            \
        matmul_body(WTYPE, out, x, w, p, tg, sg, lane);                                    \
    }

MATMUL_KERNEL(ds_matmul_f32, T_F32)
MATMUL_KERNEL(ds_matmul_f16, T_F16)
MATMUL_KERNEL(ds_matmul_bf16, T_BF16)
MATMUL_KERNEL(ds_matmul_q8_0, T_Q8_0)

// ---------------------------------------------------------------------------------------------
// Embed: out[t] = row ids[t] of the embedding matrix, dequantized. One thread per 4 values.
// Buffers: 0 out, 1 ids (int32), 2 weights, 3 params. Ids were range-checked by the engine;
// an id out of range leaves its row untouched rather than read outside the matrix.

struct EmbedParams {
    uint n;          // number of ids
    uint cols;       // a multiple of 4
    uint rows;
    uint row_bytes;
};

static inline void embed_body(uint wtype, device float *out, device const int *ids,
                              device const uchar *w, constant EmbedParams &p, uint gid) {
    const uint per = p.cols / 4;
    if (gid >= p.n * per) {
        return;
    }
    const uint t = gid / per;
    const uint c = (gid % per) * 4;
    const int id = ids[t];
    if (id < 0 || uint(id) >= p.rows) {
        return;
    }
    const float4 v = load_w4(wtype, w + ulong(id) * p.row_bytes, c);
    device float *o = out + ulong(t) * p.cols + c;
    o[0] = v.x;
    o[1] = v.y;
    o[2] = v.z;
    o[3] = v.w;
}

#define EMBED_KERNEL(NAME, WTYPE)                                                          \
    kernel void NAME(device float *out [[buffer(0)]], device const int *ids [[buffer(1)]], \
                     device const uchar *w [[buffer(2)]],                                  \
                     constant EmbedParams &p [[buffer(3)]],                                \
                     uint gid [[thread_position_in_grid]]) {                               \
        embed_body(WTYPE, out, ids, w, p, gid);                                            \
    }

EMBED_KERNEL(ds_embed_f32, T_F32)
EMBED_KERNEL(ds_embed_f16, T_F16)
EMBED_KERNEL(ds_embed_bf16, T_BF16)
EMBED_KERNEL(ds_embed_q8_0, T_Q8_0)

// ---------------------------------------------------------------------------------------------
// RMSNorm: out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w. One threadgroup per row. out may be x.
// Buffers: 0 out, 1 x, 2 w (float), 3 params.

struct NormParams {
    uint dim;
    float eps;
};

kernel void ds_rmsnorm(device float *out [[buffer(0)]], device const float *x [[buffer(1)]],
                    device const float *w [[buffer(2)]], constant NormParams &p [[buffer(3)]],
                    uint row [[threadgroup_position_in_grid]],
                    uint tid [[thread_index_in_threadgroup]],
                    uint ntg [[threads_per_threadgroup]],
                    uint sg [[simdgroup_index_in_threadgroup]],
                    uint nsg [[simdgroups_per_threadgroup]],
                    uint lane [[thread_index_in_simdgroup]]) {
    threadgroup float part[32];
    device const float *xr = x + ulong(row) * p.dim;
    device float *orow = out + ulong(row) * p.dim;
    float ss = 0.0f;
    for (uint i = tid; i < p.dim; i += ntg) {
        const float v = xr[i];
        ss += v * v;
    }
    ss = simd_sum(ss);
    if (lane == 0) {
        part[sg] = ss;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (uint i = 0; i < nsg; i++) {
        total += part[i];
    }
    const float s = 1.0f / sqrt(total / float(p.dim) + p.eps);
    // Every read of x above happened before the barrier, so writing out (which may be x) is
    // safe; each thread rewrites only the elements it reads here.
    for (uint i = tid; i < p.dim; i += ntg) {
        orow[i] = (xr[i] * s) * w[i];
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE, adjacent pairs: (x[2i], x[2i+1]) of every head rotated by the angle of its position.
// cos and sin come from the host ([n][head_dim/2] float2), computed in float64 as engine/cpu
// does. One thread per pair. Buffers: 0 x (in place), 1 cs, 2 params.

struct RopeParams {
    uint n;
    uint heads;
    uint head_dim;
};

kernel void ds_rope(device float *x [[buffer(0)]], device const float2 *cs [[buffer(1)]],
                 constant RopeParams &p [[buffer(2)]], uint gid [[thread_position_in_grid]]) {
    const uint half_d = p.head_dim / 2;
    if (gid >= p.n * p.heads * half_d) {
        return;
    }
    const uint i = gid % half_d;
    const uint h = (gid / half_d) % p.heads;
    const uint t = gid / (half_d * p.heads);
    const float2 a = cs[t * half_d + i];
    device float *v = x + (ulong(t) * p.heads + h) * p.head_dim + 2 * i;
    const float x0 = v[0];
    const float x1 = v[1];
    v[0] = x0 * a.x - x1 * a.y;
    v[1] = x0 * a.y + x1 * a.x;
}

// ---------------------------------------------------------------------------------------------
// KV cache. A block holds block_size positions: K [block_size][kv_heads][head_dim], then V
// likewise, F16 or F32. Blocks are found through a table of byte offsets into the linear
// memory buffer (bound at offset 0).

// IEEE binary16 bits of f: round to nearest even, overflow to infinity, NaN stays NaN (quiet);
// the same bits as engine/cpu's conversion.
static inline ushort f32_to_f16_bits(float f) {
    const uint b = as_type<uint>(f);
    const ushort sign = ushort((b >> 16) & 0x8000u);
    const int e = int((b >> 23) & 0xffu);
    uint m = b & 0x7fffffu;
    if (e == 0xff) {
        return m != 0 ? ushort(sign | 0x7e00u | (m >> 13)) : ushort(sign | 0x7c00u);
    }
    const int he = e - 127 + 15;
    if (he >= 0x1f) {
        return ushort(sign | 0x7c00u);
    }
    if (he <= 0) {
        if (he < -10) {
            return sign;
        }
        m |= 0x800000u;
        const uint shift = uint(14 - he);
        uint h = m >> shift;
        const uint rem = m & ((1u << shift) - 1u);
        const uint halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u) != 0)) {
            h++;
        }
        return ushort(sign | h);
    }
    uint h = (uint(he) << 10) | (m >> 13);
    const uint rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0)) {
        h++;
    }
    return ushort(sign | h);
}

struct KVParams {
    uint n;
    uint pos0;
    uint block_size;
    uint row;        // kv_heads * head_dim
    uint f16;        // 1: F16 elements, 0: F32
};

// StoreKV: K and V rows of positions pos0..pos0+n-1 into their blocks. One thread per value.
// Buffers: 0 memory, 1 k, 2 v, 3 block table (uint byte offsets), 4 params.
kernel void ds_store_kv(device uchar *mem [[buffer(0)]], device const float *k [[buffer(1)]],
                     device const float *v [[buffer(2)]], device const uint *table [[buffer(3)]],
                     constant KVParams &p [[buffer(4)]], uint gid [[thread_position_in_grid]]) {
    if (gid >= p.n * p.row) {
        return;
    }
    const uint t = gid / p.row;
    const uint i = gid % p.row;
    const uint pos = p.pos0 + t;
    const ulong es = p.f16 != 0 ? 2 : 4;
    const ulong row_bytes = ulong(p.row) * es;
    device uchar *blk = mem + table[pos / p.block_size];
    const ulong off = ulong(pos % p.block_size) * row_bytes + ulong(i) * es;
    const ulong voff = ulong(p.block_size) * row_bytes;
    const float kv = k[ulong(t) * p.row + i];
    const float vv = v[ulong(t) * p.row + i];
    if (p.f16 != 0) {
        *(device ushort *)(blk + off) = f32_to_f16_bits(kv);
        *(device ushort *)(blk + voff + off) = f32_to_f16_bits(vv);
    } else {
        *(device float *)(blk + off) = kv;
        *(device float *)(blk + voff + off) = vv;
    }
}

struct AttnParams {
    uint n;
    uint heads;
    uint pos0;
    uint block_size;
    uint kv_heads;
    uint head_dim;   // at most 32 * AT_MAXD
    uint f16;
    float scale;     // 1 / sqrt(head_dim)
};

static inline float kv_at(device const uchar *row, uint d, uint f16) {
    return f16 != 0 ? float(((device const half *)row)[d]) : ((device const float *)row)[d];
}

// Attention: causal grouped-query attention of query t (position pos0+t) and head h over
// positions 0..pos0+t; head h reads KV head h / (heads / kv_heads). As engine/cpu: scores
// scaled, their maximum subtracted, exp, float32 sum in position order, unnormalized weighted
// sum of V, times 1/sum. One SIMD group per (t, h); lane l holds dimensions l, l+32, ...;
// scores are computed twice (for the maximum, then for the weights) so that no score buffer
// is needed at any context length.
// Buffers: 0 out, 1 q, 2 memory, 3 block table, 4 params.
kernel void ds_attention(device float *out [[buffer(0)]], device const float *q [[buffer(1)]],
                      device const uchar *mem [[buffer(2)]], device const uint *table [[buffer(3)]],
                      constant AttnParams &p [[buffer(4)]],
                      uint2 tg [[threadgroup_position_in_grid]],
                      uint sg [[simdgroup_index_in_threadgroup]],
                      uint lane [[thread_index_in_simdgroup]]) {
    const uint h = tg.x * AT_SG + sg;
    const uint t = tg.y;
    if (h >= p.heads || t >= p.n) {
        return;  // uniform across the SIMD group
    }
    const uint g = h / (p.heads / p.kv_heads);
    const ulong es = p.f16 != 0 ? 2 : 4;
    const ulong row_bytes = ulong(p.kv_heads) * p.head_dim * es;
    const ulong voff = ulong(p.block_size) * row_bytes;
    const ulong hoff = ulong(g) * p.head_dim * es;
    const uint nd = (p.head_dim + 31) / 32;
    device const float *qh = q + (ulong(t) * p.heads + h) * p.head_dim;
    float qv[AT_MAXD];
    float acc[AT_MAXD];
    for (uint i = 0; i < AT_MAXD; i++) {
        const uint d = lane + 32 * i;
        qv[i] = (i < nd && d < p.head_dim) ? qh[d] : 0.0f;
        acc[i] = 0.0f;
    }
    const uint ctx = p.pos0 + t + 1;

    float m = -INFINITY;
    for (uint pos = 0; pos < ctx; pos++) {
        device const uchar *kr = mem + table[pos / p.block_size] + ulong(pos % p.block_size) * row_bytes + hoff;
        float part = 0.0f;
        for (uint i = 0; i < nd; i++) {
            const uint d = lane + 32 * i;
            if (d < p.head_dim) {
                part += qv[i] * kv_at(kr, d, p.f16);
            }
        }
        const float s = simd_sum(part) * p.scale;
        m = s > m ? s : m;
    }

    float sum = 0.0f;
    for (uint pos = 0; pos < ctx; pos++) {
        device const uchar *kr = mem + table[pos / p.block_size] + ulong(pos % p.block_size) * row_bytes + hoff;
        float part = 0.0f;
        for (uint i = 0; i < nd; i++) {
            const uint d = lane + 32 * i;
            if (d < p.head_dim) {
                part += qv[i] * kv_at(kr, d, p.f16);
            }
        }
        const float s = simd_sum(part) * p.scale;
        const float e = exp(s - m);
        sum += e;
        device const uchar *vr = kr + voff;
        for (uint i = 0; i < nd; i++) {
            const uint d = lane + 32 * i;
            if (d < p.head_dim) {
                acc[i] += e * kv_at(vr, d, p.f16);
            }
        }
    }

    const float inv = 1.0f / sum;
    device float *oh = out + (ulong(t) * p.heads + h) * p.head_dim;
    for (uint i = 0; i < nd; i++) {
        const uint d = lane + 32 * i;
        if (d < p.head_dim) {
            oh[d] = acc[i] * inv;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise. One thread per value. out may be gate or up (SwiGLU), dst is read then written
// (Add).

kernel void ds_swiglu(device float *out [[buffer(0)]], device const float *gate [[buffer(1)]],
                   device const float *up [[buffer(2)]], constant uint &n [[buffer(3)]],
                   uint i [[thread_position_in_grid]]) {
    if (i >= n) {
        return;
    }
    const float g = gate[i];
    out[i] = (g / (1.0f + exp(-g))) * up[i];
}

kernel void ds_add(device float *dst [[buffer(0)]], device const float *src [[buffer(1)]],
                constant uint &n [[buffer(2)]], uint i [[thread_position_in_grid]]) {
    if (i >= n) {
        return;
    }
    dst[i] = dst[i] + src[i];
}
