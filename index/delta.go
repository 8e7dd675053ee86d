package index

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"

	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
)

// # Stored forms of a manifest (index schema 2)
//
// The manifests bucket maps a manifest's ID to one of two forms:
//
//	full   the canonical encoding itself (starts with "DSM" 0x01)
//	delta  "DSMd", the ID of a base manifest (32 bytes), then operations until the end:
//	         0x00 offset uvarint, n uvarint   copy n bytes of the base's canonical encoding
//	         0x01 n uvarint, n bytes           these bytes
//
// A delta's base is stored full (no chains: one look-up and one copy rebuild any manifest) and is
// an ancestor of the manifest (its parent, or its parent's base), so garbage collection, which
// keeps every ancestor of a kept manifest, keeps it (and also marks bases explicitly). Every
// reader rebuilds the canonical bytes (storedBytes) and checks them against the ID as before; the
// encoding and the ID of a manifest do not depend on how it is stored.
//
// A checkpoint's manifest lists every KV block of the whole context and its parent's lists
// differ only at their ends, so a delta against the session's last full manifest is small (the
// new block references and the metadata) where the full form grows with the context (143 KB at
// 4096 positions of the Llama-3.2-1B shape): the commit's transaction writes and syncs a few
// pages instead of dozens. A delta that would exceed maxDeltaFraction of the full form is not
// used, so the session's next manifests take that one, stored full, as their base.

const deltaMagic = "DSMd"

// maxDeltaFraction: a delta larger than this fraction of the full form is stored full instead.
const maxDeltaFraction = 4

const (
	opCopy    = 0
	opLiteral = 1
)

// storedBytes returns the canonical bytes of a manifest stored as v in mb (see the forms above):
// v itself when it is full, otherwise v rebuilt from its base. A value in neither form is
// returned as it is (the caller's hash check or Decode refuses it). The result may alias the
// transaction's memory: valid only during it, not to be modified.
func storedBytes(mb *bolt.Bucket, v []byte) ([]byte, error) {
	if !bytes.HasPrefix(v, []byte(deltaMagic)) {
		return v, nil
	}
	if len(v) < len(deltaMagic)+32 {
		return nil, fmt.Errorf("delta form of %d bytes", len(v))
	}
	base := mb.Get(v[len(deltaMagic) : len(deltaMagic)+32])
	if base == nil {
		return nil, fmt.Errorf("delta base %x not found", v[len(deltaMagic):len(deltaMagic)+32])
	}
	if !bytes.HasPrefix(base, []byte(manifestMagic)) {
		return nil, fmt.Errorf("delta base %x is not stored full", v[len(deltaMagic):len(deltaMagic)+32])
	}
	return applyDelta(base, v[len(deltaMagic)+32:])
}

// applyDelta rebuilds bytes from base and the operations ops, checking every bound.
func applyDelta(base, ops []byte) ([]byte, error) {
	out := make([]byte, 0, len(base)+len(ops))
	for len(ops) > 0 {
		op := ops[0]
		ops = ops[1:]
		a, n := binary.Uvarint(ops)
		if n <= 0 {
			return nil, fmt.Errorf("delta: bad operand")
		}
		ops = ops[n:]
		switch op {
		case opCopy:
			b, n := binary.Uvarint(ops)
			if n <= 0 {
				return nil, fmt.Errorf("delta: bad copy length")
			}
			ops = ops[n:]
			if a > uint64(len(base)) || b > uint64(len(base))-a {
				return nil, fmt.Errorf("delta: copy of %d bytes at %d outside a base of %d", b, a, len(base))
			}
			out = append(out, base[a:a+b]...)
		case opLiteral:
			if a > uint64(len(ops)) {
				return nil, fmt.Errorf("delta: literal of %d bytes, %d left", a, len(ops))
			}
			out = append(out, ops[:a]...)
			ops = ops[a:]
		default:
			return nil, fmt.Errorf("delta: unknown operation %d", op)
		}
		if len(out) > MaxManifestSize {
			return nil, fmt.Errorf("delta: larger than %d bytes", MaxManifestSize)
		}
	}
	return out, nil
}

// refLayout is where a manifest's regions' chunk references lie in its canonical encoding.
type refLayout struct {
	regions []Region
	refsAt  []int // offset of region i's first chunk reference
	end     int   // offset of the metadata (after the last region)
	size    int   // length of the canonical encoding
}

// layoutOf computes m's refLayout from its kind and regions, as encode writes them; size is the
// length of data, m's canonical encoding.
func layoutOf(m *Manifest, size int) refLayout {
	l := refLayout{regions: m.Regions, refsAt: make([]int, len(m.Regions)), size: size}
	at := len(manifestMagic) + uvarintLen(uint64(len(m.Kind))) + len(m.Kind) + len(m.Parent) + uvarintLen(uint64(len(m.Regions)))
	for i, r := range m.Regions {
		at += uvarintLen(uint64(len(r.Name))) + len(r.Name) + uvarintLen(uint64(len(r.Chunks)))
		l.refsAt[i] = at
		at += refsLen(r.Chunks)
	}
	l.end = at
	return l
}

