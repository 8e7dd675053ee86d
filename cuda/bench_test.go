package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// hostWeights places w's bytes (in the device layout) in registered host memory, so the
// kernel reads the weights over the bus: the zero-copy extreme.
func hostWeights(b *testing.B, d *Device, reg *Registrar, w *Weights) *Weights {
	hw := &Weights{d: d, Type: w.Type, Rows: w.Rows, Cols: w.Cols}
	size := w.data.Len
	if w.scales != nil {
		size += w.scales.Len
	}
	mem := hostMem(b, (size+4095)&^4095)
	if err := w.data.Download(mem[:w.data.Len], 0); err != nil {
		b.Fatal(err)
	}
	if w.scales != nil {
		if err := w.scales.Download(mem[w.data.Len:size], 0); err != nil {
			b.Fatal(err)
		}
	}
	if err := reg.Register(addr(mem), len(mem)); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { reg.Unregister(addr(mem)) })
	p, _ := reg.DevPtr(addr(mem), 0, size)
	hw.data = &Buffer{d: d, Ptr: p, Len: w.data.Len}
	if w.scales != nil {
		hw.scales = &Buffer{d: d, Ptr: p + DevPtr(w.data.Len), Len: w.scales.Len}
	}
	return hw
}

// timeOps runs op iters times between device events and reports device ms per op, and the
// host time to issue one (us/op(issue): where it nears the device time, the host bounds it).
func timeOps(b *testing.B, s *Stream, op func() error) float64 {
	for i := 0; i < 3; i++ {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := s.StartTimer(); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	issue := time.Since(t0)
	ms, err := s.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	per := float64(ms) / float64(b.N)
	b.ReportMetric(per*1000, "us/op(dev)")
	b.ReportMetric(float64(issue.Nanoseconds())/1e3/float64(b.N), "us/op(issue)")
	return per
}

// BenchmarkGEMV: one token through a 2048x8192-shaped matrix (rows x cols both ways), weights
// on the device or in registered host memory, activations on the device or in registered
// host memory (the guest's linear memory).
func BenchmarkGEMV(b *testing.B) {
	d := device(b)
	s := newStream(b, d)
	reg := NewRegistrar(d)
	r := rand.New(rand.NewPCG(9, 9))
	for _, ty := range []DType{F16, Q8_0, BF16, F32} {
		for _, sh := range [][2]int{{8192, 2048}, {2048, 8192}} {
			rows, cols := sh[0], sh[1]
			raw, _ := encode(r, ty, rows, cols)
			w, err := d.UploadWeights(ty, rows, cols, raw)
			if err != nil {
				b.Fatal(err)
			}
			xd := devBuf(b, d, randF32(r, cols, 1), cols)
			od := devBuf(b, d, nil, rows)
			act := hostMem(b, 1<<20)
			if err := reg.Register(addr(act), len(act)); err != nil {
				b.Fatal(err)
			}
			xh, _ := reg.DevPtr(addr(act), 0, cols*4)
			oh, _ := reg.DevPtr(addr(act), 512<<10, rows*4)
			wbytes := float64(w.DeviceBytes())
			run := func(name string, w *Weights, out, x DevPtr) {
				b.Run(fmt.Sprintf("%v/%dx%d/%s", ty, rows, cols, name), func(b *testing.B) {
					ms := timeOps(b, s, func() error { return s.MatMul(out, w, x, 1) })
					b.ReportMetric(wbytes/(ms*1e-3)/1e9, "GB/s")
				})
			}
			run("wdev-xdev", w, od.Ptr, xd.Ptr)
			if d.tensorCores(w) { // the CUDA-core kernel on the same weights, for comparison
				d.tc = false
				run("wdev-xdev-fma", w, od.Ptr, xd.Ptr)
				d.tc = true
				// and the other few-token tensor-core kernels (same results)
				saved := d.tcv
				for m := range tcModeNames {
					if tcMode(m) != saved {
						d.tcv = tcMode(m)
						run("wdev-xdev-"+tcMode(m).String(), w, od.Ptr, xd.Ptr)
					}
				}
				d.tcv = saved
			}
			run("wdev-xhost", w, oh, xh)
			if ty == F16 || ty == Q8_0 {
				run("whost-xdev", hostWeights(b, d, reg, w), od.Ptr, xd.Ptr)
			}
			reg.Unregister(addr(act))
			w.Free()
		}
	}
}

// BenchmarkPrefillMatMul: n tokens through the F16/Q8_0 weight shapes of a 1B-shaped layer
// (device-resident): the own tensor-core kernels ("own"), cuBLAS where it loads ("cublas";
// Q8_0 dequantized per product; "cublas-q8copy": from a kept F16 copy; "cublas-xreuse": the
// activations converted to F16 once, as q/k/v and gate/up share them), and the CUDA-core
// kernel at 128 and 512 tokens ("fma"). Device time per product; the sum over a layer's
// products (2x 2048x2048, 2x 512x2048, 2x 8192x2048, 1x 2048x8192) sets
// DefaultGEMMMinTokens.
func BenchmarkPrefillMatMul(b *testing.B) {
	d := device(b)
	s := newStream(b, d)
	saved := d.GEMM()
	defer d.SetGEMM(saved)
	r := rand.New(rand.NewPCG(10, 10))
	blas := loadBLAS() == nil
	for _, ty := range []DType{F16, Q8_0} {
		for _, sh := range [][2]int{{8192, 2048}, {2048, 8192}, {2048, 2048}, {512, 2048}} {
			rows, cols := sh[0], sh[1]
			raw, _ := encode(r, ty, rows, cols)
			w, err := d.UploadWeights(ty, rows, cols, raw)
			if err != nil {
				b.Fatal(err)
			}
			tc := d.tensorCores(w)
			for _, n := range []int{8, 16, 24, 32, 48, 64, 128, 512, 2048} {
				x := devBuf(b, d, randF32(r, n*cols, 1), n*cols)
				o := devBuf(b, d, nil, n*rows)
				variants := []string{"own"}
				if blas {
					variants = append(variants, "cublas", "cublas-xreuse")
					if ty == Q8_0 {
						variants = append(variants, "cublas-q8copy")
					}
				}
				if tc && rows == 8192 && (n == 128 || n == 512) {
					variants = append(variants, "fma")
				}
				for _, v := range variants {
					opts := GEMMOptions{Mode: GEMMOwn}
					switch v {
					case "cublas", "cublas-xreuse":
						opts = GEMMOptions{Mode: GEMMCUBLAS, MinTokens: 2}
					case "cublas-q8copy":
						opts = GEMMOptions{Mode: GEMMCUBLAS, MinTokens: 2, Q8Copy: true}
					}
					if err := d.SetGEMM(opts); err != nil {
						b.Fatal(err)
					}
					d.tc = tc && v != "fma"
					s.stableX = v == "cublas-xreuse" // the F16 activations converted once
					b.Run(fmt.Sprintf("%v/%dx%d/n%d/%s", ty, rows, cols, n, v), func(b *testing.B) {
						ms := timeOps(b, s, func() error { return s.MatMul(o.Ptr, w, x.Ptr, n) })
						b.ReportMetric(2*float64(rows*cols*n)/(ms*1e-3)/1e12, "TFLOP/s")
					})
					d.tc = tc
					s.stableX = false
				}
				x.Free()
				o.Free()
			}
			w.Free()
		}
	}
}

// BenchmarkAttentionDecode: one token, 1B shape (32 heads, 8 KV heads, hd 64, F16 KV), over
// ctx positions in device memory or in registered host memory.
func BenchmarkAttentionDecode(b *testing.B) {
	d := device(b)
	s := newStream(b, d)
	reg := NewRegistrar(d)
	r := rand.New(rand.NewPCG(11, 11))
	l := KVLayout{BlockSize: 16, NKVHeads: 8, HeadDim: 64, KVType: F16}
	for _, ctx := range []int{512, 2048} {
		nb := ceilDiv(ctx, l.BlockSize)
		size := nb * l.BlockBytes()
		dev, err := d.Alloc(size)
		if err != nil {
			b.Fatal(err)
		}
		host := hostMem(b, size)
		for i := range host {
			host[i] = byte(r.IntN(60)) // small finite halves
		}
		dev.Upload(0, host)
		if err := reg.Register(addr(host), size); err != nil {
			b.Fatal(err)
		}
		hp, _ := reg.DevPtr(addr(host), 0, size)
		q := devBuf(b, d, randF32(r, 32*64, 1), 32*64)
		o := devBuf(b, d, nil, 32*64)
		for _, place := range []struct {
			name string
			base DevPtr
		}{{"kvdev", dev.Ptr}, {"kvhost", hp}} {
			blocks := make([]DevPtr, nb)
			for i := range blocks {
				blocks[i] = place.base + DevPtr(i*l.BlockBytes())
			}
			b.Run(fmt.Sprintf("ctx%d/%s", ctx, place.name), func(b *testing.B) {
				ms := timeOps(b, s, func() error { return s.Attention(o.Ptr, q.Ptr, 1, 32, ctx-1, l, blocks) })
				b.ReportMetric(float64(size)/(ms*1e-3)/1e9, "GB/s")
			})
		}
		reg.Unregister(addr(host))
		dev.Free()
	}
}

// BenchmarkAttentionPrefill: n query tokens at positions 0.. and ctx-n.. (1B shape, F16 KV on
// the device): on the tensor cores (tc: ds_attn_tc), with the query tokens sharing K/V loads
// (mq: ds_attn_mq, the decode kernel's arithmetic) and, at 512, one token per block (ds_attn).
// The threshold GEMMOptions.AttnMinTokens comes from the small n.
func BenchmarkAttentionPrefill(b *testing.B) {
	d := device(b)
	s := newStream(b, d)
	r := rand.New(rand.NewPCG(12, 12))
	l := KVLayout{BlockSize: 16, NKVHeads: 8, HeadDim: 64, KVType: F16}
	const ctx, nmax = 2048, 512
	nb := ceilDiv(ctx, l.BlockSize)
	size := nb * l.BlockBytes()
	dev, err := d.Alloc(size)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Free()
	host := make([]byte, size)
	for i := range host {
		host[i] = byte(r.IntN(60))
	}
	dev.Upload(0, host)
	blocks := make([]DevPtr, nb)
	for i := range blocks {
		blocks[i] = dev.Ptr + DevPtr(i*l.BlockBytes())
	}
	q := devBuf(b, d, randF32(r, nmax*32*64, 1), nmax*32*64)
	o := devBuf(b, d, nil, nmax*32*64)
	saved := d.GEMM()
	defer d.SetGEMM(saved)
	for _, n := range []int{8, 16, 32, 64, 128, 512} {
		for _, pos0 := range []int{0, ctx - n} {
			for _, v := range []string{"tc", "mq", "pertoken"} {
				if v == "pertoken" && n != nmax {
					continue
				}
				b.Run(fmt.Sprintf("n%d/pos%d/%s", n, pos0, v), func(b *testing.B) {
					g := GEMMOptions{Mode: GEMMOwn}
					if v == "tc" {
						g = GEMMOptions{Mode: GEMMAuto, AttnMinTokens: 2}
					}
					if err := d.SetGEMM(g); err != nil {
						b.Fatal(err)
					}
					attnMQ = v != "pertoken"
					defer func() { attnMQ = true }()
					timeOps(b, s, func() error { return s.Attention(o.Ptr, q.Ptr, n, 32, pos0, l, blocks) })
				})
			}
		}
	}
}

// BenchmarkLaunch: an empty kernel queued back to back (device time per launch), and the
// host round trip of launch + stream sync (an empty host op done synchronously).
func BenchmarkLaunch(b *testing.B) {
	d := device(b)
	s := newStream(b, d)
	b.Run("queued", func(b *testing.B) {
		timeOps(b, s, s.Nop)
	})
	// A step of 256 empty kernels then a sync, issued one by one or through a deferred stream
	// (recorded, replayed as CUDA graphs from the second step on): host wall time per kernel.
	for _, deferred := range []bool{false, true} {
		name := "step256/eager"
		if deferred {
			name = "step256/graph"
		}
		b.Run(name, func(b *testing.B) {
			st := newStream(b, d)
			if err := st.SetDeferred(deferred); err != nil {
				b.Fatal(err)
			}
			step := func() {
				for k := 0; k < 256; k++ {
					if err := st.Nop(); err != nil {
						b.Fatal(err)
					}
				}
				if err := st.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			step()
			step()
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				step()
			}
			b.ReportMetric(float64(time.Since(t0).Nanoseconds())/1e3/float64(b.N)/256, "us/kernel")
			if deferred {
				rp, bu, di := st.GraphStats()
				b.ReportMetric(float64(rp), "replays")
				b.ReportMetric(float64(bu), "builds")
				b.ReportMetric(float64(di), "direct")
			}
		})
	}
	b.Run("roundtrip", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := s.Nop(); err != nil {
				b.Fatal(err)
			}
			if err := s.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRegister: cuMemHostRegister + device pointer and unregister of 16 and 64 MiB of
// touched pages.
func BenchmarkRegister(b *testing.B) {
	d := device(b)
	reg := NewRegistrar(d)
	for _, mib := range []int{16, 64} {
		mem := hostMem(b, mib<<20)
		for i := 0; i < len(mem); i += 4096 {
			mem[i] = 1
		}
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			var regT, unregT time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := reg.Register(addr(mem), len(mem)); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := reg.Unregister(addr(mem)); err != nil {
					b.Fatal(err)
				}
				regT += t1.Sub(t0)
				unregT += time.Since(t1)
			}
			b.ReportMetric(float64(regT.Microseconds())/float64(b.N)/1000, "ms-register")
			b.ReportMetric(float64(unregT.Microseconds())/float64(b.N)/1000, "ms-unregister")
		})
	}
}
