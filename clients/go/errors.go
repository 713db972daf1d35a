package cache

import (
	"errors"
	"fmt"
)

// Error is every error the client returns about a request: Code is the ICD
// code ("CACHE_003", "AUTH_001", ...), Status the wire status (0 for errors
// found by the client itself), Message the server's explanation.
//
// Client-side codes: CLIENT_001 connection failed or lost, CLIENT_002
// circuit breaker open, CLIENT_003 the server's bytes are not the protocol.
// A request that outlives Config.RequestTimeout is CACHE_005 with Status 0.
//
// Compare with errors.Is against the sentinels below (same Code); an
// expired key (CACHE_002) also matches ErrNotFound, since to a reader it is
// a missing key.
type Error struct {
	Code    string
	Status  uint32
	Message string
	// Err is the underlying cause (an I/O error), if any.
	Err error
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "dnd-cache: " + e.Code
	}
	return "dnd-cache: " + e.Code + ": " + e.Message
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code || (t.Code == ErrNotFound.Code && e.Code == ErrExpired.Code)
}

// Retryable reports whether the same request may succeed when sent again.
func (e *Error) Retryable() bool {
	switch e.Code {
	case codeConnection, codeProtocol, "CACHE_005", "CACHE_009", "CACHE_011":
		return true
	}
	return false
}

const (
	codeConnection  = "CLIENT_001"
	codeCircuitOpen = "CLIENT_002"
	codeProtocol    = "CLIENT_003"
)

// Sentinels for errors.Is.
var (
	ErrNotFound           = &Error{Code: "CACHE_001", Status: 1, Message: "key not found"}
	ErrExpired            = &Error{Code: "CACHE_002", Status: 2, Message: "key expired"}
	ErrStorageFull        = &Error{Code: "CACHE_003", Status: 3, Message: "storage full or item too large"}
	ErrInvalidKey         = &Error{Code: "CACHE_004", Status: 4, Message: "invalid key format"}
	ErrTimeout            = &Error{Code: "CACHE_005", Status: 5, Message: "operation timeout"}
	ErrMalformed          = &Error{Code: "CACHE_006", Status: 6, Message: "malformed request"}
	ErrUnknownOperation   = &Error{Code: "CACHE_007", Status: 7, Message: "unknown operation"}
	ErrFrameTooLarge      = &Error{Code: "CACHE_008", Status: 8, Message: "frame too large"}
	ErrTooManyConnections = &Error{Code: "CACHE_009", Status: 9, Message: "too many connections"}
	ErrHandshake          = &Error{Code: "CACHE_010", Status: 10, Message: "handshake required, invalid or too late"}
	ErrUnavailable        = &Error{Code: "CACHE_011", Status: 11, Message: "server shutting down or shard unavailable"}
	ErrBatchTooLarge      = &Error{Code: "CACHE_012", Status: 12, Message: "batch too large"}
	// ErrMoved: the key's slot is another node's (a cluster's map moved);
	// the client follows it, and returns it only when the redirections
	// or the waits on an older map run out.
	ErrMoved              = &Error{Code: "CACHE_013", Status: 13, Message: "key owned by another node of the cluster"}
	ErrInvalidCredentials = &Error{Code: "AUTH_001", Status: 101, Message: "invalid credentials"}
	ErrForbidden          = &Error{Code: "AUTH_002", Status: 102, Message: "insufficient permissions"}
	ErrConnection         = &Error{Code: codeConnection, Message: "connection failed"}
	ErrCircuitOpen        = &Error{Code: codeCircuitOpen, Message: "circuit breaker open"}
	ErrProtocol           = &Error{Code: codeProtocol, Message: "protocol error"}
)

var byStatus = func() map[uint32]*Error {
	m := map[uint32]*Error{}
	for _, e := range []*Error{ErrNotFound, ErrExpired, ErrStorageFull, ErrInvalidKey, ErrTimeout,
		ErrMalformed, ErrUnknownOperation, ErrFrameTooLarge, ErrTooManyConnections, ErrHandshake,
		ErrUnavailable, ErrBatchTooLarge, ErrMoved, ErrInvalidCredentials, ErrForbidden} {
		m[e.Status] = e
	}
	return m
}()

// statusError is the error of a non-zero wire status; message is the
// server's text (empty for a miss).
func statusError(status uint32, message []byte) *Error {
	base, ok := byStatus[status]
	if !ok {
		return &Error{Code: fmt.Sprintf("STATUS_%d", status), Status: status, Message: string(message)}
	}
	msg := string(message)
	if msg == "" {
		msg = base.Message
	}
	return &Error{Code: base.Code, Status: status, Message: msg}
}

func connectionError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: codeConnection, Message: err.Error(), Err: err}
}

// closingStatus lists the statuses after which the server closes the connection.
func closingStatus(status uint32) bool {
	switch status {
	case 8, 9, 10, 11, 101:
		return true
	}
	return false
}

// BatchError reports the items of a batch that failed. errors.Is and
// errors.As see the first failure.
type BatchError struct {
	// Errors maps each failed key to its error.
	Errors map[string]*Error
	first  *Error
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("dnd-cache: %d item(s) failed, first: %v", len(e.Errors), e.first)
}

// Unwrap returns the first failure.
func (e *BatchError) Unwrap() error { return e.first }

func newBatchError(keys []string, errs map[string]*Error) error {
	if len(errs) == 0 {
		return nil
	}
	for _, k := range keys {
		if e, ok := errs[k]; ok {
			return &BatchError{Errors: errs, first: e}
		}
	}
	return nil
}
