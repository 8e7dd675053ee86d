package cas

import (
	"bytes"
	"context"
	"fmt"
)

// StoredReader is the optional capability of handing out a chunk in its stored form, so that
// replication moves chunks as stored, without decompressing and recompressing them.
//
// GetStored returns d's codec and payload (the stored form described in codec.go, without any
// store-specific header) in a new slice owned by the caller. It does not verify the payload
// against d; whoever stores it does (StoredWriter). Errors are as for Get: ErrNotFound, or a
// *CorruptError when the store's own framing is damaged.
//
// Fallback for stores without it: ReadStored, which Gets the chunk and encodes it.
type StoredReader interface {
	GetStored(ctx context.Context, d Digest) (Codec, []byte, error)
}

// StoredAppender is the optional capability of reading a chunk's stored form into a buffer of
// the caller's, so that a sender of many chunks reuses one buffer. AppendStored is GetStored
// appending to dst[:0]: when cap(dst) is at least the stored size nothing is allocated and the
// returned slice shares dst's backing array. On error the slice is dst[:0] or a prefix of it.
//
// Fallback for stores without it: AppendStored, which calls ReadStored.
type StoredAppender interface {
	AppendStored(ctx context.Context, d Digest, dst []byte) (Codec, []byte, error)
}

// AppendStored reads chunk d's stored form from s into dst[:0] (see StoredAppender), through
// ReadStored (a new slice) when s is no StoredAppender.
func AppendStored(ctx context.Context, s Store, d Digest, dst []byte, hint Hint) (Codec, []byte, error) {
	if sa, ok := s.(StoredAppender); ok {
		return sa.AppendStored(ctx, d, dst)
	}
	codec, stored, err := ReadStored(ctx, s, d, hint)
	if err != nil {
		return 0, dst[:0], err
	}
	return codec, stored, nil
}

// StoredWriter is the optional capability of storing a chunk given in stored form, as is.
//
// PutStored decodes stored with codec, checks that the content's digest is d, and only then
// commits the stored bytes unchanged under d (no recompression), with the same durability and
// idempotency as Put: a chunk already present costs about a stat, and its stored bytes are not
// replaced. A stored form that does not decode, or decodes to other content, is refused with a
// *CorruptError naming d and nothing is written. stored is only read during the call.
//
// Fallback for stores without it: WriteStored, which decodes, verifies and Puts.
type StoredWriter interface {
	PutStored(ctx context.Context, d Digest, codec Codec, stored []byte) (Info, error)
}

// ReadStored returns chunk d's stored form from s: through GetStored when s is a StoredReader,
// otherwise by Get and Encode (with hint). The returned slice is owned by the caller.
func ReadStored(ctx context.Context, s Store, d Digest, hint Hint) (Codec, []byte, error) {
	if sr, ok := s.(StoredReader); ok {
		return sr.GetStored(ctx, d)
	}
	data, err := s.Get(ctx, d, nil)
	if err != nil {
		return 0, nil, err
	}
	codec, stored := Encode(nil, data, hint)
	return codec, stored, nil
}

// WriteStored stores a chunk given in stored form into s: through PutStored when s is a
// StoredWriter, otherwise by decoding, verifying against d and Put (which may pick another
// codec). A mismatch gives a *CorruptError naming d, and nothing is stored.
func WriteStored(ctx context.Context, s Store, d Digest, codec Codec, stored []byte, hint Hint) (Info, error) {
	if sw, ok := s.(StoredWriter); ok {
		return sw.PutStored(ctx, d, codec, stored)
	}
	if !codec.Valid() {
		return Info{}, &CorruptError{Digest: d, Reason: fmt.Sprintf("unknown codec %d", codec)}
	}
	data, err := Decode(nil, codec, stored, -1)
	if err != nil {
		return Info{}, &CorruptError{Digest: d, Reason: err.Error()}
	}
	if got := Sum(data); got != d {
		return Info{}, &CorruptError{Digest: d, Reason: fmt.Sprintf("stored form decodes to content %s", got)}
	}
	return s.Put(ctx, data, hint)
}

// Copy copies chunk d from src to dst, as stored when src is a StoredReader and dst a
// StoredWriter (otherwise through ReadStored and WriteStored). The copy is verified by dst. A
// chunk dst already has costs about a stat there and nothing at src.
func Copy(ctx context.Context, dst, src Store, d Digest, hint Hint) (Info, error) {
	if ok, err := dst.Has(ctx, d); err != nil {
		return Info{}, err
	} else if ok {
		return dst.Stat(ctx, d)
	}
	codec, stored, err := ReadStored(ctx, src, d, hint)
	if err != nil {
		return Info{}, err
	}
	return WriteStored(ctx, dst, d, codec, stored, hint)
}

// verifyStored decodes stored and checks it against d, returning the content's size.
func verifyStored(d Digest, codec Codec, stored []byte) (int, error) {
	if !codec.Valid() {
		return 0, &CorruptError{Digest: d, Reason: fmt.Sprintf("unknown codec %d", codec)}
	}
	if codec == CodecRaw {
		if len(stored) > MaxChunkSize {
			return 0, fmt.Errorf("put stored %s: %d bytes: %w", d, len(stored), ErrTooLarge)
		}
		if got := Sum(stored); got != d {
			return 0, &CorruptError{Digest: d, Reason: fmt.Sprintf("stored form is content %s", got)}
		}
		return len(stored), nil
	}
	scratch := getBuf(0)
	defer putBuf(scratch)
	data, err := Decode((*scratch)[:0], codec, stored, -1)
	if cap(data) <= maxPooled {
		*scratch = data[:0]
	}
	if err != nil {
		return 0, &CorruptError{Digest: d, Reason: err.Error()}
	}
	if got := Sum(data); got != d {
		return 0, &CorruptError{Digest: d, Reason: fmt.Sprintf("stored form decodes to content %s", got)}
	}
	return len(data), nil
}

// verifyEncoded checks that a freshly encoded stored form decodes back to data, so that a codec
// bug can never commit a chunk that does not match its name.
func verifyEncoded(stored []byte, codec Codec, data []byte) error {
	if codec == CodecRaw {
		if !bytes.Equal(stored, data) {
			return fmt.Errorf("raw stored form differs from the data")
		}
		return nil
	}
	scratch := getBuf(len(data))
	defer putBuf(scratch)
	out, err := Decode((*scratch)[:0], codec, stored, len(data))
	if err != nil {
		return fmt.Errorf("%s stored form does not decode: %v", codec, err)
	}
	if !bytes.Equal(out, data) {
		return fmt.Errorf("%s stored form decodes to other bytes", codec)
	}
	return nil
}
