package cuda

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
)

// Large matrix products through cuBLAS (optional, loaded at run time).
//
// Products of many tokens (a prefill) may run through cuBLAS's GEMM instead of the package's
// own tensor-core kernels: F16 and Q8_0 weights, activations rounded to F16 by a conversion
// kernel, float32 accumulation and output (cublasGemmEx, compute type 32F). Q8_0 weights are
// dequantized to F16 per product into a scratch buffer of the stream (or, with
// GEMMOptions.Q8Copy, once into an F16 copy kept with the weights). A deferred stream issues
// what it recorded before each cuBLAS call (the call goes straight to the same CUDA stream,
// after them); decode steps (one token) never reach cuBLAS, so their graphs are unchanged.
//
// What it trades: the own kernels give a token's outputs the same bits whatever the batch size
// (batched prefill writes the same KV bytes as token-by-token feeding). cuBLAS picks its
// algorithm per shape, and F16 activations carry 11 bits instead of float32's 24: with cuBLAS,
// the KV bytes of a prefill depend on how the prompt was cut into batches (two instances that
// prefilled one prefix in different batches hold different bytes, so the store does not dedup
// their blocks), and they differ from the own kernels' by F16 rounding. Same inputs through
// the same calls still give the same bits on one GPU (one cuBLAS handle per stream, with its
// own workspace), so resume equivalence holds: a restored instance continues exactly as the
// instance it was captured from.

// GEMMMode selects the code that runs the matrix products of batches of tokens.
type GEMMMode int32

const (
	// GEMMAuto: cuBLAS for batches of at least GEMMOptions.MinTokens where the library loads
	// (and a handle can be made); the own kernels otherwise, silently.
	GEMMAuto GEMMMode = iota
	// GEMMOwn: the own kernels for every product (batch-independent bits).
	GEMMOwn
	// GEMMCUBLAS: as GEMMAuto, but an error where cuBLAS is missing or fails.
	GEMMCUBLAS
)

var gemmModeNames = []string{GEMMAuto: "auto", GEMMOwn: "own", GEMMCUBLAS: "cublas"}

func (m GEMMMode) String() string {
	if m < 0 || int(m) >= len(gemmModeNames) {
		return fmt.Sprintf("GEMMMode(%d)", int(m))
	}
	return gemmModeNames[m]
}

// ParseGEMMMode reads "auto", "own" or "cublas" ("" is auto).
func ParseGEMMMode(v string) (GEMMMode, error) {
	if v == "" {
		return GEMMAuto, nil
	}
	for i, name := range gemmModeNames {
		if v == name {
			return GEMMMode(i), nil
		}
	}
	return 0, fmt.Errorf("cuda: GEMM mode %q: want one of %v", v, gemmModeNames)
}

// DefaultGEMMMinTokens is the smallest batch that goes to cuBLAS by default: every batch the
// few-token kernels do not take. Measured on an H100 (docs/bench/cuda-notes-2026-11-26.md,
// "cuBLAS"), summed over the products of a layer of the 1B shape: at 8 tokens the few-token
// kernels take 62 µs against cuBLAS's 120; from 9 tokens on the own kernels use ds_tcm's
// 64-token tiles, 616-659 µs up to 128 tokens, against cuBLAS's 109-122.
const DefaultGEMMMinTokens = tcvMaxTokens + 1

// blasWorkspace is the workspace each cuBLAS handle gets (what NVIDIA recommends for Hopper).
const blasWorkspace = 32 << 20

