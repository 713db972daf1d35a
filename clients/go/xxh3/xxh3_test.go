package xxh3

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"strconv"
	"testing"
)

// The vectors come from xxhash_rust::xxh3::xxh3_64_with_seed (tests/golden_vectors.rs).
func TestMatchesXxhashRust(t *testing.T) {
	raw, err := os.ReadFile("../../testdata/golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Vectors []struct {
			InputHex string `json:"input_hex"`
			Seed     string `json:"seed"`
			Hash     string `json:"hash"`
		} `json:"xxh3_64"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Vectors) < 50 {
		t.Fatalf("only %d vectors", len(doc.Vectors))
	}
	for _, v := range doc.Vectors {
		in, _ := hex.DecodeString(v.InputHex)
		seed, _ := strconv.ParseUint(v.Seed, 10, 64)
		want, _ := strconv.ParseUint(v.Hash, 10, 64)
		if got := Hash64Seed(in, seed); got != want {
			t.Errorf("len %d seed %d: got %d want %d", len(in), seed, got, want)
		}
	}
}

func TestKnownValue(t *testing.T) {
	// XXH3_64bits("") from the reference implementation's documentation.
	if got := Hash64(nil); got != 0x2D06800538D394C2 {
		t.Fatalf("xxh3(\"\") = %#x", got)
	}
}

func BenchmarkHash64Seed16(b *testing.B) {
	key := []byte("character:123456")
	for i := 0; i < b.N; i++ {
		Hash64Seed(key, 42)
	}
}
