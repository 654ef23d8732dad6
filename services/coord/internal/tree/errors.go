package tree

import (
	"errors"
	"fmt"
)

// The sentinel errors of the store. Every error Apply or a read returns wraps exactly one
// of them; the API maps each to its own gRPC code. Their order is persisted (the index of
// a sentinel in errorKinds is stored in the request-id table and in snapshots), so new
// kinds are only ever appended.
var (
	// ErrInvalidPath is a malformed path.
	ErrInvalidPath = errors.New("coord: invalid path")
	// ErrInvalidArgument is any other malformed request field.
	ErrInvalidArgument = errors.New("coord: invalid argument")
	// ErrValueTooLarge is a value over MaxValueBytes or a request over its size limit.
	ErrValueTooLarge = errors.New("coord: value too large")
	// ErrNotFound is a node that does not exist.
	ErrNotFound = errors.New("coord: node not found")
	// ErrVersionMismatch is a failed compare-and-swap.
	ErrVersionMismatch = errors.New("coord: version mismatch")
	// ErrSessionNotFound is a session that is unknown, closed or expired.
	ErrSessionNotFound = errors.New("coord: session not found")
	// ErrRequestIDReused is a request id seen before with a different request.
	ErrRequestIDReused = errors.New("coord: request id reused for a different request")
	// ErrStaleTerm is a leader-only command (session expiry, deadline record) committed in
	// another term than the one whose leader decided it; it is ignored.
	ErrStaleTerm = errors.New("coord: command from a stale leader term")
	// ErrCorrupt is an entry or snapshot that cannot be decoded.
	ErrCorrupt = errors.New("coord: corrupt data")
)

var errorKinds = []error{
	ErrInvalidPath, ErrInvalidArgument, ErrValueTooLarge, ErrNotFound, ErrVersionMismatch,
	ErrSessionNotFound, ErrRequestIDReused, ErrStaleTerm, ErrCorrupt,
}

// applyError is an error produced by Apply: a kind (one of the sentinels) and a message.
// It is what the request-id table stores, so a retried request gets the same error back.
// field names the request field at fault for the invalid-argument kinds; it is not
// persisted in snapshots (ErrorField falls back to the kind).
type applyError struct {
	kind  error
	msg   string
	field string
}

func (e *applyError) Error() string { return e.msg }
func (e *applyError) Unwrap() error { return e.kind }

func newError(kind error, format string, args ...any) error {
	return &applyError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// newFieldError is newError for an invalid request field, named as a field path of the
// request message ("path", "compares[2].result").
func newFieldError(kind error, field, format string, args ...any) error {
	return &applyError{kind: kind, msg: fmt.Sprintf(format, args...), field: field}
}

// ErrorField returns the request field an ErrInvalidPath or ErrInvalidArgument error names:
// the field recorded when the error was made, else "path" for ErrInvalidPath and "" when
// unknown (an error restored from a snapshot).
func ErrorField(err error) string {
	var ae *applyError
	if errors.As(err, &ae) && ae.field != "" {
		return ae.field
	}
	if errors.Is(err, ErrInvalidPath) {
		return "path"
	}
	return ""
}

// asApplyError converts an error to the persisted form; errors of unknown kind count as
// invalid arguments.
func asApplyError(err error) *applyError {
	var ae *applyError
	if errors.As(err, &ae) {
		return ae
	}
	for _, k := range errorKinds {
		if errors.Is(err, k) {
			return &applyError{kind: k, msg: err.Error()}
		}
	}
	return &applyError{kind: ErrInvalidArgument, msg: err.Error()}
}

func kindIndex(kind error) int {
	for i, k := range errorKinds {
		if k == kind {
			return i
		}
	}
	return 1
}
