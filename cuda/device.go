package cuda

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

//go:embed kernels/kernels.ptx
var kernelsPTX []byte

// Device attribute ids (CUdevice_attribute).
const (
	attrMultiprocessorCount    = 16
	attrCanMapHostMemory       = 19
	attrUnifiedAddressing      = 41
	attrComputeCapabilityMajor = 75
	attrComputeCapabilityMinor = 76
	attrHostPointerForRegMem   = 91
)

// Info describes an opened device.
type Info struct {
	Ordinal       int
	Name          string
	CC            [2]int // compute capability
	SMs           int
	TotalMem      int64
	DriverVersion int // e.g. 13000 for CUDA 13.0
	// HostPtrIsDevPtr: registered host memory has the same address on the device, so one
	// mapping covers ranges registered separately (the region's growths).
	HostPtrIsDevPtr bool
	// PDL: CUDA graphs are built with programmatic edges and the kernels wait for the one
	// before in griddepcontrol.wait (compute capability 9.0 and newer; pdl.go).
	PDL bool
}

// Device is one GPU with driftstore's kernels loaded. Its methods are safe for concurrent
// use; work is issued through Streams.
type Device struct {
	drv  *drvDevice
	info Info
	mod  cuModule
	fns  map[string]cuFunction // read-only after Open

	closeOnce sync.Once
	Stats     Stats
	tc        bool        // tensor-core matmuls for F16 and Q8_0 (see Device.tensorCores)
	tcv       tcMode      // the few-token tensor-core kernel (all give the same results)
	tcw       int         // warps per block of ds_tcr2/ds_tcr8; 0: chosen per matrix (tcrShape)
	fewTC     bool        // DRIFTSTORE_CUDA_FEW=tc: few-token products on the tensor cores always (few.go)
	tcqForce  [2]int      // tests: ds_tcq's row tiles per warp and segment groups (0: tcqShape's)
	pdl       atomic.Bool // graphs with programmatic edges (pdl.go); cleared if a build refuses them

	gemm       atomic.Pointer[GEMMOptions] // products of batches (gemm.go); never nil after Open
	blasBroken atomic.Bool                 // GEMMAuto: a cuBLAS handle could not be made
	blasVer    atomic.Int64
	blasMu     sync.Mutex // guards blasFree
	blasFree   []*blasRec // handles of closed streams, for the next ones
}

// Available reports whether a CUDA driver loads and sees at least one device; the error says
// why not (wrapping ErrUnavailable).
func Available() error {
	if err := load(); err != nil {
		return err
	}
	n, err := drvDeviceCount()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: the driver sees no CUDA device", ErrUnavailable)
	}
	return nil
}

