//go:build wasip1

package main

import (
	"math"
	"slices"
)

// The RNG is xoshiro256** seeded through SplitMix64; its four words live in guest memory (rng)
// and travel with the small state, so a restored instance continues the same random stream.

func setSeed(seed uint64) {
	s := seed
	for i := range rng {
		s += 0x9e3779b97f4a7c15
		z := s
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		rng[i] = z ^ (z >> 31)
	}
}

func rotl(x uint64, k uint) uint64 { return x<<k | x>>(64-k) }

func next64() uint64 {
	r := rotl(rng[1]*5, 7) * 9
	t := rng[1] << 17
	rng[2] ^= rng[0]
	rng[3] ^= rng[1]
	rng[1] ^= rng[2]
	rng[0] ^= rng[3]
	rng[2] ^= t
	rng[3] = rotl(rng[3], 45)
	return r
}

// uniform returns a float64 in [0, 1).
func uniform() float64 { return float64(next64()>>11) * (1.0 / (1 << 53)) }

// logit reads logits[i], treating NaN as -Inf so that ordering is total.
func logit(i int32) float32 {
	l := logits[i]
	if l != l {
		return float32(math.Inf(-1))
	}
	return l
}

// before orders candidates by logit descending, then id ascending: a total, deterministic order.
func before(a, b int32) bool {
	la, lb := logit(a), logit(b)
	if la != lb {
		return la > lb
	}
	return a < b
}

// argmax is the first candidate in the order of before: the lowest id among the largest
// logits, NaN counting as -Inf. One pass over a local slice with plain comparisons (a NaN is
// never greater, and a tie never replaces the earlier id): this loop runs over the whole
// vocabulary every greedy token, and calls per element cost tens of ns in Wasm.
func argmax() int32 {
	ls := logits[:cfg.vocab]
	best := 0
	bl := ls[0]
	if bl != bl {
		bl = float32(math.Inf(-1))
	}
	for i, l := range ls {
		if l > bl {
			best, bl = i, l
		}
	}
	return int32(best)
}

// Sample modes (sample_mode export).
const (
	modeHost  = 0
	modeGuest = 1
)

// sampleNext picks the next token: greedy when temp == 0, else temperature, top-k and top-p
// (nucleus) sampling with the RNG. The same logits, settings and RNG state always give the
// same token, in either sample mode. The selection (argmax over the vocabulary, the k best,
// or the full order for top-p) runs on the host (argmax, top_k); the softmax, the nucleus and
// the draw stay here, so the RNG state never leaves linear memory. It returns -1 (with
// errMsg set) when the host's answer is out of range.
func sampleNext() int32 {
	if sampleMode == modeGuest {
		return sampleRef()
	}
	v := cfg.vocab
	if smp.temp == 0 {
		t := hostArgmax(off(logits), v)
		if t >= v {
			return fail("sample: host argmax returned an id outside the vocabulary")
		}
		return int32(t)
	}
	k := smp.topK
	var c []int32
	var cl []float32
	switch {
	case k > 0 && k < v:
		c, cl = cand[:k], candL[:k]
	case smp.topP < 1:
		// the whole vocabulary, sorted: the nucleus is a prefix of that order
		c, cl = cand[:v], candL[:v]
	default:
		c, cl = cand[:v], candL[:v]
		for i := range c {
			c[i] = int32(i)
			cl[i] = logit(int32(i))
		}
		return draw(c, cl)
	}
	if got := hostTopK(off(logits), v, uint32(len(c)), off(c), off(cl)); got != uint32(len(c)) {
		return fail("sample: host top_k returned a short list")
	}
	for _, id := range c {
		if uint32(id) >= v {
			return fail("sample: host top_k returned an id outside the vocabulary")
		}
	}
	return draw(c, cl)
}

