package assetclient_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	"github.com/asset-service/asset-service/clients/go/internal/testserver"
)

// The server under test: ASSET_SERVICE_ADDR and the variables that say how to
// reach it (ASSET_SERVICE_CA_FILE, _CLIENT_CERT, _CLIENT_KEY, _TOKEN with the
// orchestrator role; ASSET_SERVICE_IMPORT_ROOT, one of its import roots), or
// else one started on first use (plaintext on loopback, with tokens). The
// restart tests always start servers of their own.
var (
	shared struct {
		once       sync.Once
		err        error
		addr       string
		importRoot string
		token      string
		caFile     string
		clientCert string
		clientKey  string
		stop       func()
	}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.stop != nil {
		shared.stop()
	}
	os.Exit(code)
}

// live makes sure the shared server is known (or started) and fails t if not.
func live(t *testing.T) {
	t.Helper()
	shared.once.Do(func() {
		shared.addr = os.Getenv(assetclient.EnvAddr)
		shared.importRoot = os.Getenv("ASSET_SERVICE_IMPORT_ROOT")
		shared.token = os.Getenv(assetclient.EnvToken)
		shared.caFile = os.Getenv(assetclient.EnvCAFile)
		shared.clientCert = os.Getenv(assetclient.EnvClientCert)
		shared.clientKey = os.Getenv(assetclient.EnvClientKey)
		if shared.addr != "" {
			return
		}
		srv, err := testserver.Start(testserver.Options{Tokens: true})
		if err != nil {
			shared.err = err
			return
		}
		shared.addr, shared.importRoot, shared.token, shared.stop = srv.Addr, srv.ImportRoot, srv.Token, srv.Close
	})
	if shared.err != nil {
		t.Fatalf("cannot start asset-service: %v", shared.err)
	}
}

// transport is how the environment says to reach the shared server.
func transport() []assetclient.Option {
	var opts []assetclient.Option
	if shared.caFile != "" {
		opts = append(opts, assetclient.WithRootCAFile(shared.caFile))
	}
	if shared.clientCert != "" {
		opts = append(opts, assetclient.WithClientCertificate(shared.clientCert, shared.clientKey))
	}
	return opts
}

// dial connects to the shared server with its transport plus extra options.
func dial(t *testing.T, extra ...assetclient.Option) *assetclient.Client {
	t.Helper()
	live(t)
	c, err := assetclient.Dial(shared.addr, append(transport(), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// client is a connection with the orchestrator token, when there is one.
func client(t *testing.T, extra ...assetclient.Option) *assetclient.Client {
	t.Helper()
	live(t)
	if shared.token != "" {
		extra = append([]assetclient.Option{assetclient.WithToken(shared.token)}, extra...)
	}
	return dial(t, extra...)
}

// ownServer starts a server of the test's own (plaintext, no tokens).
func ownServer(t *testing.T) *testserver.Server {
	t.Helper()
	srv, err := testserver.Start(testserver.Options{})
	if err != nil {
		t.Fatalf("cannot start asset-service: %v", err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// dialOwn connects to a server of the test's own; the client closes when the test ends.
func dialOwn(t *testing.T, srv *testserver.Server, opts ...assetclient.Option) *assetclient.Client {
	t.Helper()
	c, err := assetclient.Dial(srv.Addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func taskID(t *testing.T) string {
	return fmt.Sprintf("go-%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), time.Now().UnixNano())
}

const unknownID = "00000000-0000-4000-8000-000000000000"
