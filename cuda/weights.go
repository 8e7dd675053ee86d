package cuda

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// DType is a tensor type by its GGML id.
type DType int

// The weight and KV types the kernels take.
const (
	F32  DType = 0
	F16  DType = 1
	Q8_0 DType = 8
	BF16 DType = 30
)

func (t DType) String() string {
	switch t {
	case F32:
		return "F32"
	case F16:
		return "F16"
	case Q8_0:
		return "Q8_0"
	case BF16:
		return "BF16"
	}
	return fmt.Sprintf("type(%d)", int(t))
}

func (t DType) suffix() string {
	switch t {
	case F32:
		return "f32"
	case F16:
		return "f16"
	case BF16:
		return "bf16"
	}
	return "q8"
}

// RowBytes is the size in GGUF layout of one row of cols values.
func (t DType) RowBytes(cols int) (int, error) {
	switch t {
	case F32:
		return cols * 4, nil
	case F16, BF16:
		return cols * 2, nil
	case Q8_0:
		if cols%32 != 0 {
			return 0, fmt.Errorf("cuda: Q8_0 row of %d values is not a multiple of 32", cols)
		}
		return cols / 32 * 34, nil
	}
	return 0, fmt.Errorf("cuda: unsupported weight type %v", t)
}

// Weights is a [Rows][Cols] weight matrix resident in device memory. Q8_0 is stored repacked:
// int8 quants [Rows][Cols] and F16 scales [Rows][Cols/32], so the kernels' loads are aligned.
// Weights are immutable and may be used by any number of streams at once.
type Weights struct {
	d          *Device
	Type       DType
	Rows, Cols int
	data       *Buffer
	scales     *Buffer // Q8_0 only
	// CUDACores keeps products with these weights on the CUDA-core kernels even where the
	// tensor cores could take them (see Device.tensorCores): for matrices only ever multiplied
	// by one token, where the CUDA-core GEMV streams weights faster. Set before first use.
	CUDACores bool

	f16mu sync.Mutex // guards f16
	f16   *Buffer    // Q8_0: the F16 copy cuBLAS products use (GEMMOptions.Q8Copy), made on demand
}

// uploadChunk bounds the host staging memory of an upload.
const uploadChunk = 32 << 20

// UploadWeights copies a [rows][cols] tensor in GGUF layout (raw, e.g. a slice of the mmap'd
// file; only read) to device memory.
func (d *Device) UploadWeights(t DType, rows, cols int, raw []byte) (*Weights, error) {
	rb, err := t.RowBytes(cols)
	if err != nil {
		return nil, err
	}
	if rows <= 0 || cols <= 0 || len(raw) != rows*rb {
		return nil, fmt.Errorf("cuda: %v weights [%d][%d] need %d bytes, have %d", t, rows, cols, rows*rb, len(raw))
	}
	w := &Weights{d: d, Type: t, Rows: rows, Cols: cols}
	if t != Q8_0 {
		if w.data, err = d.Alloc(len(raw)); err != nil {
			return nil, err
		}
		for off := 0; off < len(raw); off += uploadChunk {
			if err := w.data.Upload(off, raw[off:min(off+uploadChunk, len(raw))]); err != nil {
				w.Free()
				return nil, err
			}
		}
		d.Stats.Uploaded.Add(int64(len(raw)))
		return w, nil
	}
	nblocks := rows * cols / 32
	if w.data, err = d.Alloc(rows * cols); err != nil {
		return nil, err
	}
	if w.scales, err = d.Alloc(nblocks * 2); err != nil {
		w.Free()
		return nil, err
	}
	const chunkBlocks = uploadChunk / 32
	qs := make([]byte, min(nblocks, chunkBlocks)*32)
	ss := make([]byte, min(nblocks, chunkBlocks)*2)
	for b0 := 0; b0 < nblocks; b0 += chunkBlocks {
		nb := min(chunkBlocks, nblocks-b0)
		for i := 0; i < nb; i++ {
			blk := raw[(b0+i)*34 : (b0+i+1)*34]
			binary.LittleEndian.PutUint16(ss[2*i:], binary.LittleEndian.Uint16(blk))
			copy(qs[32*i:32*i+32], blk[2:])
		}
		if err := w.data.Upload(b0*32, qs[:nb*32]); err != nil {
			w.Free()
			return nil, err
		}
		if err := w.scales.Upload(b0*2, ss[:nb*2]); err != nil {
			w.Free()
			return nil, err
		}
	}
	d.Stats.Uploaded.Add(int64(nblocks * 34))
	return w, nil
}

// DeviceBytes is the device memory the weights take (with the F16 copy of Q8_0 weights, where
// cuBLAS products made one).
func (w *Weights) DeviceBytes() int {
	n := w.data.Len
	if w.scales != nil {
		n += w.scales.Len
	}
	w.f16mu.Lock()
	if w.f16 != nil {
		n += w.f16.Len
	}
	w.f16mu.Unlock()
	return n
}

// Free releases the device memory; the weights must not be in use. Idempotent.
func (w *Weights) Free() error {
	err := w.data.Free()
	if e := w.scales.Free(); err == nil {
		err = e
	}
	w.f16mu.Lock()
	if e := w.f16.Free(); err == nil {
		err = e
	}
	w.f16 = nil
	w.f16mu.Unlock()
	return err
}

func (w *Weights) scalePtr() DevPtr {
	if w.scales == nil {
		return 0
	}
	return w.scales.Ptr
}
