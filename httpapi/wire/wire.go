// Package wire is the driftstore HTTP API's vocabulary shared by the server (httpapi) and the
// client (replicate): route paths, header names, JSON bodies, stable error codes and the framed
// binary stream that carries many chunks in one request or response.
//
// Everything here that reads bytes from the network (ReadMissingRequest, ChunkStreamReader) is
// written for untrusted input: it enforces size and count limits before allocating and refuses
// anything malformed with an error wrapping ErrMalformed.
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/driftstore/driftstore/cas"
)

// Route prefixes and paths of API version 1.
const (
	PathHealth    = "/healthz"
	PathMetrics   = "/metrics"
	PathChunks    = "/v1/chunks/"         // + digest: HEAD, GET, PUT
	PathMissing   = "/v1/chunks/missing"  // POST MissingRequest → MissingResponse
	PathUpload    = "/v1/chunks/upload"   // POST chunk stream → BatchResult
	PathDownload  = "/v1/chunks/download" // POST MissingRequest-shaped list → chunk stream
	PathManifests = "/v1/manifests/"      // + id: HEAD, GET, PUT
	PathRefs      = "/v1/refs"            // GET list; + "/" + kind + "/" + name: GET, PUT (RefUpdate)
)

// Header and media-type names.
const (
	// HeaderCodec carries the codec number (cas.Codec) of a chunk moved in its stored form.
	HeaderCodec = "Driftstore-Codec"
	// HeaderSize carries a chunk's uncompressed size.
	HeaderSize = "Driftstore-Size"
	// MediaTypeStored is the Accept value that asks GET /v1/chunks/{d} for the stored form.
	MediaTypeStored = "application/vnd.driftstore.chunk-stored"
	// MediaTypeChunkStream is the content type of a framed chunk stream.
	MediaTypeChunkStream = "application/vnd.driftstore.chunk-stream.v1"
	// MediaTypeManifest is the content type of canonical manifest bytes.
	MediaTypeManifest = "application/vnd.driftstore.manifest.v1"
)

// Limits the server applies by default; a client sizes its requests to stay under them.
const (
	// MaxMissingDigests is the most digests one missing-set or download request may name.
	MaxMissingDigests = 10000
	// MaxMissingBody bounds the JSON body of a missing-set request: 10000 digests of 71 bytes
	// each, quoted and comma-separated, and some room.
	MaxMissingBody = MaxMissingDigests*80 + 4096
)

// ErrMalformed is wrapped by every error about bytes that break this package's formats.
var ErrMalformed = errors.New("malformed request")

// Stable error codes of the JSON error body. Clients branch on these, never on messages.
const (
	CodeBadRequest       = "bad_request"
	CodeBadDigest        = "bad_digest"
	CodeBadName          = "bad_name"
	CodeBadManifest      = "bad_manifest"
	CodeDigestMismatch   = "digest_mismatch"
	CodeUnauthorized     = "unauthorized"
	CodeChunkNotFound    = "chunk_not_found"
	CodeManifestNotFound = "manifest_not_found"
	CodeRefNotFound      = "ref_not_found"
	CodeNotFound         = "not_found"
	CodeUnknownName      = "unknown_name"
	CodeAmbiguous        = "ambiguous"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeMissingChunks    = "missing_chunks"
	CodeMissingParent    = "missing_parent"
	CodeConflict         = "conflict"
	CodeTooLarge         = "too_large"
	CodeUnsupported      = "unsupported_codec"
	CodeCorrupt          = "corrupt"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
)

// ErrorBody is the JSON body of every error response: {"error": {"code": ..., "message": ...}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody. Missing is set with CodeMissingChunks (the chunks a
// refused manifest names that the server lacks) and CodeChunkNotFound on a download.
type ErrorDetail struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Missing []cas.Digest `json:"missing,omitempty"`
}

// MissingRequest asks which of Digests the server lacks (POST /v1/chunks/missing), or names the
// chunks to send back (POST /v1/chunks/download).
type MissingRequest struct {
	Digests []cas.Digest `json:"digests"`
}

// MissingResponse lists the requested digests the server lacks, in request order, without
// duplicates.
type MissingResponse struct {
	Missing []cas.Digest `json:"missing"`
}

// BatchResult reports what an upload stream did. A stream cut short still commits the chunks
// that arrived whole; the client learns which by asking the missing set again.
type BatchResult struct {
	Chunks   int   `json:"chunks"`    // chunks received whole and verified
	Stored   int   `json:"stored"`    // of those, chunks that were new to the server
	Deduped  int   `json:"deduped"`   // of those, chunks the server already had
	RawBytes int64 `json:"raw_bytes"` // uncompressed bytes of the received chunks
	Bytes    int64 `json:"bytes"`     // stored-form bytes received
}