// GEMMOptions configures the matrix products of batches (Device.SetGEMM). The environment
// sets a device's options when it opens: DRIFTSTORE_CUDA_GEMM=auto|own|cublas (Mode),
// DRIFTSTORE_CUDA_GEMM_MIN (MinTokens), DRIFTSTORE_CUDA_GEMM_Q8=copy (Q8Copy),
// DRIFTSTORE_CUDA_ATTN_MIN (AttnMinTokens).
type GEMMOptions struct {
	Mode GEMMMode
	// MinTokens: products of at least this many tokens go to cuBLAS (0: DefaultGEMMMinTokens).
	// Never below 2: one-token products (decode) stay on the own kernels and CUDA graphs.
	MinTokens int
	// Q8Copy keeps an F16 copy of Q8_0 weights in device memory (made on their first cuBLAS
	// product; twice the bytes of the quantized weights) instead of dequantizing them into
	// the stream's scratch for every product.
	Q8Copy bool
	// AttnMinTokens: with Mode auto or cublas, attention of batches of at least this many
	// tokens over F16 KV runs on the tensor cores (ds_attn_tc: F16 queries and weights, bits
	// that differ from the decode kernel's; stream.go) instead of ds_attn_mq, whose per-token
	// arithmetic equals decode's (0: DefaultAttnMinTokens; at least 2). Mode own never does.
	AttnMinTokens int
}

// DefaultAttnMinTokens is the smallest batch whose attention runs on the tensor cores by
// default (GEMMOptions.AttnMinTokens): the batches cuBLAS takes, so that a batch either keeps
// decode's bits throughout (at most 8 tokens) or not. Measured on an H100
// (BenchmarkAttentionPrefill, 1B shape, device µs, docs/bench/cuda-notes-2026-11-26.md): at 8
// tokens ds_attn_tc takes 6.8 against ds_attn_mq's 41 from position 0 but 77 against 67 from
// position 2040 (its 8 blocks walk the whole context alone); at 16 tokens 5.8 vs 44 and 79 vs
// 118, and ds_attn_mq grows with the tokens (67 → 118 µs from 8 to 16 at 2040): even at about
// 9-10 tokens on a long context, ahead everywhere else.
const DefaultAttnMinTokens = DefaultGEMMMinTokens

// attnTCFor says whether attention of n tokens in this layout runs on the tensor cores.
func (d *Device) attnTCFor(n, nheads int, l KVLayout) bool {
	o := d.gemm.Load()
	return o.Mode != GEMMOwn && n >= o.AttnMinTokens && attnTCSupported(nheads, l)
}

// gemmFromEnv reads the environment's GEMM options.
func gemmFromEnv() (GEMMOptions, error) {
	var o GEMMOptions
	var err error
	if o.Mode, err = ParseGEMMMode(os.Getenv("DRIFTSTORE_CUDA_GEMM")); err != nil {
		return o, fmt.Errorf("DRIFTSTORE_CUDA_GEMM: %w", err)
	}
	if v := os.Getenv("DRIFTSTORE_CUDA_GEMM_MIN"); v != "" {
		if o.MinTokens, err = strconv.Atoi(v); err != nil || o.MinTokens < 2 {
			return o, fmt.Errorf("cuda: DRIFTSTORE_CUDA_GEMM_MIN=%q: want a number of tokens, at least 2", v)
		}
	}
	if v := os.Getenv("DRIFTSTORE_CUDA_ATTN_MIN"); v != "" {
		if o.AttnMinTokens, err = strconv.Atoi(v); err != nil || o.AttnMinTokens < 2 {
			return o, fmt.Errorf("cuda: DRIFTSTORE_CUDA_ATTN_MIN=%q: want a number of tokens, at least 2", v)
		}
	}
	switch v := os.Getenv("DRIFTSTORE_CUDA_GEMM_Q8"); v {
	case "", "dequant":
	case "copy":
		o.Q8Copy = true
	default:
		return o, fmt.Errorf("cuda: DRIFTSTORE_CUDA_GEMM_Q8=%q: want dequant or copy", v)
	}
	return o, nil
}

var (
	blasOnce sync.Once
	blasPath string // the library loaded
	blasErr  error  // why none was
)

