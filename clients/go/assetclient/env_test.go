package assetclient_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/asset-service/asset-service/clients/go/assetclient"
)

func TestFromEnv(t *testing.T) {
	for _, name := range []string{assetclient.EnvAddr, assetclient.EnvToken, assetclient.EnvTokenFile, assetclient.EnvTimeout,
		assetclient.EnvCAFile, assetclient.EnvClientCert, assetclient.EnvClientKey, assetclient.EnvTLS} {
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

	t.Setenv(assetclient.EnvTokenFile, "/nonexistent/token")
	if _, _, err := assetclient.FromEnv(); err == nil || !strings.Contains(err.Error(), assetclient.EnvToken) {
		t.Errorf("both %s and %s: %v, want an error naming them", assetclient.EnvToken, assetclient.EnvTokenFile, err)
	}
	t.Setenv(assetclient.EnvToken, "")
	if _, _, err := assetclient.FromEnv(); err == nil || !strings.Contains(err.Error(), assetclient.EnvTokenFile) {
		t.Errorf("a token file that does not exist: %v, want an error naming %s", err, assetclient.EnvTokenFile)
	}
	t.Setenv(assetclient.EnvTokenFile, "")
	for _, bad := range []string{"0", "-1", "soon", "NaN", "+Inf"} {
		t.Setenv(assetclient.EnvTimeout, bad)
		if _, _, err := assetclient.FromEnv(); err == nil || !strings.Contains(err.Error(), assetclient.EnvTimeout) {
			t.Errorf("%s=%s: %v, want an error naming it", assetclient.EnvTimeout, bad, err)
		}
	}
	t.Setenv(assetclient.EnvTimeout, "2.5")
	if _, opts, err := assetclient.FromEnv(); err != nil || len(opts) != 1 {
		t.Errorf("%s=2.5: %d options, %v", assetclient.EnvTimeout, len(opts), err)
	}
	t.Setenv(assetclient.EnvTimeout, "")
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

func TestTokenFileIsReadBeforeEveryCall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	if _, err := assetclient.TokenFile(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("TokenFile(missing): %v", err)
	}
	if err := os.WriteFile(path, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := assetclient.TokenFile(path); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("TokenFile(empty): %v", err)
	}
	if err := os.WriteFile(path, []byte("first\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := assetclient.TokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if tok, _ := src(ctx); tok != "first" {
		t.Errorf("token %q, want first", tok)
	}
	if err := os.WriteFile(path, []byte("second"), 0o600); err != nil {
		t.Fatal(err)
	}
	if tok, _ := src(ctx); tok != "second" {
		t.Errorf("token %q after the file changed, want second", tok)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if tok, err := src(ctx); tok != "second" || err != nil {
		t.Errorf("token %q, %v while the file is away, want the last one read", tok, err)
	}
}

// DialEnv reaches the server the environment names, with its credentials.
func TestDialEnvReachesTheServer(t *testing.T) {
	live(t)
	if os.Getenv(assetclient.EnvAddr) == "" { // a server this test binary started
		t.Setenv(assetclient.EnvAddr, shared.addr)
		t.Setenv(assetclient.EnvToken, shared.token)
	}
	if token := os.Getenv(assetclient.EnvToken); token != "" { // the token from a file instead
		path := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(assetclient.EnvToken, "")
		t.Setenv(assetclient.EnvTokenFile, path)
	}
	t.Setenv(assetclient.EnvTimeout, "2.5")
	var left time.Duration
	c, err := assetclient.DialEnv(assetclient.WithDialOptions(grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			if d, ok := ctx.Deadline(); ok {
				left = time.Until(d)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		})))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.GetAsset(context.Background(), unknownID); !errors.Is(err, assetclient.ErrNotFound) {
		t.Fatal(err)
	}
	if left <= 0 || left > 2500*time.Millisecond {
		t.Errorf("a call through DialEnv with %s=2.5 had %v left", assetclient.EnvTimeout, left)
	}
	ctx := testContext(t)
	p, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: taskID(t), Label: "from-env"})
	if err != nil {
		t.Fatalf("CreatePendingAsset through DialEnv: %v", err)
	}
	if got, err := c.GetAsset(ctx, p.GetId()); err != nil || got.GetLabel() != "from-env" {
		t.Errorf("GetAsset through DialEnv: %v %v", got, err)
	}
}

// A URL is not a gRPC target: refused at once, saying what to give, instead of
// ~12 s of retries ending in "too many colons in address".
func TestAURLIsNotAnAddress(t *testing.T) {
	for _, addr := range []string{"http://127.0.0.1:50051", "HTTPS://assets.internal:443/"} {
		if c, err := assetclient.Dial(addr); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Dial(%q): %v", addr, err)
			if c != nil {
				c.Close()
			}
		}
	}
	t.Setenv(assetclient.EnvAddr, "http://127.0.0.1:50051")
	t.Setenv(assetclient.EnvToken, "")
	t.Setenv(assetclient.EnvTokenFile, "")
	if c, err := assetclient.DialEnv(); err == nil || !strings.Contains(err.Error(), assetclient.EnvAddr) {
		t.Errorf("DialEnv with %s=http://...: %v", assetclient.EnvAddr, err)
		if c != nil {
			c.Close()
		}
	}
	for _, addr := range []string{"dns:///127.0.0.1:50051", "unix:/tmp/asset.sock", "127.0.0.1:50051"} {
		c, err := assetclient.Dial(addr)
		if err != nil {
			t.Errorf("Dial(%q): %v", addr, err)
			continue
		}
		c.Close()
	}
}
