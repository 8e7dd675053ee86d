// tcbench: a standalone micro-benchmark and bit-exactness check of the few-token matrix
// kernels in ../kernels/kernels.cu (included, so every kernel and template is callable here),
// for work on the device machine without Go. Built and run by `scripts/gpu-check.sh kbench`:
//   nvcc -O3 -arch=sm_90 -std=c++17 -o tcbench cuda/tcbench/tcbench.cu
//   ./tcbench check     outputs of every few-token kernel vs ds_tcm's (the batched kernel), bit
//                       for bit, n = 1, 3, 8, aligned and misaligned activations; exit 1 on a
//                       difference
//   ./tcbench time      device time per product (CUDA events, median of 7 runs of 30 launches,
//                       rotating over enough weight copies that L2 holds none of them), GB/s of
//                       weights; and a device-to-device copy for the memory ceiling
//   ./tcbench checktcq  the ds_tcq instances alone (several matrices per launch, segment groups)
//   ./tcbench tcq       one 1B layer's decode products in CUDA graphs: present kernels vs ds_tcq
//                       (time runs it too)
//   ./tcbench mvs       the CUDA-core GEMV of one 1B layer and the lm head with 1, 2, 4, 8 warps
//                       per row and mv_split's (package cuda's mvSplit) choice, in CUDA graphs
//                       (and their bits)
//   ./tcbench ncu       each kernel once (F16 and Q8_0, 8192x2048, n = 1), for ncu
#include "../kernels/kernels.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(2);                                                                            \
        }                                                                                       \
    } while (0)

// A variant beside the exported kernels: ring depth 4.
__global__ void __launch_bounds__(256) h_tcr4_f16(float* out, int ostride, const void* w,
                                                  const __half* sc, const float* x, int xstride,
                                                  int rows, int cols, int n) {
    tcr_body<DT_F16, true, 4>(out, ostride, w, sc, x, xstride, rows, cols, n);
}
__global__ void __launch_bounds__(256) h_tcr4_q8(float* out, int ostride, const void* w,
                                                 const __half* sc, const float* x, int xstride,
                                                 int rows, int cols, int n) {
    tcr_body<DT_Q8_0, true, 4>(out, ostride, w, sc, x, xstride, rows, cols, n);
}

static int g_sms;

// mv_split: warps per row of the CUDA-core GEMV, package cuda's mvSplit (few.go): 8 (F16) or 4
// (Q8_0) where rows * S <= 65536 and cols / 8 >= 32 S, else 1 (the kernels without suffix).
static int mv_split_t(int ty, int rows, int cols) {
    int s = ty == DT_F16 ? 8 : 4;
    return (long long)rows * s > 65536 || (cols >> 3) < 32 * s ? 1 : s;
}
static int mv_rows_per_block(int ty, int rows, int cols, int rw) { return 8 / mv_split_t(ty, rows, cols) * rw; }

