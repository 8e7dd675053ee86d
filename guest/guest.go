// Package guest embeds driftstore's WebAssembly guest (built from guest/src by
// scripts/build-guest.sh; .ci/check-guest verifies the committed guest.wasm is current).
//
// The guest's exports, imports and record formats are described in ABI.md next to this file.
package guest

import (
	_ "embed"
	"encoding/hex"

	"github.com/zeebo/blake3"
)

// Wasm is the guest module. Callers must not modify it.
//
//go:embed guest.wasm
var Wasm []byte

// Fingerprint is the BLAKE3-256 of Wasm: the guest identity a checkpoint records.
var Fingerprint = blake3.Sum256(Wasm)

// FingerprintHex is Fingerprint in lower-case hex.
func FingerprintHex() string { return hex.EncodeToString(Fingerprint[:]) }

// ABIVersion is the value the guest's abi_version export returns; the engine refuses others.
const ABIVersion = 3