// draw samples from candidates c with logits cl (NaN already -Inf): softmax with temperature
// in float64 relative to the largest logit, then, when top-p < 1, the smallest prefix of c
// (sorted best first) reaching top-p; then one uniform draw. The arithmetic is sampleRef's,
// operation for operation.
func draw(c []int32, cl []float32) int32 {
	maxL := float64(cl[0])
	for _, l := range cl {
		if l := float64(l); l > maxL {
			maxL = l
		}
	}
	p := prob[:len(c)]
	sum := 0.0
	t := float64(smp.temp)
	for j, l := range cl {
		e := math.Exp((float64(l) - maxL) / t)
		p[j] = e
		sum += e
	}
	keep := len(c)
	if smp.topP < 1 {
		lim := float64(smp.topP) * sum
		cum := 0.0
		for j := range p {
			cum += p[j]
			if cum >= lim {
				keep = j + 1
				break
			}
		}
		sum = 0
		for j := 0; j < keep; j++ {
			sum += p[j]
		}
	}
	u := uniform() * sum
	acc := 0.0
	for j := 0; j < keep; j++ {
		acc += p[j]
		if u < acc {
			return c[j]
		}
	}
	return c[keep-1]
}

// sampleRef is the sampler entirely in Wasm (sample mode 1): the reference sampleNext must
// agree with token for token. It selects with argmax, topK and a sort in the guest.
func sampleRef() int32 {
	if smp.temp == 0 {
		return argmax()
	}
	v := int32(cfg.vocab)
	c := cand[:0]
	k := int32(smp.topK)
	if k > 0 && k < v {
		c = topK(c, int(k))
	} else {
		for i := int32(0); i < v; i++ {
			c = append(c, i)
		}
		if smp.topP < 1 {
			slices.SortFunc(c, cmpCand)
		}
	}
	// Softmax with temperature, in float64, relative to the largest logit.
	maxL := float64(logit(c[0]))
	for _, i := range c {
		if l := float64(logit(i)); l > maxL {
			maxL = l
		}
	}
	p := prob[:len(c)]
	sum := 0.0
	t := float64(smp.temp)
	for j, i := range c {
		e := math.Exp((float64(logit(i)) - maxL) / t)
		p[j] = e
		sum += e
	}
	keep := len(c)
	if smp.topP < 1 {
		// c is sorted by descending probability: keep the smallest prefix reaching topP.
		lim := float64(smp.topP) * sum
		cum := 0.0
		for j := range p {
			cum += p[j]
			if cum >= lim {
				keep = j + 1
				break
			}
		}
		sum = 0
		for j := 0; j < keep; j++ {
			sum += p[j]
		}
	}
	u := uniform() * sum
	acc := 0.0
	for j := 0; j < keep; j++ {
		acc += p[j]
		if u < acc {
			return c[j]
		}
	}
	return c[keep-1]
}

func cmpCand(a, b int32) int {
	if before(a, b) {
		return -1
	}
	if before(b, a) {
		return 1
	}
	return 0
}

// topK appends the k best candidates to c, sorted best first. It keeps a min-heap (worst at
// the root) of size k over one pass of the vocabulary.
func topK(c []int32, k int) []int32 {
	h := c[:0]
	ls := logits[:cfg.vocab]
	var rootL float32 // logit(h[0]) once the heap is full
	for i := range ls {
		if len(h) < k {
			h = append(h, int32(i))
			up(h, len(h)-1)
			if len(h) == k {
				rootL = logit(h[0])
			}
			continue
		}
		// Ids come in ascending order, so i comes before the root only with a strictly
		// larger logit (a NaN, as -Inf, never does).
		if ls[i] > rootL {
			h[0] = int32(i)
			down(h, 0)
			rootL = logit(h[0])
		}
	}
	slices.SortFunc(h, cmpCand)
	return h
}

// heap helpers: the root is the worst candidate (the one every other comes before).
func up(h []int32, j int) {
	for j > 0 {
		p := (j - 1) / 2
		if !before(h[p], h[j]) {
			break
		}
		h[p], h[j] = h[j], h[p]
		j = p
	}
}

func down(h []int32, j int) {
	n := len(h)
	for {
		l := 2*j + 1
		if l >= n {
			return
		}
		w := l
		if r := l + 1; r < n && before(h[l], h[r]) {
			w = r
		}
		if !before(h[j], h[w]) {
			return
		}
		h[j], h[w] = h[w], h[j]
		j = w
	}
}