static uint64_t rng = 88172645463325252ull;
static uint64_t next() {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float unif() { return (float)((next() >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f; }

struct Mat {
    int ty, rows, cols, ncopy;
    std::vector<void*> w;
    std::vector<__half*> sc;
    size_t wbytes, sbytes;
};

static Mat make_mat(int ty, int rows, int cols, size_t rotate_bytes) {
    Mat m;
    m.ty = ty;
    m.rows = rows;
    m.cols = cols;
    m.wbytes = (size_t)rows * cols * (ty == DT_F16 ? 2 : 1);
    m.sbytes = ty == DT_Q8_0 ? (size_t)rows * (cols / 32) * 2 : 0;
    size_t per = m.wbytes + m.sbytes;
    m.ncopy = (int)std::min<size_t>(64, std::max<size_t>(1, (rotate_bytes + per - 1) / per));
    std::vector<uint16_t> hw;
    std::vector<int8_t> hq;
    std::vector<__half> hs;
    if (ty == DT_F16) {
        hw.resize((size_t)rows * cols);
        for (auto& v : hw) {
            __half h = __float2half(unif() * 0.5f);
            memcpy(&v, &h, 2);
        }
    } else {
        hq.resize((size_t)rows * cols);
        for (auto& v : hq) v = (int8_t)((int)(next() % 255) - 127);
        hs.resize((size_t)rows * (cols / 32));
        for (auto& v : hs) v = __float2half(0.001f + 0.01f * fabsf(unif()));
    }
    for (int i = 0; i < m.ncopy; i++) {
        void* w;
        CK(cudaMalloc(&w, m.wbytes));
        CK(cudaMemcpy(w, ty == DT_F16 ? (void*)hw.data() : (void*)hq.data(), m.wbytes, cudaMemcpyHostToDevice));
        m.w.push_back(w);
        __half* s = nullptr;
        if (m.sbytes) {
            CK(cudaMalloc(&s, m.sbytes));
            CK(cudaMemcpy(s, hs.data(), m.sbytes, cudaMemcpyHostToDevice));
        }
        m.sc.push_back(s);
    }
    return m;
}

static void free_mat(Mat& m) {
    for (int i = 0; i < m.ncopy; i++) {
        CK(cudaFree(m.w[i]));
        if (m.sc[i]) CK(cudaFree(m.sc[i]));
    }
}

// Scratch shared by the kernels that need it.
static float* g_part;
static unsigned* g_cnt;

// launch: one product out = W x for n tokens by kernel k; nw warps per block for tcr ("auto":
// the instance and warps cuda.Device.tcrShape picks).
static void launch(const std::string& k, const Mat& m, int copy, float* out, const float* x,
                   int xstride, int n, int nw, cudaStream_t st) {
    const void* w = m.w[copy];
    const __half* sc = m.sc[copy];
    int rows = m.rows, cols = m.cols, nch = cols / 32, nseg = (nch + 7) / 8;
    bool f16 = m.ty == DT_F16;
    bool vec = ((uintptr_t)x % 16 == 0) && xstride % 4 == 0;
    int rg = (rows + 15) / 16;
    nw = std::min(nw, nseg);
    size_t sh = (size_t)nseg * 128 * 4;
    if (k == "gemv") {
        int rpb = mv_rows_per_block(m.ty, rows, cols, 1);
        bool sp = mv_split_t(m.ty, rows, cols) > 1;
        dim3 grid(n == 1 ? 1 : (n + 7) / 8, (rows + rpb - 1) / rpb);
        if (n == 1) {
            if (f16) (sp ? (vec ? ds_mv_f16_1x1v_s8 : ds_mv_f16_1x1_s8) : (vec ? ds_mv_f16_1x1v : ds_mv_f16_1x1))<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
            else (sp ? (vec ? ds_mv_q8_1x1v_s4 : ds_mv_q8_1x1_s4) : (vec ? ds_mv_q8_1x1v : ds_mv_q8_1x1))<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
        } else {
            if (f16) (sp ? (vec ? ds_mv_f16_1x8v_s8 : ds_mv_f16_1x8_s8) : (vec ? ds_mv_f16_1x8v : ds_mv_f16_1x8))<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
            else (sp ? (vec ? ds_mv_q8_1x8v_s4 : ds_mv_q8_1x8_s4) : (vec ? ds_mv_q8_1x8v : ds_mv_q8_1x8))<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
        }
    } else if (k == "tcv") {
        dim3 grid(rg, nseg, 1);
        (f16 ? ds_tcv_f16 : ds_tcv_q8)<<<grid, 32, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n, g_part, g_cnt);
    } else if (k == "tcb") {
        dim3 grid((rows + 127) / 128, nseg, 1);
        (f16 ? ds_tcb_f16 : ds_tcb_q8)<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n, g_part, g_cnt);
    } else if (k == "tcm") {
        dim3 grid((n + 63) / 64, (rows + 127) / 128);
        (f16 ? ds_tcm_f16 : ds_tcm_q8)<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
    } else if (k == "tcr4" || k == "tcr8" || k == "tcr2" || k == "auto") {
        std::string kk = k;
        if (k == "auto") {  // cuda.Device.tcrShape
            kk = "tcr2";
            nw = 8;
            if (rg <= g_sms) {
                if (nseg <= 8) kk = "tcr8";
                else nw = 32;
            }
            nw = std::min(nw, nseg);
        }
        decltype(&ds_tcr2_f16) f;
        if (kk == "tcr2") f = f16 ? (vec ? ds_tcr2_f16v : ds_tcr2_f16) : (vec ? ds_tcr2_q8v : ds_tcr2_q8);
        else if (kk == "tcr8") f = f16 ? (vec ? ds_tcr8_f16v : ds_tcr8_f16) : (vec ? ds_tcr8_q8v : ds_tcr8_q8);
        else {
            if (!vec) { fprintf(stderr, "%s needs aligned x\n", k.c_str()); exit(2); }
            f = f16 ? h_tcr4_f16 : h_tcr4_q8;
        }
        f<<<rg, 32 * nw, sh, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
    } else {
        fprintf(stderr, "unknown kernel %s\n", k.c_str());
        exit(2);
    }
    CK(cudaGetLastError());
}

struct Variant {
    std::string k;
    int nw;
    std::string label() const { return nw ? k + "/w" + std::to_string(nw) : k; }
};

static const std::vector<Variant> fewVariants = {
    {"tcv", 0}, {"tcb", 0}, {"tcr2", 8}, {"tcr2", 16}, {"tcr2", 32}, {"tcr8", 8}, {"tcr8", 4},
    {"tcr4", 8}, {"auto", 0}};

static int check() {
    struct Shape { int rows, cols; };
    std::vector<Shape> shapes = {{8192, 2048}, {2048, 8192}, {1000, 800}, {512, 2048}, {48, 96}, {130, 2080}};
    int bad = 0;
    for (int ty : {DT_F16, DT_Q8_0}) {
        for (auto s : shapes) {
            Mat m = make_mat(ty, s.rows, s.cols, 0);
            size_t xn = (size_t)8 * s.cols + 4;
            std::vector<float> hx(xn);
            for (auto& v : hx) v = ldexpf(unif(), (int)(next() % 41) - 20);
            // some zero chunks and a huge value: exponent edge cases
            for (int i = 0; i < 32 && i < s.cols; i++) hx[i] = 0.f;
            hx[40 % xn] = 3.0e30f;
            float *dx, *ref, *out;
            CK(cudaMalloc(&dx, xn * 4));
            CK(cudaMemcpy(dx, hx.data(), xn * 4, cudaMemcpyHostToDevice));
            size_t on = (size_t)8 * s.rows;
            CK(cudaMalloc(&ref, on * 4));
            CK(cudaMalloc(&out, on * 4));
            std::vector<uint32_t> hr(on), ho(on);
            for (int n : {1, 3, 8}) {
                for (int mis : {0, 1}) {
                    const float* x = dx + mis;
                    CK(cudaMemset(ref, 0xff, on * 4));
                    launch("tcm", m, 0, ref, x, s.cols, n, 0, 0);
                    CK(cudaMemcpy(hr.data(), ref, on * 4, cudaMemcpyDeviceToHost));
                    for (auto& v : fewVariants) {
                        if (mis && v.k == "tcr4") continue;
                        CK(cudaMemset(out, 0xff, on * 4));
                        launch(v.k, m, 0, out, x, s.cols, n, v.nw, 0);
                        CK(cudaDeviceSynchronize());
                        CK(cudaMemcpy(ho.data(), out, on * 4, cudaMemcpyDeviceToHost));
                        size_t diff = 0, first = 0;
                        for (size_t i = 0; i < (size_t)n * s.rows; i++)
                            if (hr[i] != ho[i]) { if (!diff) first = i; diff++; }
                        if (diff) {
                            bad++;
                            printf("check FAIL %s %s %dx%d n=%d mis=%d: %zu of %zu differ, first %zu (%08x vs %08x)\n",
                                   ty == DT_F16 ? "F16" : "Q8_0", v.label().c_str(), s.rows, s.cols, n, mis,
                                   diff, (size_t)n * s.rows, first, ho[first], hr[first]);
                        }
                    }
                }
            }
            CK(cudaFree(dx));
            CK(cudaFree(ref));
            CK(cudaFree(out));
            free_mat(m);
        }
    }
    printf("check: %s (%d failing cases)\n", bad ? "FAIL" : "all bit-identical to ds_tcm", bad);
    return bad ? 1 : 0;
}

static double time_variant(const Variant& v, const Mat& m, float* out, const float* x, int n) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    const int per = 30;
    for (int i = 0; i < 3; i++) launch(v.k, m, i % m.ncopy, out, x, m.cols, n, v.nw, 0);
    std::vector<double> t;
    int copy = 0;
    for (int r = 0; r < 7; r++) {
        CK(cudaEventRecord(a, 0));
        for (int i = 0; i < per; i++) {
            launch(v.k, m, copy, out, x, m.cols, n, v.nw, 0);
            copy = (copy + 1) % m.ncopy;
        }
        CK(cudaEventRecord(b, 0));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1000.0 / per);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return t[t.size() / 2];
}

