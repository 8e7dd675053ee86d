package index

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// RefKind separates the namespaces of refs: a tag and a session may share a name.
type RefKind byte

const (
	RefTag     RefKind = 't' // a name a user gave a manifest (put --tag)
	RefSession RefKind = 's' // a live session's head checkpoint
)

func (k RefKind) String() string {
	switch k {
	case RefTag:
		return "tag"
	case RefSession:
		return "session"
	}
	return fmt.Sprintf("refkind(%d)", byte(k))
}

func (k RefKind) valid() bool { return k == RefTag || k == RefSession }

// MaxRefNameLen is the longest ref name.
const MaxRefNameLen = 128

// ValidRefName checks a ref name: 1..128 characters of [A-Za-z0-9._-], not starting with a dot.
// The error wraps ErrBadRefName.
func ValidRefName(name string) error {
	if len(name) == 0 || len(name) > MaxRefNameLen {
		return fmt.Errorf("%w %q: want 1..%d characters", ErrBadRefName, trunc(name), MaxRefNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("%w %q: must not start with a dot", ErrBadRefName, trunc(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w %q: character %d is not one of [A-Za-z0-9._-]", ErrBadRefName, trunc(name), i)
		}
	}
	return nil
}

func refKey(kind RefKind, name string) ([]byte, error) {
	if !kind.valid() {
		return nil, fmt.Errorf("%w: unknown ref kind %d", ErrBadRefName, byte(kind))
	}
	if err := ValidRefName(name); err != nil {
		return nil, err
	}
	return append([]byte{byte(kind)}, name...), nil
}

// Ref is a named pointer at a manifest.
type Ref struct {
	Kind   RefKind
	Name   string
	Target ID
}

// RefChange is one entry of a ref's history: at Time the ref moved from Old to New. A zero Old
// means the ref was created, a zero New that it was deleted.
type RefChange struct {
	Seq      uint64
	Time     time.Time
	Old, New ID
}

// Ref returns the manifest a ref points at, or ErrRefNotFound.
func (ix *Index) Ref(kind RefKind, name string) (ID, error) {
	key, err := refKey(kind, name)
	if err != nil {
		return ID{}, err
	}
	var id ID
	err = ix.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRefs).Get(key)
		if v == nil {
			return fmt.Errorf("%w: %s %q", ErrRefNotFound, kind, name)
		}
		if len(v) != len(id) {
			return fmt.Errorf("%w: %s %q: value of %d bytes", ErrCorruptIndex, kind, name, len(v))
		}
		copy(id[:], v)
		return nil
	})
	return id, err
}

// SetRef points a ref at target regardless of where it points now, and returns where it
// pointed before (zero: nowhere). A zero target deletes the ref. target must be a stored
// manifest. Setting a ref to where it already points changes nothing and logs nothing.
func (ix *Index) SetRef(ctx context.Context, kind RefKind, name string, target ID) (old ID, err error) {
	err = ix.moveRef(ctx, kind, name, func(cur ID) error { old = cur; return nil }, target)
	return old, err
}

// CompareAndSwapRef moves a ref from expected to target atomically. expected zero means the ref
// must not exist; target zero deletes it. When the ref is not at expected, nothing changes and
// the error wraps ErrConflict. target must be a stored manifest.
func (ix *Index) CompareAndSwapRef(ctx context.Context, kind RefKind, name string, expected, target ID) error {
	return ix.Commit(ctx, Commit{Ref: &RefMove{Kind: kind, Name: name, Expected: expected, Target: target}})
}

// casCheck is a compare-and-swap's condition: the ref is at expected.
func casCheck(kind RefKind, name string, expected ID) func(cur ID) error {
	return func(cur ID) error {
		if cur != expected {
			return fmt.Errorf("%w: %s %q is at %s, expected %s", ErrConflict, kind, name, idOrNone(cur), idOrNone(expected))
		}
		return nil
	}
}

func idOrNone(id ID) string {
	if id.IsZero() {
		return "(none)"
	}
	return id.String()
}

