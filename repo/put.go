package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/chunker"
	"github.com/driftstore/driftstore/index"
)

// Chunking methods.
const (
	ChunkFastCDC = "fastcdc"
	ChunkFixed   = "fixed"
)

// ChunkerSpec says how Put cuts its inputs. The zero value means FastCDC with
// chunker.DefaultParams. With a float16 or float32 hint and Params.Align left 0, Put aligns
// FastCDC cuts to the element size (2 or 4 bytes; see chunker.Params.Align), so that every
// chunk starts on an element and byte-plane codecs see whole values; without a hint, or with
// an explicit Align, boundaries are the published algorithm's.
type ChunkerSpec struct {
	Method string         // ChunkFastCDC (also "") or ChunkFixed
	Params chunker.Params // FastCDC sizes; zero means chunker.DefaultParams
	Size   int            // fixed chunk size; zero means chunker.DefaultBlockSize
}

// normalize fills in defaults and validates.
func (s ChunkerSpec) normalize() (ChunkerSpec, error) {
	switch s.Method {
	case "", ChunkFastCDC:
		s.Method = ChunkFastCDC
		if s.Params == (chunker.Params{}) {
			s.Params = chunker.DefaultParams()
		}
		if err := s.Params.Validate(); err != nil {
			return s, err
		}
	case ChunkFixed:
		if s.Size == 0 {
			s.Size = chunker.DefaultBlockSize
		}
		if err := chunker.CheckFixedSize(s.Size); err != nil {
			return s, err
		}
	default:
		return s, fmt.Errorf("%w: unknown chunking method %q (want %s or %s)", chunker.ErrInvalidParams, s.Method, ChunkFastCDC, ChunkFixed)
	}
	return s, nil
}

// String describes the spec: "fastcdc/16384/65536/262144/1", "fastcdc/16384/65536/262144/1/a2"
// (cuts aligned to 2 bytes) or "fixed/65536".
func (s ChunkerSpec) String() string {
	if s.Method == ChunkFixed {
		return fmt.Sprintf("fixed/%d", s.Size)
	}
	p := s.Params
	if p.Align > 1 {
		return fmt.Sprintf("fastcdc/%d/%d/%d/%d/a%d", p.Min, p.Avg, p.Max, p.Normalization, p.Align)
	}
	return fmt.Sprintf("fastcdc/%d/%d/%d/%d", p.Min, p.Avg, p.Max, p.Normalization)
}

// alignFor returns the spec with FastCDC cuts aligned to hint's element size, when Align is
// unset and Min allows it.
func (s ChunkerSpec) alignFor(hint cas.Hint) ChunkerSpec {
	if s.Method != ChunkFastCDC || s.Params.Align != 0 {
		return s
	}
	size := 0
	switch hint {
	case cas.HintFloat16:
		size = 2
	case cas.HintFloat32:
		size = 4
	}
	for a := chunker.AlignFor(size); a > 1; a /= 2 {
		if s.Params.Min%a == 0 {
			s.Params.Align = a
			break
		}
	}
	return s
}

// cutter returns the chunking function of a normalized spec and the most bytes it looks at:
// cut(p) is the length of the chunk at the start of p, where p holds at least limit bytes or
// the rest of the input. The chunks are those of chunker.Stream (FastCDC.Cut, or every Size
// bytes) for the same input.
func (s ChunkerSpec) cutter() (cut func(p []byte) int, limit int, err error) {
	if s.Method == ChunkFixed {
		size := s.Size
		return func(p []byte) int { return min(size, len(p)) }, size, nil
	}
	c, err := chunker.NewFastCDC(s.Params)
	if err != nil {
		return nil, 0, err
	}
	return func(p []byte) int { n, _ := c.Cut(p); return n }, s.Params.Max, nil
}

// Source is one input of Put: a named byte stream that becomes one region. When R is a
// *bytes.Reader or a *bytes.Buffer, Put cuts and stores the bytes where they are, without
// copying them (see inMemory): they must not change until Put returns.
type Source struct {
	Name string    // region name; must be unique within one Put
	R    io.Reader // read once, to EOF
	Size int64     // expected length for progress reporting; 0 when unknown
}