static int timing(bool quick) {
    // Memory ceiling: a device-to-device copy, bytes read plus written.
    {
        size_t sz = (size_t)512 << 20;
        void *p, *q;
        CK(cudaMalloc(&p, sz));
        CK(cudaMalloc(&q, sz));
        CK(cudaMemset(p, 1, sz));
        cudaEvent_t a, b;
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        CK(cudaMemcpy(q, p, sz, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(a, 0));
        for (int i = 0; i < 10; i++) CK(cudaMemcpyAsync(q, p, sz, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(b, 0));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        printf("d2d copy 512 MiB: %.0f GB/s (read+write)\n", 2.0 * 10 * sz / (ms * 1e-3) / 1e9);
        CK(cudaFree(p));
        CK(cudaFree(q));
    }
    struct Shape { int rows, cols; };
    std::vector<Shape> shapes = {{8192, 2048}, {2048, 8192}, {2048, 2048}, {512, 2048}};
    if (quick) shapes = {{8192, 2048}, {2048, 8192}};
    std::vector<Variant> vs = {{"gemv", 0}};
    for (auto& v : fewVariants) vs.push_back(v);
    printf("%-6s %-11s %-2s", "type", "shape", "n");
    for (auto& v : vs) printf(" %9s", v.label().c_str());
    printf("   (us per product; GB/s of weights below)\n");
    for (int ty : {DT_F16, DT_Q8_0}) {
        for (auto s : shapes) {
            Mat m = make_mat(ty, s.rows, s.cols, (size_t)320 << 20);
            float *dx, *out;
            size_t xn = (size_t)8 * s.cols;
            std::vector<float> hx(xn);
            for (auto& v : hx) v = unif();
            CK(cudaMalloc(&dx, xn * 4));
            CK(cudaMemcpy(dx, hx.data(), xn * 4, cudaMemcpyHostToDevice));
            CK(cudaMalloc(&out, (size_t)8 * s.rows * 4));
            for (int n : {1, 8}) {
                std::vector<double> us;
                for (auto& v : vs) us.push_back(time_variant(v, m, out, dx, n));
                char shape[32];
                snprintf(shape, sizeof shape, "%dx%d", s.rows, s.cols);
                printf("%-6s %-11s %-2d", ty == DT_F16 ? "F16" : "Q8_0", shape, n);
                for (double u : us) printf(" %9.2f", u);
                printf("\n%-6s %-11s %-2s", "", "", "");
                for (double u : us) printf(" %9.0f", (m.wbytes + m.sbytes) / (u * 1e-6) / 1e9);
                printf("\n");
            }
            CK(cudaFree(dx));
            CK(cudaFree(out));
            free_mat(m);
        }
    }
    return 0;
}

static int ncu_mode() {
    for (int ty : {DT_F16, DT_Q8_0}) {
        Mat m = make_mat(ty, 8192, 2048, 0);
        float *dx, *out;
        CK(cudaMalloc(&dx, 8 * 2048 * 4));
        std::vector<float> hx(8 * 2048);
        for (auto& v : hx) v = unif();
        CK(cudaMemcpy(dx, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&out, 8 * 8192 * 4));
        launch("gemv", m, 0, out, dx, 2048, 1, 0, 0);
        for (auto& v : fewVariants) launch(v.k, m, 0, out, dx, 2048, 1, v.nw, 0);
        // and the 2048x8192 shape
        Mat m2 = make_mat(ty, 2048, 8192, 0);
        float* dx2;
        CK(cudaMalloc(&dx2, 8 * 8192 * 4));
        CK(cudaMemset(dx2, 0, 8 * 8192 * 4));
        launch("gemv", m2, 0, out, dx2, 8192, 1, 0, 0);
        launch("tcb", m2, 0, out, dx2, 8192, 1, 0, 0);
        launch("auto", m2, 0, out, dx2, 8192, 1, 0, 0);
        CK(cudaDeviceSynchronize());
        CK(cudaFree(dx2));
        free_mat(m2);
        CK(cudaDeviceSynchronize());
        CK(cudaFree(dx));
        CK(cudaFree(out));
        free_mat(m);
    }
    return 0;
}

// ---- ds_tcq: several row tiles per warp, several matrices per launch ------------------------
// Variants beside the exported ones (ds_tcq1: D = 4, F16 with the L2::256B hint; ds_tcq2 and
// ds_tcq4: D = 2, no hint): ring depths, hints (PF 1), none (PF 0) or separate prefetches (PF 2).
#define TCQ_KERNELS_H(R, D, PF)                                                                 \
    TCQ_KERNEL(h_tcq##R##d##D##p##PF##_f16, DT_F16, false, R, D, PF)                            \
    TCQ_KERNEL(h_tcq##R##d##D##p##PF##_f16v, DT_F16, true, R, D, PF)                            \
    TCQ_KERNEL(h_tcq##R##d##D##p##PF##_q8, DT_Q8_0, false, R, D, PF)                            \
    TCQ_KERNEL(h_tcq##R##d##D##p##PF##_q8v, DT_Q8_0, true, R, D, PF)
TCQ_KERNELS_H(1, 4, 0)
TCQ_KERNELS_H(2, 2, 1)
TCQ_KERNELS_H(1, 4, 2)
TCQ_KERNELS_H(1, 8, 1)

typedef decltype(&ds_tcq1_f16) TcqFn;
struct TcqK {
    const char* name;
    int R, D;
    TcqFn f16, f16v, q8, q8v;
};
#define TCQ_H(R, D, PF)                                                                         \
    {"q" #R "d" #D "p" #PF, R, D, h_tcq##R##d##D##p##PF##_f16, h_tcq##R##d##D##p##PF##_f16v,   \
     h_tcq##R##d##D##p##PF##_q8, h_tcq##R##d##D##p##PF##_q8v}
static const std::vector<TcqK> tcqKernels = {
    {"tcq1", 1, 4, ds_tcq1_f16, ds_tcq1_f16v, ds_tcq1_q8, ds_tcq1_q8v},
    {"tcq2", 2, 2, ds_tcq2_f16, ds_tcq2_f16v, ds_tcq2_q8, ds_tcq2_q8v},
    {"tcq4", 4, 2, ds_tcq4_f16, ds_tcq4_f16v, ds_tcq4_q8, ds_tcq4_q8v},
    TCQ_H(1, 4, 0), TCQ_H(2, 2, 1), TCQ_H(1, 4, 2), TCQ_H(1, 8, 1),
};

// launch_tcq: one launch of kernel k over the matrices ms (same cols, same type; copy copy of
// each) into outs; false (nothing launched) where the configuration is not possible.
static bool launch_tcq(const TcqK& k, const std::vector<const Mat*>& ms, int copy,
                       const std::vector<float*>& outs, const float* x, int xstride, int n,
                       int nsg, int nw, cudaStream_t st) {
    int cols = ms[0]->cols, nch = cols / 32, nseg = (nch + 7) / 8;
    if (nsg > nseg) return false;
    int spg = (nseg + nsg - 1) / nsg;
    if ((nseg + spg - 1) / spg != nsg) return false;  // an empty segment group
    nw = std::min(nw, spg);
    size_t sh = nsg == 1 ? (size_t)k.R * nseg * 128 * 4 : 0;
    if (sh > 48 * 1024) return false;
    bool f16 = ms[0]->ty == DT_F16;
    bool vec = ((uintptr_t)x % 16 == 0) && xstride % 4 == 0;
    TcqFn f = f16 ? (vec ? k.f16v : k.f16) : (vec ? k.q8v : k.q8);
    int units = 0;
    float* o[3] = {nullptr, nullptr, nullptr};
    const void* w[3] = {nullptr, nullptr, nullptr};
    const __half* sc[3] = {nullptr, nullptr, nullptr};
    int rows[3] = {0, 0, 0};
    for (size_t i = 0; i < ms.size(); i++) {
        o[i] = outs[i];
        w[i] = ms[i]->w[copy % ms[i]->ncopy];
        sc[i] = ms[i]->sc[copy % ms[i]->ncopy];
        rows[i] = ms[i]->rows;
        units += (rows[i] + 16 * k.R - 1) / (16 * k.R) * nsg;
    }
    f<<<units, 32 * nw, sh, st>>>(x, xstride, cols, n, nsg, g_part, g_cnt, (int)ms.size(),
                                  o[0], rows[0], w[0], sc[0], rows[0], o[1], rows[1], w[1], sc[1],
                                  rows[1], o[2], rows[2], w[2], sc[2], rows[2]);
    CK(cudaGetLastError());
    return true;
}

// launch_mvm: one ds_mvm launch over the matrices ms (the CUDA-core GEMV, fused).
static void launch_mvm(const std::vector<const Mat*>& ms, int copy, const std::vector<float*>& outs,
                       const float* x, int xstride, int n, cudaStream_t st) {
    bool f16 = ms[0]->ty == DT_F16;
    bool vec = ((uintptr_t)x % 16 == 0) && xstride % 4 == 0;
    decltype(&ds_mvm_f16_1x1) f;
    bool sp = mv_split_t(ms[0]->ty, ms[0]->rows, ms[0]->cols) > 1;  // the host fuses equal splits only
    if (sp) {
        if (n == 1) f = f16 ? (vec ? ds_mvm_f16_1x1v_s8 : ds_mvm_f16_1x1_s8) : (vec ? ds_mvm_q8_1x1v_s4 : ds_mvm_q8_1x1_s4);
        else f = f16 ? (vec ? ds_mvm_f16_1x8v_s8 : ds_mvm_f16_1x8_s8) : (vec ? ds_mvm_q8_1x8v_s4 : ds_mvm_q8_1x8_s4);
    } else if (n == 1) f = f16 ? (vec ? ds_mvm_f16_1x1v : ds_mvm_f16_1x1) : (vec ? ds_mvm_q8_1x1v : ds_mvm_q8_1x1);
    else f = f16 ? (vec ? ds_mvm_f16_1x8v : ds_mvm_f16_1x8) : (vec ? ds_mvm_q8_1x8v : ds_mvm_q8_1x8);
    float* o[3] = {nullptr, nullptr, nullptr};
    const void* w[3] = {nullptr, nullptr, nullptr};
    const __half* sc[3] = {nullptr, nullptr, nullptr};
    int rows[3] = {0, 0, 0}, blocks = 0;
    for (size_t i = 0; i < ms.size(); i++) {
        o[i] = outs[i];
        w[i] = ms[i]->w[copy % ms[i]->ncopy];
        sc[i] = ms[i]->sc[copy % ms[i]->ncopy];
        rows[i] = ms[i]->rows;
        int rpb = mv_rows_per_block(ms[0]->ty, rows[i], ms[0]->cols, 1);
        blocks += (rows[i] + rpb - 1) / rpb;
    }
    dim3 grid(n == 1 ? 1 : (n + 7) / 8, blocks);
    f<<<grid, 256, 0, st>>>(x, xstride, ms[0]->cols, n, (int)ms.size(), o[0], rows[0], w[0], sc[0], rows[0],
                            o[1], rows[1], w[1], sc[1], rows[1], o[2], rows[2], w[2], sc[2], rows[2]);
    CK(cudaGetLastError());
}

// GEMV variants: more of the lane loop unrolled (more loads in flight), one token.
template <int TY, int U>
__global__ void __launch_bounds__(256) h_mv_u(float* out, int ostride, const void* w, const __half* sc,
                                              const float* x, int xstride, int rows, int cols, int n) {
    mv_body<TY, 1, 1, true, 1, U>(out, ostride, w, sc, x, xstride, rows, cols, n, blockIdx.y);
}
template <int U>
static void launch_mv_u(const Mat& m, int copy, float* out, const float* x, int xstride, cudaStream_t st) {
    dim3 grid(1, (m.rows + 7) / 8);
    if (m.ty == DT_F16) h_mv_u<DT_F16, U><<<grid, 256, 0, st>>>(out, m.rows, m.w[copy % m.ncopy], m.sc[copy % m.ncopy], x, xstride, m.rows, m.cols, 1);
    else h_mv_u<DT_Q8_0, U><<<grid, 256, 0, st>>>(out, m.rows, m.w[copy % m.ncopy], m.sc[copy % m.ncopy], x, xstride, m.rows, m.cols, 1);
    CK(cudaGetLastError());
}

static int check_tcq() {
    struct Combo { std::vector<int> rows; int cols; };
    std::vector<Combo> combos = {{{1000}, 2048}, {{130, 48, 1000}, 2080}, {{2048, 512, 512}, 2048},
                                 {{64}, 8192}, {{2200, 512}, 512}, {{8192, 8192}, 2048}};
    int bad = 0, ran = 0;
    for (int ty : {DT_F16, DT_Q8_0}) {
        for (auto& cb : combos) {
            std::vector<Mat> mats;
            for (int r : cb.rows) mats.push_back(make_mat(ty, r, cb.cols, 0));
            std::vector<const Mat*> mp;
            for (auto& m : mats) mp.push_back(&m);
            size_t xn = (size_t)8 * cb.cols + 4;
            std::vector<float> hx(xn);
            for (auto& v : hx) v = ldexpf(unif(), (int)(next() % 41) - 20);
            for (int i = 0; i < 32; i++) hx[i] = 0.f;
            hx[40] = 3.0e30f;
            float* dx;
            CK(cudaMalloc(&dx, xn * 4));
            CK(cudaMemcpy(dx, hx.data(), xn * 4, cudaMemcpyHostToDevice));
            std::vector<float*> refs, outs;
            for (auto& m : mats) {
                float *a, *b;
                CK(cudaMalloc(&a, (size_t)8 * m.rows * 4));
                CK(cudaMalloc(&b, (size_t)8 * m.rows * 4));
                refs.push_back(a);
                outs.push_back(b);
            }
            int nseg = (cb.cols / 32 + 7) / 8;
            for (int n : {1, 3, 8}) {
                for (int mis : {0, 1}) {
                    const float* x = dx + mis;
                    std::vector<std::vector<uint32_t>> hr;
                    for (size_t i = 0; i < mats.size(); i++) {
                        CK(cudaMemset(refs[i], 0xff, (size_t)8 * mats[i].rows * 4));
                        launch("tcm", mats[i], 0, refs[i], x, cb.cols, n, 0, 0);
                        std::vector<uint32_t> h((size_t)n * mats[i].rows);
                        CK(cudaMemcpy(h.data(), refs[i], h.size() * 4, cudaMemcpyDeviceToHost));
                        hr.push_back(h);
                    }
                    {  // ds_mvm against separate ds_mv launches
                        std::vector<std::vector<uint32_t>> hg;
                        for (size_t i = 0; i < mats.size(); i++) {
                            CK(cudaMemset(refs[i], 0xff, (size_t)8 * mats[i].rows * 4));
                            launch("gemv", mats[i], 0, refs[i], x, cb.cols, n, 0, 0);
                        }
                        for (size_t i = 0; i < mats.size(); i++) CK(cudaMemset(outs[i], 0xff, (size_t)8 * mats[i].rows * 4));
                        launch_mvm(mp, 0, outs, x, cb.cols, n, 0);
                        CK(cudaDeviceSynchronize());
                        ran++;
                        for (size_t i = 0; i < mats.size(); i++) {
                            std::vector<uint32_t> a((size_t)n * mats[i].rows), b(a.size());
                            CK(cudaMemcpy(a.data(), refs[i], a.size() * 4, cudaMemcpyDeviceToHost));
                            CK(cudaMemcpy(b.data(), outs[i], b.size() * 4, cudaMemcpyDeviceToHost));
                            size_t diff = 0;
                            for (size_t e = 0; e < a.size(); e++) diff += a[e] != b[e];
                            if (diff) {
                                bad++;
                                printf("check FAIL mvm %s mat %zu of %zu (%dx%d) n=%d mis=%d: %zu of %zu differ from ds_mv\n",
                                       ty == DT_F16 ? "F16" : "Q8_0", i, mats.size(), mats[i].rows, cb.cols, n, mis, diff, a.size());
                            }
                            if (n == 1 && mis == 0 && mv_split_t(ty, mats[i].rows, cb.cols) == 1) {  // the unrolled variants (one warp per row)
                                for (int u = 0; u < 3; u++) {
                                    CK(cudaMemset(outs[i], 0xff, (size_t)8 * mats[i].rows * 4));
                                    if (u == 0) launch_mv_u<2>(mats[i], 0, outs[i], x, cb.cols, 0);
                                    if (u == 1) launch_mv_u<8>(mats[i], 0, outs[i], x, cb.cols, 0);
                                    if (u == 2) launch_mv_u<16>(mats[i], 0, outs[i], x, cb.cols, 0);
                                    CK(cudaMemcpy(b.data(), outs[i], b.size() * 4, cudaMemcpyDeviceToHost));
                                    diff = 0;
                                    for (size_t e = 0; e < a.size(); e++) diff += a[e] != b[e];
                                    if (diff) {
                                        bad++;
                                        printf("check FAIL mv unrolled (%d) %s %dx%d: %zu differ from ds_mv\n", u,
                                               ty == DT_F16 ? "F16" : "Q8_0", mats[i].rows, cb.cols, diff);
                                    }
                                }
                            }
                        }
                    }
                    for (auto& k : tcqKernels) {
                        for (int nsg : {1, 2, 3, nseg}) {
                            for (int nw : {8, 3}) {
                                for (size_t i = 0; i < mats.size(); i++)
                                    CK(cudaMemset(outs[i], 0xff, (size_t)8 * mats[i].rows * 4));
                                if (!launch_tcq(k, mp, 0, outs, x, cb.cols, n, nsg, nw, 0)) continue;
                                CK(cudaDeviceSynchronize());
                                ran++;
                                for (size_t i = 0; i < mats.size(); i++) {
                                    std::vector<uint32_t> h((size_t)n * mats[i].rows);
                                    CK(cudaMemcpy(h.data(), outs[i], h.size() * 4, cudaMemcpyDeviceToHost));
                                    size_t diff = 0, first = 0;
                                    for (size_t e = 0; e < h.size(); e++)
                                        if (h[e] != hr[i][e]) { if (!diff) first = e; diff++; }
                                    if (diff) {
                                        bad++;
                                        if (bad <= 40)
                                            printf("check FAIL tcq %s %s mat %zu of %zu (%dx%d) nsg=%d nw=%d n=%d mis=%d: %zu of %zu differ, first %zu (%08x vs %08x)\n",
                                                   ty == DT_F16 ? "F16" : "Q8_0", k.name, i, mats.size(), mats[i].rows, cb.cols,
                                                   nsg, nw, n, mis, diff, h.size(), first, h[first], hr[i][first]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            CK(cudaFree(dx));
            for (auto p : refs) CK(cudaFree(p));
            for (auto p : outs) CK(cudaFree(p));
            for (auto& m : mats) free_mat(m);
        }
    }
    printf("check tcq: %s (%d launches, %d failing)\n", bad ? "FAIL" : "all bit-identical to ds_tcm", ran, bad);
    return bad ? 1 : 0;
}

// time_graph: device time per call of fn (which launches one product; its argument rotates
// the weight copies), from CUDA graphs of 30 calls, median of 7 replays.
template <class F>
static double time_graph(F fn, cudaStream_t st) {
    const int per = 30;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < per; i++) fn(i);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 2; i++) CK(cudaGraphLaunch(ge, st));
    std::vector<double> t;
    for (int r = 0; r < 7; r++) {
        CK(cudaEventRecord(a, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1000.0 / per);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return t[t.size() / 2];
}

// time_tcq: the decode's products of one layer of the 1B shape (q+k+v, o, gate+up, down), each
// as separate launches of the present kernels (tcr per cuda.Device.tcrShape; the CUDA-core
// GEMV) and as one ds_tcq launch per group, over every kernel instance and segment grouping;
// in CUDA graphs, as decode runs them.
static int time_tcq() {
    struct Combo { const char* name; std::vector<int> rows; int cols; };
    std::vector<Combo> combos = {{"qkv", {2048, 512, 512}, 2048}, {"o", {2048}, 2048},
                                 {"gateup", {8192, 8192}, 2048}, {"down", {2048}, 8192}};
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int ty : {DT_F16, DT_Q8_0}) {
        for (int n : {1, 8}) {
            double layer_tcr = 0, layer_gemv = 0, layer_best = 0, layer_mvm = 0;
            for (auto& cb : combos) {
                std::vector<Mat> mats;
                size_t bytes = 0;
                for (int r : cb.rows) {
                    mats.push_back(make_mat(ty, r, cb.cols, (size_t)320 << 20));
                    bytes += mats.back().wbytes + mats.back().sbytes;
                }
                std::vector<const Mat*> mp;
                for (auto& m : mats) mp.push_back(&m);
                float* dx;
                std::vector<float> hx((size_t)8 * cb.cols);
                for (auto& v : hx) v = unif();
                CK(cudaMalloc(&dx, hx.size() * 4));
                CK(cudaMemcpy(dx, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
                std::vector<float*> outs;
                for (auto& m : mats) {
                    float* o;
                    CK(cudaMalloc(&o, (size_t)8 * m.rows * 4));
                    outs.push_back(o);
                }
                auto gb = [&](double us) { return bytes / (us * 1e-6) / 1e9; };
                double t_tcr = time_graph([&](int i) {
                    for (size_t m = 0; m < mats.size(); m++) launch("auto", mats[m], i % mats[m].ncopy, outs[m], dx, cb.cols, n, 0, st);
                }, st);
                double t_gemv = time_graph([&](int i) {
                    for (size_t m = 0; m < mats.size(); m++) launch("gemv", mats[m], i % mats[m].ncopy, outs[m], dx, cb.cols, n, 0, st);
                }, st);
                double t_mvm = time_graph([&](int i) { launch_mvm(mp, i, outs, dx, cb.cols, n, st); }, st);
                if (n == 1) {
                    double u2 = time_graph([&](int i) { for (size_t m = 0; m < mats.size(); m++) launch_mv_u<2>(mats[m], i, outs[m], dx, cb.cols, st); }, st);
                    double u8 = time_graph([&](int i) { for (size_t m = 0; m < mats.size(); m++) launch_mv_u<8>(mats[m], i, outs[m], dx, cb.cols, st); }, st);
                    double u16 = time_graph([&](int i) { for (size_t m = 0; m < mats.size(); m++) launch_mv_u<16>(mats[m], i, outs[m], dx, cb.cols, st); }, st);
                    printf("%-4s n=%d %-7s gemv unrolled x2 %7.2f us, x8 %7.2f us, x16 %7.2f us (separate launches; gemv: x4 F16, x2 Q8_0)\n",
                           ty == DT_F16 ? "F16" : "Q8_0", n, cb.name, u2, u8, u16);
                }
                printf("%-4s n=%d %-7s %6.1f MB  tcr %7.2f us (%4.0f GB/s)  gemv %7.2f us (%4.0f GB/s)  gemv fused %7.2f us (%4.0f GB/s)\n",
                       ty == DT_F16 ? "F16" : "Q8_0", n, cb.name, bytes / 1e6, t_tcr, gb(t_tcr), t_gemv, gb(t_gemv), t_mvm, gb(t_mvm));
                layer_mvm += std::min(t_mvm, t_gemv);
                int nseg = (cb.cols / 32 + 7) / 8;
                double best = 1e30;
                std::string bestName;
                for (auto& k : tcqKernels) {
                    printf("    %-7s", k.name);
                    for (int nsg : {1, 2, 4, 8}) {
                        if (nsg > nseg || !launch_tcq(k, mp, 0, outs, dx, cb.cols, n, nsg, 8, st)) {
                            printf("  nsg%d     -    ", nsg);
                            continue;
                        }
                        double t = time_graph([&](int i) { launch_tcq(k, mp, i, outs, dx, cb.cols, n, nsg, 8, st); }, st);
                        printf("  nsg%d %6.2f %4.0f", nsg, t, gb(t));
                        if (t < best) { best = t; bestName = std::string(k.name) + "/nsg" + std::to_string(nsg); }
                    }
                    printf("\n");
                }
                printf("    best %s %.2f us (%.0f GB/s): %.2fx tcr\n", bestName.c_str(), best, gb(best), t_tcr / best);
                layer_tcr += t_tcr;
                layer_gemv += t_gemv;
                layer_best += best;
                CK(cudaFree(dx));
                for (auto o : outs) CK(cudaFree(o));
                for (auto& m : mats) free_mat(m);
            }
            printf("%-4s n=%d LAYER (us): tcr %.1f  gemv %.1f  gemv fused %.1f  best tcq %.1f  (x16 layers: %.3f / %.3f / %.3f / %.3f ms)\n",
                   ty == DT_F16 ? "F16" : "Q8_0", n, layer_tcr, layer_gemv, layer_mvm, layer_best, layer_tcr * 16e-3,
                   layer_gemv * 16e-3, layer_mvm * 16e-3, layer_best * 16e-3);
        }
    }
    CK(cudaStreamDestroy(st));
    return 0;
}

// The CUDA-core GEMV with S warps per row forced (mv_split's choices and the others), one
// token: ds_mv, ds_mvm (several matrices), ds_mvsw (gate, up, SwiGLU).
template <int TY, int S>
__global__ void __launch_bounds__(256) h_mvs(float* out, int ostride, const void* w, const __half* sc,
                                             const float* x, int xstride, int rows, int cols, int n) {
    mv_body<TY, 1, 1, true, S>(out, ostride, w, sc, x, xstride, rows, cols, n, blockIdx.y);
}
template <int TY, int S>
__global__ void __launch_bounds__(256) h_mvms(const float* x, int xstride, int cols, int n, int nmat,
                                              float* out0, int ostride0, const void* w0, const __half* sc0, int rows0,
                                              float* out1, int ostride1, const void* w1, const __half* sc1, int rows1,
                                              float* out2, int ostride2, const void* w2, const __half* sc2, int rows2) {
    mvm_body<TY, 1, 1, true, S>(x, xstride, cols, n, nmat, MvmMat{out0, w0, sc0, ostride0, rows0},
                                MvmMat{out1, w1, sc1, ostride1, rows1}, MvmMat{out2, w2, sc2, ostride2, rows2});
}
template <int TY, int S>
__global__ void __launch_bounds__(256) h_mvsws(const float* x, int xstride, int cols, int n, float* og, float* ou,
                                               int ostride, const void* wg, const __half* sg, const void* wu,
                                               const __half* su, int rows) {
    mvsw_body<TY, 1, true, S>(x, xstride, cols, n, og, ou, ostride, wg, sg, wu, su, rows);
}
template <int TY, int S, int U>
__global__ void __launch_bounds__(256) h_mvsu(float* out, int ostride, const void* w, const __half* sc,
                                              const float* x, int xstride, int rows, int cols, int n) {
    mv_body<TY, 1, 1, true, S, U>(out, ostride, w, sc, x, xstride, rows, cols, n, blockIdx.y);
}
// launch_mvsu: ds_mv with S warps per row and the lane loop unrolled U times (one matrix).
template <int S, int U>
static void launch_mvsu(const Mat& m, int copy, float* out, const float* x, cudaStream_t st) {
    dim3 grid(1, (m.rows + 8 / S - 1) / (8 / S));
    if (m.ty == DT_F16) h_mvsu<DT_F16, S, U><<<grid, 256, 0, st>>>(out, m.rows, m.w[copy % m.ncopy], m.sc[copy % m.ncopy], x, m.cols, m.rows, m.cols, 1);
    else h_mvsu<DT_Q8_0, S, U><<<grid, 256, 0, st>>>(out, m.rows, m.w[copy % m.ncopy], m.sc[copy % m.ncopy], x, m.cols, m.rows, m.cols, 1);
    CK(cudaGetLastError());
}

// launch_mvs: the products of ms (one matrix: ds_mv; two with swiglu: ds_mvsw; else ds_mvm)
// with S warps per row (0: the exported kernels, mv_split's S).
template <int TY, int S>
static void launch_mvs_t(const std::vector<const Mat*>& ms, int copy, const std::vector<float*>& outs,
                         const float* x, int xstride, bool swiglu, cudaStream_t st) {
    int cols = ms[0]->cols;
    auto W = [&](size_t i) { return ms[i]->w[copy % ms[i]->ncopy]; };
    auto SC = [&](size_t i) { return ms[i]->sc[copy % ms[i]->ncopy]; };
    int rows0 = ms[0]->rows;
    if (swiglu) {
        int rpb = S ? 8 / S : mv_rows_per_block(TY, rows0, cols, 1);
        bool sp = mv_split_t(TY, rows0, cols) > 1;
        dim3 grid(1, (rows0 + rpb - 1) / rpb);
        if (S) h_mvsws<TY, S ? S : 1><<<grid, 256, 0, st>>>(x, xstride, cols, 1, outs[0], outs[1], rows0, W(0), SC(0), W(1), SC(1), rows0);
        else if (TY == DT_F16) (sp ? ds_mvsw_f16_1x1v_s8 : ds_mvsw_f16_1x1v)<<<grid, 256, 0, st>>>(x, xstride, cols, 1, outs[0], outs[1], rows0, W(0), SC(0), W(1), SC(1), rows0);
        else (sp ? ds_mvsw_q8_1x1v_s4 : ds_mvsw_q8_1x1v)<<<grid, 256, 0, st>>>(x, xstride, cols, 1, outs[0], outs[1], rows0, W(0), SC(0), W(1), SC(1), rows0);
    } else if (ms.size() == 1) {
        int rpb = S ? 8 / S : mv_rows_per_block(TY, rows0, cols, 1);
        bool sp = mv_split_t(TY, rows0, cols) > 1;
        dim3 grid(1, (rows0 + rpb - 1) / rpb);
        if (S) h_mvs<TY, S ? S : 1><<<grid, 256, 0, st>>>(outs[0], rows0, W(0), SC(0), x, xstride, rows0, cols, 1);
        else if (TY == DT_F16) (sp ? ds_mv_f16_1x1v_s8 : ds_mv_f16_1x1v)<<<grid, 256, 0, st>>>(outs[0], rows0, W(0), SC(0), x, xstride, rows0, cols, 1);
        else (sp ? ds_mv_q8_1x1v_s4 : ds_mv_q8_1x1v)<<<grid, 256, 0, st>>>(outs[0], rows0, W(0), SC(0), x, xstride, rows0, cols, 1);
    } else {
        float* o[3] = {nullptr, nullptr, nullptr};
        const void* w[3] = {nullptr, nullptr, nullptr};
        const __half* sc[3] = {nullptr, nullptr, nullptr};
        int rows[3] = {0, 0, 0}, blocks = 0;
        for (size_t i = 0; i < ms.size(); i++) {
            o[i] = outs[i];
            w[i] = W(i);
            sc[i] = SC(i);
            rows[i] = ms[i]->rows;
            int rpb = S ? 8 / S : mv_rows_per_block(TY, rows[i], cols, 1);
            blocks += (rows[i] + rpb - 1) / rpb;
        }
        dim3 grid(1, blocks);
        bool sp = mv_split_t(TY, rows[0], cols) > 1;
        if (S) h_mvms<TY, S ? S : 1><<<grid, 256, 0, st>>>(x, xstride, cols, 1, (int)ms.size(), o[0], rows[0], w[0], sc[0], rows[0],
                                o[1], rows[1], w[1], sc[1], rows[1], o[2], rows[2], w[2], sc[2], rows[2]);
        else (TY == DT_F16 ? (sp ? ds_mvm_f16_1x1v_s8 : ds_mvm_f16_1x1v) : (sp ? ds_mvm_q8_1x1v_s4 : ds_mvm_q8_1x1v))<<<grid, 256, 0, st>>>(
            x, xstride, cols, 1, (int)ms.size(), o[0], rows[0], w[0], sc[0], rows[0],
            o[1], rows[1], w[1], sc[1], rows[1], o[2], rows[2], w[2], sc[2], rows[2]);
    }
    CK(cudaGetLastError());
}
static void launch_mvs(int ty, int S, const std::vector<const Mat*>& ms, int copy, const std::vector<float*>& outs,
                       const float* x, int xstride, bool swiglu, cudaStream_t st) {
#define MVS_CASE(s_)                                                                                    \
    case s_:                                                                                            \
        if (ty == DT_F16) launch_mvs_t<DT_F16, s_>(ms, copy, outs, x, xstride, swiglu, st);             \
        else launch_mvs_t<DT_Q8_0, s_>(ms, copy, outs, x, xstride, swiglu, st);                         \
        break;
    switch (S) {
        MVS_CASE(0)
        MVS_CASE(1)
        MVS_CASE(2)
        MVS_CASE(4)
        MVS_CASE(8)
    }
#undef MVS_CASE
}

// time_mvs: the decode's CUDA-core products of one 1B layer and the lm head, one token, in
// CUDA graphs (weights rotated past L2), with 1, 2, 4, 8 warps per row and mv_split's choice
// ("rule"); first each forced S against the rule's bits where S matches (same bits), and the
// rule's ds_mv/ds_mvm/ds_mvsw against each other (ds_mvsw's up output against ds_mv).
static int time_mvs() {
    struct Combo { const char* name; std::vector<int> rows; int cols; bool swiglu; };
    std::vector<Combo> combos = {{"qkv", {2048, 512, 512}, 2048, false}, {"o", {2048}, 2048, false},
                                 {"gateup", {8192, 8192}, 2048, true}, {"down", {2048}, 8192, false},
                                 {"lmhead", {128256}, 2048, false}};
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    int bad = 0;
    for (int ty : {DT_F16, DT_Q8_0}) {
        double layer[6] = {0, 0, 0, 0, 0, 0};
        for (auto& cb : combos) {
            std::vector<Mat> mats;
            size_t bytes = 0;
            for (int r : cb.rows) {
                mats.push_back(make_mat(ty, r, cb.cols, (size_t)320 << 20));
                bytes += mats.back().wbytes + mats.back().sbytes;
            }
            std::vector<const Mat*> mp;
            for (auto& m : mats) mp.push_back(&m);
            float* dx;
            std::vector<float> hx((size_t)cb.cols);
            for (auto& v : hx) v = unif();
            CK(cudaMalloc(&dx, hx.size() * 4));
            CK(cudaMemcpy(dx, hx.data(), hx.size() * 4, cudaMemcpyHostToDevice));
            std::vector<float*> outs, refs;
            for (auto& m : mats) {
                float *o, *r;
                CK(cudaMalloc(&o, (size_t)m.rows * 4));
                CK(cudaMalloc(&r, (size_t)m.rows * 4));
                outs.push_back(o);
                refs.push_back(r);
            }
            // Bits: the rule's launch, then the forced S equal to each matrix's rule.
            launch_mvs(ty, 0, mp, 0, refs, dx, cb.cols, cb.swiglu, st);
            int Srule = mv_split_t(ty, cb.rows[0], cb.cols);
            bool same = true;
            for (int r : cb.rows) same = same && mv_split_t(ty, r, cb.cols) == Srule;
            if (same) {
                launch_mvs(ty, Srule, mp, 0, outs, dx, cb.cols, cb.swiglu, st);
                CK(cudaStreamSynchronize(st));
                for (size_t i = 0; i < mats.size(); i++) {
                    std::vector<uint32_t> a(mats[i].rows), b(mats[i].rows);
                    CK(cudaMemcpy(a.data(), refs[i], a.size() * 4, cudaMemcpyDeviceToHost));
                    CK(cudaMemcpy(b.data(), outs[i], b.size() * 4, cudaMemcpyDeviceToHost));
                    size_t diff = 0;
                    for (size_t e = 0; e < a.size(); e++) diff += a[e] != b[e];
                    if (diff) { bad++; printf("check FAIL mvs %s %s S=%d mat %zu: %zu differ\n", ty == DT_F16 ? "F16" : "Q8_0", cb.name, Srule, i, diff); }
                }
            }
            if (cb.swiglu) {  // up's output against ds_mv of up alone
                std::vector<const Mat*> one = {mp[1]};
                std::vector<float*> o1 = {outs[1]};
                launch_mvs(ty, 0, one, 0, o1, dx, cb.cols, false, st);
                CK(cudaStreamSynchronize(st));
                std::vector<uint32_t> a(mats[1].rows), b(mats[1].rows);
                CK(cudaMemcpy(a.data(), refs[1], a.size() * 4, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(b.data(), outs[1], b.size() * 4, cudaMemcpyDeviceToHost));
                size_t diff = 0;
                for (size_t e = 0; e < a.size(); e++) diff += a[e] != b[e];
                if (diff) { bad++; printf("check FAIL mvsw up vs ds_mv %s: %zu differ\n", ty == DT_F16 ? "F16" : "Q8_0", diff); }
            }
            auto gb = [&](double us) { return bytes / (us * 1e-6) / 1e9; };
            printf("%-4s %-7s %6.1f MB rule S=%d:", ty == DT_F16 ? "F16" : "Q8_0", cb.name, bytes / 1e6, Srule);
            int col = 0;
            for (int S : {1, 2, 4, 8, 0}) {
                if (S > 1 && cb.rows[0] > 8448) { col++; continue; }  // the lm head: gridDim.y past 65535 at S 8
                double t = time_graph([&](int i) { launch_mvs(ty, S, mp, i, outs, dx, cb.cols, cb.swiglu, st); }, st);
                printf("  %s%d %7.2f us %4.0f GB/s", S ? "S" : "rule", S, t, gb(t));
                if (strcmp(cb.name, "lmhead") != 0) layer[col] += t;
                col++;
            }
            printf("\n");
            if (mats.size() == 1 && !cb.swiglu && cb.rows[0] < 8192) {  // loads in flight per lane
                const Mat& m = mats[0];
                double u[6] = {
                    time_graph([&](int i) { launch_mvsu<1, 8>(m, i, outs[0], dx, st); }, st),
                    time_graph([&](int i) { launch_mvsu<2, 1>(m, i, outs[0], dx, st); }, st),
                    time_graph([&](int i) { launch_mvsu<4, 1>(m, i, outs[0], dx, st); }, st),
                    time_graph([&](int i) { launch_mvsu<4, 4>(m, i, outs[0], dx, st); }, st),
                    time_graph([&](int i) { launch_mvsu<8, 1>(m, i, outs[0], dx, st); }, st),
                    time_graph([&](int i) { launch_mvsu<8, 2>(m, i, outs[0], dx, st); }, st)};
                printf("     unrolled: S1U8 %.2f  S2U1 %.2f  S4U1 %.2f  S4U4 %.2f  S8U1 %.2f  S8U2 %.2f us\n", u[0], u[1], u[2], u[3], u[4], u[5]);
            }
            CK(cudaFree(dx));
            for (auto o : outs) CK(cudaFree(o));
            for (auto o : refs) CK(cudaFree(o));
            for (auto& m : mats) free_mat(m);
        }
        printf("%-4s LAYER (us, qkv+o+gateup+down): S1 %.1f  S2 %.1f  S4 %.1f  S8 %.1f  rule %.1f\n", ty == DT_F16 ? "F16" : "Q8_0",
               layer[0], layer[1], layer[2], layer[3], layer[4]);
    }
    CK(cudaStreamDestroy(st));
    printf("check mvs: %s\n", bad ? "FAIL" : "forced S = rule's bits");
    return bad ? 1 : 0;
}

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "check";
    CK(cudaMalloc(&g_part, (size_t)64 << 20));
    CK(cudaMalloc(&g_cnt, (size_t)1 << 20));
    CK(cudaMemset(g_cnt, 0, (size_t)1 << 20));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
    g_sms = p.multiProcessorCount;
    if (mode == "check") return check() | check_tcq();
    if (mode == "checktcq") return check_tcq();
    if (mode == "tcq") return time_tcq();
    if (mode == "time") return timing(false) | time_tcq();
    if (mode == "quick") return timing(true);
    if (mode == "ncu") return ncu_mode();
    if (mode == "mvs") return time_mvs();
    fprintf(stderr, "usage: tcbench check|checktcq|time|tcq|quick|ncu|mvs\n");
    return 2;
}