func (ix *Index) moveRef(ctx context.Context, kind RefKind, name string, check func(cur ID) error, target ID) error {
	key, err := refKey(kind, name)
	if err != nil {
		return err
	}
	if err := ctxErr(ctx); err != nil {
		return err
	}
	now := ix.now()
	err = ix.update(func(tx *bolt.Tx) error { return moveRefTx(tx, key, check, target, now) })
	if err != nil {
		return fmt.Errorf("move %s %q to %s: %w", kind, name, idOrNone(target), err)
	}
	return nil
}

// moveRefTx moves the ref at key to target in tx if check accepts where it points now, and logs
// the change in its history (a move to where it already points changes nothing).
func moveRefTx(tx *bolt.Tx, key []byte, check func(cur ID) error, target ID, now time.Time) error {
	refs := tx.Bucket(bucketRefs)
	var cur ID
	if v := refs.Get(key); v != nil {
		if len(v) != len(cur) {
			return fmt.Errorf("%w: %s %q: value of %d bytes", ErrCorruptIndex, RefKind(key[0]), key[1:], len(v))
		}
		copy(cur[:], v)
	}
	if err := check(cur); err != nil {
		return err
	}
	if cur == target {
		return nil
	}
	if target.IsZero() {
		if err := refs.Delete(key); err != nil {
			return err
		}
	} else {
		if tx.Bucket(bucketManifests).Get(target[:]) == nil {
			return fmt.Errorf("%w: %s", ErrManifestNotFound, target)
		}
		if err := refs.Put(key, target[:]); err != nil {
			return err
		}
	}
	hb, err := tx.Bucket(bucketHistory).CreateBucketIfNotExists(key)
	if err != nil {
		return err
	}
	seq, err := hb.NextSequence()
	if err != nil {
		return err
	}
	entry := putTime(make([]byte, 0, 8+64), now)
	entry = append(entry, cur[:]...)
	entry = append(entry, target[:]...)
	return hb.Put(binary.BigEndian.AppendUint64(nil, seq), entry)
}

// Refs lists the refs of one kind (0: all kinds), ordered by kind then name.
func (ix *Index) Refs(kind RefKind) ([]Ref, error) {
	var out []Ref
	err := ix.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
			r, err := decodeRef(k, v)
			if err != nil {
				return err
			}
			if kind == 0 || r.Kind == kind {
				out = append(out, r)
			}
			return nil
		})
	})
	return out, err
}

func decodeRef(k, v []byte) (Ref, error) {
	if len(k) < 2 || !RefKind(k[0]).valid() || ValidRefName(string(k[1:])) != nil || len(v) != 32 {
		return Ref{}, fmt.Errorf("%w: ref entry %q", ErrCorruptIndex, trunc(string(k)))
	}
	r := Ref{Kind: RefKind(k[0]), Name: string(k[1:])}
	copy(r.Target[:], v)
	return r, nil
}

// RefHistory returns every change of a ref, oldest first. A ref that never existed has an empty
// history (and no error). History outlives the ref and names manifests that garbage collection
// may since have removed.
func (ix *Index) RefHistory(kind RefKind, name string) ([]RefChange, error) {
	key, err := refKey(kind, name)
	if err != nil {
		return nil, err
	}
	var out []RefChange
	err = ix.view(func(tx *bolt.Tx) error {
		hb := tx.Bucket(bucketHistory).Bucket(key)
		if hb == nil {
			return nil
		}
		return hb.ForEach(func(k, v []byte) error {
			if len(k) != 8 || len(v) != 8+64 {
				return fmt.Errorf("%w: history of %s %q: entry of %d+%d bytes", ErrCorruptIndex, kind, name, len(k), len(v))
			}
			c := RefChange{Seq: binary.BigEndian.Uint64(k), Time: getTime(v[:8])}
			copy(c.Old[:], v[8:40])
			copy(c.New[:], v[40:72])
			out = append(out, c)
			return nil
		})
	})
	return out, err
}
