package cas

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// On-disk layout of a Pack store rooted at dir:
//
//	dir/LOCK                 flock(2): exclusive for a writer, shared for ReadOnly readers
//	dir/pack-00000001.dsp    append-only pack files, numbered from 1; the highest is appended to
//	dir/pack-00000002.dsp    (a new one is started when the active one would pass MaxPackSize)
//
// A pack file is a sequence of records, each a 64-byte header followed by its payload:
//
//	offset  0  4 bytes  magic "DSPK"
//	offset  4  1 byte   format version: 1, or 2 for a sealed chunk record (below)
//	offset  5  1 byte   kind: 1 chunk, 2 tombstone, 3 sync marker, 4 journal entry
//	offset  6  1 byte   codec (1 raw, 2 zstd, 3 f16planes) for a chunk; 0 otherwise
//	offset  7  1 byte   reserved, zero
//	offset  8 32 bytes  digest (BLAKE3-256 of the content) for a chunk or tombstone, of the
//	                    payload for a journal entry; zero for a marker
//	offset 40  8 bytes  a: chunk: uncompressed size (version 2: in the low 32 bits, and in the
//	                    high 32 the CRC-32C of the payload: the seal); tombstone: offset of the record it removes;
//	                    sync marker: length of the file prefix known durable when it was
//	                    written; journal entry: zero
//	offset 48  4 bytes  b: chunk or journal entry: payload length; tombstone: number of the pack
//	                    holding the record it removes; sync marker: zero
//	offset 52  8 bytes  write time, Unix nanoseconds
//	offset 60  4 bytes  CRC-32C (Castagnoli) of bytes 0..59
//
// A sealed chunk record (version 2, what this code writes) carries a checksum of its payload
// taken when the chunk was stored, after the chunk's content was hashed to its digest (a chunk
// received from elsewhere is BLAKE3-verified before it is stored). GetSealed checks a sealed
// record against its seal rather than its digest: a CRC-32C at tens of GB/s a core instead of
// BLAKE3 at 2-3, which catches what happens to bytes at rest (media errors, torn or misdirected
// writes, a stray write into the file). It is no defence against someone who rewrites the
// store's files on purpose: such a writer could rewrite the index too. Get always checks the
// digest; fsck too.
//
// All integers are little-endian. Chunk records and journal entries have a payload: a chunk's
// is the codec's stored form (see codec.go), exactly what a Local chunk file holds after its
// header; a journal entry's is opaque bytes of the index's (see JournalBatch), written after a
// batch's chunks and made durable by the same sync. A tombstone removes one record (named by
// pack number and offset), so a chunk deleted and put again is not removed by the old
// tombstone; a tombstone naming a journal entry cancels it (its commit failed). A sync marker is appended (not synced itself) after each successful
// fdatasync of the pack and says how long a prefix of the file that sync made durable.
//
// Opening scans every pack's record headers (a pread of each header; payloads are skipped).
// The scan of a pack stops at the first header that does not parse (bad magic, version, kind,
// field or CRC) or whose payload runs past the end of the file. Records before the durable
// prefix named by the last sync marker seen are trusted; those after it were never
// acknowledged to a writer, so each is decoded and BLAKE3-verified, and the scan also stops at
// the first that fails. A writable store truncates the pack where the scan stopped, unless that
// point lies inside a prefix a marker (before or after it) vouches for: that is a damaged
// durable record, not a torn write. Such a pack is left as it is and never appended to or
// compacted again; the records after the damage are found by searching for the next
// well-formed header, and each is BLAKE3-verified before it is indexed.
//
// Open time: without a sidecar index, a store of 1 GiB in 256 KiB chunks (4,096 records) opens
// in about 7 ms with the headers in the page cache (BenchmarkPackOpen, on the 2-core
// development machine); a cold cache adds a disk read per header. That is small next to
// opening the bbolt index and a model, so no sidecar index is written.
const (
	packHeaderSize = 64
	packVersion    = 1
	packSealed     = 2 // the version of a sealed chunk record

	kindChunk     = 1
	kindTombstone = 2
	kindSync      = 3
	kindJournal   = 4

	// maxStoredLen bounds a chunk record's payload: a compressed form larger than its content
	// is never stored, but leave room as codec.go's parseHeader does.
	maxStoredLen = MaxChunkSize + MaxChunkSize/2

	// MaxJournalSize bounds a journal entry's payload.
	MaxJournalSize = 1 << 28

	// DefaultMaxPackSize is the size at which a pack file is sealed and a new one started.
	DefaultMaxPackSize = 1 << 30
)

