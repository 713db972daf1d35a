package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"dnd/cache/internal/wire"
)

// defaultMaxFrame bounds a response frame until the handshake tells the limit.
const defaultMaxFrame = 16 << 20

// conn is one TCP connection that completed the handshake. One goroutine
// uses it at a time (the pool sees to it). After any transport or framing
// error it is broken: the responses may be out of step with the requests.
type conn struct {
	nc        net.Conn
	addr      string
	handshake *wire.Handshake
	maxFrame  uint32
	lastUsed  time.Time
	broken    bool
	buf       []byte
}

func dial(ctx context.Context, addr string, hello []byte, connectTimeout time.Duration) (*conn, error) {
	d := net.Dialer{Timeout: connectTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &Error{Code: codeConnection, Message: "connect to " + addr + ": " + err.Error(), Err: err}
	}
	c := &conn{nc: nc, addr: addr, maxFrame: defaultMaxFrame, lastUsed: time.Now()}
	deadline := time.Now().Add(connectTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	answers, err := c.roundtrip(ctx, deadline, [][]byte{hello})
	if err != nil {
		c.close()
		return nil, err
	}
	if answers[0].Status != 0 {
		c.close()
		return nil, statusError(answers[0].Status, answers[0].Data)
	}
	if answers[0].Handshake == nil {
		c.close()
		return nil, &Error{Code: codeProtocol, Message: "handshake answer without handshake"}
	}
	c.handshake = answers[0].Handshake
	if c.handshake.MaxFrameBytes > 0 {
		c.maxFrame = c.handshake.MaxFrameBytes
	}
	return c, nil
}

// roundtrip writes every request (pipelined), then reads one answer each.
func (c *conn) roundtrip(ctx context.Context, deadline time.Time, bodies [][]byte) ([]*wire.CacheResponse, error) {
	if err := c.nc.SetDeadline(deadline); err != nil {
		c.close()
		return nil, connectionError(err)
	}
	// Cancellation interrupts blocked I/O by moving the deadline to the past.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = c.nc.SetDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()

	c.buf = c.buf[:0]
	for _, b := range bodies {
		c.buf = wire.AppendFrame(c.buf, b)
	}
	if _, err := c.nc.Write(c.buf); err != nil {
		return nil, c.fail(ctx, err)
	}
	answers := make([]*wire.CacheResponse, len(bodies))
	var header [4]byte
	for i := range answers {
		if _, err := io.ReadFull(c.nc, header[:]); err != nil {
			return nil, c.fail(ctx, err)
		}
		n := binary.BigEndian.Uint32(header[:])
		if n > c.maxFrame+1024 {
			c.close()
			return nil, &Error{Code: codeProtocol, Message: fmt.Sprintf("frame of %d bytes exceeds the limit", n)}
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(c.nc, body); err != nil {
			return nil, c.fail(ctx, err)
		}
		answers[i] = &wire.CacheResponse{}
		if err := answers[i].Unmarshal(body); err != nil {
			c.close()
			return nil, &Error{Code: codeProtocol, Message: err.Error(), Err: err}
		}
		if closingStatus(answers[i].Status) {
			c.close()
		}
	}
	c.lastUsed = time.Now()
	return answers, nil
}

// fail closes the connection and classifies the I/O error.
func (c *conn) fail(ctx context.Context, err error) error {
	c.close()
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &Error{Code: ErrTimeout.Code, Message: "no answer in time", Err: err}
	}
	return connectionError(err)
}

func (c *conn) close() {
	c.broken = true
	_ = c.nc.Close()
}

// pool holds the connections to one address (ICD 9.2 pool). Connections
// open on demand, at most MaxSize at once; a caller waits for one to come
// back until its context ends or ConnectTimeout passes. Idle connections
// beyond MinSize close after IdleTimeout; the most recently used idle
// connection is handed out first so the others can age out.
type pool struct {
	addr  string
	cfg   PoolConfig
	dial  func(ctx context.Context, addr string) (*conn, error)
	wait  time.Duration
	slots chan struct{} // one token per open connection

	mu     sync.Mutex
	idle   []*conn // oldest first
	closed bool
}

func newPool(addr string, cfg PoolConfig, wait time.Duration, dial func(context.Context, string) (*conn, error)) *pool {
	return &pool{addr: addr, cfg: cfg, dial: dial, wait: wait, slots: make(chan struct{}, cfg.MaxSize)}
}

func (p *pool) get(ctx context.Context) (*conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, &Error{Code: codeConnection, Message: "client closed"}
	}
	p.reapLocked(time.Now())
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()

	timer := time.NewTimer(p.wait)
	defer timer.Stop()
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, &Error{Code: codeConnection, Message: fmt.Sprintf("pool exhausted (%d connections in use)", p.cfg.MaxSize)}
	}
	// A connection may have come back while we waited for a slot.
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		<-p.slots
		return c, nil
	}
	p.mu.Unlock()
	c, err := p.dial(ctx, p.addr)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

func (p *pool) put(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.broken || p.closed {
		c.close()
		<-p.slots
		return
	}
	p.idle = append(p.idle, c)
	p.reapLocked(time.Now())
}

// adopt takes in a connection dialed outside the pool (by a seed walk),
// idle, unless the pool is closed or full.
func (p *pool) adopt(c *conn) {
	select {
	case p.slots <- struct{}{}:
		p.put(c)
	default:
		c.close()
	}
}

// reapLocked closes connections idle past IdleTimeout while more than MinSize are open.
func (p *pool) reapLocked(now time.Time) {
	for len(p.idle) > 0 && len(p.slots) > p.cfg.MinSize && now.Sub(p.idle[0].lastUsed) > p.cfg.IdleTimeout {
		p.idle[0].close()
		p.idle = p.idle[1:]
		<-p.slots
	}
}

func (p *pool) stats() (open, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.slots), len(p.idle)
}

func (p *pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		c.close()
		<-p.slots
	}
	p.idle = nil
}