// refsLen is the length of the encoding of refs.
func refsLen(refs []ChunkRef) int {
	n := len(refs) * len(cas.Digest{})
	for i := range refs {
		n += uvarintLen(uint64(refs[i].Length))
	}
	return n
}

func uvarintLen(v uint64) int {
	return (bits.Len64(v|1) + 6) / 7
}

// makeDelta returns the delta form of the manifest with canonical encoding data and refLayout nl
// against the base whose canonical encoding is base, with refLayout bl: region i's chunk
// references that repeat the base's region i from its start are copied, everything else is
// literal. It returns nil when the delta would not pay (see maxDeltaFraction) or when the
// rebuilt bytes would differ from data (never, unless a refLayout is wrong: then the full form is
// stored, never a wrong delta).
func makeDelta(baseID ID, base []byte, bl refLayout, data []byte, nl refLayout) []byte {
	if len(base) != bl.size || len(data) != nl.size {
		return nil
	}
	out := make([]byte, 0, 4<<10)
	out = append(out, deltaMagic...)
	out = append(out, baseID[:]...)
	pos := 0 // data[:pos] is in out
	literal := func(end int) {
		if end > pos {
			out = append(out, opLiteral)
			out = binary.AppendUvarint(out, uint64(end-pos))
			out = append(out, data[pos:end]...)
			pos = end
		}
	}
	for i, r := range nl.regions {
		if i >= len(bl.regions) || bl.regions[i].Name != r.Name {
			continue
		}
		old := bl.regions[i].Chunks
		k := commonRefs(r.Chunks, old)
		if k == 0 {
			continue
		}
		n := refsLen(r.Chunks[:k])
		literal(nl.refsAt[i])
		out = append(out, opCopy)
		out = binary.AppendUvarint(out, uint64(bl.refsAt[i]))
		out = binary.AppendUvarint(out, uint64(n))
		pos += n
		if len(out) > len(data)/maxDeltaFraction {
			return nil
		}
	}
	// The metadata: a checkpoint's token history (its last entry, "tokens") extends the
	// base's, so the base's last bytes recur near the end: found by their last 64 bytes and
	// extended backwards, they are copied.
	const anchor, minRun = 64, 256
	if bt := base[min(bl.end, len(base)):]; pos <= nl.end && nl.end <= len(data) && len(bt) >= minRun {
		nt := data[nl.end:]
		if p := bytes.LastIndex(nt, bt[len(bt)-anchor:]); p >= 0 {
			i, j := len(bt)-anchor, p
			// Backwards a run at a time while the runs are equal, then byte by byte.
			const run = 256
			for i >= run && j >= run && bytes.Equal(bt[i-run:i], nt[j-run:j]) {
				i, j = i-run, j-run
			}
			for i > 0 && j > 0 && bt[i-1] == nt[j-1] {
				i, j = i-1, j-1
			}
			if n := len(bt) - i; n >= minRun && j+n <= len(nt) {
				literal(nl.end + j)
				out = append(out, opCopy)
				out = binary.AppendUvarint(out, uint64(bl.end+i))
				out = binary.AppendUvarint(out, uint64(n))
				pos += n
			}
		}
	}
	literal(len(data))
	if len(out) > len(data)/maxDeltaFraction {
		return nil
	}
	// Literals are data's own bytes; each copy must repeat data where it lands. Checked here,
	// without rebuilding data, so a wrong refLayout yields no delta rather than a wrong one.
	if !copiesMatch(base, out[len(deltaMagic)+32:], data) {
		return nil
	}
	return out
}

// copiesMatch reports whether ops, applied to base, rebuild data: every operation parses and
// lies within bounds, each copy's bytes equal data's at the same place, and the output ends
// exactly at data's end. Literal bytes are taken as they are (makeDelta takes them from data).
func copiesMatch(base, ops, data []byte) bool {
	pos := 0
	for len(ops) > 0 {
		op := ops[0]
		a, n := binary.Uvarint(ops[1:])
		if n <= 0 {
			return false
		}
		ops = ops[1+n:]
		switch op {
		case opCopy:
			m, k := binary.Uvarint(ops)
			if k <= 0 || a > uint64(len(base)) || m > uint64(len(base))-a || m > uint64(len(data)-pos) {
				return false
			}
			ops = ops[k:]
			if !bytes.Equal(base[a:a+m], data[pos:pos+int(m)]) {
				return false
			}
			pos += int(m)
		case opLiteral:
			if a > uint64(len(ops)) || a > uint64(len(data)-pos) || !bytes.Equal(ops[:a], data[pos:pos+int(a)]) {
				return false
			}
			ops = ops[a:]
			pos += int(a)
		default:
			return false
		}
	}
	return pos == len(data)
}