var (
	packMagic  = [4]byte{'D', 'S', 'P', 'K'}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// Errors of a Pack store.
var (
	// ErrLocked: another process holds the store's lock (a writer, or readers when opening
	// for writing).
	ErrLocked = errors.New("chunk store is locked by another process")
	// ErrReadOnly: a write to a store opened with ReadOnly.
	ErrReadOnly = errors.New("chunk store is opened read-only")
	// ErrClosed: a write to a store after Close.
	ErrClosed = errors.New("chunk store is closed")
)

// recordHeader is one parsed record header; a and b are the kind-specific fields (see above).
type recordHeader struct {
	kind   byte
	codec  Codec
	digest Digest
	a      uint64 // a chunk's size alone, also in a sealed record
	b      uint32
	time   int64
	sealed bool   // a chunk record with a seal: crc is the CRC-32C of its payload
	crc    uint32 // when sealed
}

// payloadLen is the length of the payload that follows the header.
func (h *recordHeader) payloadLen() int64 {
	if h.kind == kindChunk || h.kind == kindJournal {
		return int64(h.b)
	}
	return 0
}

// encode writes the header, with its CRC, into dst[:packHeaderSize].
func (h *recordHeader) encode(dst []byte) {
	_ = dst[packHeaderSize-1]
	copy(dst[0:4], packMagic[:])
	dst[4] = packVersion
	a := h.a
	if h.sealed {
		dst[4] = packSealed
		a |= uint64(h.crc) << 32
	}
	dst[5] = h.kind
	dst[6] = byte(h.codec)
	dst[7] = 0
	copy(dst[8:40], h.digest[:])
	binary.LittleEndian.PutUint64(dst[40:], a)
	binary.LittleEndian.PutUint32(dst[48:], h.b)
	binary.LittleEndian.PutUint64(dst[52:], uint64(h.time))
	binary.LittleEndian.PutUint32(dst[60:], crc32.Checksum(dst[:60], castagnoli))
}

// parseRecordHeader checks and decodes a record header. It never panics on any input.
func parseRecordHeader(b []byte) (recordHeader, error) {
	var h recordHeader
	if len(b) < packHeaderSize {
		return h, fmt.Errorf("record header of %d bytes", len(b))
	}
	if [4]byte(b[:4]) != packMagic {
		return h, fmt.Errorf("bad magic %q", b[:4])
	}
	if got, want := binary.LittleEndian.Uint32(b[60:]), crc32.Checksum(b[:60], castagnoli); got != want {
		return h, fmt.Errorf("header CRC %08x, want %08x", got, want)
	}
	if b[4] != packVersion && b[4] != packSealed {
		return h, fmt.Errorf("unknown record version %d", b[4])
	}
	h.kind, h.codec = b[5], Codec(b[6])
	copy(h.digest[:], b[8:40])
	h.a = binary.LittleEndian.Uint64(b[40:])
	if b[4] == packSealed {
		if h.kind != kindChunk {
			return h, fmt.Errorf("sealed record of kind %d", h.kind)
		}
		h.sealed, h.crc, h.a = true, uint32(h.a>>32), h.a&math.MaxUint32
	}
	h.b = binary.LittleEndian.Uint32(b[48:])
	h.time = int64(binary.LittleEndian.Uint64(b[52:]))
	if b[7] != 0 {
		return h, fmt.Errorf("reserved byte %d", b[7])
	}
	switch h.kind {
	case kindChunk:
		switch {
		case !h.codec.Valid():
			return h, fmt.Errorf("chunk record with codec %d", h.codec)
		case h.a > MaxChunkSize:
			return h, fmt.Errorf("chunk record of %d bytes, over the chunk limit", h.a)
		case h.b > maxStoredLen:
			return h, fmt.Errorf("chunk payload of %d bytes, over the limit", h.b)
		case h.codec == CodecRaw && uint64(h.b) != h.a:
			return h, fmt.Errorf("raw chunk of %d bytes with a %d-byte payload", h.a, h.b)
		case h.codec != CodecRaw && h.b == 0:
			return h, fmt.Errorf("%s chunk with an empty payload", h.codec)
		}
	case kindTombstone:
		if h.codec != 0 || h.b == 0 || h.a > 1<<62 {
			return h, fmt.Errorf("bad tombstone fields")
		}
	case kindSync:
		if h.codec != 0 || h.b != 0 || !h.digest.IsZero() || h.a > 1<<62 {
			return h, fmt.Errorf("bad sync marker fields")
		}
	case kindJournal:
		if h.codec != 0 || h.a != 0 || h.b > MaxJournalSize {
			return h, fmt.Errorf("bad journal entry fields")
		}
	default:
		return h, fmt.Errorf("unknown record kind %d", h.kind)
	}
	return h, nil
}

// PackOptions configure OpenPack. The zero value is usable.
type PackOptions struct {
	// MaxPackSize: a pack file is sealed, and a new one started, before a record would take it
	// past this size (a single record larger than it gets a pack of its own). 0 means
	// DefaultMaxPackSize.
	MaxPackSize int64
	// NoSync skips fdatasync of pack files and the directory. A crash may then lose chunks
	// that Put reported stored, or leave a record a sync marker vouches for torn (Get reports
	// it corrupt). Only for tests, benchmarks and scratch stores.
	NoSync bool
	// ReadOnly takes the lock shared (several readers may open the store at once, no writer)
	// and refuses every write with ErrReadOnly. Nothing on disk is changed, not even a torn
	// tail: the scan just stops there.
	ReadOnly bool
	// LockTimeout is how long OpenPack waits for another process to let go of the lock; 0
	// means it fails at once. The error wraps ErrLocked.
	LockTimeout time.Duration
	// NoMap makes Gets pread instead of reading through a mapping of the pack files (see
	// pack_map_unix.go): for comparisons.
	NoMap bool
}

// Pack is a Store that keeps many chunks per file: append-only pack files with an in-memory
// index built at open (see the layout above). It implements StoredReader, StoredAppender,
// StoredWriter, Batcher and BatchPutter.
//
// Durability: Put is durable before it returns (an fdatasync of the pack; Puts that wait at
// the same time share one sync, and a new pack file also syncs the directory), and a chunk is
// visible to Has and Get only once durable. A Batch writes without syncing, gathering its
// records into runs of about 1 MiB written with one pwrite each (see NewBatch); Commit writes
// the last run, syncs each pack the batch touched once and then makes its chunks visible. A sync covers a pack's bytes only up
// to the first record still being written, so a record acknowledged to a writer never lies
// after a torn one.
//
// Writes reserve space under a mutex and write outside it (pwrite), so parallel writers
// overlap. Reads pread straight from the pack: a raw chunk into the caller's buffer, a
// compressed one into a pooled buffer that is decoded into the caller's; every Get verifies
// the BLAKE3 digest of what it returns. Has, Stat and Walk read only memory.
//
// Delete appends a tombstone and drops the chunk from memory; Compact reclaims the space.
// ModTime is the record's write time, refreshed in memory by a Put of a present chunk when
// older than TouchInterval (not written to disk: one process holds the store at a time, and
// the garbage collector that honours the grace period runs in that process; after a restart
// an upload asks again which chunks are missing, so a refresh lost with the process protects
// nothing that a new question would not).
//
// One process at a time opens a Pack for writing (flock on dir/LOCK). All methods are safe for
// concurrent use within the process.
type Pack struct {
	dir  string
	opts PackOptions
	lock *os.File

	mu       sync.RWMutex // guards the fields below and every packFile's mutable fields
	cond     *sync.Cond   // on mu's write lock: broadcast when a write or a sync ends
	index    map[Digest]packEntry
	packs    map[uint32]*packFile
	active   *packFile // appended to; nil until the first write of an empty store
	nextNum  uint32    // number of the next pack file
	inflight map[Digest]chan struct{}
	closed   bool
	// journal lists the journal entries the scan at open found, in file order (see
	// JournalEntries); entries written since are not added.
	journal []packEntry
	// noAlloc: the directory's file system gains nothing from blocks allocated ahead
	// (tmpfs: it would only zero pages early); set at open.
	noAlloc bool

	compactMu sync.Mutex // one Compact at a time
}

// packEntry locates a visible chunk record.
type packEntry struct {
	pack   uint32
	off    int64 // the record's header
	length uint32
	size   uint32
	codec  Codec
	sealed bool   // the record carries crc, the CRC-32C of its payload
	crc    uint32 // when sealed
	mod    int64  // Unix ns
}

func (e packEntry) info(d Digest) Info {
	return Info{Digest: d, Size: int64(e.size), StoredSize: int64(e.length), Codec: e.codec, ModTime: time.Unix(0, e.mod)}
}

// recordLen is the record's length on disk.
func (e packEntry) recordLen() int64 { return packHeaderSize + int64(e.length) }

// packFile is one open pack file.
type packFile struct {
	num  uint32
	path string
	f    *os.File

	// writeback: a durable store's large writes start the kernel's writeback at once, so that
	// the sync that ends their batch finds little left to write (see pwriteRecord), and its
	// active pack's blocks are allocated ahead of the writes (see Pack.preallocate).
	writeback bool

	rw        sync.RWMutex // readers hold it shared during a read; Compact takes it to close f
	closed    bool         // guarded by rw
	m         []byte       // guarded by rw: the read-only mapping of f, once made (pack_map_unix.go)
	mapFailed bool         // guarded by rw: mapping f failed; reads pread

	// Guarded by Pack.mu.
	size    int64   // end of the last reserved record
	alloc   int64   // blocks allocated ahead up to here (fallocate, the size unchanged)
	pending []int64 // offsets of records reserved and not yet written
	synced  int64   // prefix known durable
	syncing bool    // an fdatasync is running
	live    int64   // bytes of records the index points to
	pins    int     // records reserved and not yet published, discarded or failed
	sealed  bool    // no more records (except sync markers) are appended
	damaged bool    // a record inside its synced prefix does not parse: never compacted
	err     error   // sticky: a write or sync failed; nothing more in this pack becomes durable
}

// prefix is the length of the file's prefix whose reserved records are all written.
func (pf *packFile) prefix() int64 {
	p := pf.size
	for _, off := range pf.pending {
		p = min(p, off)
	}
	return p
}

// Compile-time checks of the capabilities Pack implements.
var (
	_ Store          = (*Pack)(nil)
	_ StoredReader   = (*Pack)(nil)
	_ StoredAppender = (*Pack)(nil)
	_ StoredWriter   = (*Pack)(nil)
	_ Batcher        = (*Pack)(nil)
	_ BatchPutter    = (*Pack)(nil)
	_ JournalStore   = (*Pack)(nil)
	_ SealedGetter   = (*Pack)(nil)
	_ JournalBatch   = (*packBatch)(nil)
)

func packName(num uint32) string { return fmt.Sprintf("pack-%08d.dsp", num) }

// parsePackName returns the number of a pack file name, or false.
func parsePackName(name string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, "pack-")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".dsp")
	if !ok || len(s) != 8 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint32(n), true
}

