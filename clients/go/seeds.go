package cache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Config.Address (or $DND_CACHE_ADDR) may list several seeds. The client
// talks to one of them, the seed in use: its public port takes any key and
// its handshake gives the shard ports. A walk decides which: the seeds are
// tried in the order given, each bounded by ConnectTimeout, and the first
// that answers the handshake is used. A seed that refuses the connection,
// times out, or answers with a retryable error (CACHE_009, CACHE_011) is
// skipped; any other refusal of the handshake (a bad token) is returned at
// once, since every node of a cluster would refuse it too.

// parseSeeds splits an address into its seeds: one host:port or a
// comma-separated list of them, whitespace around the commas ignored. An
// empty entry or one that is not host:port is an error naming it.
func parseSeeds(text string) ([]string, error) {
	entries := strings.Split(text, ",")
	seeds := make([]string, 0, len(entries))
	for _, entry := range entries {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			return nil, fmt.Errorf("dnd-cache: Address %q: empty seed address", text)
		}
		_, port, err := net.SplitHostPort(entry)
		if err == nil {
			if n, perr := strconv.ParseUint(port, 10, 16); perr != nil || n == 0 {
				err = fmt.Errorf("port %q is not 1-65535", port)
			}
		}
		if err != nil {
			if len(entries) == 1 {
				return nil, fmt.Errorf("dnd-cache: Address %q: %v", text, err)
			}
			return nil, fmt.Errorf("dnd-cache: Address %q: seed %q: %v", text, entry, err)
		}
		seeds = append(seeds, entry)
	}
	return seeds, nil
}

// seeds are a client's seed addresses and the one in use. With one seed,
// it is in use from the start and for good: the client behaves as it did
// before seed lists. With several, none is in use until a walk finds one,
// and again after a connection error (forget): the next request walks the
// seeds again, from the seed last used, so a seed that went down is left
// behind while a live one is kept.
type seeds struct {
	list    []string
	walking chan struct{} // one walk at a time

	mu      sync.Mutex
	current string // "" while none is in use
	start   int    // where the next walk starts
}

func newSeeds(list []string) *seeds {
	s := &seeds{list: list, walking: make(chan struct{}, 1)}
	if len(list) == 1 {
		s.current = list[0]
	}
	return s
}

// inUse is the seed in use, or "" when the next request must walk.
func (s *seeds) inUse() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// order is the order of the next walk: from the seed last used, around the list.
func (s *seeds) order() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(append([]string{}, s.list[s.start:]...), s.list[:s.start]...)
}

func (s *seeds) chose(seed string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current = seed
	for i, v := range s.list {
		if v == seed {
			s.start = i
		}
	}
}

// forget follows a connection error: with several seeds, walk them again.
func (s *seeds) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) > 1 {
		s.current = ""
	}
}

// skipsSeed reports whether a walk goes on to the next seed after err: the
// seed did not answer (refused, timed out, not the protocol) or answered
// that it cannot take a connection now (CACHE_009, CACHE_011). A canceled
// context or a refused token ends the walk.
func skipsSeed(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retryable()
}

// enter returns the seed in use; when there is none, the first seed of a
// walk that answers the handshake (its connection joins that seed's pool),
// else a connection error naming every seed tried.
func (c *Client) enter(ctx context.Context) (string, error) {
	s := c.seeds
	select {
	case s.walking <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-s.walking }()
	if seed := s.inUse(); seed != "" {
		return seed, nil // another walk just found it
	}
	var tried []string
	for _, seed := range s.order() {
		p, err := c.pool(seed)
		if err != nil {
			return "", err
		}
		conn, err := dial(ctx, seed, c.hello, c.cfg.ConnectTimeout)
		if err != nil {
			if !skipsSeed(err) {
				return "", err
			}
			tried = append(tried, fmt.Sprintf("%s (%s)", seed, strings.TrimPrefix(err.Error(), "dnd-cache: ")))
			continue
		}
		s.chose(seed)
		c.learnHandshake(seed, conn.handshake, true)
		p.adopt(conn)
		return seed, nil
	}
	return "", &Error{Code: codeConnection, Message: "no seed answered the handshake: tried " + strings.Join(tried, "; ")}
}