// PutOptions configure Put. The zero value puts a "file" manifest with FastCDC defaults.
type PutOptions struct {
	Chunker ChunkerSpec            // see ChunkerSpec for how Hint aligns FastCDC cuts
	Kind    string                 // manifest kind; "" means "file"
	Parent  index.ID               // the manifest's parent; zero for none
	Meta    map[string]index.Value // extra metadata; Put adds "chunker"
	Tag     string                 // when set, the tag is moved to the new manifest
	Hint    cas.Hint               // what the bytes are, for the store's codec choice
	Workers int                    // chunks stored at once; 0 means the Repo's
	// Progress, when set, is called with the number of input bytes just consumed, from the
	// goroutine that reads the inputs.
	Progress func(n int64)
}

// PutResult reports one Put.
type PutResult struct {
	ID          index.ID `json:"id"`
	BytesIn     int64    `json:"bytes_in"`     // input bytes
	Chunks      int      `json:"chunks"`       // chunk references in the manifest
	UniqueNew   int      `json:"new_chunks"`   // chunks the index did not have before
	NewBytes    int64    `json:"new_bytes"`    // stored (compressed) bytes of those chunks
	StoredBytes int64    `json:"stored_bytes"` // stored bytes of all distinct chunks named
}

// DedupRatio is input bytes over new stored bytes: how many times less was written than given.
// It is +Inf when input arrived but nothing new was stored, and 0 for empty input.
func (p PutResult) DedupRatio() float64 {
	if p.BytesIn == 0 {
		return 0
	}
	if p.NewBytes == 0 {
		return math.Inf(1)
	}
	return float64(p.BytesIn) / float64(p.NewBytes)
}

// PutFiles puts the files at paths as one manifest, one region per file named by its base name.
// Two files with the same base name are refused.
func (r *Repo) PutFiles(ctx context.Context, paths []string, opts PutOptions) (PutResult, error) {
	var srcs []Source
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			closeAll(srcs)
			return PutResult{}, fmt.Errorf("put: %w", err)
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			f.Close()
			closeAll(srcs)
			if err == nil {
				err = fmt.Errorf("%s is not a regular file", p)
			}
			return PutResult{}, fmt.Errorf("put: %w", err)
		}
		srcs = append(srcs, Source{Name: filepath.Base(p), R: f, Size: st.Size()})
	}
	defer closeAll(srcs)
	return r.Put(ctx, srcs, opts)
}

func closeAll(srcs []Source) {
	for _, s := range srcs {
		if c, ok := s.R.(io.Closer); ok {
			c.Close()
		}
	}
}

// PutReader puts one stream as a manifest with one region called name.
func (r *Repo) PutReader(ctx context.Context, name string, rd io.Reader, opts PutOptions) (PutResult, error) {
	return r.Put(ctx, []Source{{Name: name, R: rd}}, opts)
}

