package index

import (
	"bytes"
	"fmt"
)

// # The kept form: a manifest as what it keeps of its parent
//
// A checkpoint's manifest names every block of its context, and its parent's names all but the
// few its turn added or changed. The kept form writes such a manifest without those it shares:
//
//	"DSK\x01" base(32)  then the manifest's encoding after its magic, but for each region's
//	                    chunk list: uvarint keep, uvarint n, n × (digest(32) uvarint length)
//
// region i's first keep references being base's region i's (which has the same name). It is
// made from the decoded manifest and base's regions alone, without the canonical encoding, so
// that a journaled commit can write it before the manifest is encoded and hashed (see
// commitJournaled); only journal entries carry it. Reading it rebuilds the manifest, whose
// encoding and ID are then computed as for any other.

// keptMagic starts a kept form (version 1).
const keptMagic = "DSK\x01"

// encodeKept returns m's kept form against base, the regions of manifest baseID. It checks m as
// Encode does, but for the references it takes from base (checked when base was encoded).
func encodeKept(m *Manifest, baseID ID, base []Region) ([]byte, error) {
	keep := make([]int, len(m.Regions))
	n := len(keptMagic) + len(baseID) + 256 + len(m.Kind)
	for i, r := range m.Regions {
		if i < len(base) && base[i].Name == r.Name {
			keep[i] = commonRefs(base[i].Chunks, r.Chunks)
		}
		n += 32 + len(r.Name) + (len(r.Chunks)-keep[i])*(32+10)
	}
	for k, v := range m.Meta {
		n += 32 + len(k) + len(v.s) + len(v.b) + len(v.d)
	}
	b := make([]byte, 0, min(n, MaxManifestSize))
	b = append(b, keptMagic...)
	b = append(b, baseID[:]...)
	return m.encodeKeeping(b, keep)
}

// keptBase returns the ID of the base of kept form f, and whether f is one.
func keptBase(f []byte) (ID, bool) {
	if !bytes.HasPrefix(f, []byte(keptMagic)) || len(f) < len(keptMagic)+32 {
		return ID{}, false
	}
	return ID(f[len(keptMagic) : len(keptMagic)+32]), true
}

// decodeKept rebuilds the manifest of kept form f (see keptBase) from base, the regions of its
// base. It never panics on any input; it checks what Decode does but the canonical form, which
// encoding the result checks. The result shares no memory with f or base.
func decodeKept(f []byte, base []Region) (*Manifest, error) {
	if _, ok := keptBase(f); !ok {
		return nil, fmt.Errorf("%w: not a kept form", ErrBadManifest)
	}
	if len(f) > MaxManifestSize {
		return nil, badf("kept form of %d bytes, larger than %d", len(f), MaxManifestSize)
	}
	d := decoder{buf: f, off: len(keptMagic) + 32}
	m := &Manifest{}
	if err := d.headAndRegionsKept(m, base, true); err != nil {
		return nil, err
	}
	return d.meta(m)
}
