package coord

import (
	"time"

	"google.golang.org/grpc/keepalive"
)

// keepaliveEnforcement is the client API's policy for the HTTP/2 pings of clients: a ping
// every 5 s at most, also on a connection with no stream open. Clients ping (gRPC
// keepalive, every 10 s in pkg/coordclient) to find out that a member froze, which a
// watch stream that merely receives nothing cannot tell; with gRPC's default policy (5
// minutes, not without streams) the server would close their connections with GOAWAY
// "too_many_pings".
var keepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}

// The server pings a client whose connection has been idle for serverPingTime and closes
// the connection when no answer comes within serverPingTimeout, so that the watch and
// keepalive streams of a frozen or vanished client are freed.
const (
	serverPingTime    = 30 * time.Second
	serverPingTimeout = 10 * time.Second
)
