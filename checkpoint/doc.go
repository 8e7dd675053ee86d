package checkpoint

// # Manifest schema (checkpoint schema 1)
//
// A checkpoint is an index manifest of kind "checkpoint" (see index.Manifest for the canonical
// encoding; the checkpoint ID is the BLAKE3 of those bytes). Its parent is the checkpoint it
// follows: the previous checkpoint of its session, or the checkpoint a fork started from; zero
// for a session's first.
//
// Regions, in this order:
//
//	kv/0 … kv/L-1  one per layer: the layer's KV blocks 0, 1, … ceil(position/block_size)-1,
//	               one chunk per block, each exactly kv.block_bytes long: the block region's
//	               bytes as they lie in linear memory (K [block][kv heads][head dim], then V,
//	               little-endian kv.dtype; positions not yet written are zero)
//	state          the guest's small state (state.go): position, sampler settings, RNG state,
//	               token history and last logits, in the guest's versioned format: the head
//	               (80 + 4·position bytes) as one chunk, then the logits in chunks of at most
//	               LogitsChunk bytes (checkpoints taken before this layout: one chunk for all;
//	               readers accept any split); or, with logits.top K, the head and then one
//	               chunk of the K best logits (K × (u32 id, f32 logit), best first: see
//	               DecodeTopLogits) in place of the vector
//
// Metadata (typed values):
//
//	checkpoint.schema  uint64   1
//	model.fingerprint  digest   gguf.Model.Fingerprint (hyperparameters and every tensor byte)
//	model.source       string   where the model came from: "builtin" or a file path (optional)
//	model.vocab        uint64   vocabulary size (the logits' length)
//	guest.fingerprint  digest   BLAKE3 of the guest module (guest.Fingerprint)
//	guest.abi          uint64   the guest's ABI version
//	kv.layers, kv.kv_heads, kv.head_dim, kv.block_size, kv.block_bytes   uint64
//	kv.dtype           string   "f16" or "f32"
//	position           uint64   tokens fed
//	tokens             bytes    the token history, position × little-endian int32
//	sampler.temp       float64  (a float32 widened exactly)
//	sampler.top_k      uint64
//	sampler.top_p      float64
//	sampler.seed       uint64
//	sampler.rng        bytes    the RNG state, 4 × little-endian uint64 (xoshiro256**)
//	logits             bool     whether the state holds the last logits (always, past position 0)
//	logits.top         uint64   K: the state holds only the K best logits (absent: the whole
//	                            vector, as in every checkpoint taken before top logits)
//	state.format       uint64   the guest state format version, 1
//
// The token history, sampler and RNG state are both in the metadata (for inspection, forks and
// the prefix cache, without reading chunks) and in the state region (what the guest loads);
// restore checks they agree. The checkpoint holds the last logits, so the first token after a
// restore needs no forward pass.
//
// # Top logits
//
// The logits are the sampler's input, and most samplers read only the best few: greedy the
// argmax, top-k sampling its k (engine.Sampler.Candidates). A checkpoint whose sampler reads
// at most K = max(CaptureOptions.TopLogits (default DefaultTopLogits, 64), what it reads)
// keeps just those K logits, 8·K bytes, instead of the vector (513 KB at the Llama-3 128256
// vocabulary: about 12% of the final KV of an 8-turn conversation's eight checkpoints before
// this, and a hash, write and sync of 513 KB in every incremental checkpoint). It keeps the
// whole vector when its sampler reads all of it (a temperature with top-k 0, with or
// without top-p: the softmax covers the vocabulary), when K entries would not be smaller
// (K ≥ vocab/2), and with CaptureOptions.KeepLogits. A restore writes -Inf into the guest's
// logits buffer and the K values at their ids: the same k best as the full vector for every
// k ≤ K, ties, -Inf and NaN included (state.go), so the sampler draws the same tokens without
// a forward pass. The restored instance knows its logits are partial
// (engine.Instance.MarkLogitsTop): a sampler that reads more (changed after the restore), or
// an explicit request for the vector (Logits), first recomputes the last position's logits
// with one token's forward pass, bit-identical to the original on the CPU backend
// (engine.Instance.CompleteLogits). Checkpoints with the whole vector are read as before;
// an older driftstore refuses one with top logits (its state region's length disagrees).
//
// # Capture
//
// Capture stores one chunk per KV block region in use, in parallel. KV is append-only, so a
// block the parent checkpoint holds is unchanged when the parent had seen every position the
// block holds now (min((b+1)·block_size, position) ≤ the parent's position, with the same
// tokens): its chunk is taken from the parent's manifest without reading the block. A
// checkpoint after T new tokens therefore hashes and stores only the ceil(T/block_size)+1 blocks
// per layer those tokens touched, plus the small state. The block table comes from the engine,
// which asks the guest only for blocks allocated since it last asked (engine.Instance.KVTable).
// The chunks go through one store batch (cas.NewBatch) and index.CommitBatch: where the store
// journals (a pack store), the chunks and a journal entry holding the index commit (chunk
// records, the manifest, the head's move) are made durable by one barrier, and the index file
// catches up in the background; elsewhere the chunks' barrier comes first and one index
// transaction follows. Either way a chunk is never recorded without the manifest or the
// manifest committed without its chunks durable and recorded. The manifest of the whole
// context (a list of chunk references, about 35 bytes per block: 143 KB at 4096 positions of
// the Llama-3.2-1B shape) is handed to the index unencoded, sharing the checkpoint's lists
// (index.Defer: the committed Checkpoint's KV and State lists are read-only from then on). When
// the parent is a manifest the index committed recently, the journal entry carries the
// manifest in kept form — the references it shares with its parent left out, so the entry
// grows with the new tokens — written before the manifest is encoded; the encoding, its hash
// (the ID), the comparison with the parent (a run of references at a time, looking up only the
// chunks the parent does not name at the same place) and the commit's check run while the
// entry's barrier does. The index stores the manifest as a delta against the session's last
// full manifest (index/delta.go). What still grows with the context is that work beside the
// barrier (≈ 0.2 ms of CPU at 4096 positions on this project's 2-core machine) and the
// snapshot's reference lists.
// Result's phases say where the time goes (BenchmarkIncremental1B measures them).
// A session's head moves by compare-and-swap in the same commit (CaptureOptions.MoveRef; package
// session).
//
// # Snapshot, then commit
//
// Capture is two steps, which a caller may also take apart: TakeSnapshot reads the guest's state
// and its KV block table (guest calls, each ending with the backend's barrier, so a GPU's
// write-through KV is in linear memory) and copies the state and exactly the blocks Capture
// would store (those not known from the parent or Reuse) into buffers the snapshot owns (the
// blocks from a pool per block size); no hashing, no I/O. Snapshot.Commit does all the rest:
// hashing, codec, the batch and its barrier, the manifest, the index transaction. A snapshot
// does not refer to the instance, which may run on (write into its last, partial block) or
// close while the commit runs on another goroutine; the committed checkpoint is byte for byte
// what Capture stores for the instance as it was at the snapshot (same manifest ID). Capture
// itself does not copy: it commits before the instance runs again, so its jobs read the live
// memory in place. What a turn waits for when its checkpoint is deferred (session
// Config.DeferCheckpoints) is the snapshot: for 16 new tokens of the 1B shape, the state (the
// head, and the top logits selected, or 513 KB of logits copied), the new blocks of the table
// and one or two 32 KiB blocks per layer (BenchmarkIncremental1B's snap16, bench restore's
// isnap).
//
// # KV codec
//
// CaptureOptions.KVCodec chooses how the store encodes KV blocks: KVCodecFloat (the default)
// hints them as the layout's float type, so f16 blocks are stored as float16 byte planes
// (smaller at rest, restored at about 1 GB/s a core); KVCodecRaw gives no hint, so they stay
// raw (zstd only where it pays) and restore at copy speed. The codec is not part of the
// manifest: digests and checkpoint IDs are the same either way, and a chunk already stored in
// one form is not stored again in the other.
//
// # Restore in place
//
// The state's chunks split where the guest keeps the state apart (the head in its transfer
// buffer, the logits in its logits buffer), so a restore decodes them there directly
// (engine.Instance.StateBuffers), in parallel with the KV blocks, and the first token after a
// restore needs neither a copy of the state nor a forward pass. Top logits are decoded into
// a small buffer, checked, and expanded into the logits buffer (ExpandTopLogits).
//
// # Position 0
//
// Capture refuses an instance that has fed nothing (ErrEmpty): there is no state worth keeping,
// and every state it writes has a head of at least 84 bytes and, past position 0, logits.
