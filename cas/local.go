package cas

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// On-disk layout of a Local store rooted at dir:
//
//	dir/ab/cdef…          one file per chunk: "ab" is the first byte of the digest in hex, the
//	                      file name the other 31 bytes (62 hex digits)
//	dir/ab/.tmp-cdef…-N   a chunk being written; never read; removed by CleanTemp
//
// A chunk file is a 16-byte header followed by the codec's payload (see codec.go):
//
//	offset 0  4 bytes  magic "DSCK"
//	offset 4  1 byte   format version, 1
//	offset 5  1 byte   codec (1 raw, 2 zstd, 3 f16planes)
//	offset 6  2 bytes  reserved, zero
//	offset 8  8 bytes  uncompressed size, little-endian
//
// Info.StoredSize is the payload's length (the file's size less the header).
const (
	headerSize    = 16
	formatVersion = 1
)

var fileMagic = [4]byte{'D', 'S', 'C', 'K'}

// TouchInterval: Put of a chunk that is already present refreshes its ModTime when the file is
// older than this, so a garbage collector with a grace period longer than TouchInterval plus
// the time an upload takes does not sweep a chunk that a new upload deduplicated against.
const TouchInterval = time.Minute

func appendHeader(dst []byte, codec Codec, size int) []byte {
	dst = append(dst, fileMagic[:]...)
	dst = append(dst, formatVersion, byte(codec), 0, 0)
	return binary.LittleEndian.AppendUint64(dst, uint64(size))
}

// parseHeader checks a chunk file's header against its total length.
func parseHeader(h []byte, fileSize int64) (Codec, int, error) {
	if len(h) < headerSize || fileSize < headerSize {
		return 0, 0, fmt.Errorf("%w: file of %d bytes is shorter than the header", errPayload, fileSize)
	}
	if [4]byte(h[:4]) != fileMagic {
		return 0, 0, fmt.Errorf("%w: bad magic %q", errPayload, h[:4])
	}
	if h[4] != formatVersion {
		return 0, 0, fmt.Errorf("%w: unknown format version %d", errPayload, h[4])
	}
	codec := Codec(h[5])
	if !codec.Valid() || h[6] != 0 || h[7] != 0 {
		return 0, 0, fmt.Errorf("%w: bad codec byte %d or reserved bytes", errPayload, h[5])
	}
	size := binary.LittleEndian.Uint64(h[8:])
	payload := fileSize - headerSize
	switch {
	case size > MaxChunkSize:
		return 0, 0, fmt.Errorf("%w: header declares %d bytes, over the chunk limit", errPayload, size)
	case codec == CodecRaw && uint64(payload) != size:
		return 0, 0, fmt.Errorf("%w: raw chunk of %d bytes has a %d-byte payload (truncated or extended)", errPayload, size, payload)
	case codec != CodecRaw && (payload == 0 || payload > MaxChunkSize+MaxChunkSize/2):
		return 0, 0, fmt.Errorf("%w: %s payload of %d bytes for %d bytes of content", errPayload, codec, payload, size)
	}
	return codec, int(size), nil
}

// LocalOptions configure OpenLocal.
type LocalOptions struct {
	// NoSync skips the fsync of chunk files and directories. A crash may then lose chunks that
	// Put reported stored, or leave a torn chunk file under its final name (which Get reports
	// as corrupt). Only for tests, benchmarks and scratch stores.
	NoSync bool
}

// Local is a Store on a local file system. See the layout above.
//
// Put writes a chunk to a temporary file in the chunk's shard directory, syncs it, renames it
// to its final name and syncs the directory, so a chunk is visible under its name only when
// complete and durable, and a crash leaves at worst temporary files (CleanTemp removes them).
// NewBatch (and PutAll, which uses it) moves the syncs to one Commit for many chunks: temporary
// files written without a sync, one syncfs(2) of the file system (Linux; an fsync per file
// elsewhere), the renames, one more sync; the same guarantees at a fraction of the cost.
// Concurrent Puts of one chunk within a process collapse into one write; across processes each
// writes its own temporary file and the renames, of identical content, replace each other
// atomically. Every Get verifies the decoded bytes against the digest.
//
// All methods are safe for concurrent use, also by several processes on one directory.
type Local struct {
	dir  string
	opts LocalOptions

	mu       sync.Mutex               // guards inflight
	inflight map[Digest]chan struct{} // Puts being written; closed when done
	shardOK  [256]atomic.Bool         // shard directory known to exist
}

