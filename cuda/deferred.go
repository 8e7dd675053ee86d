package cuda

import (
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"
)

// Deferred streams and CUDA graphs.
//
// A decode step issues about 270 small kernels; launched one by one, the host's launch cost
// (≈ 4 µs each) and the gaps between kernels on the device exceed the kernels' own work. A
// deferred stream (Stream.SetDeferred) records launches and copies instead of issuing them and
// issues them in order at the next flush: when enough kernels have been recorded, or when the
// stream is synchronized. "Enough" starts small after each Sync (flushFirst) and doubles with
// every flush up to flushEvery: after a Sync the device is idle, so the first kernels of a
// step are issued as soon as a few are recorded, and the device runs them while the host
// records the rest (the host records a kernel in a few µs, the device runs one in about ten).
// A flush happens before a kernel is added, never after, so the kernel recorded last stays
// unissued until the next operation, which may still fuse with it. A run of
// consecutive kernels is replayed through a CUDA graph when the same run (the same kernels in
// the same order, at the same place since the last Sync) was seen before: the graph's nodes
// whose parameters or grid changed (positions, context lengths, buffers) are updated in place
// and the graph is launched once. Other runs, and every copy, are issued directly. The
// device sees the same kernels with the same parameters in the same order either way, so
// results are bit-identical with and without graphs.

// kernelRecs holds recorded kernel launches in the layout the driver glue reads: function k,
// its 7 dims (grid x, y, z, block x, y, z, dynamic shared bytes) and its maxArgs parameter
// slots.
type kernelRecs struct {
	fns   []cuFunction
	dims  []uint32
	args  []uint64
	nargs []int32
}

func (r *kernelRecs) reset() {
	r.fns, r.dims, r.args, r.nargs = r.fns[:0], r.dims[:0], r.args[:0], r.nargs[:0]
}

func (r *kernelRecs) add(f cuFunction, grid, block [3]uint32, shmem uint32, a *argSlots) {
	r.fns = append(r.fns, f)
	r.dims = append(r.dims, grid[0], grid[1], grid[2], block[0], block[1], block[2], shmem)
	r.args = append(r.args, a.v[:maxArgs]...)
	r.nargs = append(r.nargs, int32(a.n))
}

// copyFrom makes r a copy of the records [lo, hi) of o.
func (r *kernelRecs) copyFrom(o *kernelRecs, lo, hi int) {
	r.fns = append(r.fns[:0], o.fns[lo:hi]...)
	r.dims = append(r.dims[:0], o.dims[7*lo:7*hi]...)
	r.args = append(r.args[:0], o.args[maxArgs*lo:maxArgs*hi]...)
	r.nargs = append(r.nargs[:0], o.nargs[lo:hi]...)
}

// update makes record i of r equal to record lo+i of o for every i, and returns the indexes
// that changed (appended to chg); ok is false (and r unchanged from the first such record on)
// where a record's kernel differs, which a graph node cannot take.
func (r *kernelRecs) update(o *kernelRecs, lo int, chg []int32) (_ []int32, ok bool) {
	for i := range r.fns {
		k := lo + i
		if r.fns[i] != o.fns[k] {
			return chg, false
		}
		same := r.nargs[i] == o.nargs[k]
		if same {
			d1, d2 := r.dims[7*i:7*i+7], o.dims[7*k:7*k+7]
			for j := range d1 {
				if d1[j] != d2[j] {
					same = false
					break
				}
			}
		}
		if same {
			a1, a2 := r.args[maxArgs*i:maxArgs*i+maxArgs], o.args[maxArgs*k:maxArgs*k+maxArgs]
			for j := range a1 {
				if a1[j] != a2[j] {
					same = false
					break
				}
			}
		}
		if !same {
			copy(r.dims[7*i:7*i+7], o.dims[7*k:7*k+7])
			copy(r.args[maxArgs*i:maxArgs*i+maxArgs], o.args[maxArgs*k:maxArgs*k+maxArgs])
			r.nargs[i] = o.nargs[k]
			chg = append(chg, int32(i))
		}
	}
	return chg, true
}

type opKind uint8

const (
	opKernels opKind = iota // records [lo, hi)
	opDtoD                  // dst, src, n
	opHtoD                  // dst, arena [lo, hi)
	opDtoH                  // haddr, src, n
)

type pendingOp struct {
	kind     opKind
	lo, hi   int
	dst, src DevPtr
	n        int
	haddr    uintptr
}

// graphKey identifies a run of kernels: its place among the runs issued since the last
// Sync, its length and a hash of its kernel functions.
type graphKey struct {
	piece, n int
	sig      uint64
}

type graphEntry struct {
	g     cuGraph
	x     cuGraphExec
	nodes []cuGraphNode
	recs  kernelRecs // the parameters the instantiated graph holds
	used  uint64
}

const (
	flushEvery = 64 // kernels recorded before the queue is issued without waiting for a Sync
	flushFirst = 8  // the same, for the first flush after a Sync (see flushStart)
	graphMin   = 8  // shorter runs are launched directly
	maxGraphs  = 48 // instantiated graphs kept per stream (least recently used dropped)
)