// OpenPack opens the pack store in dir, creating dir if needed (unless opts.ReadOnly), takes
// its lock (see PackOptions.LockTimeout; the error wraps ErrLocked) and scans its packs (see
// the layout above), repairing a torn tail. Close the store when done.
func OpenPack(dir string, opts PackOptions) (*Pack, error) {
	if opts.MaxPackSize <= 0 {
		opts.MaxPackSize = DefaultMaxPackSize
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("open pack store: %w", err)
		}
	}
	lock, err := lockPackDir(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open pack store %s: %w", dir, err)
	}
	p := &Pack{
		dir: dir, opts: opts, lock: lock,
		index:    map[Digest]packEntry{},
		packs:    map[uint32]*packFile{},
		inflight: map[Digest]chan struct{}{},
		nextNum:  1,
		noAlloc:  !allocatesAhead(dir),
	}
	p.cond = sync.NewCond(&p.mu)
	if err := p.load(); err != nil {
		p.Close()
		return nil, fmt.Errorf("open pack store %s: %w", dir, err)
	}
	return p, nil
}

// lockPackDir opens dir/LOCK and flocks it, retrying until opts.LockTimeout.
func lockPackDir(dir string, opts PackOptions) (*os.File, error) {
	path := filepath.Join(dir, "LOCK")
	var f *os.File
	var err error
	if opts.ReadOnly {
		f, err = os.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			// No writer ever opened the store: there is nothing to lock against yet.
			if _, serr := os.Stat(dir); serr != nil {
				return nil, serr
			}
			return nil, nil
		}
	} else {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	}
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(opts.LockTimeout)
	for {
		err := flockNB(f, opts.ReadOnly)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, errWouldBlock) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !time.Now().Before(deadline) {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		time.Sleep(min(20*time.Millisecond, time.Until(deadline)+time.Millisecond))
	}
}

