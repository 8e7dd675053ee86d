package repo

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/index"
)

// Errors of Resolve.
var (
	// ErrUnknownName: the string names no manifest, tag or unique ID prefix.
	ErrUnknownName = errors.New("no manifest, tag or ID prefix by that name")
	// ErrAmbiguous: an ID prefix matches more than one manifest.
	ErrAmbiguous = errors.New("ID prefix matches several manifests")
)

// MinPrefix is the shortest ID prefix Resolve accepts.
const MinPrefix = 4

// Resolve turns what a user typed into a manifest ID. In order: a full ID ("blake3:<64 hex>"
// or 64 hex digits), a tag, then a unique prefix of at least MinPrefix hex digits (optionally
// after "blake3:"). The manifest must exist.
func (r *Repo) Resolve(s string) (index.ID, error) {
	if strings.HasPrefix(s, "blake3:") && len(s) == len("blake3:")+64 || len(s) == 64 {
		full := s
		if len(s) == 64 {
			full = "blake3:" + s
		}
		if id, err := cas.ParseDigest(full); err == nil {
			ok, err := r.ix.HasManifest(id)
			if err != nil {
				return index.ID{}, err
			}
			if !ok {
				return index.ID{}, fmt.Errorf("%w: %s", index.ErrManifestNotFound, id)
			}
			return id, nil
		} else if strings.HasPrefix(s, "blake3:") {
			return index.ID{}, err
		}
	}
	if index.ValidRefName(s) == nil {
		id, err := r.ix.Ref(index.RefTag, s)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, index.ErrRefNotFound) {
			return index.ID{}, err
		}
	}
	hexPart := strings.TrimPrefix(s, "blake3:")
	if len(hexPart) >= MinPrefix && isLowerHex(hexPart) {
		ids, err := r.ix.FindManifests(hexPart, 2)
		if err != nil {
			return index.ID{}, err
		}
		switch len(ids) {
		case 1:
			return ids[0], nil
		case 2:
			return index.ID{}, fmt.Errorf("%w: %q", ErrAmbiguous, s)
		}
	}
	return index.ID{}, fmt.Errorf("%w: %q", ErrUnknownName, truncate(s))
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Entry is one manifest in a listing.
type Entry struct {
	ID       index.ID  `json:"id"`
	Kind     string    `json:"kind"`
	Parent   index.ID  `json:"parent,omitzero"`
	Regions  int       `json:"regions"`
	Chunks   int       `json:"chunks"`
	Size     int64     `json:"size"`
	Put      time.Time `json:"put"`
	Tags     []string  `json:"tags,omitempty"`
	Sessions []string  `json:"sessions,omitempty"`
	Error    string    `json:"error,omitempty"` // set when the stored manifest is damaged
}

// List returns every manifest, newest first (then by ID), with the tags and sessions naming it.
func (r *Repo) List() ([]Entry, error) {
	infos, err := r.ix.Manifests()
	if err != nil {
		return nil, err
	}
	refs, err := r.ix.Refs(0)
	if err != nil {
		return nil, err
	}
	byID := map[index.ID]*Entry{}
	out := make([]Entry, len(infos))
	for i, in := range infos {
		out[i] = Entry{ID: in.ID, Kind: in.Kind, Parent: in.Parent, Regions: in.Regions, Chunks: in.Chunks, Size: in.Size, Put: in.Put}
		if in.Err != nil {
			out[i].Error = in.Err.Error()
		}
	}
	for i := range out {
		byID[out[i].ID] = &out[i]
	}
	for _, ref := range refs {
		e := byID[ref.Target]
		if e == nil {
			continue
		}
		if ref.Kind == index.RefTag {
			e.Tags = append(e.Tags, ref.Name)
		} else {
			e.Sessions = append(e.Sessions, ref.Name)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Put.Equal(out[j].Put) {
			return out[i].Put.After(out[j].Put)
		}
		return string(out[i].ID[:]) < string(out[j].ID[:])
	})
	return out, nil
}

// ChunkDetail is one chunk of a region, as Inspect reports it.
type ChunkDetail struct {
	Digest     cas.Digest `json:"digest"`
	Offset     int64      `json:"offset"` // within the region
	Length     int64      `json:"length"`
	StoredSize int64      `json:"stored_size"` // 0 when the chunk has no record (a damaged index)
	Codec      string     `json:"codec"`
}

// RegionDetail is one region of an inspected manifest.
type RegionDetail struct {
	Name   string        `json:"name"`
	Size   int64         `json:"size"`
	Chunks []ChunkDetail `json:"chunks"`
}

// Inspection is everything known about one manifest.
type Inspection struct {
	ID           index.ID       `json:"id"`
	Kind         string         `json:"kind"`
	Parent       index.ID       `json:"parent,omitzero"`
	Size         int64          `json:"size"`
	UniqueChunks int            `json:"unique_chunks"`
	StoredBytes  int64          `json:"stored_bytes"` // stored size of the distinct chunks
	Tags         []string       `json:"tags,omitempty"`
	Sessions     []string       `json:"sessions,omitempty"`
	Meta         map[string]any `json:"meta,omitempty"`
	Regions      []RegionDetail `json:"regions"`
	// Manifest is the decoded manifest, for callers that want the typed metadata.
	Manifest *index.Manifest `json:"-"`
}

// CodecName names a codec for people: "raw", "zstd", "f16planes", or "codec(N)".
func CodecName(c cas.Codec) string {
	switch c {
	case cas.CodecRaw:
		return "raw"
	case cas.CodecZstd:
		return "zstd"
	case cas.CodecF16Planes:
		return "f16planes"
	case 0:
		return "unrecorded"
	}
	return fmt.Sprintf("codec(%d)", c)
}

// Inspect describes manifest id: its regions with every chunk in order (digest, offset, length,
// stored size, codec), its metadata and the refs that name it.
func (r *Repo) Inspect(id index.ID) (*Inspection, error) {
	m, err := r.ix.Manifest(id)
	if err != nil {
		return nil, err
	}
	ds := m.Digests()
	recs, err := r.ix.Chunks(ds)
	if err != nil {
		return nil, err
	}
	byDigest := make(map[cas.Digest]index.ChunkRecord, len(ds))
	in := &Inspection{ID: id, Kind: m.Kind, Parent: m.Parent, Size: m.Size(), UniqueChunks: len(ds), Manifest: m}
	for i, d := range ds {
		byDigest[d] = recs[i]
		in.StoredBytes += recs[i].StoredSize
	}
	for _, reg := range m.Regions {
		rd := RegionDetail{Name: reg.Name, Size: reg.Size(), Chunks: make([]ChunkDetail, len(reg.Chunks))}
		var off int64
		for i, c := range reg.Chunks {
			rec := byDigest[c.Digest]
			rd.Chunks[i] = ChunkDetail{Digest: c.Digest, Offset: off, Length: c.Length, StoredSize: rec.StoredSize, Codec: CodecName(rec.Codec)}
			off += c.Length
		}
		in.Regions = append(in.Regions, rd)
	}
	if len(m.Meta) > 0 {
		in.Meta = make(map[string]any, len(m.Meta))
		for k, v := range m.Meta {
			in.Meta[k] = v.Interface()
		}
	}
	refs, err := r.ix.Refs(0)
	if err != nil {
		return nil, err
	}
	for _, ref := range refs {
		if ref.Target != id {
			continue
		}
		if ref.Kind == index.RefTag {
			in.Tags = append(in.Tags, ref.Name)
		} else {
			in.Sessions = append(in.Sessions, ref.Name)
		}
	}
	return in, nil
}