// deferQ is a deferred stream's queue and graph cache.
type deferQ struct {
	ops     []pendingOp
	recs    kernelRecs
	arena   []byte
	pending int // kernels recorded since the last flush
	limit   int // pending kernels at which the next record flushes first
	piece   int // kernel runs issued since the last Sync
	graphs  map[graphKey]*graphEntry
	seen    map[graphKey]int
	tick    uint64
	noGraph bool
	chg     []int32
	// Stats: kernel runs replayed through graphs, graphs built, kernels launched directly.
	replays, builds, direct int64
}

// GraphStats reports, for a deferred stream, how many kernel runs were replayed through CUDA
// graphs, how many graphs were instantiated and how many kernels were launched one by one.
func (s *Stream) GraphStats() (replays, builds, direct int64) {
	if s.q == nil {
		return 0, 0, 0
	}
	return s.q.replays, s.q.builds, s.q.direct
}

// SetDeferred switches the stream between issuing each operation at once (the default) and
// recording operations to issue them, in order, at the next flush (see the package's notes
// on graphs in deferred.go). In deferred mode an operation's errors may be reported by a
// later operation or by Sync, and byte slices given to uploads are copied when recorded.
// Turning it off issues what was recorded.
func (s *Stream) SetDeferred(on bool) error {
	if !on {
		if s.q == nil {
			return nil
		}
		err := s.flush()
		s.freeGraphs()
		s.q = nil
		return err
	}
	if s.q == nil {
		s.q = &deferQ{graphs: map[graphKey]*graphEntry{}, seen: map[graphKey]int{}, noGraph: !graphsAvailable(),
			limit: flushStart}
	}
	return nil
}

// flushStart is the first flush's size after a Sync: flushFirst, or DRIFTSTORE_CUDA_FLUSH
// (1..flushEvery; flushEvery gives every flush the same size, as before flushFirst existed).
// An invalid value leaves flushFirst and makes Open fail with flushErr.
var flushStart, flushErr = parseFlush(os.Getenv("DRIFTSTORE_CUDA_FLUSH"))

