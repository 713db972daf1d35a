// Command dnd-cache is a small command line over the Go client:
//
//	dnd-cache [-addr host:port] get KEY        writes the raw value; exit 1 on a miss
//	dnd-cache [-addr host:port] set KEY VALUE [TTL]
//	dnd-cache [-addr host:port] delete KEY     exit 1 if the key did not exist
//
// Hex mode (-hex) takes and prints keys and values as hex, for tests.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	cache "dnd/cache"
)

func main() {
	addr := flag.String("addr", "", "server host:port, or seeds host:port,host:port (default $DND_CACHE_ADDR or 127.0.0.1:7000)")
	service := flag.String("service-id", "dnd_cache_cli", "service id sent in the handshake")
	token := flag.String("token", "", "JWT sent in the handshake")
	hexMode := flag.Bool("hex", false, "keys and values are hex")
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dnd-cache [flags] get KEY | set KEY VALUE [TTL] | delete KEY")
		os.Exit(2)
	}
	decode := func(s string) string {
		if !*hexMode {
			return s
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return string(b)
	}
	client := cache.NewClient(&cache.Config{ServiceID: *service, Address: *addr, Token: *token})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := decode(args[1])
	var err error
	switch {
	case args[0] == "get":
		var v []byte
		v, err = client.Get(ctx, key)
		if errors.Is(err, cache.ErrNotFound) {
			os.Exit(1)
		}
		if err == nil && *hexMode {
			fmt.Println(hex.EncodeToString(v))
		} else if err == nil {
			_, err = os.Stdout.Write(v)
		}
	case args[0] == "set" && len(args) >= 3:
		var ttl uint64
		if len(args) > 3 {
			if ttl, err = strconv.ParseUint(args[3], 10, 32); err != nil {
				break
			}
		}
		err = client.Set(ctx, key, []byte(decode(args[2])), cache.TTL(uint32(ttl)))
	case args[0] == "delete":
		var existed bool
		if existed, err = client.Delete(ctx, key); err == nil && !existed {
			os.Exit(1)
		}
	default:
		err = fmt.Errorf("unknown command %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
