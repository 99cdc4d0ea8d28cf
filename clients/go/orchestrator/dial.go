package orchestrator

import (
	"context"
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// The connection options are assetclient's: these names stay for code written
// against this package before assetclient existed.
type (
	// TokenSource returns the bearer token to send before every RPC.
	TokenSource = assetclient.TokenSource
	// Option configures Dial.
	Option = assetclient.Option
	// TaskToken is a bearer token scoped to one task.
	TaskToken = assetclient.TaskToken
)

// WithTLS is assetclient.WithTLS.
func WithTLS() Option { return assetclient.WithTLS() }

// WithRootCAFile is assetclient.WithRootCAFile.
func WithRootCAFile(path string) Option { return assetclient.WithRootCAFile(path) }

// WithClientCertificate is assetclient.WithClientCertificate.
func WithClientCertificate(certFile, keyFile string) Option {
	return assetclient.WithClientCertificate(certFile, keyFile)
}

// WithTLSConfig is assetclient.WithTLSConfig.
func WithTLSConfig(cfg *tls.Config) Option { return assetclient.WithTLSConfig(cfg) }

// WithToken is assetclient.WithToken.
func WithToken(token string) Option { return assetclient.WithToken(token) }

// WithTokenSource is assetclient.WithTokenSource.
func WithTokenSource(src TokenSource) Option { return assetclient.WithTokenSource(src) }

// WithDialOptions is assetclient.WithDialOptions.
func WithDialOptions(opts ...grpc.DialOption) Option { return assetclient.WithDialOptions(opts...) }

// Dial opens a connection as assetclient.Dial does (TLS and tokens from opts,
// retries of the safe calls) and returns it bare, for the generated stub:
// assetv1.NewAssetServiceClient(conn).
func Dial(addr string, opts ...Option) (*grpc.ClientConn, error) {
	c, err := assetclient.Dial(addr, opts...)
	if err != nil {
		return nil, err
	}
	return c.Conn(), nil
}

// NewBearerCredentials is assetclient.NewBearerCredentials.
func NewBearerCredentials(src TokenSource, requireTLS bool) credentials.PerRPCCredentials {
	return assetclient.NewBearerCredentials(src, requireTLS)
}

// typed gives c the typed methods of assetclient (no default deadline: the
// caller's context decides, as before).
func typed(c assetv1.AssetServiceClient) *assetclient.Client {
	tc, err := assetclient.Wrap(c, assetclient.WithCallTimeout(0))
	if err != nil {
		panic(err) // WithCallTimeout(0) cannot fail
	}
	return tc
}

// MintTaskToken asks the server (the caller needs the orchestrator role) for a
// token that may complete taskID's promised outputs and read them and
// inputAssetIDs. ttl is rounded up to whole seconds; 0 means the server's
// default (an hour).
func MintTaskToken(ctx context.Context, c assetv1.AssetServiceClient, taskID string, inputAssetIDs []string, ttl time.Duration) (*TaskToken, error) {
	return typed(c).MintTaskToken(ctx, taskID, inputAssetIDs, ttl)
}

// TaskTokenSource is a TokenSource for a worker: it mints a task token through c
// (a connection with the orchestrator role) on first use and again once less
// than a fifth of its lifetime is left, so that a long task keeps working.
func TaskTokenSource(c assetv1.AssetServiceClient, taskID string, inputAssetIDs []string, ttl time.Duration) TokenSource {
	return typed(c).TaskTokenSource(taskID, inputAssetIDs, ttl)
}