// Dir returns the store's directory.
func (p *Pack) Dir() string { return p.dir }

// load scans every pack file in number order and builds the index.
func (p *Pack) load() error {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	var nums []uint32
	for _, e := range entries {
		if n, ok := parsePackName(e.Name()); ok && e.Type().IsRegular() {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	dups := map[Digest][]packEntry{} // live copies of a digest besides the indexed one
	for _, num := range nums {
		pf, err := p.openPackFile(num, false)
		if err != nil {
			return err
		}
		p.packs[num] = pf
		p.nextNum = num + 1
		if err := p.scan(pf, dups); err != nil {
			return fmt.Errorf("%s: %w", pf.path, err)
		}
	}
	if len(nums) > 0 {
		last := p.packs[nums[len(nums)-1]]
		if !last.sealed && last.size < p.opts.MaxPackSize && !p.opts.ReadOnly {
			p.active = last
		}
	}
	for _, pf := range p.packs {
		if pf != p.active {
			pf.sealed = true
		}
	}
	if p.opts.ReadOnly {
		return nil
	}
	// Copies that a crash left live besides the indexed one (a compaction or a racing write
	// cut short): tombstone them, so that a Delete of the chunk does not bring one back later.
	for d, es := range dups {
		for _, e := range es {
			if err := p.appendTombstone(d, e); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *Pack) openPackFile(num uint32, create bool) (*packFile, error) {
	path := filepath.Join(p.dir, packName(num))
	var f *os.File
	var err error
	switch {
	case p.opts.ReadOnly:
		f, err = os.Open(path)
	case create:
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	default:
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, err
	}
	pf := &packFile{num: num, path: path, f: f, writeback: !p.opts.NoSync && !p.opts.ReadOnly}
	if p.noAlloc {
		pf.alloc = math.MaxInt64 // see Pack.preallocate
	}
	return pf, nil
}

// scannedRecord is a record header found by scanPack, at off.
type scannedRecord struct {
	off int64
	h   recordHeader
}

// scanPack reads the record headers of f (size bytes) from offset from up to the first that
// does not parse or whose payload passes the end, and returns them, the offset where the scan stopped (size
// when it read every record) and the durable prefix the last valid sync marker names.
func scanPack(f io.ReaderAt, from, size int64) (recs []scannedRecord, stop, durable int64, err error) {
	var hb [packHeaderSize]byte
	off := from
	for off+packHeaderSize <= size {
		if _, err := f.ReadAt(hb[:], off); err != nil {
			if errors.Is(err, io.EOF) {
				return recs, off, durable, nil
			}
			return nil, 0, 0, err
		}
		h, herr := parseRecordHeader(hb[:])
		if herr != nil {
			return recs, off, durable, nil
		}
		end := off + packHeaderSize + h.payloadLen()
		if end > size {
			return recs, off, durable, nil
		}
		if h.kind == kindSync {
			if int64(h.a) > off {
				return recs, off, durable, nil // a marker cannot vouch for bytes after itself
			}
			durable = max(durable, int64(h.a))
		}
		recs = append(recs, scannedRecord{off: off, h: h})
		off = end
	}
	return recs, off, durable, nil
}

// findHeaders calls fn with the offset and header of every well-formed record header (magic,
// fields and CRC; payload within the file) that starts in f's bytes [from, size), in order,
// until fn returns false. Headers found this way may lie inside another record's payload.
func findHeaders(f io.ReaderAt, from, size int64, fn func(off int64, h recordHeader) bool) {
	const block = 64 << 10
	buf := make([]byte, block+packHeaderSize)
	for off := from; off < size; off += block {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		b := buf[:n]
		for i := 0; i < min(n, block); i++ {
			j := bytes.Index(b[i:], packMagic[:])
			if j < 0 || i+j >= min(n, block) {
				break
			}
			i += j
			h, err := parseRecordHeader(b[i:])
			at := off + int64(i)
			if err == nil && at+packHeaderSize+h.payloadLen() <= size && !fn(at, h) {
				return
			}
		}
	}
}

// laterDurable searches f's bytes after from (where a scan stopped) for valid sync markers and
// returns the largest durable prefix one of them names (0 when there is none). Such a marker
// means the bytes at from were synced before: damage, not a torn write. Bytes past a scan's
// stop point are always of this incarnation of the file (a cut tail is truncated before any
// append), so a marker found there is genuine. Reads the rest of the file once.
func laterDurable(f io.ReaderAt, from, size int64) int64 {
	var best int64
	findHeaders(f, from+1, size, func(off int64, h recordHeader) bool {
		if h.kind == kindSync && int64(h.a) <= off {
			best = max(best, int64(h.a))
		}
		return true
	})
	return best
}

// resync recovers the chunk records of a damaged pack after the damage at from: it looks for
// the next well-formed header, scans on from there, and repeats after each stop. Every chunk
// record recovered so is BLAKE3-verified (a header found by searching may lie inside another
// record's payload; a verified one holds the right bytes whatever its origin), and tombstones
// found so are ignored (a chunk they removed comes back as garbage for the next collection,
// which is safe; a tombstone that is not one could drop a live chunk, which is not).
func (p *Pack) resync(pf *packFile, from, size int64, dups map[Digest][]packEntry) {
	for from < size {
		next := int64(-1)
		findHeaders(pf.f, from+1, size, func(off int64, h recordHeader) bool {
			next = off
			return false
		})
		if next < 0 {
			return
		}
		recs, stop, _, err := scanPack(pf.f, next, size)
		if err != nil {
			return
		}
		for _, r := range recs {
			if r.h.kind != kindChunk && r.h.kind != kindJournal {
				continue
			}
			if verifyRecord(pf.f, r) != nil {
				stop = r.off
				break
			}
			p.apply(pf, r, dups)
		}
		from = max(stop, next)
	}
}

// verifyRecord decodes a chunk record's payload and checks it against its digest and size, or
// checks a journal entry's payload against its digest.
func verifyRecord(f io.ReaderAt, r scannedRecord) error {
	buf := getBuf(int(r.h.b))
	defer putBuf(buf)
	payload := (*buf)[:r.h.b]
	if _, err := f.ReadAt(payload, r.off+packHeaderSize); err != nil && !(errors.Is(err, io.EOF) && len(payload) == 0) {
		return err
	}
	if r.h.kind == kindJournal {
		if Sum(payload) != r.h.digest {
			return fmt.Errorf("journal entry at %d: payload does not match its digest", r.off)
		}
		return nil
	}
	size, err := verifyStored(r.h.digest, r.h.codec, payload)
	if err != nil {
		return err
	}
	if uint64(size) != r.h.a {
		return fmt.Errorf("chunk %s decodes to %d bytes, header says %d", r.h.digest, size, r.h.a)
	}
	return nil
}

// scan reads pf's records into the index (see the layout above), verifying those after the
// durable prefix, and truncates a torn tail (or seals a damaged pack).
func (p *Pack) scan(pf *packFile, dups map[Digest][]packEntry) error {
	st, err := pf.f.Stat()
	if err != nil {
		return err
	}
	recs, stop, durable, err := scanPack(pf.f, 0, st.Size())
	if err != nil {
		return err
	}
	for i, r := range recs {
		if r.off < durable || r.h.kind != kindChunk && r.h.kind != kindJournal {
			continue
		}
		if verifyRecord(pf.f, r) != nil {
			recs, stop = recs[:i], r.off
			break
		}
	}
	for _, r := range recs {
		p.apply(pf, r, dups)
	}
	pf.size, pf.synced = stop, stop
	if stop < st.Size() {
		switch {
		case stop < durable || laterDurable(pf.f, stop, st.Size()) > stop:
			// Damaged where a sync vouched for the bytes: keep them, recover what follows the
			// damage, and never append to or compact this pack.
			pf.sealed, pf.damaged = true, true
			pf.size, pf.synced = st.Size(), st.Size()
			p.resync(pf, stop, st.Size(), dups)
		case p.opts.ReadOnly:
		default:
			if err := pf.f.Truncate(stop); err != nil {
				return fmt.Errorf("truncate torn tail at %d: %w", stop, err)
			}
			if !p.opts.NoSync {
				if err := fdatasync(pf.f); err != nil {
					return fmt.Errorf("sync after truncating at %d: %w", stop, err)
				}
			}
		}
	}
	return nil
}

// apply adds one scanned record to the index.
func (p *Pack) apply(pf *packFile, r scannedRecord, dups map[Digest][]packEntry) {
	h := r.h
	switch h.kind {
	case kindChunk:
		e := packEntry{pack: pf.num, off: r.off, length: h.b, size: uint32(h.a), codec: h.codec, sealed: h.sealed, crc: h.crc, mod: h.time}
		if _, ok := p.index[h.digest]; ok {
			dups[h.digest] = append(dups[h.digest], e)
			return
		}
		p.index[h.digest] = e
		pf.live += e.recordLen()
	case kindTombstone:
		d, num, off := h.digest, h.b, int64(h.a)
		if e, ok := p.index[d]; ok && e.pack == num && e.off == off {
			delete(p.index, d)
			if owner := p.packs[num]; owner != nil {
				owner.live -= e.recordLen()
			}
			if rest := dups[d]; len(rest) > 0 {
				e = rest[0]
				p.index[d] = e
				if owner := p.packs[e.pack]; owner != nil {
					owner.live += e.recordLen()
				}
				dups[d] = rest[1:]
			}
		} else {
			dups[d] = slices.DeleteFunc(dups[d], func(e packEntry) bool { return e.pack == num && e.off == off })
		}
		if len(dups[d]) == 0 {
			delete(dups, d)
		}
		p.journal = slices.DeleteFunc(p.journal, func(e packEntry) bool { return e.pack == num && e.off == off })
	case kindJournal:
		p.journal = append(p.journal, packEntry{pack: pf.num, off: r.off, length: h.b, mod: h.time})
	}
}

// Close releases the lock and closes the pack files. The store must not be used afterwards
// (writes fail with ErrClosed; reads fail).
func (p *Pack) Close() error {
	p.mu.Lock()
	p.closed = true
	packs := p.packs
	p.packs = map[uint32]*packFile{}
	p.active = nil
	p.cond.Broadcast()
	p.mu.Unlock()
	var errs []error
	for _, pf := range packs {
		pf.rw.Lock()
		if !pf.closed {
			pf.closed = true
			if pf.alloc > 0 && pf.alloc != math.MaxInt64 {
				errs = append(errs, releaseAhead(pf.f))
			}
			errs = append(errs, pf.unmap(), pf.f.Close())
		}
		pf.rw.Unlock()
	}
	if p.lock != nil {
		errs = append(errs, p.lock.Close())
		p.lock = nil
	}
	return errors.Join(errs...)
}

// Has reports whether the chunk is present, from memory.
func (p *Pack) Has(ctx context.Context, d Digest) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	p.mu.RLock()
	_, ok := p.index[d]
	p.mu.RUnlock()
	return ok, nil
}

// Stat describes a present chunk, from memory.
func (p *Pack) Stat(ctx context.Context, d Digest) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	p.mu.RLock()
	e, ok := p.index[d]
	p.mu.RUnlock()
	if !ok {
		return Info{}, fmt.Errorf("chunk %s: %w", d, ErrNotFound)
	}
	return e.info(d), nil
}

// Locate returns the file that holds chunk d's record, the offset of its payload (the stored
// form) in that file and the payload's length, for tools and tests that look at the bytes on
// disk. The location is valid until the next Compact.
func (p *Pack) Locate(d Digest) (path string, payloadOffset int64, storedLen int, err error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	e, ok := p.index[d]
	if !ok {
		return "", 0, 0, fmt.Errorf("locate %s: %w", d, ErrNotFound)
	}
	return filepath.Join(p.dir, packName(e.pack)), e.off + packHeaderSize, int(e.length), nil
}

// readPayload looks d up and calls read with its pack file and entry while holding the file
// open (a concurrent Compact waits for it before closing the file).
func (p *Pack) readPayload(d Digest, read func(pf *packFile, e packEntry) error) error {
	for {
		p.mu.RLock()
		e, ok := p.index[d]
		pf := p.packs[e.pack]
		p.mu.RUnlock()
		if !ok {
			return fmt.Errorf("chunk %s: %w", d, ErrNotFound)
		}
		if pf == nil {
			return fmt.Errorf("chunk %s: pack %d is gone (store closed?)", d, e.pack)
		}
		pf.rw.RLock()
		if !pf.closed {
			p.mapping(pf) // may let go of pf.rw for a moment: closed is checked after
		}
		if pf.closed {
			pf.rw.RUnlock()
			p.mu.RLock()
			closed := p.closed
			p.mu.RUnlock()
			if closed {
				return fmt.Errorf("chunk %s: %w", d, ErrClosed)
			}
			continue // compacted meanwhile: the index points elsewhere now
		}
		err := read(pf, e)
		pf.rw.RUnlock()
		return err
	}
}

// readAt fills b from pf at off; a short file is a *CorruptError naming d.
func readAt(pf *packFile, d Digest, b []byte, off int64) error {
	if _, err := pf.f.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && len(b) == 0) {
		if errors.Is(err, io.EOF) {
			return &CorruptError{Digest: d, Reason: fmt.Sprintf("%s ends inside the record at %d", pf.path, off-packHeaderSize)}
		}
		return fmt.Errorf("read %s: %w", d, err)
	}
	return nil
}

// Get reads, decodes and verifies chunk d into dst (see Store.Get): a raw chunk is read from
// the pack straight into dst, a compressed one into a pooled buffer and decoded into dst.
func (p *Pack) Get(ctx context.Context, d Digest, dst []byte) ([]byte, error) {
	return p.get(ctx, d, dst, false)
}

// GetSealed is Get, except that a sealed record (see the layout above) is checked against its
// seal, the CRC-32C of its payload, instead of its content against the digest; a record written
// before seals existed is checked as Get checks it. Same contract as Get otherwise (a mismatch
// is a *CorruptError naming d).
func (p *Pack) GetSealed(ctx context.Context, d Digest, dst []byte) ([]byte, error) {
	return p.get(ctx, d, dst, true)
}

func (p *Pack) get(ctx context.Context, d Digest, dst []byte, bySeal bool) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst[:0], err
	}
	sealOK := false
	err := p.readPayload(d, func(pf *packFile, e packEntry) error {
		size := int(e.size)
		payloadOff := e.off + packHeaderSize
		check := func(payload []byte) error {
			if !bySeal || !e.sealed {
				return nil
			}
			if crc32.Checksum(payload, castagnoli) != e.crc {
				return &CorruptError{Digest: d, Reason: fmt.Sprintf("payload in %s at %d does not match its seal", pf.path, e.off)}
			}
			sealOK = true
			return nil
		}
		if m := pf.m; m != nil && payloadOff+int64(e.length) <= int64(len(m)) {
			src := m[payloadOff : payloadOff+int64(e.length)]
			return readMapped(d, func() error {
				if e.codec == CodecRaw {
					dst = append(dst[:0], src...)
					return check(dst)
				}
				if err := check(src); err != nil {
					return err
				}
				var err error
				if dst, err = Decode(dst, e.codec, src, size); err != nil {
					return &CorruptError{Digest: d, Reason: err.Error()}
				}
				return nil
			})
		}
		if e.codec == CodecRaw {
			if cap(dst) < size {
				dst = make([]byte, size)
			}
			dst = dst[:size]
			if err := readAt(pf, d, dst, payloadOff); err != nil {
				return err
			}
			return check(dst)
		}
		buf := getBuf(int(e.length))
		defer putBuf(buf)
		payload := (*buf)[:e.length]
		if err := readAt(pf, d, payload, payloadOff); err != nil {
			return err
		}
		if err := check(payload); err != nil {
			return err
		}
		var err error
		dst, err = Decode(dst, e.codec, payload, size)
		if err != nil {
			return &CorruptError{Digest: d, Reason: err.Error()}
		}
		return nil
	})
	if err != nil {
		return dst[:0], err
	}
	if !sealOK {
		if got := Sum(dst); got != d {
			return dst[:0], &CorruptError{Digest: d, Reason: fmt.Sprintf("content hashes to %s", got)}
		}
	}
	return dst, nil
}

