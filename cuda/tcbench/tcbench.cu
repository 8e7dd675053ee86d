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
        dim3 grid(1, (rows + 7) / 8);
        if (n == 1) {
            if (f16) (vec ? ds_mv_f16_1x1v : ds_mv_f16_1x1)<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
            else (vec ? ds_mv_q8_1x1v : ds_mv_q8_1x1)<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
        } else {
            if (f16) (vec ? ds_mv_f16_1x8v : ds_mv_f16_1x8)<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
            else (vec ? ds_mv_q8_1x8v : ds_mv_q8_1x8)<<<grid, 256, 0, st>>>(out, rows, w, sc, x, xstride, rows, cols, n);
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

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "check";
    CK(cudaMalloc(&g_part, (size_t)64 << 20));
    CK(cudaMalloc(&g_cnt, (size_t)1 << 20));
    CK(cudaMemset(g_cnt, 0, (size_t)1 << 20));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
    g_sms = p.multiProcessorCount;
    if (mode == "check") return check();
    if (mode == "time") return timing(false);
    if (mode == "quick") return timing(true);
    if (mode == "ncu") return ncu_mode();
    fprintf(stderr, "usage: tcbench check|time|quick|ncu\n");
    return 2;
}
