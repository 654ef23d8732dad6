package linearizability

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// op builds one operation of a hand-written history.
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Call: call, Return: ret, Input: in, Output: out}
}

func TestModelStep(t *testing.T) {
	absent, v1 := State{}, State{Version: 1, Value: "a"}
	tests := []struct {
		name   string
		state  State
		in     Input
		out    Output
		wantOK bool
		want   State
	}{
		{"get absent", absent, Input{Kind: KindGet}, Output{Code: CodeNotFound}, true, absent},
		{"get absent answered found", absent, Input{Kind: KindGet}, Output{Code: CodeOK, Found: true, Value: "a", Version: 1}, false, absent},
		{"get present", v1, Input{Kind: KindGet}, Output{Code: CodeOK, Found: true, Value: "a", Version: 1}, true, v1},
		{"get wrong version", v1, Input{Kind: KindGet}, Output{Code: CodeOK, Found: true, Value: "a", Version: 2}, false, v1},
		{"put creates at version 1", absent, Input{Kind: KindPut, Value: "a"}, Output{Code: CodeOK, Version: 1}, true, v1},
		{"put bumps the version", v1, Input{Kind: KindPut, Value: "b"}, Output{Code: CodeOK, Version: 2}, true, State{Version: 2, Value: "b"}},
		{"put wrong version", v1, Input{Kind: KindPut, Value: "b"}, Output{Code: CodeOK, Version: 1}, false, State{Version: 2, Value: "b"}},
		{"cas create on absent", absent, Input{Kind: KindCAS, Value: "a", Expected: 0}, Output{Code: CodeOK, Version: 1}, true, v1},
		{"cas create on present aborts", v1, Input{Kind: KindCAS, Value: "b", Expected: 0}, Output{Code: CodeAborted}, true, v1},
		{"cas create on present cannot succeed", v1, Input{Kind: KindCAS, Value: "b", Expected: 0}, Output{Code: CodeOK, Version: 1}, false, v1},
		{"cas match", v1, Input{Kind: KindCAS, Value: "b", Expected: 1}, Output{Code: CodeOK, Version: 2}, true, State{Version: 2, Value: "b"}},
		{"cas on absent with version 1 aborts", absent, Input{Kind: KindCAS, Value: "b", Expected: 1}, Output{Code: CodeAborted}, true, absent},
		{"cas mismatch cannot abort when it matches", v1, Input{Kind: KindCAS, Value: "b", Expected: 1}, Output{Code: CodeAborted}, false, State{Version: 2, Value: "b"}},
		{"unknown cas applies", v1, Input{Kind: KindCAS, Value: "b", Expected: 1}, Output{Code: CodeUnknown}, true, State{Version: 2, Value: "b"}},
		{"delete present", v1, Input{Kind: KindDelete}, Output{Code: CodeOK}, true, absent},
		{"delete absent", absent, Input{Kind: KindDelete}, Output{Code: CodeNotFound}, true, absent},
		{"delete absent cannot succeed", absent, Input{Kind: KindDelete}, Output{Code: CodeOK}, false, absent},
		{"cas delete match", v1, Input{Kind: KindCASDelete, Expected: 1}, Output{Code: CodeOK}, true, absent},
		{"cas delete absent aborts", absent, Input{Kind: KindCASDelete, Expected: 1}, Output{Code: CodeAborted}, true, absent},
		{"txn put success", v1, Input{Kind: KindTxnPut, Value: "b", Expected: 1}, Output{Code: CodeOK, Succeeded: true, Found: true, Value: "b", Version: 2}, true, State{Version: 2, Value: "b"}},
		{"txn put failure reads", v1, Input{Kind: KindTxnPut, Value: "b", Expected: 3}, Output{Code: CodeOK, Found: true, Value: "a", Version: 1}, true, v1},
		{"txn put failure on absent", absent, Input{Kind: KindTxnPut, Value: "b", Expected: 3}, Output{Code: CodeOK}, true, absent},
		{"txn put failure with stale read", v1, Input{Kind: KindTxnPut, Value: "b", Expected: 3}, Output{Code: CodeOK}, false, v1},
		{"txn delete success", v1, Input{Kind: KindTxnDelete, Cond: "a"}, Output{Code: CodeOK, Succeeded: true}, true, absent},
		{"txn delete other value", v1, Input{Kind: KindTxnDelete, Cond: "z"}, Output{Code: CodeOK, Found: true, Value: "a", Version: 1}, true, v1},
		{"txn delete cannot succeed on absent", absent, Input{Kind: KindTxnDelete, Cond: ""}, Output{Code: CodeOK, Succeeded: true}, false, absent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, got := Step(tt.state, tt.in, tt.out)
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Errorf("Step(%v, %s): got %t %v, want %t %v", tt.state, Describe(tt.in, tt.out), ok, got, tt.wantOK, tt.want)
			}
		})
	}
}