// Compile-time checks of the capabilities Local implements.
var (
	_ Store          = (*Local)(nil)
	_ StoredReader   = (*Local)(nil)
	_ StoredWriter   = (*Local)(nil)
	_ StoredAppender = (*Local)(nil)
)

// OpenLocal opens the store rooted at dir, creating dir if it does not exist. A store on a
// read-only directory opens, and serves reads; its Puts fail.
func OpenLocal(dir string, opts LocalOptions) (*Local, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("open chunk store: %w", err)
		}
		st, err = os.Stat(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("open chunk store: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("open chunk store: %s is not a directory", dir)
	}
	return &Local{dir: dir, opts: opts, inflight: map[Digest]chan struct{}{}}, nil
}

// Dir returns the store's root directory.
func (l *Local) Dir() string { return l.dir }

// Path returns the file that holds (or would hold) chunk d.
func (l *Local) Path(d Digest) string {
	h := d.Hex()
	return filepath.Join(l.dir, h[:2], h[2:])
}

func (l *Local) shardDir(d Digest) string {
	return filepath.Join(l.dir, hex.EncodeToString(d[:1]))
}

// Has reports whether the chunk's file exists. It reads no content.
func (l *Local) Has(ctx context.Context, d Digest) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	_, err := os.Stat(l.Path(d))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("has %s: %w", d, err)
}

// openChunk opens d's file and reads its header.
func (l *Local) openChunk(d Digest) (f *os.File, info Info, err error) {
	f, err = os.Open(l.Path(d))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, Info{}, fmt.Errorf("chunk %s: %w", d, ErrNotFound)
		}
		return nil, Info{}, fmt.Errorf("chunk %s: %w", d, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Info{}, fmt.Errorf("chunk %s: %w", d, err)
	}
	var h [headerSize]byte
	n, rerr := f.ReadAt(h[:], 0)
	codec, size, err := parseHeader(h[:n], st.Size())
	if err != nil {
		f.Close()
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, Info{}, fmt.Errorf("chunk %s: %w", d, rerr)
		}
		return nil, Info{}, &CorruptError{Digest: d, Reason: err.Error()}
	}
	return f, Info{Digest: d, Size: int64(size), StoredSize: st.Size() - headerSize, Codec: codec, ModTime: st.ModTime()}, nil
}

// Stat describes a present chunk from its file's header. A header that does not parse gives a
// *CorruptError.
func (l *Local) Stat(ctx context.Context, d Digest) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	f, info, err := l.openChunk(d)
	if err != nil {
		return Info{}, err
	}
	f.Close()
	return info, nil
}

// Get reads, decodes and verifies chunk d into dst (see Store.Get). A raw chunk is read from
// the file straight into dst; a zstd chunk is read into a pooled buffer and decoded straight
// into dst; a float16-plane chunk decodes its planes into pooled scratch and interleaves them
// into dst.
func (l *Local) Get(ctx context.Context, d Digest, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst[:0], err
	}
	f, info, err := l.openChunk(d)
	if err != nil {
		return dst[:0], err
	}
	defer f.Close()
	size := int(info.Size)
	if info.Codec == CodecRaw {
		if cap(dst) < size {
			dst = make([]byte, size)
		}
		dst = dst[:size]
		if _, err := f.ReadAt(dst, headerSize); err != nil && !(errors.Is(err, io.EOF) && size == 0) {
			if errors.Is(err, io.EOF) {
				return dst[:0], &CorruptError{Digest: d, Reason: "file shorter than its header declares"}
			}
			return dst[:0], fmt.Errorf("get %s: %w", d, err)
		}
	} else {
		buf := getBuf(int(info.StoredSize))
		defer putBuf(buf)
		payload := (*buf)[:info.StoredSize]
		if _, err := f.ReadAt(payload, headerSize); err != nil {
			if errors.Is(err, io.EOF) {
				return dst[:0], &CorruptError{Digest: d, Reason: "file shorter than it was a moment ago"}
			}
			return dst[:0], fmt.Errorf("get %s: %w", d, err)
		}
		dst, err = Decode(dst, info.Codec, payload, size)
		if err != nil {
			return dst[:0], &CorruptError{Digest: d, Reason: err.Error()}
		}
	}
	if got := Sum(dst); got != d {
		return dst[:0], &CorruptError{Digest: d, Reason: fmt.Sprintf("content hashes to %s", got)}
	}
	return dst, nil
}

