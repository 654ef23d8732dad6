package coord

import "testing"

// TestParseInitialClusterRefusesBadEntries checks the names and peer addresses a member
// list (and a member add) may hold: a host that is neither an IP address nor a DNS name,
// a bad port or a name with other characters is refused before Raft sees it.
func TestParseInitialClusterRefusesBadEntries(t *testing.T) {
	for _, s := range []string{
		"c1=127.0.0.1:7380", "coord-0=coord-0.coord.berth.svc.cluster.local:7380", "c1=[::1]:7380",
		"c1=127.0.0.1:7380,c2=127.0.0.2:7380", "n_1.a=host_1:1",
	} {
		if _, err := ParseInitialCluster(s); err != nil {
			t.Errorf("ParseInitialCluster(%q): %v, want nil", s, err)
		}
	}
	for _, s := range []string{
		"c1=$(touch /tmp/x):7380", "c1=a;b:7380", "c1=`id`:7380", "c1=a b:7380", "c1=:7380", "c1=host:0", "c1=host:65536",
		"c1=host:http", "c1=host..x:1", "c1=host\n:1", "c;1=127.0.0.1:1", "$(id)=127.0.0.1:1", "c 1=127.0.0.1:1", "..=127.0.0.1:1", ".c=127.0.0.1:1",
		"c1=127.0.0.1:1,c1=127.0.0.2:1", "c1=127.0.0.1:1,c2=127.0.0.1:1", "c1", "=127.0.0.1:1",
	} {
		if _, err := ParseInitialCluster(s); err == nil {
			t.Errorf("ParseInitialCluster(%q): nil error, want a refusal", s)
		}
	}
}
