package assetclient_test

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/asset-service/asset-service/clients/go/assetclient"
)

func TestFromEnv(t *testing.T) {
	for _, name := range []string{assetclient.EnvAddr, assetclient.EnvToken, assetclient.EnvCAFile, assetclient.EnvClientCert, assetclient.EnvClientKey, assetclient.EnvTLS} {
		t.Setenv(name, "")
	}
	addr, opts, err := assetclient.FromEnv()
	if err != nil || addr != assetclient.DefaultAddr || len(opts) != 0 {
		t.Errorf("FromEnv with nothing set: %q, %d options, %v", addr, len(opts), err)
	}

	t.Setenv(assetclient.EnvAddr, " 192.0.2.7:50051 ") // documentation range: nothing is sent
	t.Setenv(assetclient.EnvTLS, "yes")
	t.Setenv(assetclient.EnvToken, "tok")
	addr, opts, err = assetclient.FromEnv()
	if err != nil || addr != "192.0.2.7:50051" || len(opts) != 2 {
		t.Errorf("FromEnv: %q, %d options, %v", addr, len(opts), err)
	}
	// TLS and a token to a remote host: allowed (plaintext would be refused).
	c, err := assetclient.DialEnv()
	if err != nil {
		t.Errorf("DialEnv with TLS and a token: %v", err)
	} else {
		c.Close()
	}
	t.Setenv(assetclient.EnvTLS, "0")
	if _, err := assetclient.DialEnv(); err == nil || !strings.Contains(err.Error(), "plaintext") {
		t.Errorf("DialEnv with a token over plaintext to a remote host: %v, want a refusal", err)
	}

	t.Setenv(assetclient.EnvTLS, "maybe")
	if _, _, err := assetclient.FromEnv(); err == nil || !strings.Contains(err.Error(), assetclient.EnvTLS) {
		t.Errorf("%s=maybe: %v, want an error naming it", assetclient.EnvTLS, err)
	}
	t.Setenv(assetclient.EnvTLS, "")
	t.Setenv(assetclient.EnvClientCert, "/etc/client.pem")
	if _, _, err := assetclient.FromEnv(); err == nil || !strings.Contains(err.Error(), assetclient.EnvClientKey) {
		t.Errorf("a client certificate without its key: %v, want an error naming %s", err, assetclient.EnvClientKey)
	}
	t.Setenv(assetclient.EnvClientKey, "/etc/client.key")
	if _, err := assetclient.DialEnv(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a client certificate that does not exist: %v", err)
	}
	t.Setenv(assetclient.EnvClientCert, "")
	t.Setenv(assetclient.EnvClientKey, "")
	t.Setenv(assetclient.EnvCAFile, "/nonexistent/ca.pem")
	if _, err := assetclient.DialEnv(); err == nil || !strings.Contains(err.Error(), "root CA") {
		t.Errorf("a CA file that does not exist: %v", err)
	}
}

// DialEnv reaches the server the environment names, with its credentials.
func TestDialEnvReachesTheServer(t *testing.T) {
	live(t)
	if os.Getenv(assetclient.EnvAddr) == "" { // a server this test binary started
		t.Setenv(assetclient.EnvAddr, shared.addr)
		t.Setenv(assetclient.EnvToken, shared.token)
	}
	c, err := assetclient.DialEnv()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testContext(t)
	p, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: taskID(t), Label: "from-env"})
	if err != nil {
		t.Fatalf("CreatePendingAsset through DialEnv: %v", err)
	}
	if got, err := c.GetAsset(ctx, p.GetId()); err != nil || got.GetLabel() != "from-env" {
		t.Errorf("GetAsset through DialEnv: %v %v", got, err)
	}
}
