package cache

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"dnd/cache/internal/wire"
	"dnd/cache/xxh3"
)

// Cluster routing (docs/cluster.md). A node of a cluster answers the
// handshake with the cluster's slot map: its epoch, its nodes and the
// primary node of each of the 4,096 slots (slot = key hash >> 52). The
// client sends each key to its slot's primary node, on the port of the
// key's owner shard there when it knows that node's shard ports, so a
// current map costs no redirection.
//
// The map can move under the client (a node joins, dies, a replica is
// promoted). A node asked for a key of another node answers CACHE_013
// naming the owner and the epoch of its own map:
//
//   - an epoch at least the one the client knows for the slot: the client
//     points the slot at the named node and re-sends there at once (at most
//     maxRedirects times a request); when the epoch is newer than the
//     client's map, the whole map is fetched again from that node;
//   - an older epoch: that node still runs an older map (it can, for about
//     a second); the client keeps its route and re-sends to the same node
//     after a short wait (staleWaitFirst, doubling up to staleWaitMax, at
//     most staleWaitTotal in all), then gives up with the CACHE_013 error.
//
// A connection error to a node (refused, reset, closed, timed out) counts a
// failure in that node's circuit breaker and fetches the map again from
// another node: the seeds, then the other nodes of the map. Each node has
// its own breaker (keyed by its public address), so a dead node fails fast
// for its own keys while the other nodes keep serving theirs; a request
// whose node's breaker is open first fetches the map again, since its slot
// may have moved. A server that is not a cluster (epoch 0) has one breaker,
// as before.

// slotCount is the number of cluster slots: a key's slot is its hash >> 52.
const slotCount = 4096

// Timing of cluster routing.
const (
	staleWaitFirst  = 10 * time.Millisecond  // first wait on an older map's CACHE_013
	staleWaitMax    = 200 * time.Millisecond // the waits double up to this
	staleWaitTotal  = 2 * time.Second        // then the request gives up
	refreshInterval = 100 * time.Millisecond // fewest time between two map fetches
)

// RoutingStats counts what cluster routing did since the client was made.
type RoutingStats struct {
	// Redirects is the CACHE_013 answers followed to the node they named.
	Redirects uint64
	// StaleWaits is the CACHE_013 answers of a node on an older map that
	// the client waited on (and re-sent to the same node).
	StaleWaits uint64
	// MapRefreshes is the handshakes the client made to fetch the map
	// again (after CACHE_013 of a newer epoch, a connection error, or an
	// open breaker) that a node answered.
	MapRefreshes uint64
	// MapEpoch is the epoch of the map the client routes by (0: not a
	// cluster, or no map known yet).
	MapEpoch uint64
}

// counters backs RoutingStats.
type counters struct {
	redirects, staleWaits, refreshes atomic.Uint64
}

// RoutingStats returns the client's routing counters.
func (c *Client) RoutingStats() RoutingStats {
	s := RoutingStats{
		Redirects:    c.counts.redirects.Load(),
		StaleWaits:   c.counts.staleWaits.Load(),
		MapRefreshes: c.counts.refreshes.Load(),
	}
	c.mu.Lock()
	if c.cluster != nil {
		s.MapEpoch = c.cluster.epoch
	}
	c.mu.Unlock()
	return s
}

// clusterMap is the slot map as the client knows it: the newest map a
// handshake gave, amended per slot by CACHE_013 answers.
type clusterMap struct {
	epoch      uint64
	seed       uint64   // hash seed
	shardAware bool     // the nodes hash with xxh3_64: route to owner shards
	members    []string // the nodes of the newest map, by public address
	nodes      map[string]*clusterNode
	slots      [slotCount]slotRoute
}

// slotRoute is where the client sends a slot's keys and the epoch of the
// map (or CACHE_013 answer) that said so.
type slotRoute struct {
	node  string // public address; "" while unknown (the seed in use)
	epoch uint64
}

// clusterNode is a node as the newest map that named it described it.
type clusterNode struct {
	host       string
	shardPorts []uint32
}

// route is where one request goes.
type route struct {
	addr string // address sent to; "" for the seed in use (a walk finds one)
	node string // the node's public address, its breaker's key; "" outside a cluster
}

// nodeAddress is the public address of a map's node; a node without host
// is on the host the handshake came from.
func nodeAddress(n *wire.ClusterNode, from string) (string, string) {
	host := n.Host
	if host == "" {
		host, _, _ = net.SplitHostPort(from)
	}
	return host, net.JoinHostPort(host, strconv.Itoa(int(n.Port)))
}

