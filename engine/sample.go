package engine

import (
	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/driftstore/driftstore/engine/cpu"
)

// The sampler's selection step as host ops (guest/ABI.md, "argmax" and "top_k"): the guest
// keeps the RNG, the softmax and the draw; the host finds the best logit, or the k best in
// order, over the whole vocabulary. Both follow the guest's total order exactly: larger logit
// first, NaN counting as -Inf, -0 equal to +0, and the lower id first among equal logits.

// Argmaxer is implemented by an Exec that finds the best logit itself (on its device, without
// copying the logits back). Optional: without it the engine scans linear memory on the host's CPU (engine/cpu).
//
// Argmax returns the index of the first element of logits in the order above. It is
// synchronous even for a Syncer: its result is final when it returns. logits is in linear
// memory and current there; it may have been written by the host (LoadState) rather than by
// an op, and then InvalidateKV was called, so an Exec reading a device copy of the logits must
// drop that copy then.
type Argmaxer interface {
	Argmax(logits []float32) int
}

// TopKer is implemented by an Exec that selects the best logits itself. Optional: without it
// the engine selects on the host's CPU over linear memory.
//
// TopK writes the len(ids) (= len(vals), ≥ 1, ≤ len(logits)) first elements of logits in the
// order above, best first: ids[j] the index, vals[j] its logit with NaN replaced by -Inf. The
// three slices do not overlap. Synchronous like Argmax, with the same rule for the logits;
// ids and vals are in linear memory and the guest reads them right after the call.
type TopKer interface {
	TopK(ids []int32, vals []float32, logits []float32)
}

// maxSampleN bounds the logits a sampling op accepts (the guest's vocabulary limit is 1<<22).
const maxSampleN = 1 << 24

// syncBeforeRead makes the memory current for a host-side read when the Exec is asynchronous.
func (in *Instance) syncBeforeRead(op string) *opError {
	if s, ok := in.exec.(Syncer); ok {
		if err := s.Sync(); err != nil {
			return refuse(op, "backend: %v", err)
		}
	}
	return nil
}

func sampleCount(op string, n uint32) *opError {
	if n == 0 || n > maxSampleN {
		return refuse(op, "logit count %d is outside 1..%d", n, maxSampleN)
	}
	return nil
}

func opArgmax(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "argmax"
	lOff, n := u32(a[0]), u32(a[1])
	if err := sampleCount(op, n); err != nil {
		return 0, err
	}
	ls, err := f32s(op, "logits", mem, lOff, n)
	if err != nil {
		return 0, err
	}
	if am, ok := in.exec.(Argmaxer); ok {
		return int32(am.Argmax(ls)), nil
	}
	if err := in.syncBeforeRead(op); err != nil {
		return 0, err
	}
	return int32(cpu.Argmax(ls)), nil
}

func opTopK(in *Instance, mem []byte, a []wasmtime.Val) (int32, *opError) {
	const op = "top_k"
	lOff, n, k, idsOff, valsOff := u32(a[0]), u32(a[1]), u32(a[2]), u32(a[3]), u32(a[4])
	if err := sampleCount(op, n); err != nil {
		return 0, err
	}
	if k == 0 || k > n {
		return 0, refuse(op, "k %d is outside 1..%d (the logit count)", k, n)
	}
	ls, err := f32s(op, "logits", mem, lOff, n)
	if err != nil {
		return 0, err
	}
	ids, err := i32s(op, "ids", mem, idsOff, k)
	if err != nil {
		return 0, err
	}
	vals, err := f32s(op, "vals", mem, valsOff, k)
	if err != nil {
		return 0, err
	}
	type rng struct {
		what     string
		off, len uint64
	}
	rs := []rng{{"logits", uint64(lOff), 4 * uint64(n)}, {"ids", uint64(idsOff), 4 * uint64(k)}, {"vals", uint64(valsOff), 4 * uint64(k)}}
	for i := range rs {
		for j := i + 1; j < len(rs); j++ {
			if rs[i].off < rs[j].off+rs[j].len && rs[j].off < rs[i].off+rs[i].len {
				return 0, refuse(op, "%s [%d, +%d) overlaps %s [%d, +%d)", rs[j].what, rs[j].off, rs[j].len, rs[i].what, rs[i].off, rs[i].len)
			}
		}
	}
	if tk, ok := in.exec.(TopKer); ok {
		tk.TopK(ids, vals, ls)
		return int32(k), nil
	}
	if err := in.syncBeforeRead(op); err != nil {
		return 0, err
	}
	in.keyBuf = cpu.TopK(ids, vals, ls, in.keyBuf)
	return int32(k), nil
}

// setSampleMode selects the guest's sampler implementation: 0 host ops (the default), 1 the
// reference in Wasm (tests compare the two).
func (in *Instance) setSampleMode(m int) error { return in.callStatus("sample_mode", int32(m)) }
