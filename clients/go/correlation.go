package cache

import (
	"context"
	"fmt"
)

// MaxCorrelationIDBytes is the longest correlation id the server keeps (it
// cuts longer ones), so the client refuses longer ones.
const MaxCorrelationIDBytes = 64

type correlationKey struct{}

// WithCorrelationID returns a context whose calls carry id as their
// correlation id (ICD 1.1), in place of Config.CorrelationID. The server
// echoes it and puts it in the cache.item.updated events the call causes.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationIDFrom returns the correlation id WithCorrelationID put in ctx.
func CorrelationIDFrom(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(correlationKey{}).(string)
	return id, ok
}

// correlationID is the call's id, else the client's, else none ("").
func (c *Client) correlationID(ctx context.Context) (string, error) {
	id, ok := CorrelationIDFrom(ctx)
	if !ok {
		return c.cfg.CorrelationID, nil
	}
	if len(id) > MaxCorrelationIDBytes {
		return "", fmt.Errorf("dnd-cache: correlation id is at most %d bytes", MaxCorrelationIDBytes)
	}
	return id, nil
}