// blasCandidates lists the libraries to try, in order: the sonames (found through the
// loader's path and cache), then the toolkit's usual folders (with the libcublasLt beside
// each, opened first, for systems whose loader path does not name the folder).
func blasCandidates() [][2]string {
	versions := []string{"13", "12", "11"}
	var c [][2]string
	for _, v := range versions {
		c = append(c, [2]string{"libcublas.so." + v, ""})
	}
	for _, dir := range []string{"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/cuda/targets/sbsa-linux/lib"} {
		for _, v := range versions {
			p := dir + "/libcublas.so." + v
			if _, err := os.Stat(p); err == nil {
				c = append(c, [2]string{p, dir + "/libcublasLt.so." + v})
			}
		}
	}
	return c
}

// loadBLAS opens cuBLAS once per process. Its absence is no error for the package: the own
// kernels run every product (one debug-level log line says why).
func loadBLAS() error {
	blasOnce.Do(func() {
		var errs []error
		for _, c := range blasCandidates() {
			err := blasOpen(c[0], c[1])
			if err == nil {
				blasPath = c[0]
				slog.Debug("cuda: cuBLAS loaded for large matrix products", "library", c[0])
				return
			}
			errs = append(errs, err)
		}
		blasErr = fmt.Errorf("cuda: no usable cuBLAS: %w", errors.Join(errs...))
		slog.Debug("cuda: cuBLAS not loaded; the own kernels run every matrix product", "reason", blasErr)
	})
	return blasErr
}

// CUBLASLibrary returns the cuBLAS library the process loaded, or why none was (after a device
// opened with a GEMM mode other than own; before that, "" and nil).
func CUBLASLibrary() (string, error) { return blasPath, blasErr }

// blasStatusName names a cublasStatus_t.
func blasStatusName(code int) string {
	switch code {
	case 1:
		return "CUBLAS_STATUS_NOT_INITIALIZED"
	case 3:
		return "CUBLAS_STATUS_ALLOC_FAILED"
	case 7:
		return "CUBLAS_STATUS_INVALID_VALUE"
	case 8:
		return "CUBLAS_STATUS_ARCH_MISMATCH"
	case 11:
		return "CUBLAS_STATUS_MAPPING_ERROR"
	case 13:
		return "CUBLAS_STATUS_EXECUTION_FAILED"
	case 14:
		return "CUBLAS_STATUS_INTERNAL_ERROR"
	case 15:
		return "CUBLAS_STATUS_NOT_SUPPORTED"
	case 16:
		return "CUBLAS_STATUS_LICENSE_ERROR"
	}
	return fmt.Sprintf("CUBLAS_STATUS_%d", code)
}

// SetGEMM sets the device's GEMM options for the products issued after it returns (on any
// stream). With Mode GEMMAuto or GEMMCUBLAS it loads cuBLAS (once per process); GEMMCUBLAS
// fails where it does not load. A handle that could not be made before (GEMMAuto then fell
// back to the own kernels) is tried again.
func (d *Device) SetGEMM(o GEMMOptions) error {
	if o.Mode < GEMMAuto || o.Mode > GEMMCUBLAS {
		return fmt.Errorf("cuda: GEMM mode %v", o.Mode)
	}
	if o.MinTokens == 0 {
		o.MinTokens = DefaultGEMMMinTokens
	}
	if o.MinTokens < 2 {
		return fmt.Errorf("cuda: GEMM MinTokens %d: at least 2", o.MinTokens)
	}
	if o.AttnMinTokens == 0 {
		o.AttnMinTokens = DefaultAttnMinTokens
	}
	if o.AttnMinTokens < 2 {
		return fmt.Errorf("cuda: GEMM AttnMinTokens %d: at least 2", o.AttnMinTokens)
	}
	if o.Mode != GEMMOwn {
		if err := loadBLAS(); err != nil && o.Mode == GEMMCUBLAS {
			return fmt.Errorf("cuda: GEMM mode cublas: %w", err)
		}
	}
	d.gemm.Store(&o)
	d.blasBroken.Store(false)
	return nil
}

// GEMM returns the device's GEMM options (MinTokens filled in).
func (d *Device) GEMM() GEMMOptions { return *d.gemm.Load() }

