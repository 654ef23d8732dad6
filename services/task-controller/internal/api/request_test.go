package api

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	controllerv1 "github.com/berthdev/berth/proto/controller/v1"
	"github.com/berthdev/berth/services/task-controller/internal/strategy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestDeploymentRequestValidate(t *testing.T) {
	cases := []struct {
		name  string
		body  string
		field string
	}{
		{"good", `{"service":"acc/web","version":"1.0.0","artifact":{"url":"file:///p.tar.gz","sha256":"` + sum + `"},"strategy":{"batches":[1,"10%","100%"],"max_failures":2,"pause":"30s"}}`, ""},
		{"http", `{"service":"acc/web","version":"1","artifact":{"url":"https://pkgs/p.tar.gz","sha256":"` + sum + `"}}`, ""},
		{"ftp", `{"service":"acc/web","version":"1","artifact":{"url":"ftp://pkgs/p.tar.gz","sha256":"` + sum + `"}}`, ""},
		{"scheme", `{"service":"acc/web","version":"1","artifact":{"url":"s3://b/p.tar.gz","sha256":"` + sum + `"}}`, "artifact.url"},
		{"http without host", `{"service":"acc/web","version":"1","artifact":{"url":"http:///p","sha256":"` + sum + `"}}`, "artifact.url"},
		{"no artifact", `{"service":"acc/web","version":"1"}`, "artifact"},
		{"no sha", `{"service":"acc/web","version":"1","artifact":{"url":"file:///p.tar.gz"}}`, "artifact.sha256"},
		{"version", `{"service":"acc/web","version":"../1","artifact":{"url":"file:///p","sha256":"` + sum + `"}}`, "version"},
		{"service", `{"service":"acc/web/","version":"1","artifact":{"url":"file:///p","sha256":"` + sum + `"}}`, "service"},
		{"mode", `{"service":"acc/web","version":"1","mode":"vm","artifact":{"url":"file:///p","sha256":"` + sum + `"}}`, "mode"},
		{"container", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":3,"cpu_millis":100,"memory_bytes":67108864,"spread":"rack","constraints":"dc=a","max_per_host":2}}`, ""},
		{"container without placement", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"}}`, "placement"},
		{"container with hosts", `{"service":"acc/web","version":"1","mode":"container","hosts":["h1"],"artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864}}`, "hosts"},
		{"package with placement", `{"service":"acc/web","version":"1","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864}}`, "placement"},
		{"container without artifact", `{"service":"acc/web","version":"1","mode":"container","placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864}}`, "artifact"},
		{"replicas 0", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":0,"cpu_millis":100,"memory_bytes":67108864}}`, "placement.replicas"},
		{"replicas too many", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1001,"cpu_millis":100,"memory_bytes":67108864}}`, "placement.replicas"},
		{"no cpu", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"memory_bytes":67108864}}`, "placement.cpu_millis"},
		{"little memory", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":6291455}}`, "placement.memory_bytes"},
		{"least memory", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":6291456}}`, ""},
		{"spread", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864,"spread":"zone"}}`, "placement.spread"},
		{"max per host", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864,"max_per_host":65}}`, "placement.max_per_host"},
		{"constraints control", `{"service":"acc/web","version":"1","mode":"container","artifact":{"url":"file:///p","sha256":"` + sum + `"},"placement":{"replicas":1,"cpu_millis":100,"memory_bytes":67108864,"constraints":"dc=a\nrack=b"}}`, "placement.constraints"},
		{"batches", `{"service":"acc/web","version":"1","artifact":{"url":"file:///p","sha256":"` + sum + `"},"strategy":{"batches":[1,"50%"]}}`, "strategy.batches"},
		{"duration", `{"service":"acc/web","version":"1","artifact":{"url":"file:///p","sha256":"` + sum + `"},"strategy":{"progress_deadline":"soon"}}`, "strategy.progress_deadline"},
		{"hosts", `{"service":"acc/web","version":"1","artifact":{"url":"file:///p","sha256":"` + sum + `"},"hosts":["a","a"]}`, "hosts[1]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var req DeploymentRequest
			if err := json.Unmarshal([]byte(tc.body), &req); err != nil {
				t.Fatalf("decode: %v", err)
			}
			_, err := req.validate()
			got := ""
			var fe *strategy.FieldError
			if errors.As(err, &fe) {
				got = fe.Field
			} else if err != nil {
				t.Fatalf("error %v is not a field error", err)
			}
			if got != tc.field {
				t.Errorf("got field %q (%v), want %q", got, err, tc.field)
			}
		})
	}
}

func TestFlexStrings(t *testing.T) {
	var s StrategyJSON
	if err := json.Unmarshal([]byte(`{"batches":[1,"25%",1,"100%"],"max_failures":0,"progress_deadline":90}`), &s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.proto("strategy."); err == nil {
		t.Fatalf("batches [1 25%% 1 100%%] passed validation; want an error: the counts must grow")
	}
	s.Batches = s.Batches[:2]
	s.Batches = append(s.Batches, "100%")
	p, err := s.proto("strategy.")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.GetBatches(), ","); got != "1,25%,100%" {
		t.Errorf("batches: got %s", got)
	}
	if p.GetMaxFailures() != "0" || p.GetProgressDeadline().AsDuration().Seconds() != 90 {
		t.Errorf("got max_failures %q progress_deadline %s", p.GetMaxFailures(), p.GetProgressDeadline().AsDuration())
	}
}

func TestUnsetField(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"strategy.max_parallel", true}, {"policy.health.rise", true}, {"dns_ttl", true}, {"strategy.nope", false}, {"dns_ttl.seconds", false}} {
		err := unsetField(&controllerv1.Policy{}, tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("unset %q: got %v, want ok %t", tc.name, err, tc.ok)
		}
	}
}