// Open opens device ordinal (0 for the first GPU), retains its primary context and loads the
// embedded kernels (the driver JIT-compiles the PTX, cached by the driver on disk).
func Open(ordinal int) (*Device, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	drv, err := drvOpenDevice(ordinal)
	if err != nil {
		return nil, fmt.Errorf("cuda: open device %d: %w", ordinal, err)
	}
	d := &Device{drv: drv, fns: make(map[string]cuFunction)}
	d.info.Ordinal = ordinal
	d.info.Name = drv.name()
	d.info.TotalMem, _ = drv.totalMem()
	d.info.DriverVersion, _ = drvDriverVersion()
	attrs := []struct {
		id  int
		dst *int
	}{
		{attrComputeCapabilityMajor, &d.info.CC[0]},
		{attrComputeCapabilityMinor, &d.info.CC[1]},
		{attrMultiprocessorCount, &d.info.SMs},
	}
	for _, a := range attrs {
		if *a.dst, err = drv.attr(a.id); err != nil {
			drv.release()
			return nil, err
		}
	}
	mapHost, _ := drv.attr(attrCanMapHostMemory)
	uva, _ := drv.attr(attrUnifiedAddressing)
	hp, _ := drv.attr(attrHostPointerForRegMem)
	if mapHost == 0 || uva == 0 {
		drv.release()
		return nil, fmt.Errorf("%w: device %d (%s) cannot map host memory with unified addressing", ErrUnavailable, ordinal, d.info.Name)
	}
	d.info.HostPtrIsDevPtr = hp != 0
	if flushErr != nil {
		drv.release()
		return nil, flushErr
	}
	d.tc = d.info.CC[0] >= 8 && os.Getenv("DRIFTSTORE_CUDA_TC") != "0"
	if d.tcv, err = parseTCMode(os.Getenv("DRIFTSTORE_CUDA_TCV")); err != nil {
		drv.release()
		return nil, err
	}
	if d.fewTC, err = parseFewMode(os.Getenv("DRIFTSTORE_CUDA_FEW")); err != nil {
		drv.release()
		return nil, err
	}
	gemm, err := gemmFromEnv()
	if err == nil {
		err = d.SetGEMM(gemm)
	}
	if err != nil {
		drv.release()
		return nil, err
	}
	ptx := kernelsPTX
	if path := os.Getenv("DRIFTSTORE_CUDA_PTX"); path != "" {
		// Development: kernels compiled elsewhere, before they are committed.
		if ptx, err = os.ReadFile(path); err != nil {
			drv.release()
			return nil, fmt.Errorf("cuda: DRIFTSTORE_CUDA_PTX: %w", err)
		}
	}
	if d.info.CC[0] >= 9 && !pdlOff && graphsAvailable() && pdlEdgesAvailable() {
		// The kernels with griddepcontrol at their heads; where the driver refuses them, the
		// kernels as compiled, without PDL.
		if p, n, err := pdlPTX(ptx); err == nil && n > 0 {
			if m, err := drv.loadModule(p); err == nil {
				d.mod = m
				d.pdl.Store(true)
			}
		}
	}
	if d.mod == nil {
		if d.mod, err = drv.loadModule(ptx); err != nil {
			drv.release()
			return nil, fmt.Errorf("cuda: load kernels on %s: %w", d.info.Name, err)
		}
	}
	for _, name := range kernelNames() {
		f, err := drv.function(d.mod, name)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.fns[name] = f
	}
	if v := os.Getenv("DRIFTSTORE_CUDA_TCW"); v != "" {
		if d.tcw, err = strconv.Atoi(v); err != nil || d.tcw < 1 || d.tcw > 32 {
			d.Close()
			return nil, fmt.Errorf("cuda: DRIFTSTORE_CUDA_TCW=%q: want warps per block, 1 to 32", v)
		}
	}
	return d, nil
}

// Info describes the device.
func (d *Device) Info() Info {
	i := d.info
	i.PDL = d.pdl.Load()
	return i
}

// Close unloads the kernels and releases the context. Buffers, weights, streams and
// registrations must be released first. Idempotent.
func (d *Device) Close() error {
	var err error
	d.closeOnce.Do(func() {
		err = d.closeBLAS()
		if d.mod != nil {
			err = errors.Join(err, d.drv.unloadModule(d.mod))
		}
		err = errors.Join(err, d.drv.release())
	})
	return err
}

// MemInfo returns the device memory free and in total.
func (d *Device) MemInfo() (free, total int64, err error) { return d.drv.memInfo() }

// Buffer is device memory. Free it once; it must not be in use by queued work then (Free
// waits for the device).
type Buffer struct {
	d   *Device
	Ptr DevPtr
	Len int
}

// Alloc allocates n bytes of device memory (uninitialized).
func (d *Device) Alloc(n int) (*Buffer, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: alloc of %d bytes", n)
	}
	p, err := d.drv.alloc(n)
	if err != nil {
		return nil, err
	}
	return &Buffer{d: d, Ptr: p, Len: n}, nil
}

// Free releases the buffer; nil and repeated frees are no-ops.
func (b *Buffer) Free() error {
	if b == nil || b.Ptr == 0 {
		return nil
	}
	if err := b.d.drv.sync(); err != nil {
		return err
	}
	err := b.d.drv.free(b.Ptr)
	b.Ptr = 0
	return err
}

// Upload copies src into the buffer at off, synchronously.
func (b *Buffer) Upload(off int, src []byte) error {
	if off < 0 || off+len(src) > b.Len {
		return fmt.Errorf("cuda: upload of %d bytes at %d into a %d-byte buffer", len(src), off, b.Len)
	}
	return b.d.drv.htod(b.Ptr+DevPtr(off), src)
}

// Download copies len(dst) bytes at off into dst after all work on the device has finished.
func (b *Buffer) Download(dst []byte, off int) error {
	if off < 0 || off+len(dst) > b.Len {
		return fmt.Errorf("cuda: download of %d bytes at %d from a %d-byte buffer", len(dst), off, b.Len)
	}
	if err := b.d.drv.sync(); err != nil {
		return err
	}
	return b.d.drv.dtoh(dst, b.Ptr+DevPtr(off))
}

// Sync waits for all work on the device.
func (d *Device) Sync() error { return d.drv.sync() }

func f32bits(v float32) uint32 { return math.Float32bits(v) }
