package gguf

import (
	"fmt"
	"strings"
)

// Token types of tokenizer.ggml.token_type (llama.cpp's numbering).
const (
	TokenNormal      = 1
	TokenUnknown     = 2
	TokenControl     = 3
	TokenUserDefined = 4
	TokenUnused      = 5
	TokenByte        = 6
)

// SpaceMarker is SentencePiece's visible space, U+2581, which llama-style vocabularies use in
// place of ' '.
const SpaceMarker = "\u2581"

// Tokenizer is a byte-level tokenizer over a llama-style (SentencePiece, tokenizer.ggml.model =
// "llama") vocabulary that has the 256 byte tokens "<0x00>".."<0xFF>".
//
// Encode maps each byte of the text to its byte token, except ' ', which maps to the "▁" token
// when the vocabulary has one (as SentencePiece escapes spaces). It never uses multi-byte
// tokens: for the synthetic vocabularies this is exactly what llama.cpp's tokenizer produces
// too; for a real vocabulary it is a valid but longer encoding than the merges the model was
// trained with (real tokenizers are later work).
//
// Decode is the inverse for everything Encode produces, and concatenates: Decode(a+b) ==
// Decode(a)+Decode(b), so tokens can be decoded one at a time while generating. Byte tokens
// yield their byte (the result may be invalid UTF-8 when a multi-byte character is split);
// normal tokens yield their text with "▁" turned back into ' ' — the synthetic filler tokens are
// named "[tN]" and so decode to that visible placeholder; control and unknown tokens (<unk>,
// <s>, </s>) and unused tokens yield nothing.
//
// A Tokenizer is immutable and safe for concurrent use.
type Tokenizer struct {
	tokens  []string
	types   []int32
	byteID  [256]int32
	spaceID int32 // id of "▁", or -1

	BOS, EOS, UNK int32 // special token ids (-1 when the vocabulary has none)
	AddBOS        bool  // tokenizer.ggml.add_bos_token (default true for llama vocabularies)
}

// NewTokenizer builds the tokenizer from f's tokenizer.ggml.* metadata. It fails with
// ErrUnsupported for tokenizer models other than "llama" and for vocabularies without the 256
// byte tokens.
func NewTokenizer(f *File) (*Tokenizer, error) {
	mv, ok := f.Get("tokenizer.ggml.model")
	if !ok {
		return nil, fmt.Errorf("gguf: tokenizer: %w: metadata key tokenizer.ggml.model", ErrNotFound)
	}
	model, _ := mv.Str()
	if model != "llama" {
		return nil, fmt.Errorf("gguf: tokenizer: %w: tokenizer model %q (only byte-level \"llama\" vocabularies for now)", ErrUnsupported, truncate(model))
	}
	tv, ok := f.Get("tokenizer.ggml.tokens")
	tokens, isStrings := tv.Data.([]string)
	if !ok || !isStrings || tv.Type != TypeArray {
		return nil, fmt.Errorf("gguf: tokenizer: %w: tokenizer.ggml.tokens missing or not an array of strings", ErrFormat)
	}
	if len(tokens) > maxVocab {
		return nil, fmt.Errorf("gguf: tokenizer: %w: %d tokens, limit %d", ErrFormat, len(tokens), maxVocab)
	}
	t := &Tokenizer{tokens: tokens, spaceID: -1, BOS: -1, EOS: -1, UNK: -1, AddBOS: true}
	if yv, ok := f.Get("tokenizer.ggml.token_type"); ok {
		types, isI32 := yv.Data.([]int32)
		if !isI32 || len(types) != len(tokens) {
			return nil, fmt.Errorf("gguf: tokenizer: %w: tokenizer.ggml.token_type must be an int32 array as long as the %d tokens", ErrFormat, len(tokens))
		}
		t.types = types
	}
	for i := range t.byteID {
		t.byteID[i] = -1
	}
	for id, s := range tokens {
		if b, ok := byteToken(s); ok && t.byteID[b] < 0 && (t.types == nil || t.types[id] == TokenByte) {
			t.byteID[b] = int32(id)
		}
		if s == SpaceMarker && t.spaceID < 0 && t.typ(int32(id)) == TokenNormal {
			t.spaceID = int32(id)
		}
	}
	for b, id := range t.byteID {
		if id < 0 {
			return nil, fmt.Errorf("gguf: tokenizer: %w: vocabulary has no byte token <0x%02X>", ErrUnsupported, b)
		}
	}
	special := func(key string, def int32) (int32, error) {
		v, ok := f.Get(key)
		if !ok {
			if int(def) >= len(tokens) {
				return -1, nil
			}
			return def, nil
		}
		n, ok := v.Uint()
		if !ok || n >= uint64(len(tokens)) {
			return -1, fmt.Errorf("gguf: tokenizer: %w: %s = %v is not a token id below %d", ErrFormat, key, v, len(tokens))
		}
		return int32(n), nil
	}
	var err error
	if t.UNK, err = special("tokenizer.ggml.unknown_token_id", 0); err != nil {
		return nil, err
	}
	if t.BOS, err = special("tokenizer.ggml.bos_token_id", 1); err != nil {
		return nil, err
	}
	if t.EOS, err = special("tokenizer.ggml.eos_token_id", 2); err != nil {
		return nil, err
	}
	if v, ok := f.Get("tokenizer.ggml.add_bos_token"); ok {
		b, isBool := v.Data.(bool)
		if !isBool {
			return nil, fmt.Errorf("gguf: tokenizer: %w: tokenizer.ggml.add_bos_token has type %s, want bool", ErrFormat, v.Type)
		}
		t.AddBOS = b
	}
	return t, nil
}