// CUBLASVersion is the version cuBLAS reports (e.g. 130100), once a product ran through it;
// 0 before.
func (d *Device) CUBLASVersion() int { return int(d.blasVer.Load()) }

// blasFor returns the GEMM options when a product of n tokens with w goes to cuBLAS, or nil.
func (d *Device) blasFor(w *Weights, n int) *GEMMOptions {
	o := d.gemm.Load()
	if o.Mode == GEMMOwn || n < o.MinTokens || blasPath == "" || d.blasBroken.Load() {
		return nil
	}
	if w.CUDACores || (w.Type != F16 && w.Type != Q8_0) {
		return nil
	}
	return o
}

// blasRec is a cuBLAS handle with its workspace; a stream holds one from its first cuBLAS
// product until it closes, then the device keeps it for the next stream.
type blasRec struct {
	h  blasHandle
	ws *Buffer
}

func (d *Device) takeBLAS() (*blasRec, error) {
	d.blasMu.Lock()
	defer d.blasMu.Unlock()
	if n := len(d.blasFree); n > 0 {
		r := d.blasFree[n-1]
		d.blasFree = d.blasFree[:n-1]
		return r, nil
	}
	h, err := d.drv.blasCreate()
	if err != nil {
		return nil, err
	}
	if v, err := d.drv.blasVersion(h); err == nil {
		d.blasVer.Store(int64(v))
	}
	ws, err := d.Alloc(blasWorkspace)
	if err != nil {
		d.drv.blasDestroy(h)
		return nil, err
	}
	return &blasRec{h: h, ws: ws}, nil
}

// putBLAS takes back a stream's handle (its stream idle, about to be destroyed): bound to
// the default stream until another stream takes it.
func (d *Device) putBLAS(r *blasRec) {
	if err := d.drv.blasBind(r.h, nil, r.ws.Ptr, r.ws.Len); err != nil {
		d.drv.blasDestroy(r.h)
		r.ws.Free()
		return
	}
	d.blasMu.Lock()
	d.blasFree = append(d.blasFree, r)
	d.blasMu.Unlock()
}

// closeBLAS destroys the kept handles (Device.Close).
func (d *Device) closeBLAS() error {
	d.blasMu.Lock()
	defer d.blasMu.Unlock()
	var err error
	for _, r := range d.blasFree {
		err = errors.Join(err, d.drv.blasDestroy(r.h), r.ws.Free())
	}
	d.blasFree = nil
	return err
}

// blasReady gives the stream a cuBLAS handle bound to it.
func (s *Stream) blasReady() error {
	if s.blas != nil {
		return nil
	}
	r, err := s.d.takeBLAS()
	if err != nil {
		return err
	}
	if err := s.d.drv.blasBind(r.h, s.s, r.ws.Ptr, r.ws.Len); err != nil {
		s.d.putBLAS(r)
		return err
	}
	s.blas = r
	return nil
}

// releaseBLAS returns the stream's handle to the device (Stream.Close, the stream idle).
func (s *Stream) releaseBLAS() {
	if s.blas != nil {
		s.d.putBLAS(s.blas)
		s.blas = nil
	}
}

