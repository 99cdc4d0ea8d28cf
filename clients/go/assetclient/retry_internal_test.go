package assetclient

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// README.md names every RPC twice: with its method, and in the retry table with
// the decision the code makes, so that a new RPC reaches the reader too.
func TestTheREADMEHasEveryRPCInBothTables(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "| `") {
			rows = append(rows, line)
		}
	}
	// A row whose first cell names rpc, alone or among others ("`GetAsset`, `BatchGetAssets`").
	names := func(row, rpc string) bool {
		first := strings.SplitN(strings.TrimPrefix(row, "| "), " |", 2)[0]
		return slices.Contains(strings.Split(first, ", "), "`"+rpc+"`")
	}
	for _, m := range append(sortedKeys(retriedMethods), sortedKeys(notRetriedMethods)...) {
		_, retried := retriedMethods[m]
		want := map[bool]string{true: "yes", false: "no"}[retried]
		var method, decision bool
		for _, row := range rows {
			if !names(row, m) {
				continue
			}
			cells := strings.Split(row, " | ")
			if len(cells) > 1 && (cells[1] == "yes" || cells[1] == "no") {
				decision = decision || cells[1] == want
			} else {
				method = true
			}
		}
		if !method {
			t.Errorf("README.md: no row of the RPC table names %s and its method", m)
		}
		if !decision {
			t.Errorf("README.md: the retry table has no row `%s` | %s", m, want)
		}
	}
}
