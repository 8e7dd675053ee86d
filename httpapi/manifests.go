package httpapi

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
)

func idParam(c echo.Context) (index.ID, error) {
	return cas.ParseDigest(c.Param("id"))
}

func (s *Server) headManifest(c echo.Context) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	ok, err := s.ix.HasManifest(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", index.ErrManifestNotFound, id)
	}
	return c.NoContent(http.StatusOK)
}

func (s *Server) getManifest(c echo.Context) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	b, err := s.ix.ManifestBytes(id)
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, wire.MediaTypeManifest, b)
}

// putManifest commits a manifest whose ID is the BLAKE3 of the body. It is decoded strictly and
// refused with 409 until every chunk it names is recorded (listing them) and its parent is here.
func (s *Server) putManifest(c echo.Context) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	body, err := readBody(c, s.cfg.MaxManifestSize)
	if err != nil {
		return err
	}
	if got := cas.Sum(body); got != id {
		return fmt.Errorf("%w: manifest body hashes to %s, not %s", errDigestMismatch, got, id)
	}
	had, err := s.ix.HasManifest(id)
	if err != nil {
		return err
	}
	if _, err := s.ix.PutManifestBytes(c.Request().Context(), body); err != nil {
		return err
	}
	if had {
		return c.NoContent(http.StatusOK)
	}
	return c.NoContent(http.StatusCreated)
}

// ManifestInfo is one entry of GET /v1/manifests without a ref.
type ManifestInfo struct {
	ID      string    `json:"id"`
	Kind    string    `json:"kind"`
	Parent  string    `json:"parent,omitempty"`
	Regions int       `json:"regions"`
	Chunks  int       `json:"chunks"`
	Size    int64     `json:"size"`
	Put     time.Time `json:"put"`
	Error   string    `json:"error,omitempty"`
}

// listManifests lists every manifest, or with ?ref=KIND/NAME the ref's parent chain, newest
// first.
func (s *Server) listManifests(c echo.Context) error {
	if ref := c.QueryParam("ref"); ref != "" {
		kindName, name, ok := strings.Cut(ref, "/")
		if !ok {
			return fmt.Errorf("%w: ref %q: want KIND/NAME", index.ErrBadRefName, ref)
		}
		kind, err := parseKind(kindName)
		if err != nil {
			return err
		}
		if err := index.ValidRefName(name); err != nil {
			return err
		}
		head, err := s.ix.Ref(kind, name)
		if err != nil {
			return err
		}
		var out wire.ManifestList
		seen := make(map[index.ID]bool)
		for id := head; !id.IsZero() && !seen[id]; {
			seen[id] = true
			out.Manifests = append(out.Manifests, id.String())
			m, err := s.ix.Manifest(id)
			if err != nil {
				return err
			}
			id = m.Parent
		}
		return c.JSON(http.StatusOK, out)
	}
	infos, err := s.ix.Manifests()
	if err != nil {
		return err
	}
	out := make([]ManifestInfo, 0, len(infos))
	for _, in := range infos {
		mi := ManifestInfo{ID: in.ID.String(), Kind: in.Kind, Regions: in.Regions, Chunks: in.Chunks, Size: in.Size, Put: in.Put}
		if !in.Parent.IsZero() {
			mi.Parent = in.Parent.String()
		}
		if in.Err != nil {
			mi.Error = in.Err.Error()
		}
		out = append(out, mi)
	}
	return c.JSON(http.StatusOK, map[string]any{"manifests": out})
}

// parseKind turns the kind in a URL into a RefKind.
func parseKind(s string) (index.RefKind, error) {
	switch s {
	case "session":
		return index.RefSession, nil
	case "tag":
		return index.RefTag, nil
	}
	return 0, fmt.Errorf("%w: unknown ref kind %q (want session or tag)", index.ErrBadRefName, trunc(s))
}

// refParams validates the kind and name of a ref route.
func refParams(c echo.Context) (index.RefKind, string, error) {
	kind, err := parseKind(c.Param("kind"))
	if err != nil {
		return 0, "", err
	}
	name := c.Param("name")
	if err := index.ValidRefName(name); err != nil {
		return 0, "", err
	}
	return kind, name, nil
}