// Put stores data (see Store.Put).
func (l *Local) Put(ctx context.Context, data []byte, hint Hint) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if len(data) > MaxChunkSize {
		return Info{}, fmt.Errorf("put: %d bytes: %w (limit %d)", len(data), ErrTooLarge, MaxChunkSize)
	}
	d := Sum(data)
	return l.put(ctx, d, func(dst []byte) (Codec, int, []byte, []byte, error) {
		return encodeChunk(dst, d, data, hint)
	})
}

// encodeChunk appends data's stored form to dst (a chunk header) and returns the codec, the
// content size, the extended slice and a tail: for a raw chunk the payload is not appended but
// returned as tail (data itself: nothing to verify, since no codec touched it). A compressed
// payload is checked to decode back to data before it is returned (verifyEncoded).
func encodeChunk(dst []byte, d Digest, data []byte, hint Hint) (Codec, int, []byte, []byte, error) {
	codec, out, err := encodeVerified(dst, data, hint)
	if err != nil {
		return 0, 0, nil, nil, fmt.Errorf("put %s: %w", d, err)
	}
	if codec == CodecRaw {
		return codec, len(data), out, data, nil
	}
	return codec, len(data), out, nil, nil
}

// PutStored stores a chunk given in stored form, as is, after decoding it and checking that it
// is the content named d (see StoredWriter). A mismatch gives a *CorruptError naming d.
func (l *Local) PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	return l.put(ctx, d, func(dst []byte) (Codec, int, []byte, []byte, error) {
		size, err := verifyStored(d, codec, stored)
		if err != nil {
			return 0, 0, nil, nil, err
		}
		return codec, size, dst, stored, nil
	})
}

// encodeFunc appends a chunk's payload to dst (its header) and returns the codec, the content
// size, the extended slice and a tail written after it (see encodeChunk).
type encodeFunc func(dst []byte) (codec Codec, size int, file, tail []byte, err error)

// prepare runs encode into a pooled buffer, appends the tail and fills in the header: file is
// the whole chunk file. The caller returns buf to the pool (putBuf) once file is written.
func prepare(encode encodeFunc) (buf *[]byte, codec Codec, size int, file []byte, err error) {
	buf = getBuf(64 << 10)
	hdr := appendHeader((*buf)[:0], 0, 0)
	codec, size, file, tail, err := encode(hdr)
	if err != nil {
		return buf, 0, 0, nil, err
	}
	// One write per file: a second write of the tail costs more than copying it (measured:
	// twice the write time on tmpfs for 64 KiB chunks).
	file = append(file, tail...)
	*buf = file[:0] // keep the grown buffer for the pool (putBuf drops it if too large)
	file[5] = byte(codec)
	binary.LittleEndian.PutUint64(file[8:], uint64(size))
	return buf, codec, size, file, nil
}

// put is the ingest-verify-commit path shared by Put and PutStored.
func (l *Local) put(ctx context.Context, d Digest, encode encodeFunc) (Info, error) {
	if info, ok := l.existing(d); ok {
		return info, nil
	}
	release, err := l.claim(ctx, d)
	if err != nil {
		return Info{}, err
	}
	defer release()
	if info, ok := l.existing(d); ok {
		return info, nil
	}
	buf, codec, size, file, err := prepare(encode)
	defer putBuf(buf)
	if err != nil {
		return Info{}, err
	}
	mod, err := l.commit(d, file)
	if err != nil {
		return Info{}, err
	}
	return Info{Digest: d, Size: int64(size), StoredSize: int64(len(file) - headerSize), Codec: codec, ModTime: mod}, nil
}

// existing returns the Info of d when a well-formed file for it is present, refreshing its
// ModTime when older than TouchInterval. A file with a bad header counts as absent, so the
// next Put replaces it.
func (l *Local) existing(d Digest) (Info, bool) {
	f, info, err := l.openChunk(d)
	if err != nil {
		return Info{}, false
	}
	f.Close()
	if now := time.Now(); now.Sub(info.ModTime) > TouchInterval {
		// Failure (a read-only store) leaves the old time: the chunk is present all the same.
		if os.Chtimes(l.Path(d), now, now) == nil {
			info.ModTime = now
		}
	}
	return info, true
}

