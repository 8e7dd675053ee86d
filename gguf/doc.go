// Package gguf reads and writes GGUF files, llama.cpp's model format, and runs nothing: it
// gives the inference runtime a validated Llama model whose tensors are mapped in place.
//
// # Layers
//
//   - File (Parse, OpenFile): any GGUF v2 or v3 file, little-endian, following ggml's
//     docs/gguf.md: header, metadata of every value type (nested arrays included), tensor infos,
//     general.alignment (default 32), tensor data at aligned offsets. The file is mmap'd
//     read-only (read into memory where mmap is unavailable). Every count, length and offset is
//     checked against the file size and sanity limits; errors wrap ErrFormat or ErrUnsupported
//     and name the key or tensor and the offset. Tensors of types other than F32, F16, BF16 and
//     Q8_0 are refused by name.
//   - Model (Open, NewModel): a File validated as a llama-architecture model: Hyper, every
//     tensor present with the shape the hyperparameters imply, the Fingerprint, the Tokenizer.
//   - Writer (NewWriter, Write, WriteFile): streams spec-exact GGUF v3 files.
//   - SynthSpec (Synth, Preset): synthetic llama models with deterministic weights, streamed to
//     disk; the "tiny" and "llama-3.2-1b" presets.
//   - Package dtype: F16/BF16/Q8_0 conversions shared with the compute kernels.
//
// # Tensor layout
//
// Dims follow ggml: Dims[0] is the row length. A weight matrix used as y = W·x with n_in inputs
// and n_out outputs has Dims {n_in, n_out} and is stored as n_out rows of n_in values (Q8_0: of
// n_in/32 blocks), row r holding the weights of output r. token_embd.weight is {dim, vocab}: row
// t is token t's embedding, and with tied embeddings the same rows give the logits.
//
// # Seams for later work
//
//   - Quantized types: a new type (the K-quants) needs a block shape in typeTraits, a dtype
//     converter and kernels; the reader then accepts it with no other change.
//   - Llama 3 rope scaling: files carrying llama.rope.scaling.type other than "none",
//     rope.scale_linear or a rope_freqs.weight tensor are refused (ErrUnsupported) in hyperFrom /
//     NewModel; supporting them means adding the factors to Hyper and the frequencies to the
//     RoPE op.
//   - Real tokenizers: Tokenizer handles byte-level "llama" vocabularies (the synthetic ones,
//     and real SentencePiece vocabularies by byte fallback only). NewTokenizer is where a
//     merge-based SentencePiece or a "gpt2" BPE tokenizer would be chosen by tokenizer.ggml.model.
//   - Other architectures: hyperFrom refuses anything but general.architecture = "llama".
//
// # Compatibility
//
// Synthetic files were checked once by hand (not in CI: it needs npm packages) with
// @huggingface/gguf 0.4.6, which parses every key and tensor info, and with llama.cpp through
// node-llama-cpp 3.22.1 on the CPU: it loads the tiny preset in F32, F16, BF16 and Q8_0 and the
// llama-3.2-1b preset in F16, tokenizes text exactly as Tokenizer.Encode does, decodes filler
// tokens as "[tN]", and its greedy next token matches the float64 reference pass in the tests
// (27585 after [1 72 259 105] on tiny, 28803 after [1 72 259] on llama-3.2-1b F16, seed 0).
//
// # Concurrency and lifetime
//
// File, Model and Tokenizer are immutable after construction and safe for concurrent use.
// Tensor bytes alias the read-only mapping: valid until Close, never to be written.
package gguf
