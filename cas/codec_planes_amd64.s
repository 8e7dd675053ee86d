#include "textflag.h"

// func splitPlanesSSE2(lo, hi, src []byte) int
// Splits the first 32·⌊len(src)/32⌋ bytes of src into even bytes (lo) and odd bytes (hi), 32
// source bytes per step, with SSE2 (baseline amd64). Returns the number of source bytes done.
// The caller guarantees len(lo), len(hi) ≥ len(src)/2.
TEXT ·splitPlanesSSE2(SB), NOSPLIT, $0-80
	MOVQ lo_base+0(FP), DI
	MOVQ hi_base+24(FP), R8
	MOVQ src_base+48(FP), SI
	MOVQ src_len+56(FP), CX
	SHRQ $5, CX
	MOVQ CX, AX
	SHLQ $5, AX
	MOVQ AX, ret+72(FP)
	TESTQ CX, CX
	JZ   splitdone
	PCMPEQW X7, X7
	PSRLW   $8, X7   // 0x00ff in every 16-bit lane

splitloop:
	MOVOU    (SI), X0
	MOVOU    16(SI), X1
	MOVO     X0, X2
	MOVO     X1, X3
	PAND     X7, X0
	PAND     X7, X1
	PSRLW    $8, X2
	PSRLW    $8, X3
	PACKUSWB X1, X0   // even bytes of the 32
	PACKUSWB X3, X2   // odd bytes of the 32
	MOVOU    X0, (DI)
	MOVOU    X2, (R8)
	ADDQ     $32, SI
	ADDQ     $16, DI
	ADDQ     $16, R8
	DECQ     CX
	JNZ      splitloop

splitdone:
	RET

// func joinPlanesSSE2(dst, lo, hi []byte) int
// Interleaves lo and hi into the first 32·⌊len(dst)/32⌋ bytes of dst (dst[2k] = lo[k],
// dst[2k+1] = hi[k]), 32 output bytes per step. Returns the number of bytes of dst written.
// The caller guarantees len(lo), len(hi) ≥ len(dst)/2.
TEXT ·joinPlanesSSE2(SB), NOSPLIT, $0-80
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ lo_base+24(FP), SI
	MOVQ hi_base+48(FP), R8
	SHRQ $5, CX
	MOVQ CX, AX
	SHLQ $5, AX
	MOVQ AX, ret+72(FP)
	TESTQ CX, CX
	JZ   joindone

joinloop:
	MOVOU     (SI), X0
	MOVOU     (R8), X1
	MOVO      X0, X2
	PUNPCKLBW X1, X0
	PUNPCKHBW X1, X2
	MOVOU     X0, (DI)
	MOVOU     X2, 16(DI)
	ADDQ      $16, SI
	ADDQ      $16, R8
	ADDQ      $32, DI
	DECQ      CX
	JNZ       joinloop

joindone:
	RET

// func joinEqualSSE2(data, lo, hi []byte) bool
// Reports whether the first 32·⌊len(data)/32⌋ bytes of data equal lo and hi interleaved
// (data[2k] = lo[k], data[2k+1] = hi[k]), without writing the interleaved bytes anywhere.
// The caller guarantees len(lo), len(hi) ≥ len(data)/2.
TEXT ·joinEqualSSE2(SB), NOSPLIT, $0-73
	MOVQ data_base+0(FP), DI
	MOVQ data_len+8(FP), CX
	MOVQ lo_base+24(FP), SI
	MOVQ hi_base+48(FP), R8
	SHRQ $5, CX
	JZ   eqtrue

eqloop:
	MOVOU     (SI), X0
	MOVOU     (R8), X1
	MOVO      X0, X2
	PUNPCKLBW X1, X0
	PUNPCKHBW X1, X2
	MOVOU     (DI), X3
	MOVOU     16(DI), X4
	PCMPEQB   X3, X0
	PCMPEQB   X4, X2
	PAND      X2, X0
	PMOVMSKB  X0, AX
	CMPL      AX, $0xffff
	JNE       eqfalse
	ADDQ      $16, SI
	ADDQ      $16, R8
	ADDQ      $32, DI
	DECQ      CX
	JNZ       eqloop

eqtrue:
	MOVB $1, ret+72(FP)
	RET

eqfalse:
	MOVB $0, ret+72(FP)
	RET
