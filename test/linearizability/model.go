// Package linearizability checks that berth-coord is linearizable: its tests run a real
// 3-member cluster as processes, put a fault-injecting TCP proxy on every peer link, record
// the histories of concurrent clients while leaders are killed and links are cut, and check
// them with porcupine against Model, a sequential key-value specification that follows the
// server's semantics (proto/berth/coord/v1/coord.proto). The package also holds the
// cluster harness (Cluster), the proxy (Proxy) and the session failover tests.
package linearizability

import (
	"fmt"

	"github.com/anishathalye/porcupine"
)

// Kind is the kind of one operation of a history.
type Kind int

// The kinds of operation the workload issues; each touches exactly one key, so that a
// history can be checked key by key.
const (
	// KindGet is a linearizable Get.
	KindGet Kind = iota
	// KindPut is an unconditional Put.
	KindPut
	// KindCAS is a Put with expected_version (0 = create only).
	KindCAS
	// KindDelete is an unconditional Delete.
	KindDelete
	// KindCASDelete is a Delete with expected_version (> 0).
	KindCASDelete
	// KindTxnPut is a Txn: if version == Expected then put Value and get, else get.
	KindTxnPut
	// KindTxnDelete is a Txn: if the node exists with value Cond then delete and get,
	// else get.
	KindTxnDelete
)

var kindNames = map[Kind]string{
	KindGet: "get", KindPut: "put", KindCAS: "cas", KindDelete: "delete",
	KindCASDelete: "cas-delete", KindTxnPut: "txn-put", KindTxnDelete: "txn-delete",
}

// String returns the kind's name.
func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Input is what a client asked for.
type Input struct {
	// Kind is the operation.
	Kind Kind
	// Key is the node's path.
	Key string
	// Value is the value written by puts (unique per write in a history).
	Value string
	// Expected is the expected version of CAS, CASDelete and TxnPut.
	Expected int64
	// Cond is the value TxnDelete compares with.
	Cond string
}

// Code is the outcome class of an operation.
type Code int

// The outcomes a checked operation can have.
const (
	// CodeOK means the call succeeded (for a Txn: whichever branch ran).
	CodeOK Code = iota
	// CodeNotFound is NOT_FOUND: the node did not exist (Get, Delete).
	CodeNotFound
	// CodeAborted is ABORTED: expected_version did not match (CAS, CASDelete).
	CodeAborted
	// CodeUnknown means the outcome is unknown (timeout, UNAVAILABLE, a lost connection):
	// the operation may or may not have taken effect. Its return time is the end of the
	// history.
	CodeUnknown
)

var codeNames = map[Code]string{CodeOK: "ok", CodeNotFound: "not-found", CodeAborted: "aborted", CodeUnknown: "unknown"}

// String returns the code's name.
func (c Code) String() string { return codeNames[c] }

// Output is what the server answered.
type Output struct {
	// Code is the outcome.
	Code Code
	// Succeeded is TxnResponse.succeeded.
	Succeeded bool
	// Found, Value and Version describe the node a read returned: Get, and the get of
	// either Txn branch (Found false is version 0). For Put and CAS, Version is the
	// version written.
	Found   bool
	Value   string
	Version int64
}

// State is one key's state in the model: absent (Version 0) or present.
type State struct {
	// Version is the node's version; 0 when it does not exist.
	Version int64
	// Value is the node's value.
	Value string
}

func (s State) exists() bool { return s.Version > 0 }

func (s State) String() string {
	if !s.exists() {
		return "absent"
	}
	return fmt.Sprintf("%q v%d", s.Value, s.Version)
}

// written is the state after a put of v onto s: version 1 on creation, else one more.
func (s State) written(v string) State { return State{Version: s.Version + 1, Value: v} }

// readMatches reports whether a read that returned (found, value, version) saw s.
func readMatches(s State, found bool, value string, version int64) bool {
	if !s.exists() {
		return !found
	}
	return found && value == s.Value && version == s.Version
}