func parseFlush(v string) (int, error) {
	if v == "" {
		return flushFirst, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > flushEvery {
		return flushFirst, fmt.Errorf("cuda: DRIFTSTORE_CUDA_FLUSH=%q: want the kernels of a step's first flush, 1 to %d", v, flushEvery)
	}
	return n, nil
}

func (s *Stream) freeGraphs() {
	if s.q == nil {
		return
	}
	for k, e := range s.q.graphs {
		s.d.drv.graphFree(e.g, e.x)
		delete(s.q.graphs, k)
	}
}

// record appends a kernel launch to the queue, after issuing the queue when it is long enough.
func (s *Stream) record(f cuFunction, grid, block [3]uint32, shmem uint32, args *argSlots) error {
	q := s.q
	if q.pending >= q.limit {
		q.limit = min(2*q.limit, flushEvery)
		if err := s.flush(); err != nil {
			return err
		}
	}
	k := len(q.recs.fns)
	q.recs.add(f, grid, block, shmem, args)
	if n := len(q.ops); n > 0 && q.ops[n-1].kind == opKernels {
		q.ops[n-1].hi = k + 1
	} else {
		q.ops = append(q.ops, pendingOp{kind: opKernels, lo: k, hi: k + 1})
	}
	q.pending++
	return nil
}

// dtod queues (or issues) a device-to-device copy.
func (s *Stream) dtod(dst, src DevPtr, n int) error {
	s.seq++
	if s.q == nil {
		return s.d.drv.dtodAsync(dst, src, n, s.s)
	}
	s.q.ops = append(s.q.ops, pendingOp{kind: opDtoD, dst: dst, src: src, n: n})
	return nil
}

// htod queues (or issues) an upload of src, which may be reused as soon as this returns.
func (s *Stream) htod(dst DevPtr, src []byte) error {
	s.seq++
	if s.q == nil {
		return s.d.drv.htodAsync(dst, src, s.s)
	}
	lo := len(s.q.arena)
	s.q.arena = append(s.q.arena, src...)
	s.q.ops = append(s.q.ops, pendingOp{kind: opHtoD, dst: dst, lo: lo, hi: len(s.q.arena)})
	return nil
}

// dtoh queues (or issues) a copy into host memory at addr.
func (s *Stream) dtoh(addr uintptr, src DevPtr, n int) error {
	s.seq++
	if s.q == nil {
		return s.d.drv.dtohAsyncAddr(addr, src, n, s.s)
	}
	s.q.ops = append(s.q.ops, pendingOp{kind: opDtoH, haddr: addr, src: src, n: n})
	return nil
}

// flush issues everything recorded, in order. After an error the rest is dropped.
func (s *Stream) flush() error {
	q := s.q
	if q == nil || len(q.ops) == 0 {
		return nil
	}
	var err error
	if p := s.prof; p != nil && !p.started {
		p.started = true
		err = s.d.drv.eventRecord(p.start, s.s)
	}
	for _, op := range q.ops {
		if err != nil {
			break
		}
		switch op.kind {
		case opKernels:
			err = s.issueKernels(op.lo, op.hi)
		case opDtoD:
			err = s.d.drv.dtodAsync(op.dst, op.src, op.n, s.s)
		case opHtoD:
			err = s.d.drv.htodAsync(op.dst, q.arena[op.lo:op.hi], s.s)
		case opDtoH:
			err = s.d.drv.dtohAsyncAddr(op.haddr, op.src, op.n, s.s)
		}
	}
	q.ops, q.arena, q.pending = q.ops[:0], q.arena[:0], 0
	q.recs.reset()
	return err
}

// discard drops what was recorded and not issued.
func (s *Stream) discard() {
	if q := s.q; q != nil {
		q.ops, q.arena, q.pending = q.ops[:0], q.arena[:0], 0
		q.recs.reset()
	}
}

func runSig(fns []cuFunction, nargs []int32) uint64 {
	h := uint64(14695981039346656037)
	for i, f := range fns {
		h ^= uint64(uintptr(unsafe.Pointer(f)))
		h *= 1099511628211
		h ^= uint64(nargs[i])
		h *= 1099511628211
	}
	return h
}

// issueKernels issues the recorded kernels [lo, hi): through a graph when the run was seen
// before, else one by one.
func (s *Stream) issueKernels(lo, hi int) error {
	q := s.q
	n := hi - lo
	piece := q.piece
	q.piece++
	if q.noGraph || n < graphMin {
		q.direct += int64(n)
		return s.d.drv.launchMany(s.s, &q.recs, lo, hi)
	}
	key := graphKey{piece: piece, n: n, sig: runSig(q.recs.fns[lo:hi], q.recs.nargs[lo:hi])}
	q.tick++
	if e := q.graphs[key]; e != nil {
		var ok bool
		if q.chg, ok = e.recs.update(&q.recs, lo, q.chg[:0]); !ok { // a hash collision
			s.d.drv.graphFree(e.g, e.x)
			delete(q.graphs, key)
			q.direct += int64(n)
			return s.d.drv.launchMany(s.s, &q.recs, lo, hi)
		}
		e.used = q.tick
		if err := s.d.drv.graphRun(s.s, e.x, e.nodes, q.chg, &q.recs, lo, hi); err != nil {
			// The graph may be half updated: drop it. Whether it was launched is unknown,
			// so the error stands (the stream's results are not trusted after it).
			s.d.drv.graphFree(e.g, e.x)
			delete(q.graphs, key)
			return fmt.Errorf("cuda: graph replay: %w", err)
		}
		q.replays++
		return nil
	}
	if len(q.seen) > 4096 {
		clear(q.seen)
	}
	q.seen[key]++
	if q.seen[key] < 2 {
		q.direct += int64(n)
		return s.d.drv.launchMany(s.s, &q.recs, lo, hi)
	}
	if len(q.graphs) >= maxGraphs {
		var old graphKey
		var oldest *graphEntry
		for k, e := range q.graphs {
			if oldest == nil || e.used < oldest.used {
				old, oldest = k, e
			}
		}
		s.d.drv.graphFree(oldest.g, oldest.x)
		delete(q.graphs, old)
	}
	e := &graphEntry{nodes: make([]cuGraphNode, n), used: q.tick}
	g, x, err := s.d.drv.graphBuild(&q.recs, lo, hi, e.nodes, s.d.pdl.Load())
	if err != nil && s.d.pdl.Load() {
		// Programmatic edges refused: full dependencies from now on, for every stream (the
		// kernels' griddepcontrol.wait then returns at once).
		s.d.pdl.Store(false)
		g, x, err = s.d.drv.graphBuild(&q.recs, lo, hi, e.nodes, false)
	}
	if err != nil {
		// No graphs on this driver or for these kernels: launch directly from now on.
		q.noGraph = true
		q.direct += int64(n)
		return s.d.drv.launchMany(s.s, &q.recs, lo, hi)
	}
	e.g, e.x = g, x
	e.recs.copyFrom(&q.recs, lo, hi)
	q.graphs[key] = e
	q.builds++
	if err := s.d.drv.graphRun(s.s, e.x, e.nodes, nil, &q.recs, lo, hi); err != nil {
		s.d.drv.graphFree(e.g, e.x)
		delete(q.graphs, key)
		return fmt.Errorf("cuda: graph launch: %w", err)
	}
	q.replays++
	return nil
}

// streamProf holds a profiled stream's events (BackendOptions.Profile): start is recorded by
// the first flush after a Sync, kern and copied by Exec.Sync before and after its copies.
type streamProf struct {
	start, kern, copied cuEvent
	started             bool
	last                time.Time // the previous Sync's return
}

// setProfile makes s a profiled stream. s must be deferred.
func (s *Stream) setProfile() error {
	p := &streamProf{last: time.Now()}
	for _, ev := range []*cuEvent{&p.start, &p.kern, &p.copied} {
		var err error
		if *ev, err = s.d.drv.eventCreate(); err != nil {
			s.prof = p // Close destroys what was made
			return err
		}
	}
	s.prof = p
	return nil
}