// claim makes this goroutine the only one in the process writing d, waiting for (or giving up
// with ctx on) another. The returned release must be called.
func (l *Local) claim(ctx context.Context, d Digest) (release func(), err error) {
	for {
		l.mu.Lock()
		ch, busy := l.inflight[d]
		if !busy {
			ch = make(chan struct{})
			l.inflight[d] = ch
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.inflight, d)
				l.mu.Unlock()
				close(ch)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// testHookBeforeRename, when set by a test, runs after the temporary file is written and synced
// and before it is renamed; an error it returns fails the Put (or the batch's Commit) there.
var testHookBeforeRename func(tmp string) error

// tmpSeq numbers this process's temporary files; with the pid it makes their names unique.
var tmpSeq atomic.Uint64

// ensureShard creates d's shard directory when it is not known to be durable. It reports
// whether the caller must sync the store's root directory before a chunk in that shard is
// reported durable, and then, once that sync succeeded, mark the shard with shardDurable. A
// shard directory found already there (made by another goroutine or process, or by a Put or
// batch that failed before its root sync) needs the sync as well.
func (l *Local) ensureShard(d Digest) (syncRoot bool, err error) {
	if l.shardOK[d[0]].Load() {
		return false, nil
	}
	if err := os.Mkdir(l.shardDir(d), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return false, err
	}
	return true, nil
}

// shardDurable records that d's shard directory exists and that the root has been synced since.
func (l *Local) shardDurable(d Digest) { l.shardOK[d[0]].Store(true) }

// testHookSyncDir, when set by a test, is called with every directory syncDir syncs.
var testHookSyncDir func(dir string)

// writeTemp writes a chunk file (header, then payload) to a new temporary file in d's shard
// directory and closes it, syncing it first when sync is set. It returns the temporary file's
// path and modification time. On error nothing is left behind.
func (l *Local) writeTemp(d Digest, file []byte, sync bool) (string, time.Time, error) {
	h := d.Hex()
	name := fmt.Sprintf(".tmp-%s-%d-%d", h[2:], os.Getpid(), tmpSeq.Add(1))
	tmp := filepath.Join(l.shardDir(d), name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			l.shardOK[d[0]].Store(false) // removed behind our back; recreated next time
		}
		return "", time.Time{}, err
	}
	fail := func(err error) (string, time.Time, error) {
		f.Close()
		os.Remove(tmp)
		return "", time.Time{}, err
	}
	if _, err := f.Write(file); err != nil {
		return fail(err)
	}
	if sync && !l.opts.NoSync {
		if err := f.Sync(); err != nil {
			return fail(err)
		}
	}
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return "", time.Time{}, err
	}
	return tmp, st.ModTime(), nil
}

// commit writes file (header and payload) under d's name: temporary file, write, fsync,
// rename, fsync of the directory. It returns the file's modification time.
func (l *Local) commit(d Digest, file []byte) (time.Time, error) {
	syncRoot, err := l.ensureShard(d)
	if err != nil {
		return time.Time{}, fmt.Errorf("put %s: %w", d, err)
	}
	if syncRoot {
		if err := l.syncDir(l.dir); err != nil {
			return time.Time{}, fmt.Errorf("put %s: %w", d, err)
		}
		l.shardDurable(d)
	}
	tmp, mod, err := l.writeTemp(d, file, true)
	if err != nil {
		return time.Time{}, fmt.Errorf("put %s: %w", d, err)
	}
	if hook := testHookBeforeRename; hook != nil {
		if err := hook(tmp); err != nil {
			os.Remove(tmp)
			return time.Time{}, fmt.Errorf("put %s: %w", d, err)
		}
	}
	if err := os.Rename(tmp, l.Path(d)); err != nil {
		os.Remove(tmp)
		return time.Time{}, fmt.Errorf("put %s: %w", d, err)
	}
	if err := l.syncDir(l.shardDir(d)); err != nil {
		return time.Time{}, fmt.Errorf("put %s: %w", d, err)
	}
	return mod, nil
}

