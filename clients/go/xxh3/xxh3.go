// Package xxh3 implements XXH3-64 with a seed (XXH3_64bits_withSeed of the
// reference xxHash library), the hash that places keys on dnd-cache shards:
// owner = Hash64Seed(key, handshake.hash_seed) % shard_count.
//
// A portable scalar version: shard routing hashes short keys, where the
// vectorised long-input loop of the reference brings nothing.
package xxh3

import (
	"encoding/binary"
	"math/bits"
)

const (
	prime32_1 = 0x9E3779B1
	prime32_2 = 0x85EBCA77
	prime32_3 = 0xC2B2AE3D
	prime64_1 = 0x9E3779B185EBCA87
	prime64_2 = 0xC2B2AE3D27D4EB4F
	prime64_3 = 0x165667B19E3779F9
	prime64_4 = 0x85EBCA77C2B2AE63
	prime64_5 = 0x27D4EB2F165667C5

	stripeLen          = 64
	secretConsumeRate  = 8
	accNB              = stripeLen / 8
	secretMergeStart   = 11
	secretLastAccStart = 7
	midSizeMax         = 240
	secretSizeMin      = 136
)

var defaultSecret = [192]byte{
	0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
	0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
	0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
	0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
	0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
	0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
	0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
	0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
	0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
	0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
	0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
	0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
}