// RefUpdate is the body of PUT /v1/refs/{kind}/{name}: move the ref from Old to New, atomically
// and only if it is at Old now. Old is empty (or absent) to create a ref that must not exist.
type RefUpdate struct {
	Old string `json:"old"`
	New string `json:"new"`
}

// Ref is one ref as the API shows it.
type Ref struct {
	Kind string `json:"kind"` // "session" or "tag"
	Name string `json:"name"`
	Head string `json:"head"` // manifest ID, text form
}

// RefList is the body of GET /v1/refs.
type RefList struct {
	Refs []Ref `json:"refs"`
}

// ManifestList is the body of GET /v1/manifests?ref=KIND/NAME: the ref's chain from its head
// back to the first manifest, newest first.
type ManifestList struct {
	Manifests []string `json:"manifests"`
}

// ReadMissingRequest decodes a MissingRequest from r, reading at most MaxMissingBody bytes and
// accepting at most max digests (max <= 0 means MaxMissingDigests). Unknown fields, trailing
// data, bad digests and too many digests are refused with errors wrapping ErrMalformed (bad
// digests also wrap cas.ErrBadDigest). A body larger than the limit gives ErrTooLarge.
func ReadMissingRequest(r io.Reader, max int) ([]cas.Digest, error) {
	if max <= 0 {
		max = MaxMissingDigests
	}
	body, err := io.ReadAll(io.LimitReader(r, MaxMissingBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > MaxMissingBody {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxMissingBody)
	}
	return ParseMissingRequest(body, max)
}

// ErrTooLarge is wrapped by errors about input over a size limit.
var ErrTooLarge = errors.New("too large")

// ParseMissingRequest decodes the JSON body of a missing-set or download request; see
// ReadMissingRequest for the rules.
func ParseMissingRequest(body []byte, max int) ([]cas.Digest, error) {
	if max <= 0 {
		max = MaxMissingDigests
	}
	// A cheap upper bound on the count before decoding: every digest is a quoted string.
	if n := bytes.Count(body, []byte{'"'}); n/2 > max+1 {
		return nil, fmt.Errorf("%w: more than %d digests", ErrTooLarge, max)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req MissingRequest
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, cas.ErrBadDigest) {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	if len(req.Digests) > max {
		return nil, fmt.Errorf("%w: %d digests, at most %d", ErrTooLarge, len(req.Digests), max)
	}
	return req.Digests, nil
}

// MediaTypeDigests is the content type of a compact digest list: the digests' 32 bytes each,
// concatenated, nothing else. Missing-set and download requests may use it instead of JSON
// (Content-Type), and a missing-set answer is given in it when the request Accepts it.
const MediaTypeDigests = "application/vnd.driftstore.digests"

// MaxDigestListBody bounds a digest-list body.
const MaxDigestListBody = MaxMissingDigests * 32

// ParseDigestList decodes a digest-list body, accepting at most max digests (max <= 0 means
// MaxMissingDigests). A length that is not a multiple of 32 wraps ErrMalformed; too many
// digests wrap ErrTooLarge. The digests are copied out of body.
func ParseDigestList(body []byte, max int) ([]cas.Digest, error) {
	if max <= 0 {
		max = MaxMissingDigests
	}
	if len(body)%32 != 0 {
		return nil, fmt.Errorf("%w: digest list of %d bytes is not a multiple of 32", ErrMalformed, len(body))
	}
	n := len(body) / 32
	if n > max {
		return nil, fmt.Errorf("%w: %d digests, at most %d", ErrTooLarge, n, max)
	}
	out := make([]cas.Digest, n)
	for i := range out {
		copy(out[i][:], body[32*i:])
	}
	return out, nil
}

// AppendDigestList appends the digest-list encoding of ds to dst.
func AppendDigestList(dst []byte, ds []cas.Digest) []byte {
	for _, d := range ds {
		dst = append(dst, d[:]...)
	}
	return dst
}

// GCRequest is the body of POST /v1/gc. Grace follows index.GCOptions: zero means the default,
// negative means none.
type GCRequest struct {
	Grace  time.Duration `json:"grace"`
	DryRun bool          `json:"dry_run"`
}

// FsckRequest is the body of POST /v1/fsck.
type FsckRequest struct {
	Workers int `json:"workers"`
}