// matMulBLAS runs MatMulStrided's product through cuBLAS: the activations converted to F16
// (and Q8_0 weights dequantized to F16) by kernels on the stream, then cublasGemmEx after
// whatever the stream recorded. In GEMMAuto mode a failure to make a cuBLAS handle turns
// cuBLAS off for the device (ok false: the caller runs its own kernels).
func (s *Stream) matMulBLAS(out DevPtr, ostride int, w *Weights, x DevPtr, xstride, n int, o *GEMMOptions) (ok bool, err error) {
	if err := s.blasReady(); err != nil {
		if o.Mode == GEMMCUBLAS {
			return false, fmt.Errorf("cuda: cuBLAS: %w", err)
		}
		if !s.d.blasBroken.Swap(true) {
			slog.Debug("cuda: cuBLAS handle failed; the own kernels run every matrix product", "reason", err)
		}
		return false, nil
	}
	cols := w.Cols
	total := int64(n) * int64(cols)
	// The F16 activations of the previous product are reused when nothing was queued since
	// (q, k and v of a layer multiply the same activations, and so do gate and up).
	key := xhKey{x: x, xstride: xstride, cols: cols, n: n}
	if !s.stableX || s.xhOf != key || s.xhSeq != s.seq {
		s.xhOf = xhKey{}
		if err := s.grow(&s.xh, int(2*total)); err != nil {
			return false, err
		}
		var a argSlots
		a.ptr(s.xh.Ptr).ptr(x).i32(xstride).i32(cols)
		var err error
		if x%16 == 0 && xstride%4 == 0 && cols%4 == 0 && n <= 65535 {
			err = s.launch("ds_f32_to_f16v", [3]uint32{uint32(ceilDiv(cols/4, 256)), uint32(n), 1}, [3]uint32{256, 1, 1}, 0, &a)
		} else {
			a.i64(total)
			err = s.launch("ds_f32_to_f16", [3]uint32{uint32(ceilDiv(int(total), 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, &a)
		}
		if err != nil {
			return false, err
		}
	}
	wp := w.data.Ptr
	if w.Type == Q8_0 {
		if wp, err = s.q8Half(w, o.Q8Copy); err != nil {
			return false, err
		}
	}
	if err := s.flush(); err != nil {
		return false, err
	}
	s.d.Stats.BLASCalls.Add(1)
	s.seq++
	if err := s.d.drv.blasGemm(s.blas.h, w.Rows, n, cols, wp, cols, s.xh.Ptr, cols, out, ostride); err != nil {
		return false, fmt.Errorf("cuda: %v [%d][%d] x %d tokens: %w", w.Type, w.Rows, cols, n, err)
	}
	// xh stays current unless the product wrote over its source.
	xEnd := x + DevPtr(4*((n-1)*xstride+cols))
	oEnd := out + DevPtr(4*((n-1)*ostride+w.Rows))
	if out >= xEnd || x >= oEnd {
		s.xhOf, s.xhSeq = key, s.seq
	}
	return true, nil
}

// xhKey names the activations a stream's xh holds in F16.
type xhKey struct {
	x                DevPtr
	xstride, cols, n int
}

// q8Half returns F16 weights equal to the Q8_0 weights w (each quant times its block's scale,
// rounded to F16): w's kept copy (keep; made on first use) or the stream's scratch, filled by
// a kernel queued on the stream.
func (s *Stream) q8Half(w *Weights, keep bool) (DevPtr, error) {
	count := w.Rows * w.Cols
	if keep {
		w.f16mu.Lock()
		defer w.f16mu.Unlock()
		if w.f16 != nil {
			return w.f16.Ptr, nil
		}
		buf, err := s.d.Alloc(2 * count)
		if err != nil {
			return 0, err
		}
		// Other streams may use the copy as soon as it is published: it is complete first.
		if err := s.dequantQ8(buf.Ptr, w); err == nil {
			err = s.Sync()
		}
		if err != nil {
			buf.Free()
			return 0, err
		}
		w.f16 = buf
		return buf.Ptr, nil
	}
	if err := s.grow(&s.wh, 2*count); err != nil {
		return 0, err
	}
	return s.wh.Ptr, s.dequantQ8(s.wh.Ptr, w)
}

func (s *Stream) dequantQ8(dst DevPtr, w *Weights) error {
	groups := int64(w.Rows) * int64(w.Cols) / 8
	var a argSlots
	a.ptr(dst).ptr(w.data.Ptr).ptr(w.scales.Ptr).i64(groups)
	return s.launch("ds_q8_to_f16", [3]uint32{uint32(ceilDiv(int(groups), 256)), 1, 1}, [3]uint32{256, 1, 1}, 0, &a)
}
