package chunker

import (
	"crypto/md5"
	"encoding/binary"
)

// The gear table and the normalisation masks are what make boundaries portable: change either
// and every stored chunk boundary moves. Both are fixed forever.
//
// gear[i] is the first 8 bytes, read big-endian, of the MD5 digest of 64 bytes that all equal i.
// This is the construction of the FastCDC C reference implementation (destor) and of the Rust
// fastcdc crate's v2020 module, so the table is the same one those implementations use
// (TestGearTableMatchesReference checks published entries). gearLS is the same table shifted
// left by one bit, used by the two-bytes-per-iteration loop of the 2020 paper (section 3.7).
var gear, gearLS [256]uint64

func init() {
	var seed [64]byte
	for i := range gear {
		for j := range seed {
			seed[j] = byte(i)
		}
		sum := md5.Sum(seed[:])
		gear[i] = binary.BigEndian.Uint64(sum[:8])
		gearLS[i] = gear[i] << 1
	}
}

// masks[b] has exactly b one-bits, spread over the upper part of the 64-bit gear hash (the
// paper's advice: spread mask bits give slightly better deduplication than contiguous ones, and
// the low bits of a gear hash see only the last few bytes). A cut is declared when hash&mask is
// zero, so masks[b] yields on average one cut every 2^b bytes. The values are those of the
// FastCDC C reference (64 B .. 128 KiB) extended as in the Rust fastcdc crate (256 KiB .. 16 MiB,
// and the two entries 5 and 25 that only normalisation level 3 reaches). Entries 0..4 are never
// used.
var masks = [26]uint64{
	0, 0, 0, 0, 0,
	0x0000000001804110, // 5 bits
	0x0000000001803110, // 6: 64 B
	0x0000000018035100, // 7: 128 B
	0x0000001800035300, // 8: 256 B
	0x0000019000353000, // 9: 512 B
	0x0000590003530000, // 10: 1 KiB
	0x0000d90003530000, // 11: 2 KiB
	0x0000d90103530000, // 12: 4 KiB
	0x0000d90303530000, // 13: 8 KiB
	0x0000d90313530000, // 14: 16 KiB
	0x0000d90f03530000, // 15: 32 KiB
	0x0000d90303537000, // 16: 64 KiB
	0x0000d90703537000, // 17: 128 KiB
	0x0000d90707537000, // 18: 256 KiB
	0x0000d91707537000, // 19: 512 KiB
	0x0000d91747537000, // 20: 1 MiB
	0x0000d91767537000, // 21: 2 MiB
	0x0000d93767537000, // 22: 4 MiB
	0x0000d93777537000, // 23: 8 MiB
	0x0000d93777577000, // 24: 16 MiB
	0x0000db3777577000, // 25 bits
}
