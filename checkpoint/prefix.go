package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/zeebo/blake3"
	bolt "go.etcd.io/bbolt"

	"github.com/driftstore/driftstore/cas"
	"github.com/driftstore/driftstore/index"
)

// PrefixTable is the prefix cache: it maps a chained hash of (model fingerprint, guest
// fingerprint, KV layout, token blocks 0..b) to the chunks that hold block b of every layer, so
// that a new session whose prompt starts with tokens already seen restores those blocks instead
// of computing them.
//
// The index offers no generic bucket, so the table is a bbolt file of its own (by convention
// DATA/cache/prefix.db), one bucket "blocks": chain hash (32 bytes) → Layers × 32-byte chunk
// digests. It is a cache: entries are added after a checkpoint commits, never removed, and may
// name chunks that garbage collection has since deleted — callers check presence (Lookup's
// result goes through a restore that verifies every chunk, and falls back to prefilling). It is
// written without fsync; a file that does not open is replaced by an empty one.
//
// Safe for concurrent use within a process; one process at a time opens the file.
type PrefixTable struct {
	db   *bolt.DB
	path string
}

var bucketPrefix = []byte("blocks")

// OpenPrefixTable opens (creating if needed) the table at path.
func OpenPrefixTable(path string) (*PrefixTable, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("prefix table: %w", err)
	}
	open := func() (*bolt.DB, error) {
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: true})
		if err != nil {
			return nil, err
		}
		if err := db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(bucketPrefix)
			return err
		}); err != nil {
			db.Close()
			return nil, err
		}
		return db, nil
	}
	db, err := open()
	if err != nil && !errors.Is(err, bolt.ErrTimeout) {
		// A damaged cache file: start over.
		if rerr := os.Remove(path); rerr == nil {
			db, err = open()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("prefix table %s: %w", path, err)
	}
	return &PrefixTable{db: db, path: path}, nil
}

// Close closes the file.
func (t *PrefixTable) Close() error { return t.db.Close() }

// PrefixKey is what the prefix chain is keyed by besides the tokens.
type PrefixKey struct {
	Model  cas.Digest
	Guest  cas.Digest
	Layout Layout
}

// chainStart is the hash before any block.
func (k PrefixKey) chainStart() [32]byte {
	h := blake3.New()
	h.Write([]byte("driftstore-prefix-v1\x00"))
	h.Write(k.Model[:])
	h.Write(k.Guest[:])
	fmt.Fprintf(h, "%d/%d/%d/%d/%d/%s", k.Layout.Layers, k.Layout.KVHeads, k.Layout.HeadDim,
		k.Layout.BlockSize, k.Layout.BlockBytes, k.Layout.DType)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Chain returns the chained hashes of the full blocks of tokens: out[b] = H(out[b-1] ‖ tokens of
// block b as little-endian int32), out[-1] being the key's start hash.
func (k PrefixKey) Chain(tokens []int32) [][32]byte {
	bs := k.Layout.BlockSize
	prev := k.chainStart()
	out := make([][32]byte, 0, len(tokens)/bs)
	buf := make([]byte, 32+4*bs)
	for b := 0; (b+1)*bs <= len(tokens); b++ {
		copy(buf, prev[:])
		for i, t := range tokens[b*bs : (b+1)*bs] {
			binary.LittleEndian.PutUint32(buf[32+4*i:], uint32(t))
		}
		prev = blake3.Sum256(buf)
		out = append(out, prev)
	}
	return out
}

// Add records the full blocks of a committed checkpoint. Blocks already in the table are left
// as they are. Cost: hashing the token history plus one small write.
func (t *PrefixTable) Add(cp *Checkpoint) error {
	key := PrefixKey{Model: cp.Model, Guest: cp.Guest, Layout: cp.Layout}
	chain := key.Chain(cp.Tokens)
	if len(chain) == 0 {
		return nil
	}
	err := t.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketPrefix)
		for b, h := range chain {
			if bk.Get(h[:]) != nil {
				continue
			}
			val := make([]byte, 32*cp.Layout.Layers) // bbolt keeps it until the commit
			for l := range cp.KV {
				copy(val[32*l:], cp.KV[l][b].Digest[:])
			}
			if err := bk.Put(h[:], val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prefix table: add %s: %w", cp.ID, err)
	}
	return nil
}

// Lookup returns the longest run of full blocks at the start of tokens, at most maxBlocks of
// them, that the table knows for key, as Blocks (Tokens is the covered prefix). Nothing found
// gives empty Blocks.
func (t *PrefixTable) Lookup(key PrefixKey, tokens []int32, maxBlocks int) (Blocks, error) {
	bs := key.Layout.BlockSize
	if maxBlocks > len(tokens)/bs {
		maxBlocks = len(tokens) / bs
	}
	out := Blocks{KV: make([][]index.ChunkRef, key.Layout.Layers)}
	if maxBlocks <= 0 {
		return out, nil
	}
	chain := key.Chain(tokens[:maxBlocks*bs])
	n := 0
	err := t.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketPrefix)
		for _, h := range chain {
			v := bk.Get(h[:])
			if len(v) != 32*key.Layout.Layers {
				break
			}
			for l := range out.KV {
				var d cas.Digest
				copy(d[:], v[32*l:])
				out.KV[l] = append(out.KV[l], index.ChunkRef{Digest: d, Length: int64(key.Layout.BlockBytes)})
			}
			n++
		}
		return nil
	})
	if err != nil {
		return Blocks{}, fmt.Errorf("prefix table: lookup: %w", err)
	}
	out.Tokens = tokens[:n*bs]
	return out, nil
}