func TestModelHistories(t *testing.T) {
	put := func(v string) Input { return Input{Kind: KindPut, Key: "/k", Value: v} }
	get := Input{Kind: KindGet, Key: "/k"}
	read := func(v string, version int64) Output {
		return Output{Code: CodeOK, Found: true, Value: v, Version: version}
	}
	tests := []struct {
		name    string
		history []porcupine.Operation
		want    porcupine.CheckResult
	}{
		{"sequential", []porcupine.Operation{
			op(0, 0, 10, put("a"), Output{Version: 1}),
			op(1, 20, 30, get, read("a", 1)),
		}, porcupine.Ok},
		{"stale read after a completed write", []porcupine.Operation{
			op(0, 0, 10, put("a"), Output{Version: 1}),
			op(0, 20, 30, put("b"), Output{Version: 2}),
			op(1, 40, 50, get, read("a", 1)),
		}, porcupine.Illegal},
		{"concurrent read may see either", []porcupine.Operation{
			op(0, 0, 10, put("a"), Output{Version: 1}),
			op(0, 20, 50, put("b"), Output{Version: 2}),
			op(1, 30, 40, get, read("a", 1)),
		}, porcupine.Ok},
		{"unknown write seen later", []porcupine.Operation{
			op(0, 0, 100, put("a"), Output{Code: CodeUnknown}),
			op(1, 20, 30, get, Output{Code: CodeNotFound}),
			op(1, 40, 50, get, read("a", 1)),
		}, porcupine.Ok},
		{"unknown write never seen", []porcupine.Operation{
			op(0, 0, 100, put("a"), Output{Code: CodeUnknown}),
			op(1, 40, 50, get, Output{Code: CodeNotFound}),
		}, porcupine.Ok},
		{"unknown write cannot be seen and then unseen", []porcupine.Operation{
			op(0, 0, 100, put("a"), Output{Code: CodeUnknown}),
			op(1, 20, 30, get, read("a", 1)),
			op(1, 40, 50, get, Output{Code: CodeNotFound}),
		}, porcupine.Illegal},
		{"a write applied twice", []porcupine.Operation{
			op(0, 0, 10, put("a"), Output{Version: 1}),
			op(1, 20, 30, get, read("a", 2)),
		}, porcupine.Illegal},
		{"two creates both succeed", []porcupine.Operation{
			op(0, 0, 10, Input{Kind: KindCAS, Key: "/k", Value: "a"}, Output{Version: 1}),
			op(1, 5, 15, Input{Kind: KindCAS, Key: "/k", Value: "b"}, Output{Version: 1}),
		}, porcupine.Illegal},
		{"keys are independent", []porcupine.Operation{
			op(0, 0, 10, put("a"), Output{Version: 1}),
			op(1, 20, 30, Input{Kind: KindGet, Key: "/other"}, Output{Code: CodeNotFound}),
		}, porcupine.Ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(Model(), tt.history); (got && tt.want != porcupine.Ok) || (!got && tt.want == porcupine.Ok) {
				t.Errorf("check: got linearizable %t, want %v", got, tt.want)
			}
		})
	}
}