// learnMap installs the cluster map of a handshake that addr answered when
// it is newer than the client's. It reports whether the handshake was one
// of a cluster.
func (c *Client) learnMap(addr string, hs *wire.Handshake) bool {
	if hs.ClusterEpoch == 0 || len(hs.SlotPrimary) != slotCount || len(hs.Nodes) == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.cluster
	if m != nil && m.epoch >= hs.ClusterEpoch {
		return true
	}
	if m == nil {
		m = &clusterMap{nodes: map[string]*clusterNode{}}
		c.cluster = m
	}
	m.epoch, m.seed = hs.ClusterEpoch, hs.HashSeed
	m.shardAware = !c.cfg.DisableShardRouting && hs.Hash == "xxh3_64"
	m.members = m.members[:0]
	for i := range hs.Nodes {
		host, public := nodeAddress(&hs.Nodes[i], addr)
		m.members = append(m.members, public)
		m.nodes[public] = &clusterNode{host: host, shardPorts: hs.Nodes[i].ShardPorts}
	}
	for slot, p := range hs.SlotPrimary {
		if m.slots[slot].epoch > hs.ClusterEpoch {
			continue // a CACHE_013 answer of a newer map said more
		}
		node := ""
		if int(p) < len(m.members) {
			node = m.members[p]
		}
		m.slots[slot] = slotRoute{node: node, epoch: hs.ClusterEpoch}
	}
	return true
}

// routeLocked is where key goes; c.mu is held.
func (c *Client) routeLocked(key []byte) route {
	m := c.cluster
	if m == nil {
		return route{addr: c.addressForLocked(key)}
	}
	if len(key) == 0 {
		seed := c.seeds.inUse()
		return route{addr: seed, node: seed}
	}
	h := xxh3.Hash64Seed(key, m.seed)
	node := m.slots[h>>52].node
	if node == "" {
		seed := c.seeds.inUse()
		return route{addr: seed, node: seed}
	}
	if n := m.nodes[node]; m.shardAware && n != nil && len(n.shardPorts) > 0 {
		port := n.shardPorts[h%uint64(len(n.shardPorts))]
		return route{addr: net.JoinHostPort(n.host, strconv.Itoa(int(port))), node: node}
	}
	return route{addr: node, node: node}
}

// routeFor is where key goes now.
func (c *Client) routeFor(key []byte) route {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.routeLocked(key)
}

// checkedRoute is where key goes: after a first handshake (handshakeFirst;
// its error is returned), and after fetching the map again when the node
// it maps to has an open breaker (the slot may have moved).
func (c *Client) checkedRoute(ctx context.Context, key []byte) (route, error) {
	if len(key) > 0 {
		if err := c.handshakeFirst(ctx); err != nil {
			return c.routeFor(key), err
		}
	}
	rt := c.routeFor(key)
	if rt.node != "" && c.breakerFor(rt.node).isOpen() {
		c.refreshMap(ctx, "", rt.node, true)
		rt = c.routeFor(key)
	}
	return rt, nil
}

// handshakeFirst opens a connection to the seed in use when no handshake
// has been read yet, so that the first keyed request is routed by what it
// says (a cluster's map, or the shard ports) rather than sent to the seed.
// Its error is the request's attempt's; with the breaker open it leaves
// the request to fail fast.
func (c *Client) handshakeFirst(ctx context.Context) error {
	if c.learned.Load() || c.breaker.isOpen() {
		return nil
	}
	addr := c.seeds.inUse()
	if addr == "" {
		var err error
		if addr, err = c.enter(ctx); err != nil {
			return err
		}
	}
	p, err := c.pool(addr)
	if err != nil {
		return err
	}
	conn, err := p.get(ctx)
	if err != nil {
		return err
	}
	p.put(conn)
	return nil
}

