package coordclient

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	coordv1 "github.com/berthdev/berth/proto/coord/v1"
)

func TestValidatePath(t *testing.T) {
	tests := []struct {
		path      string
		allowRoot bool
		want      string // "" for valid
	}{
		{"/a", false, ""},
		{"/berth/hosts/h-017", false, ""},
		{"/a.b/..c/.d", false, ""},
		{"/", true, ""},
		{"/", false, "root"},
		{"", false, "empty path"},
		{"a/b", false, "does not start"},
		{"/a/", false, "ends with"},
		{"/a//b", false, "empty segment"},
		{"/a/./b", false, `"." segment`},
		{"/a/..", false, `".." segment`},
		{"/a\x00b", false, "NUL"},
		{"/" + strings.Repeat("x", MaxPathBytes), false, "over the 4096-byte limit"},
	}
	for _, tt := range tests {
		err := ValidatePath(tt.path, tt.allowRoot)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ValidatePath(%q, %v) = %v, want nil", tt.path, tt.allowRoot, err)
		case tt.want != "" && (err == nil || !errors.Is(err, ErrInvalidPath) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("ValidatePath(%q, %v) = %v, want ErrInvalidPath containing %q", tt.path, tt.allowRoot, err, tt.want)
		}
	}
}

func ptr(v int64) *int64 { return &v }