// GetStored returns chunk d's codec and payload as stored, in a new slice owned by the caller.
// It does not verify the payload: the receiver does (PutStored).
func (p *Pack) GetStored(ctx context.Context, d Digest) (Codec, []byte, error) {
	return p.AppendStored(ctx, d, nil)
}

// AppendStored is GetStored reading the payload into dst[:0]: when cap(dst) is large enough
// nothing is allocated and the result shares dst's backing array (see StoredAppender).
func (p *Pack) AppendStored(ctx context.Context, d Digest, dst []byte) (Codec, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, dst[:0], err
	}
	out := dst[:0]
	var codec Codec
	err := p.readPayload(d, func(pf *packFile, e packEntry) error {
		if uint32(cap(out)) < e.length {
			out = make([]byte, e.length)
		}
		out = out[:e.length]
		codec = e.codec
		return readAt(pf, d, out, e.off+packHeaderSize)
	})
	if err != nil {
		return 0, out[:0], err
	}
	return codec, out, nil
}

// Walk calls fn for every chunk, from a snapshot of the index taken when Walk starts (chunks
// put or deleted during the walk may or may not be seen). fn may call other methods.
func (p *Pack) Walk(ctx context.Context, fn func(Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.RLock()
	infos := make([]Info, 0, len(p.index))
	for d, e := range p.index {
		infos = append(infos, e.info(d))
	}
	p.mu.RUnlock()
	for i, in := range infos {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// LocatePacked is Locate for a pack store that may be open elsewhere (in this process or
// another): it scans dir's pack files read-only, without taking the lock, and returns where
// chunk d's live record is as of the scan. For tools and tests; a concurrent Compact can move
// the chunk at any time.
func LocatePacked(dir string, d Digest) (path string, payloadOffset int64, storedLen int, err error) {
	p := &Pack{
		dir: dir, opts: PackOptions{ReadOnly: true, MaxPackSize: DefaultMaxPackSize},
		index: map[Digest]packEntry{}, packs: map[uint32]*packFile{}, inflight: map[Digest]chan struct{}{},
	}
	p.cond = sync.NewCond(&p.mu)
	defer p.Close()
	if err := p.load(); err != nil {
		return "", 0, 0, fmt.Errorf("locate %s in %s: %w", d, dir, err)
	}
	return p.Locate(d)
}

// JournalEntries calls fn with the payload of every journal entry the store held when it was
// opened, in the order written (pack by pack), except those a tombstone cancelled; fn's error
// stops the walk and is returned. An entry whose payload no longer matches its digest is
// skipped, and the walk then ends with a *CorruptError for the first such entry (after fn saw
// every good one). payload is valid only during fn. Entries written through this Pack since it
// was opened are not listed: they are the writer's to remember.
func (p *Pack) JournalEntries(fn func(payload []byte) error) error {
	p.mu.RLock()
	ents := slices.Clone(p.journal)
	p.mu.RUnlock()
	var bad error
	for _, e := range ents {
		buf := getBuf(packHeaderSize + int(e.length))
		rec := (*buf)[:packHeaderSize+int(e.length)]
		err := p.readJournal(e, rec)
		if err == nil {
			h, herr := parseRecordHeader(rec)
			payload := rec[packHeaderSize:]
			if herr != nil || h.kind != kindJournal || Sum(payload) != h.digest {
				if bad == nil {
					bad = &CorruptError{Digest: h.digest, Reason: fmt.Sprintf("journal entry at %s+%d does not match its digest", packName(e.pack), e.off)}
				}
			} else {
				err = fn(payload)
			}
		}
		putBuf(buf)
		if err != nil {
			return err
		}
	}
	return bad
}

// readJournal reads the record of journal entry e (header and payload) into rec.
func (p *Pack) readJournal(e packEntry, rec []byte) error {
	p.mu.RLock()
	pf := p.packs[e.pack]
	p.mu.RUnlock()
	if pf == nil {
		return fmt.Errorf("journal entry in %s: %w", packName(e.pack), ErrClosed)
	}
	pf.rw.RLock()
	defer pf.rw.RUnlock()
	if pf.closed {
		return fmt.Errorf("journal entry in %s: %w", pf.path, ErrClosed)
	}
	if _, err := pf.f.ReadAt(rec, e.off); err != nil {
		return fmt.Errorf("journal entry in %s at %d: %w", pf.path, e.off, err)
	}
	return nil
}
