package natsbus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"

	commonv1 "github.com/berthdev/berth/proto/common/v1"
)

// ErrNoResponders is returned (wrapped: "request <subject>: no responders") by Request when
// nothing subscribes to the subject. It is decided by the server at once, not by the
// request's timeout.
var ErrNoResponders = errors.New("no responders")

// ErrTimeout is returned (wrapped: "request <subject>: timeout after 2s") by Request when
// no reply came before the request's deadline. A *StatusError with
// CODE_DEADLINE_EXCEEDED (the handler ran out of the time the requester gave it) is
// ErrTimeout too.
var ErrTimeout = errors.New("timeout")

// StatusError is a failure that crossed (or will cross) a process boundary: a handler's
// error as the caller of Request sees it, with the code the handler chose. Callers branch
// with errors.As or with errors.Is against the code sentinels (ErrNotFound, ...), never on
// the message.
type StatusError struct {
	// Code classifies the failure.
	Code commonv1.Code
	// Message is one line a person can act on.
	Message string
	// Details carry machine-readable facts (the field at fault, a retry delay).
	Details map[string]string

	// cause is the local error Errorf wrapped; it does not cross the wire.
	cause error
}

// Sentinels for errors.Is: a *StatusError matches the sentinel of its code.
var (
	ErrInvalidArgument    = &StatusError{Code: commonv1.Code_CODE_INVALID_ARGUMENT}
	ErrNotFound           = &StatusError{Code: commonv1.Code_CODE_NOT_FOUND}
	ErrAlreadyExists      = &StatusError{Code: commonv1.Code_CODE_ALREADY_EXISTS}
	ErrFailedPrecondition = &StatusError{Code: commonv1.Code_CODE_FAILED_PRECONDITION}
	ErrConflict           = &StatusError{Code: commonv1.Code_CODE_CONFLICT}
	ErrPermissionDenied   = &StatusError{Code: commonv1.Code_CODE_PERMISSION_DENIED}
	ErrUnavailable        = &StatusError{Code: commonv1.Code_CODE_UNAVAILABLE}
	ErrDeadlineExceeded   = &StatusError{Code: commonv1.Code_CODE_DEADLINE_EXCEEDED}
	ErrResourceExhausted  = &StatusError{Code: commonv1.Code_CODE_RESOURCE_EXHAUSTED}
	ErrInternal           = &StatusError{Code: commonv1.Code_CODE_INTERNAL}
	ErrAborted            = &StatusError{Code: commonv1.Code_CODE_ABORTED}
)

// Errorf builds a *StatusError with the code and a formatted message. %w is allowed: the
// wrapped error stays reachable with errors.Is and errors.As in this process, but only the
// text crosses the wire.
func Errorf(code commonv1.Code, format string, args ...any) error {
	cause := fmt.Errorf(format, args...)
	return &StatusError{Code: code, Message: cause.Error(), cause: cause}
}

// Error is "<code words>: <message>", for example "invalid argument: replicas must be > 0".
func (e *StatusError) Error() string {
	words := codeWords(e.Code)
	if e.Message == "" {
		return words
	}
	return words + ": " + e.Message
}

// Unwrap returns the local error Errorf wrapped, if any.
func (e *StatusError) Unwrap() error { return errors.Unwrap(e.cause) }

// Is reports whether target is a code sentinel (a *StatusError without a message) of e's
// code. A CODE_DEADLINE_EXCEEDED error also is ErrTimeout: a handler that gave up at the
// requester's deadline and a reply that never came are the same failure to the caller.
func (e *StatusError) Is(target error) bool {
	if target == ErrTimeout {
		return e.Code == commonv1.Code_CODE_DEADLINE_EXCEEDED
	}
	t, ok := target.(*StatusError)
	return ok && t.Message == "" && t.Code == e.Code
}

// Status is e as the wire message.
func (e *StatusError) Status() *commonv1.Status {
	return &commonv1.Status{Code: e.Code, Message: e.Message, Details: maps.Clone(e.Details)}
}

// FromStatus turns a received Status into an error. A Status without a code becomes
// CODE_INTERNAL: a failure reply always fails.
func FromStatus(st *commonv1.Status) *StatusError {
	code := st.GetCode()
	if code == commonv1.Code_CODE_UNSPECIFIED || code == commonv1.Code_CODE_OK {
		code = commonv1.Code_CODE_INTERNAL
	}
	return &StatusError{Code: code, Message: st.GetMessage(), Details: maps.Clone(st.GetDetails())}
}

// StatusOf is the Status to send for err: the code of a *StatusError in its chain;
// CODE_UNAVAILABLE for ErrNoResponders; CODE_DEADLINE_EXCEEDED for ErrTimeout and
// context.DeadlineExceeded; CODE_ABORTED for context.Canceled; CODE_INTERNAL otherwise. A
// nil err is CODE_OK.
func StatusOf(err error) *commonv1.Status {
	if err == nil {
		return &commonv1.Status{Code: commonv1.Code_CODE_OK}
	}
	var se *StatusError
	if errors.As(err, &se) {
		st := se.Status()
		if st.Code == commonv1.Code_CODE_UNSPECIFIED || st.Code == commonv1.Code_CODE_OK {
			st.Code = commonv1.Code_CODE_INTERNAL
		}
		return st
	}
	code := commonv1.Code_CODE_INTERNAL
	switch {
	case errors.Is(err, ErrNoResponders):
		code = commonv1.Code_CODE_UNAVAILABLE
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		code = commonv1.Code_CODE_DEADLINE_EXCEEDED
	case errors.Is(err, context.Canceled):
		code = commonv1.Code_CODE_ABORTED
	}
	return &commonv1.Status{Code: code, Message: err.Error()}
}

// CodeOf is StatusOf(err).Code.
func CodeOf(err error) commonv1.Code { return StatusOf(err).GetCode() }

// codeWords turns CODE_INVALID_ARGUMENT into "invalid argument".
func codeWords(c commonv1.Code) string {
	name, ok := commonv1.Code_name[int32(c)]
	if !ok {
		return "code " + strconv.Itoa(int(c))
	}
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "CODE_"), "_", " "))
}

// parseCode reads the berth-status-code header: a Code name (CODE_NOT_FOUND) or number.
func parseCode(s string) (commonv1.Code, bool) {
	if v, ok := commonv1.Code_value[s]; ok {
		return commonv1.Code(v), true
	}
	if n, err := strconv.ParseInt(s, 10, 32); err == nil {
		return commonv1.Code(n), true
	}
	return commonv1.Code_CODE_UNSPECIFIED, false
}