// Put chunks every source, stores and records the chunks, and commits one manifest with a
// region per source (in order), then moves opts.Tag to it. Chunks are durable before the index
// records them, in the one transaction that commits the manifest. On error nothing is
// committed (chunks already stored are garbage for GC). Putting the same bytes again yields
// the same ID and stores nothing new.
func (r *Repo) Put(ctx context.Context, srcs []Source, opts PutOptions) (PutResult, error) {
	var res PutResult
	if r.ro {
		return res, fmt.Errorf("put: %w", index.ErrReadOnly)
	}
	spec, err := opts.Chunker.normalize()
	if err != nil {
		return res, fmt.Errorf("put: %w", err)
	}
	spec = spec.alignFor(opts.Hint)
	if opts.Tag != "" {
		if err := index.ValidRefName(opts.Tag); err != nil {
			return res, fmt.Errorf("put: tag: %w", err)
		}
	}
	m := &index.Manifest{Kind: opts.Kind, Parent: opts.Parent, Meta: map[string]index.Value{}}
	if m.Kind == "" {
		m.Kind = "file"
	}
	for k, v := range opts.Meta {
		m.Meta[k] = v
	}
	m.Meta["chunker"] = index.String(spec.String())
	seen := map[string]bool{}
	for _, s := range srcs {
		if seen[s.Name] {
			return res, fmt.Errorf("put: two inputs named %q", s.Name)
		}
		seen[s.Name] = true
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = r.workers
	}

	release := r.ix.HoldGC()
	defer release()
	// One batch for every chunk of the Put: the store makes them durable together at Commit,
	// before any is recorded (see cas.Batch).
	batch := cas.NewBatch(r.local)
	defer batch.Discard()
	var infos []cas.Info // every distinct chunk named, for RecordChunks
	inManifest := map[cas.Digest]bool{}
	for _, s := range srcs {
		refs, got, n, err := r.ingest(ctx, batch, s.R, spec, opts.Hint, workers, opts.Progress)
		if err != nil {
			return res, fmt.Errorf("put %s: %w", s.Name, err)
		}
		res.BytesIn += n
		res.Chunks += len(refs)
		m.Regions = append(m.Regions, index.Region{Name: s.Name, Chunks: refs})
		for _, in := range got {
			if !inManifest[in.Digest] {
				inManifest[in.Digest] = true
				infos = append(infos, in)
			}
		}
	}
	if err := m.Validate(); err != nil {
		return res, fmt.Errorf("put: %w", err)
	}
	// While the store makes the chunks durable: encode the manifest and ask the index which
	// chunks it lacks (for UniqueNew; the batch's commit changes nothing there).
	var enc *index.Encoded
	var missing []cas.Digest
	var encErr, missErr error
	prepared := make(chan struct{})
	go func() {
		defer close(prepared)
		if enc, encErr = m.Encoded(); encErr != nil {
			return
		}
		ds := make([]cas.Digest, len(infos))
		for i, in := range infos {
			ds[i] = in.Digest
		}
		missing, missErr = r.ix.MissingChunks(ds)
	}()
	err = batch.Commit(ctx)
	<-prepared
	if err != nil {
		return res, fmt.Errorf("put: store chunks: %w", err)
	}
	if err := errors.Join(encErr, missErr); err != nil {
		return res, fmt.Errorf("put: %w", err)
	}
	for _, in := range infos {
		res.StoredBytes += in.StoredSize
	}
	isNew := make(map[cas.Digest]bool, len(missing))
	for _, d := range missing {
		isNew[d] = true
	}
	for _, in := range infos {
		if isNew[in.Digest] {
			res.UniqueNew++
			res.NewBytes += in.StoredSize
		}
	}
	// The chunks' records and the manifest in one index transaction (one durable commit).
	if err := r.ix.CommitEncoded(ctx, infos, enc); err != nil {
		return res, fmt.Errorf("put: %w", err)
	}
	id := enc.ID()
	res.ID = id
	if opts.Tag != "" {
		if _, err := r.ix.SetRef(ctx, index.RefTag, opts.Tag, id); err != nil {
			return res, fmt.Errorf("put: %w", err)
		}
	}
	return res, nil
}

// bufPool holds chunk buffers (for Get); buffers larger than maxPooled are dropped rather than
// pooled.
var bufPool sync.Pool

const maxPooled = 16 << 20

func getBuf(n int) *[]byte {
	if p, ok := bufPool.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n)
	return &b
}

func putBuf(p *[]byte) {
	if cap(*p) <= maxPooled {
		bufPool.Put(p)
	}
}

// Ingest reads its input into segments: buffers of segmentSize bytes (or two chunks of the
// largest size, when that is more) that chunks alias, so that no chunk is copied between
// reading and storing. When the batch is a cas.Retainer, a chunk stored raw is not copied when
// it is stored either: the batch writes it from the segment with the rest of its run. A
// segment goes back to its ingest's free list once the reader has moved on and every chunk cut
// from it is stored (and written, when retained); at most workers+extraSegments segments of
// segmentSize exist per ingest, or 3 of the larger kind (a fixed chunk size of 64 MiB then
// holds 384 MiB). A reader that finds no free segment has the batch flush what it retains,
// and so do the workers until it gets one, so that retained chunks never hold up the input.
// The bytes after a segment's last cut (fewer than the chunker's limit) are copied to the
// start of the next segment. Inputs already in memory skip segments (see inMemory).
const segmentSize = 1 << 20

// extraSegments is how many segments of segmentSize an ingest may hold beyond one per worker.
// A variable only so that tests can starve the reader; nothing else changes it.
var extraSegments = 5

// segmentPool keeps segments of segmentSize bytes between Puts.
var segmentPool = sync.Pool{New: func() any { return &segment{buf: make([]byte, segmentSize)} }}