func u32(b []byte, i int) uint32 { return binary.LittleEndian.Uint32(b[i:]) }
func u64(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

func mul128Fold64(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func xxh64Avalanche(h uint64) uint64 {
	h ^= h >> 33
	h *= prime64_2
	h ^= h >> 29
	h *= prime64_3
	h ^= h >> 32
	return h
}

func avalanche(h uint64) uint64 {
	h ^= h >> 37
	h *= 0x165667919E3779F9
	h ^= h >> 32
	return h
}

func strongAvalanche(h, length uint64) uint64 {
	h ^= bits.RotateLeft64(h, 49) ^ bits.RotateLeft64(h, 24)
	h *= 0x9FB21C651E98DF25
	h ^= (h >> 35) + length
	h *= 0x9FB21C651E98DF25
	h ^= h >> 28
	return h
}

func mix16(in []byte, i int, secret []byte, s int, seed uint64) uint64 {
	lo := u64(in, i) ^ (u64(secret, s) + seed)
	hi := u64(in, i+8) ^ (u64(secret, s+8) - seed)
	return mul128Fold64(lo, hi)
}

// Hash64 is XXH3-64 with seed 0.
func Hash64(in []byte) uint64 { return Hash64Seed(in, 0) }

// Hash64Seed is XXH3-64 of in with the given seed (XXH3_64bits_withSeed).
func Hash64Seed(in []byte, seed uint64) uint64 {
	n := len(in)
	switch {
	case n <= 16:
		return hash0to16(in, seed)
	case n <= 128:
		return hash17to128(in, seed)
	case n <= midSizeMax:
		return hash129to240(in, seed)
	default:
		secret := defaultSecret
		if seed != 0 {
			secret = customSecret(seed)
		}
		return hashLong(in, secret[:])
	}
}

func hash0to16(in []byte, seed uint64) uint64 {
	s := defaultSecret[:]
	n := len(in)
	switch {
	case n > 8:
		flip1 := (u64(s, 24) ^ u64(s, 32)) + seed
		flip2 := (u64(s, 40) ^ u64(s, 48)) - seed
		lo := u64(in, 0) ^ flip1
		hi := u64(in, n-8) ^ flip2
		acc := uint64(n) + bits.ReverseBytes64(lo) + hi + mul128Fold64(lo, hi)
		return avalanche(acc)
	case n >= 4:
		seed ^= uint64(bits.ReverseBytes32(uint32(seed))) << 32
		in1 := u32(in, 0)
		in2 := u32(in, n-4)
		flip := (u64(s, 8) ^ u64(s, 16)) - seed
		in64 := uint64(in2) + uint64(in1)<<32
		return strongAvalanche(in64^flip, uint64(n))
	case n > 0:
		combo := uint32(in[0])<<16 | uint32(in[n>>1])<<24 | uint32(in[n-1]) | uint32(n)<<8
		flip := uint64(u32(s, 0)^u32(s, 4)) + seed
		return xxh64Avalanche(uint64(combo) ^ flip)
	default:
		return xxh64Avalanche(seed ^ u64(s, 56) ^ u64(s, 64))
	}
}

func hash17to128(in []byte, seed uint64) uint64 {
	s := defaultSecret[:]
	n := len(in)
	acc := uint64(n) * prime64_1
	if n > 32 {
		if n > 64 {
			if n > 96 {
				acc += mix16(in, 48, s, 96, seed)
				acc += mix16(in, n-64, s, 112, seed)
			}
			acc += mix16(in, 32, s, 64, seed)
			acc += mix16(in, n-48, s, 80, seed)
		}
		acc += mix16(in, 16, s, 32, seed)
		acc += mix16(in, n-32, s, 48, seed)
	}
	acc += mix16(in, 0, s, 0, seed)
	acc += mix16(in, n-16, s, 16, seed)
	return avalanche(acc)
}

func hash129to240(in []byte, seed uint64) uint64 {
	const startOffset, lastOffset = 3, 17
	s := defaultSecret[:]
	n := len(in)
	acc := uint64(n) * prime64_1
	rounds := n / 16
	for i := 0; i < 8; i++ {
		acc += mix16(in, 16*i, s, 16*i, seed)
	}
	acc = avalanche(acc)
	for i := 8; i < rounds; i++ {
		acc += mix16(in, 16*i, s, 16*(i-8)+startOffset, seed)
	}
	acc += mix16(in, n-16, s, secretSizeMin-lastOffset, seed)
	return avalanche(acc)
}

func customSecret(seed uint64) [192]byte {
	var out [192]byte
	for i := 0; i < len(out)/16; i++ {
		binary.LittleEndian.PutUint64(out[16*i:], u64(defaultSecret[:], 16*i)+seed)
		binary.LittleEndian.PutUint64(out[16*i+8:], u64(defaultSecret[:], 16*i+8)-seed)
	}
	return out
}

func accumulate512(acc *[accNB]uint64, in []byte, i int, secret []byte, s int) {
	for j := 0; j < accNB; j++ {
		v := u64(in, i+8*j)
		k := v ^ u64(secret, s+8*j)
		acc[j^1] += v
		acc[j] += uint64(uint32(k)) * (k >> 32)
	}
}

func scramble(acc *[accNB]uint64, secret []byte, s int) {
	for j := 0; j < accNB; j++ {
		a := acc[j]
		a ^= a >> 47
		a ^= u64(secret, s+8*j)
		acc[j] = a * prime32_1
	}
}

func hashLong(in []byte, secret []byte) uint64 {
	acc := [accNB]uint64{prime32_3, prime64_1, prime64_2, prime64_3, prime64_4, prime32_2, prime64_5, prime32_1}
	n := len(in)
	stripesPerBlock := (len(secret) - stripeLen) / secretConsumeRate
	blockLen := stripeLen * stripesPerBlock
	blocks := (n - 1) / blockLen
	for b := 0; b < blocks; b++ {
		for st := 0; st < stripesPerBlock; st++ {
			accumulate512(&acc, in, b*blockLen+st*stripeLen, secret, st*secretConsumeRate)
		}
		scramble(&acc, secret, len(secret)-stripeLen)
	}
	stripes := ((n - 1) - blockLen*blocks) / stripeLen
	for st := 0; st < stripes; st++ {
		accumulate512(&acc, in, blocks*blockLen+st*stripeLen, secret, st*secretConsumeRate)
	}
	accumulate512(&acc, in, n-stripeLen, secret, len(secret)-stripeLen-secretLastAccStart)

	result := uint64(n) * prime64_1
	for j := 0; j < 4; j++ {
		result += mul128Fold64(acc[2*j]^u64(secret, secretMergeStart+16*j), acc[2*j+1]^u64(secret, secretMergeStart+16*j+8))
	}
	return avalanche(result)
}