// breakerFor is the breaker of a node (by public address); outside a
// cluster ("") the client's one breaker.
func (c *Client) breakerFor(node string) *breaker {
	if node == "" {
		return c.breaker
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.breakers[node]
	if !ok {
		b = newBreaker(c.cfg.Breaker, time.Now)
		c.breakers[node] = b
	}
	return b
}

// NodeBreakerStates returns the state of each cluster node's breaker, by
// the node's public address (host:port): only the nodes the client has
// sent to. Empty outside a cluster (see BreakerState).
func (c *Client) NodeBreakerStates() map[string]string {
	c.mu.Lock()
	breakers := make(map[string]*breaker, len(c.breakers))
	for k, b := range c.breakers {
		breakers[k] = b
	}
	c.mu.Unlock()
	states := make(map[string]string, len(breakers))
	for k, b := range breakers {
		states[k] = b.State()
	}
	return states
}

// moved is what a CACHE_013 answer says.
type moved struct {
	Slot    int    `json:"slot"`
	Node    string `json:"node"`
	Address string `json:"address"`
	HTTP    string `json:"http"`
	Epoch   uint64 `json:"epoch"`
}

// parseMoved reads the data of a CACHE_013 answer.
func parseMoved(data []byte) (moved, bool) {
	var body struct {
		Moved moved `json:"moved"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Moved.Address == "" ||
		body.Moved.Slot < 0 || body.Moved.Slot >= slotCount {
		return moved{}, false
	}
	return body.Moved, true
}

// movedAction is what a request does with a CACHE_013 answer.
type movedAction int

const (
	// follow: point the slot at the named node and re-send there.
	follow movedAction = iota
	// waitStale: the node runs an older map; wait, then re-send to it.
	waitStale
	// giveUp: return the CACHE_013 error.
	giveUp
)

// onMoved decides what a request does with a CACHE_013 answer of epoch
// answer for a slot the client knows at epoch known, after following
// redirects redirections and waiting waited in all on older maps; next is
// the next wait (staleWaitFirst, then doubled up to staleWaitMax). For
// waitStale it returns how long to wait, never past staleWaitTotal in all.
func onMoved(answer, known uint64, redirects int, waited, next time.Duration) (movedAction, time.Duration) {
	if answer >= known {
		if redirects >= maxRedirects {
			return giveUp, 0
		}
		return follow, 0
	}
	if waited >= staleWaitTotal {
		return giveUp, 0
	}
	if next > staleWaitMax {
		next = staleWaitMax
	}
	if left := staleWaitTotal - waited; next > left {
		next = left
	}
	return waitStale, next
}

// slotEpoch is the epoch of what the client knows about slot (0: nothing).
func (c *Client) slotEpoch(slot int) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cluster == nil {
		return 0
	}
	return c.cluster.slots[slot].epoch
}

// pointSlot follows a CACHE_013 answer: the slot lives on the named node,
// unless the client learned of a newer epoch meanwhile. It reports whether
// the answer is newer than the client's map (fetch the map again).
func (c *Client) pointSlot(mv moved) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.cluster
	if m == nil {
		// A node that was not in a cluster at handshake time now is.
		m = &clusterMap{nodes: map[string]*clusterNode{}, seed: c.hashSeed, shardAware: !c.cfg.DisableShardRouting}
		c.cluster = m
	}
	if s := &m.slots[mv.Slot]; mv.Epoch >= s.epoch {
		*s = slotRoute{node: mv.Address, epoch: mv.Epoch}
	}
	return mv.Epoch > m.epoch
}

// refreshMap fetches the map again with a fresh handshake: from first, then
// the seeds, then the nodes of the map, skipping avoid (a node that just
// failed), and installs it when newer. At most one fetch is in flight (wait
// says whether to wait for one already in flight or leave at once), and
// fetches are at least refreshInterval apart.
func (c *Client) refreshMap(ctx context.Context, first, avoid string, wait bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if ch := c.refreshing; ch != nil {
		c.mu.Unlock()
		if wait {
			select {
			case <-ch:
			case <-ctx.Done():
			}
		}
		return
	}
	if time.Since(c.refreshedAt) < refreshInterval {
		c.mu.Unlock()
		return
	}
	done := make(chan struct{})
	c.refreshing = done
	candidates := []string{first}
	candidates = append(candidates, c.seeds.list...)
	if c.cluster != nil {
		candidates = append(candidates, c.cluster.members...)
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.refreshing, c.refreshedAt = nil, time.Now()
		c.mu.Unlock()
		close(done)
	}()

	seen := map[string]bool{"": true, avoid: true}
	for _, addr := range candidates {
		if seen[addr] {
			continue
		}
		seen[addr] = true
		conn, err := dial(ctx, addr, c.hello, refreshDialTimeout(c.cfg.ConnectTimeout))
		if err != nil {
			if skipsSeed(err) {
				continue
			}
			return // canceled, or a refused token: every node would refuse it
		}
		c.counts.refreshes.Add(1)
		c.learnHandshake(addr, conn.handshake, false)
		if p, err := c.pool(addr); err == nil {
			p.adopt(conn)
		} else {
			conn.close()
		}
		return
	}
}

// refreshDialTimeout bounds each node's answer to a map fetch: a node that
// drops packets delays the fetch by a second, not by a whole connect
// timeout (the Rust and Python clients use the same bound).
func refreshDialTimeout(connect time.Duration) time.Duration {
	if connect > 0 && connect < time.Second {
		return connect
	}
	return time.Second
}

// refreshInBackground fetches the map from addr without holding up the
// request that learned of a newer epoch.
func (c *Client) refreshInBackground(addr string) {
	go func() {
		ctx, cancel := context.WithTimeout(c.background, c.cfg.ConnectTimeout)
		defer cancel()
		c.refreshMap(ctx, addr, "", false)
	}()
}

// inCluster reports whether the client routes by a cluster map.
func (c *Client) inCluster() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cluster != nil
}