// segment is one buffer of input; refs counts the reader (while the segment is current) and the
// chunks cut from it that are not stored yet.
type segment struct {
	buf  []byte
	refs atomic.Int32
	free chan<- *segment
}

// release drops one reference; the last one returns the segment to its free list.
func (s *segment) release() {
	if s.refs.Add(-1) == 0 {
		s.free <- s
	}
}

// inMemory returns rd as an io.WriterTo when it is a reader of bytes already in memory whose
// WriteTo hands them over as they are (*bytes.Reader, *bytes.Buffer), so that Put can cut
// them in place instead of copying them into segments; nil otherwise.
func inMemory(rd io.Reader) io.WriterTo {
	switch r := rd.(type) {
	case *bytes.Reader:
		return r
	case *bytes.Buffer:
		return r
	case inMemoryReader:
		return r
	}
	return nil
}

// inMemoryReader is a reader that declares, by its method inMemoryBytes, that its WriteTo
// passes its own bytes in memory to Write, in one call or several (tests use it for the
// several).
type inMemoryReader interface {
	io.Reader
	io.WriterTo
	inMemoryBytes()
}

// writerFunc is an io.Writer made of a function.
type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// maxEmptyReads is how many reads in a row may return 0, nil before the reader is deemed stuck.
const maxEmptyReads = 100