// byteToken parses "<0xAB>".
func byteToken(s string) (byte, bool) {
	if len(s) != 6 || s[:3] != "<0x" || s[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(s[3:5]) {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | (c - '0')
		case 'A' <= c && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}

func (t *Tokenizer) typ(id int32) int32 {
	if t.types == nil {
		if _, ok := byteToken(t.tokens[id]); ok {
			return TokenByte
		}
		return TokenNormal
	}
	return t.types[id]
}

// VocabSize returns the number of tokens.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// Token returns the text of token id as stored in the vocabulary ("<0x41>", "▁", "[t300]").
func (t *Tokenizer) Token(id int32) (string, error) {
	if id < 0 || int(id) >= len(t.tokens) {
		return "", fmt.Errorf("gguf: token id %d out of range [0, %d)", id, len(t.tokens))
	}
	return t.tokens[id], nil
}

// Encode returns the token ids of text, preceded by BOS when bos is true and the vocabulary has
// one. See Tokenizer for the mapping.
func (t *Tokenizer) Encode(text string, bos bool) []int32 {
	out := make([]int32, 0, len(text)+1)
	if bos && t.BOS >= 0 {
		out = append(out, t.BOS)
	}
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c == ' ' && t.spaceID >= 0 {
			out = append(out, t.spaceID)
			continue
		}
		out = append(out, t.byteID[c])
	}
	return out
}

// Decode returns the text of ids (see Tokenizer). An id outside the vocabulary is an error.
func (t *Tokenizer) Decode(ids []int32) (string, error) {
	var sb strings.Builder
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.tokens) {
			return sb.String(), fmt.Errorf("gguf: token id %d out of range [0, %d)", id, len(t.tokens))
		}
		switch t.typ(id) {
		case TokenByte:
			b, ok := byteToken(t.tokens[id])
			if !ok {
				return sb.String(), fmt.Errorf("gguf: byte token %d is %q, not <0xXX>", id, truncate(t.tokens[id]))
			}
			sb.WriteByte(b)
		case TokenNormal, TokenUserDefined:
			sb.WriteString(strings.ReplaceAll(t.tokens[id], SpaceMarker, " "))
		}
	}
	return sb.String(), nil
}

// SynthVocab returns the synthetic byte-level vocabulary of n tokens (n >= 260) that Synth writes,
// laid out as llama-style vocabularies are: 0 "<unk>" (unknown), 1 "<s>" (BOS, control),
// 2 "</s>" (EOS, control), 3..258 the byte tokens "<0x00>".."<0xFF>" (byte), 259 "▁" (the space,
// normal), then filler tokens "[t260]".."[tN-1]" (normal; reachable only by sampling, never by
// encoding text, since no shorter token leads to them). Scores: 0 for all but the fillers, which
// get -id so they rank below everything else.
func SynthVocab(n int) (tokens []string, scores []float32, types []int32) {
	tokens = make([]string, n)
	scores = make([]float32, n)
	types = make([]int32, n)
	tokens[0], types[0] = "<unk>", TokenUnknown
	tokens[1], types[1] = "<s>", TokenControl
	tokens[2], types[2] = "</s>", TokenControl
	for b := 0; b < 256; b++ {
		tokens[3+b], types[3+b] = fmt.Sprintf("<0x%02X>", b), TokenByte
	}
	tokens[259], types[259] = SpaceMarker, TokenNormal
	for i := 260; i < n; i++ {
		tokens[i], types[i], scores[i] = fmt.Sprintf("[t%d]", i), TokenNormal, -float32(i)
	}
	return tokens, scores, types
}

// synthVocabMin is the smallest vocabulary SynthVocab can lay out.
const synthVocabMin = 260

// tokenizerKV returns the tokenizer metadata for the synthetic vocabulary of n tokens, with the
// keys a llama.cpp-compatible loader reads.
func tokenizerKV(n int) []KV {
	tokens, scores, types := SynthVocab(n)
	return []KV{
		{"tokenizer.ggml.model", String("llama")},
		{"tokenizer.ggml.tokens", Strings(tokens)},
		{"tokenizer.ggml.scores", Float32s(scores)},
		{"tokenizer.ggml.token_type", Int32s(types)},
		{"tokenizer.ggml.unknown_token_id", Uint32(0)},
		{"tokenizer.ggml.bos_token_id", Uint32(1)},
		{"tokenizer.ggml.eos_token_id", Uint32(2)},
		{"tokenizer.ggml.add_bos_token", Bool(true)},
		{"tokenizer.ggml.add_eos_token", Bool(false)},
		{"tokenizer.ggml.add_space_prefix", Bool(false)},
	}
}
