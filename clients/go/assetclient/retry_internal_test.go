package assetclient

import (
	"encoding/json"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// Every RPC is in exactly one retry table, so a new one must be decided on.
func TestEveryMethodIsInOneRetryTable(t *testing.T) {
	var all []string
	for _, m := range assetv1.AssetService_ServiceDesc.Methods {
		all = append(all, m.MethodName)
	}
	for _, s := range assetv1.AssetService_ServiceDesc.Streams {
		all = append(all, s.StreamName)
	}
	for _, m := range all {
		_, retried := retriedMethods[m]
		_, notRetried := notRetriedMethods[m]
		if retried == notRetried {
			t.Errorf("%s: in retriedMethods %v, in notRetriedMethods %v; want exactly one", m, retried, notRetried)
		}
	}
	for m := range retriedMethods {
		if !slices.Contains(all, m) {
			t.Errorf("retriedMethods names %s, which the service does not have", m)
		}
	}
	for m := range notRetriedMethods {
		if !slices.Contains(all, m) {
			t.Errorf("notRetriedMethods names %s, which the service does not have", m)
		}
	}
}

func TestServiceConfigRetriesExactlyTheSafeMethods(t *testing.T) {
	var cfg struct {
		MethodConfig []struct {
			Name        []struct{ Service, Method string }
			RetryPolicy struct {
				MaxAttempts          int
				RetryableStatusCodes []string
			}
		}
	}
	if err := json.Unmarshal([]byte(ServiceConfig()), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.MethodConfig) != 1 {
		t.Fatalf("method configs: %+v", cfg.MethodConfig)
	}
	mc := cfg.MethodConfig[0]
	var named []string
	for _, n := range mc.Name {
		if n.Service != "asset.v1.AssetService" {
			t.Errorf("service %q", n.Service)
		}
		named = append(named, n.Method)
	}
	if want := sortedKeys(retriedMethods); !slices.Equal(named, want) {
		t.Errorf("retried %v, want %v", named, want)
	}
	if mc.RetryPolicy.MaxAttempts != 5 || !slices.Equal(mc.RetryPolicy.RetryableStatusCodes, []string{"UNAVAILABLE"}) {
		t.Errorf("retry policy %+v", mc.RetryPolicy)
	}
	// grpc parses it (NewClient refuses an invalid default service config).
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(ServiceConfig()))
	if err != nil {
		t.Fatalf("grpc refuses the service config: %v", err)
	}
	conn.Close()
}