// readSome reads into p (not empty), retrying a read that returns 0, nil up to maxEmptyReads
// times before giving io.ErrNoProgress.
func readSome(r io.Reader, p []byte) (int, error) {
	for range maxEmptyReads {
		if n, err := r.Read(p); n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// ingest chunks one stream and stores its chunks in batch with a pool of workers (they are
// durable once the caller commits the batch). It returns the region's chunk list in order, the
// Info of every chunk stored (in order, with repeats), and the bytes read. One goroutine reads
// and cuts; workers hash, encode and write, each chunk straight from the segment it was read
// into (see segmentSize). At most 2×workers+1 chunks are cut and not yet stored at once.
func (r *Repo) ingest(ctx context.Context, batch cas.Batch, rd io.Reader, spec ChunkerSpec, hint cas.Hint, workers int, progress func(int64)) ([]index.ChunkRef, []cas.Info, int64, error) {
	cut, limit, err := spec.cutter()
	if err != nil {
		return nil, nil, 0, err
	}
	type job struct {
		seq  int
		data []byte
		seg  *segment
	}
	type done struct {
		seq  int
		info cas.Info
	}
	segSize, maxSegs := segmentSize, workers+extraSegments
	if 2*limit > segmentSize {
		segSize, maxSegs = 2*limit, 3
	}
	free := make(chan *segment, maxSegs)
	defer func() { // segments of this ingest back to the pool (those still pinned after an error are dropped)
		for {
			select {
			case s := <-free:
				if len(s.buf) == segmentSize {
					s.free = nil
					segmentPool.Put(s)
				}
			default:
				return
			}
		}
	}()
	jobs := make(chan job, workers)
	results := make(chan done, workers)
	retainer, _ := batch.(cas.Retainer)
	var starved atomic.Bool // the reader waits for a segment: retained chunks must be written
	flush := func() error {
		if err := retainer.Flush(); err != nil {
			return fmt.Errorf("write chunks: %w", err)
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	var total int64
	g.Go(func() error { // the reader: fill segments, cut chunks, hand them out
		defer close(jobs)
		// waitFree waits for a segment to come back on ch. Chunks retained by the batch pin
		// segments until their run is written: have it written now, and by the workers for the
		// chunks they store while we wait.
		waitFree := func(ch <-chan *segment) (*segment, error) {
			select {
			case s := <-ch:
				return s, nil
			default:
			}
			if retainer != nil {
				starved.Store(true)
				defer starved.Store(false)
				if err := flush(); err != nil {
					return nil, err
				}
			}
			select {
			case s := <-ch:
				return s, nil
			case <-gctx.Done():
				return nil, gctx.Err()
			}
		}
		made := 0
		take := func() (*segment, error) {
			select {
			case s := <-free:
				return s, nil
			default:
			}
			if made < maxSegs {
				made++
				var s *segment
				if segSize == segmentSize {
					s = segmentPool.Get().(*segment)
				} else {
					s = &segment{buf: make([]byte, segSize)}
				}
				s.free = free
				return s, nil
			}
			return waitFree(free)
		}
		seq := 0
		// send hands out data, a chunk of seg's buffer, as job seq.
		send := func(seg *segment, data []byte) error {
			seg.refs.Add(1)
			select {
			case jobs <- job{seq, data, seg}:
			case <-gctx.Done():
				seg.release()
				return gctx.Err()
			}
			seq++
			total += int64(len(data))
			if progress != nil {
				progress(int64(len(data)))
			}
			return nil
		}
		src := rd
		if wt := inMemory(rd); wt != nil {
			// The bytes are in memory already: cut them where they are, without copying
			// them into segments. What is left at the end (less than limit, cut once the
			// input is known to end there) goes through a segment as the rest of the input.
			var carry []byte
			_, err := wt.WriteTo(writerFunc(func(p []byte) (int, error) {
				buf := p
				if len(carry) > 0 { // a second Write: its first chunk starts in the carry
					buf, carry = append(carry, p...), nil
				}
				done := make(chan *segment, 1)
				seg := &segment{buf: buf, free: done}
				seg.refs.Store(1)
				off := 0
				for len(buf)-off >= limit {
					l := cut(buf[off:])
					if err := send(seg, buf[off:off+l:off+l]); err != nil {
						seg.release()
						return 0, err
					}
					off += l
				}
				carry = append([]byte(nil), buf[off:]...)
				seg.release()
				// p may not be used once Write returns: wait until every chunk cut from it
				// is stored and written.
				if _, err := waitFree(done); err != nil {
					return 0, err
				}
				return len(p), nil
			}))
			if err != nil {
				return fmt.Errorf("read at offset %d: %w", total, err)
			}
			src = bytes.NewReader(carry)
		}
		var seg *segment
		n, start, eof := 0, 0, false
		for {
			next, err := take()
			if err != nil {
				if seg != nil {
					seg.release()
				}
				return err
			}
			next.refs.Store(1)
			if seg != nil {
				n = copy(next.buf, seg.buf[start:n])
				seg.release()
			}
			seg, start = next, 0
			for n < len(seg.buf) && !eof {
				k, err := readSome(src, seg.buf[n:])
				n += k
				switch {
				case errors.Is(err, io.EOF):
					eof = true
				case err != nil:
					seg.release()
					return fmt.Errorf("read at offset %d: %w", total+int64(n), err)
				}
			}
			for {
				avail := seg.buf[start:n]
				if len(avail) == 0 && eof {
					seg.release()
					return nil
				}
				if len(avail) < limit && !eof || len(avail) == 0 {
					break // carry the rest over to the next segment
				}
				l := cut(avail)
				if err := send(seg, avail[:l:l]); err != nil {
					seg.release()
					return err
				}
				start += l
			}
		}
	})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			for j := range jobs {
				var info cas.Info
				var err error
				if retainer != nil {
					info, err = retainer.PutRetained(gctx, j.data, hint, j.seg.release)
					if err == nil && starved.Load() {
						err = flush()
					}
				} else {
					info, err = batch.Put(gctx, j.data, hint)
					j.seg.release()
				}
				n := len(j.data)
				if err != nil {
					return fmt.Errorf("store chunk %d: %w", j.seq, err)
				}
				if info.Size != int64(n) {
					return fmt.Errorf("store chunk %d: store reports %d bytes for a %d-byte chunk", j.seq, info.Size, n)
				}
				select {
				case results <- done{j.seq, info}:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			return nil
		})
	}
	go func() { wg.Wait(); close(results) }()
	var infos []cas.Info
	for d := range results {
		for len(infos) <= d.seq {
			infos = append(infos, cas.Info{})
		}
		infos[d.seq] = d.info
	}
	if err := g.Wait(); err != nil {
		return nil, nil, 0, err
	}
	refs := make([]index.ChunkRef, len(infos))
	for i, in := range infos {
		if in.Digest.IsZero() {
			return nil, nil, 0, fmt.Errorf("chunk %d was not stored", i)
		}
		refs[i] = index.ChunkRef{Digest: in.Digest, Length: in.Size}
	}
	return refs, infos, total, nil
}