func (s *Server) listRefs(c echo.Context) error {
	var kind index.RefKind
	if k := c.QueryParam("kind"); k != "" {
		var err error
		if kind, err = parseKind(k); err != nil {
			return err
		}
	}
	refs, err := s.ix.Refs(kind)
	if err != nil {
		return err
	}
	out := wire.RefList{Refs: make([]wire.Ref, 0, len(refs))}
	for _, r := range refs {
		out.Refs = append(out.Refs, wire.Ref{Kind: r.Kind.String(), Name: r.Name, Head: r.Target.String()})
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) getRef(c echo.Context) error {
	kind, name, err := refParams(c)
	if err != nil {
		return err
	}
	head, err := s.ix.Ref(kind, name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.Ref{Kind: kind.String(), Name: name, Head: head.String()})
}

// putRef moves a ref with compare-and-swap: from body.Old ("" for a ref that must not exist)
// to body.New ("" deletes it). A ref not at Old gets 409 conflict and nothing changes.
func (s *Server) putRef(c echo.Context) error {
	kind, name, err := refParams(c)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	body, err := readBody(c, s.cfg.MaxJSONSize)
	if err != nil {
		return err
	}
	var u wire.RefUpdate
	if err := unmarshalStrict(body, &u); err != nil {
		return fmt.Errorf("ref update: %w", err)
	}
	oldID, err := optionalID(u.Old)
	if err != nil {
		return err
	}
	newID, err := optionalID(u.New)
	if err != nil {
		return err
	}
	if err := s.ix.CompareAndSwapRef(c.Request().Context(), kind, name, oldID, newID); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.Ref{Kind: kind.String(), Name: name, Head: idText(newID)})
}

// commitRef commits the manifests of a ref commit (wire.RefCommit: parents first, each decoded
// strictly, its ID the BLAKE3 of its bytes) and moves the ref from Old to New with
// compare-and-swap, in one index transaction: all of it or nothing. Errors as putManifest's
// and putRef's (409 conflict, missing_chunks with the list, missing_parent).
func (s *Server) commitRef(c echo.Context) error {
	kind, name, err := refParams(c)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	body, err := readBody(c, s.cfg.MaxManifestSize+int64(wire.CommitOverhead))
	if err != nil {
		return err
	}
	rc, err := wire.DecodeRefCommit(body, wire.CommitLimits{MaxManifests: wire.MaxCommitManifests, MaxManifestSize: int(s.cfg.MaxManifestSize)})
	if err != nil {
		return err
	}
	es := make([]*index.Encoded, len(rc.Manifests))
	for i, m := range rc.Manifests {
		if es[i], err = index.DecodeEncoded(m); err != nil {
			return fmt.Errorf("ref commit: manifest %d: %w", i, err)
		}
	}
	mv := &index.RefMove{Kind: kind, Name: name, Expected: rc.Old, Target: rc.New}
	if err := s.ix.Commit(c.Request().Context(), index.Commit{Manifests: es, Ref: mv}); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.Ref{Kind: kind.String(), Name: name, Head: idText(rc.New)})
}

// RefChange is one entry of a ref's history as the API shows it.
type RefChange struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Old  string    `json:"old"`
	New  string    `json:"new"`
}

func (s *Server) refHistory(c echo.Context) error {
	kind, name, err := refParams(c)
	if err != nil {
		return err
	}
	h, err := s.ix.RefHistory(kind, name)
	if err != nil {
		return err
	}
	out := make([]RefChange, 0, len(h))
	for _, ch := range h {
		out = append(out, RefChange{Seq: ch.Seq, Time: ch.Time, Old: idText(ch.Old), New: idText(ch.New)})
	}
	return c.JSON(http.StatusOK, map[string]any{"history": out})
}

func optionalID(s string) (index.ID, error) {
	if s == "" {
		return index.ID{}, nil
	}
	return cas.ParseDigest(s)
}

func idText(id index.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