func TestBuildPut(t *testing.T) {
	tests := []struct {
		name    string
		path    string
		opts    []PutOption
		want    *coordv1.PutRequest // request id ignored unless set here
		wantErr error
	}{
		{"plain", "/a", nil, &coordv1.PutRequest{Path: "/a", Value: []byte("v")}, nil},
		{"create only", "/a", []PutOption{ExpectVersion(0)}, &coordv1.PutRequest{Path: "/a", Value: []byte("v"), ExpectedVersion: ptr(0)}, nil},
		{"cas", "/a", []PutOption{ExpectVersion(3)}, &coordv1.PutRequest{Path: "/a", Value: []byte("v"), ExpectedVersion: ptr(3)}, nil},
		{"ephemeral sequential", "/q/", []PutOption{Ephemeral(9), Sequential()}, &coordv1.PutRequest{Path: "/q/", Value: []byte("v"), SessionId: 9, Sequential: true}, nil},
		{"request id", "/a", []PutOption{RequestID("step-17")}, &coordv1.PutRequest{Path: "/a", Value: []byte("v"), RequestId: "step-17"}, nil},
		{"trailing slash without sequential", "/q/", nil, nil, ErrInvalidPath},
		{"negative version", "/a", []PutOption{ExpectVersion(-1)}, nil, ErrInvalidArgument},
		{"bad session", "/a", []PutOption{Ephemeral(0)}, nil, ErrInvalidArgument},
		{"empty request id", "/a", []PutOption{RequestID("")}, nil, ErrInvalidArgument},
		{"root", "/", nil, nil, ErrInvalidPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := buildPut(tt.path, []byte("v"), tt.opts)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.RequestId == "" {
				t.Fatal("got no request id, want a generated one")
			}
			if tt.want.RequestId == "" {
				got.RequestId = ""
			}
			if !proto.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildReads(t *testing.T) {
	g, err := buildGet("/a", []GetOption{Serializable(), KeysOnly()})
	if err != nil {
		t.Fatal(err)
	}
	if want := (&coordv1.GetRequest{Path: "/a", Serializable: true, KeysOnly: true}); !proto.Equal(g, want) {
		t.Fatalf("got %v, want %v", g, want)
	}
	l, err := buildList("/", []ListOption{Recursive(), Limit(10), Serializable()})
	if err != nil {
		t.Fatal(err)
	}
	if want := (&coordv1.ListRequest{Path: "/", Recursive: true, Limit: 10, Serializable: true}); !proto.Equal(l, want) {
		t.Fatalf("got %v, want %v", l, want)
	}
	if _, err := buildList("/a", []ListOption{Limit(-1)}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Limit(-1): got %v, want ErrInvalidArgument", err)
	}
	if _, err := buildGet("/", nil); !errors.Is(err, ErrInvalidPath) {
		t.Fatalf("get /: got %v, want ErrInvalidPath", err)
	}
	d, err := buildDelete("/a", []DeleteOption{Recursive(), ExpectVersion(2)})
	if err != nil {
		t.Fatal(err)
	}
	d.RequestId = ""
	if want := (&coordv1.DeleteRequest{Path: "/a", Recursive: true, ExpectedVersion: ptr(2)}); !proto.Equal(d, want) {
		t.Fatalf("got %v, want %v", d, want)
	}
}

func TestTxnBuild(t *testing.T) {
	c := &Client{}
	req, err := c.Txn().
		If(Version("/a").Equal(2), Missing("/b"), Value("/c").Less([]byte("x"))).
		Then(OpPut("/a", []byte("1")), OpDelete("/d", Recursive())).
		Else(OpGet("/a", KeysOnly())).
		RequestID("t-1").
		build()
	if err != nil {
		t.Fatal(err)
	}
	want := &coordv1.TxnRequest{
		RequestId: "t-1",
		Compares: []*coordv1.Compare{
			{Path: "/a", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Version{Version: 2}},
			{Path: "/b", Result: coordv1.CompareResult_COMPARE_RESULT_EQUAL, Target: &coordv1.Compare_Exists{Exists: false}},
			{Path: "/c", Result: coordv1.CompareResult_COMPARE_RESULT_LESS, Target: &coordv1.Compare_Value{Value: []byte("x")}},
		},
		Success: []*coordv1.Op{
			{Op: &coordv1.Op_Put{Put: &coordv1.PutOp{Path: "/a", Value: []byte("1")}}},
			{Op: &coordv1.Op_Delete{Delete: &coordv1.DeleteOp{Path: "/d", Recursive: true}}},
		},
		Failure: []*coordv1.Op{{Op: &coordv1.Op_Get{Get: &coordv1.GetOp{Path: "/a", KeysOnly: true}}}},
	}
	if !proto.Equal(req, want) {
		t.Fatalf("got %v, want %v", req, want)
	}

	// A fence goes first among the compares, and its read first among the failure ops.
	req, err = c.Txn().If(Exists("/x")).Else(OpGet("/y")).Fence("/berth/leader/ctl/0000000007", 7).build()
	if err != nil {
		t.Fatal(err)
	}
	if got := req.Compares[0].GetCreateRev(); got != 7 || req.Compares[0].Path != "/berth/leader/ctl/0000000007" {
		t.Fatalf("got first compare %v, want the fence", req.Compares[0])
	}
	if got := req.Failure[0].GetGet().GetPath(); got != "/berth/leader/ctl/0000000007" || len(req.Failure) != 2 {
		t.Fatalf("got failure ops %v, want the fence read then /y", req.Failure)
	}
}

func TestTxnBuildErrors(t *testing.T) {
	c := &Client{}
	many := make([]Op, MaxTxnOps+1)
	for i := range many {
		many[i] = OpDelete("/a")
	}
	tests := []struct {
		name string
		txn  *Txn
		want error
	}{
		{"expect version in op", c.Txn().Then(OpPut("/a", nil, ExpectVersion(1))), ErrInvalidArgument},
		{"request id in op", c.Txn().Then(OpDelete("/a", RequestID("x"))), ErrInvalidArgument},
		{"serializable in op", c.Txn().Else(OpGet("/a", Serializable())), ErrInvalidArgument},
		{"bad compare path", c.Txn().If(Version("a").Equal(1)), ErrInvalidPath},
		{"bad op path", c.Txn().Then(OpPut("/a/", nil)), ErrInvalidPath},
		{"zero cmp", c.Txn().If(Cmp{}), ErrInvalidArgument},
		{"zero op", c.Txn().Then(Op{}), ErrInvalidArgument},
		{"too many ops", c.Txn().Then(many...), ErrInvalidArgument},
		{"bad fence", c.Txn().Fence("/l", 0), ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.txn.build(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRolePath(t *testing.T) {
	tests := []struct {
		role, want string
		wantErr    error
	}{
		{"controller", "/berth/leader/controller", nil},
		{"scheduler/dc1", "/berth/leader/scheduler/dc1", nil},
		{"", "", ErrInvalidArgument},
		{"/abs", "", ErrInvalidArgument},
		{"a//b", "", ErrInvalidPath},
		{"x/", "", ErrInvalidPath},
	}
	for _, tt := range tests {
		got, err := rolePath(tt.role)
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Errorf("rolePath(%q) = %q, %v; want %q, %v", tt.role, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestContendersOrder(t *testing.T) {
	got := contenders([]Node{
		{Path: "/l/0000000009", Version: 1, CreateRev: 9},
		{Path: "/l/sub", Version: 0},
		{Path: "/l/0000000003", Version: 2, CreateRev: 3},
		{Path: "/l/0000000012", Version: 1, CreateRev: 12},
	})
	var paths []string
	for _, n := range got {
		paths = append(paths, n.Path)
	}
	if want := "/l/0000000003,/l/0000000009,/l/0000000012"; strings.Join(paths, ",") != want {
		t.Fatalf("got %v, want %s (oldest first, implicit nodes left out)", paths, want)
	}
}