// Step is the sequential specification of one key: whether the operation in, answered
// with out, can be applied to s, and the state after it. An operation of unknown outcome
// is applied as the server would have applied it; since its return time is the end of the
// history, porcupine may also order it after every other operation, which stands for
// "never applied".
func Step(s State, in Input, out Output) (bool, State) {
	unknown := out.Code == CodeUnknown
	switch in.Kind {
	case KindGet:
		if unknown {
			return true, s
		}
		if out.Code == CodeNotFound {
			return !s.exists(), s
		}
		return out.Code == CodeOK && readMatches(s, true, out.Value, out.Version), s
	case KindPut:
		next := s.written(in.Value)
		return unknown || (out.Code == CodeOK && out.Version == next.Version), next
	case KindCAS:
		if s.Version != in.Expected {
			return unknown || out.Code == CodeAborted, s
		}
		next := s.written(in.Value)
		return unknown || (out.Code == CodeOK && out.Version == next.Version), next
	case KindDelete:
		if !s.exists() {
			return unknown || out.Code == CodeNotFound, s
		}
		return unknown || out.Code == CodeOK, State{}
	case KindCASDelete:
		if s.Version != in.Expected {
			return unknown || out.Code == CodeAborted, s
		}
		return unknown || out.Code == CodeOK, State{}
	case KindTxnPut:
		if s.Version != in.Expected {
			return unknown || (out.Code == CodeOK && !out.Succeeded && readMatches(s, out.Found, out.Value, out.Version)), s
		}
		next := s.written(in.Value)
		return unknown || (out.Code == CodeOK && out.Succeeded && readMatches(next, out.Found, out.Value, out.Version)), next
	case KindTxnDelete:
		if !s.exists() || s.Value != in.Cond {
			return unknown || (out.Code == CodeOK && !out.Succeeded && readMatches(s, out.Found, out.Value, out.Version)), s
		}
		return unknown || (out.Code == CodeOK && out.Succeeded && !out.Found), State{}
	}
	return false, s
}

// Describe renders an operation for porcupine's visualization.
func Describe(in Input, out Output) string {
	var call string
	switch in.Kind {
	case KindGet, KindDelete:
		call = fmt.Sprintf("%s(%s)", in.Kind, in.Key)
	case KindPut:
		call = fmt.Sprintf("put(%s, %q)", in.Key, in.Value)
	case KindCAS, KindTxnPut:
		call = fmt.Sprintf("%s(%s, v%d → %q)", in.Kind, in.Key, in.Expected, in.Value)
	case KindCASDelete:
		call = fmt.Sprintf("cas-delete(%s, v%d)", in.Key, in.Expected)
	case KindTxnDelete:
		call = fmt.Sprintf("txn-delete(%s, if %q)", in.Key, in.Cond)
	default:
		call = in.Kind.String()
	}
	var res string
	switch {
	case out.Code != CodeOK:
		res = out.Code.String()
	case in.Kind == KindGet:
		res = fmt.Sprintf("%q v%d", out.Value, out.Version)
	case in.Kind == KindPut || in.Kind == KindCAS:
		res = fmt.Sprintf("ok v%d", out.Version)
	case in.Kind == KindTxnPut || in.Kind == KindTxnDelete:
		read := "absent"
		if out.Found {
			read = fmt.Sprintf("%q v%d", out.Value, out.Version)
		}
		res = fmt.Sprintf("succeeded=%t, get %s", out.Succeeded, read)
	default:
		res = "ok"
	}
	return call + " → " + res
}

// Model is the porcupine model of the store: one State per key, the history partitioned
// by key.
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(Input).Key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			out := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() any { return State{} },
		Step: func(state, input, output any) (bool, any) {
			return Step(state.(State), input.(Input), output.(Output))
		},
		Equal:             func(a, b any) bool { return a.(State) == b.(State) },
		DescribeOperation: func(input, output any) string { return Describe(input.(Input), output.(Output)) },
		DescribeState:     func(state any) string { return state.(State).String() },
	}
}