func (l *Local) syncDir(dir string) error {
	if l.opts.NoSync {
		return nil
	}
	if hook := testHookSyncDir; hook != nil {
		hook(dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// GetStored returns chunk d's codec and payload as stored, in a new slice owned by the caller.
// It checks the header but neither decodes nor verifies the payload: the receiver does that
// (PutStored). A header that does not parse gives a *CorruptError.
func (l *Local) GetStored(ctx context.Context, d Digest) (Codec, []byte, error) {
	return l.AppendStored(ctx, d, nil)
}

// AppendStored is GetStored reading the payload into dst[:0]: when cap(dst) is large enough
// nothing is allocated and the result shares dst's backing array (see StoredAppender).
func (l *Local) AppendStored(ctx context.Context, d Digest, dst []byte) (Codec, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, dst[:0], err
	}
	f, info, err := l.openChunk(d)
	if err != nil {
		return 0, dst[:0], err
	}
	defer f.Close()
	out := dst[:0]
	if int64(cap(out)) < info.StoredSize {
		out = make([]byte, info.StoredSize)
	}
	out = out[:info.StoredSize]
	if _, err := f.ReadAt(out, headerSize); err != nil && !(errors.Is(err, io.EOF) && len(out) == 0) {
		if errors.Is(err, io.EOF) {
			return 0, out[:0], &CorruptError{Digest: d, Reason: "file shorter than it was a moment ago"}
		}
		return 0, out[:0], fmt.Errorf("get stored %s: %w", d, err)
	}
	return info.Codec, out, nil
}

// Delete removes chunk d's file; an absent chunk is not an error. The directory is not synced:
// a chunk that reappears after a crash is only garbage for the next collection.
func (l *Local) Delete(ctx context.Context, d Digest) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(l.Path(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", d, err)
	}
	return nil
}

// Walk calls fn for every chunk file, shard by shard, in no particular order, with the Info
// from its header. A chunk whose header does not parse is still reported, with Codec 0, Size
// -1 and StoredSize the whole file's size, so that fsck can name it (its Get returns the
// *CorruptError). Temporary files and foreign names are skipped. fn may call other methods of
// the store; chunks put or deleted during the walk may or may not be seen.
func (l *Local) Walk(ctx context.Context, fn func(Info) error) error {
	shards, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("walk %s: %w", l.dir, err)
	}
	var d Digest
	for _, sh := range shards {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := sh.Name()
		if !sh.IsDir() || len(name) != 2 || !isLowerHex(name) {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(l.dir, name))
		if err != nil {
			return fmt.Errorf("walk %s: %w", l.dir, err)
		}
		for _, e := range entries {
			fname := e.Name()
			if len(fname) != 62 || !isLowerHex(fname) || !e.Type().IsRegular() {
				continue
			}
			hex.Decode(d[:1], []byte(name))
			hex.Decode(d[1:], []byte(fname))
			f, info, err := l.openChunk(d)
			var ce *CorruptError
			switch {
			case err == nil:
				f.Close()
			case errors.Is(err, ErrNotFound):
				continue // deleted since ReadDir
			case errors.As(err, &ce):
				fi, serr := e.Info()
				if serr != nil {
					continue
				}
				info = Info{Digest: d, Size: -1, StoredSize: fi.Size(), ModTime: fi.ModTime()}
			default:
				return fmt.Errorf("walk: %w", err)
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// CleanTemp removes temporary files left by interrupted Puts that are older than olderThan
// (a Put in progress in another process has a young temporary file; pass a duration well above
// the longest Put). It returns how many files it removed.
func (l *Local) CleanTemp(ctx context.Context, olderThan time.Duration) (int, error) {
	shards, err := os.ReadDir(l.dir)
	if err != nil {
		return 0, fmt.Errorf("clean %s: %w", l.dir, err)
	}
	removed := 0
	for _, sh := range shards {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		if !sh.IsDir() || len(sh.Name()) != 2 {
			continue
		}
		dir := filepath.Join(l.dir, sh.Name())
		entries, err := os.ReadDir(dir)
		if err != nil {
			return removed, fmt.Errorf("clean %s: %w", dir, err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".tmp-") {
				continue
			}
			fi, err := e.Info()
			if err != nil || time.Since(fi.ModTime()) < olderThan {
				continue
			}
			if err := os.Remove(filepath.Join(dir, e.Name())); err == nil {
				removed++
			}
		}
	}
	return removed, nil
}
