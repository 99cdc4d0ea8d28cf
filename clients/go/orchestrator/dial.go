package orchestrator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/credentials/local"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// TokenSource returns the bearer token to send; it is called before every RPC,
// so a token that expires (a task token) can be replaced between calls.
type TokenSource func(ctx context.Context) (string, error)

// Option configures Dial.
type Option func(*dialConfig) error

type dialConfig struct {
	tls   *tls.Config
	token TokenSource
	extra []grpc.DialOption
}

func (c *dialConfig) tlsConfig() *tls.Config {
	if c.tls == nil {
		c.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return c.tls
}

// WithTLS turns TLS on, trusting the system's root certificates (unless
// WithRootCAFile or WithTLSConfig names others).
func WithTLS() Option {
	return func(c *dialConfig) error {
		c.tlsConfig()
		return nil
	}
}

// WithRootCAFile turns TLS on and trusts the PEM certificate(s) in path, and
// only those, to sign the server's certificate.
func WithRootCAFile(path string) Option {
	return func(c *dialConfig) error {
		pem, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("root CA: %w", err)
		}
		cfg := c.tlsConfig()
		if cfg.RootCAs == nil {
			cfg.RootCAs = x509.NewCertPool()
		} else {
			cfg.RootCAs = cfg.RootCAs.Clone() // never add to a pool the caller passed in
		}
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("root CA: no PEM certificate in %s", path)
		}
		return nil
	}
}

// WithClientCertificate turns TLS on and presents the PEM certificate chain in
// certFile, with the unencrypted PEM key in keyFile, to a server that asks for
// one (mTLS: the server's --tls-client-ca).
func WithClientCertificate(certFile, keyFile string) Option {
	return func(c *dialConfig) error {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
		cfg := c.tlsConfig()
		cfg.Certificates = append(cfg.Certificates, pair)
		return nil
	}
}

// WithTLSConfig turns TLS on with cfg (cloned) as the base of the other TLS options:
// for certificates held in memory, a server name override, or a custom verifier.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(c *dialConfig) error {
		c.tls = cfg.Clone()
		return nil
	}
}

// WithToken sends `authorization: Bearer <token>` on every call.
func WithToken(token string) Option {
	return WithTokenSource(func(context.Context) (string, error) { return token, nil })
}

// WithTokenSource asks src for the bearer token before every call.
func WithTokenSource(src TokenSource) Option {
	return func(c *dialConfig) error {
		if src == nil {
			return errors.New("token source is nil")
		}
		c.token = src
		return nil
	}
}

// WithDialOptions passes further options to grpc.NewClient (interceptors,
// keepalive, message sizes, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) error {
		c.extra = append(c.extra, opts...)
		return nil
	}
}

// Dial opens a connection to an Asset Service at addr ("host:port").
//
// With no option it is plaintext and sends no credentials, as a server without
// security flags expects. WithTLS, WithRootCAFile, WithClientCertificate or
// WithTLSConfig make it TLS; WithToken or WithTokenSource add a bearer token to
// every call. Like the server, Dial sends a token over plaintext only to a
// loopback address: without TLS the connection uses grpc's local credentials,
// which refuse to connect anywhere else (an IP literal that is not loopback is
// refused here, a host name that resolves elsewhere when connecting).
func Dial(addr string, opts ...Option) (*grpc.ClientConn, error) {
	var cfg dialConfig
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	dialOpts := append([]grpc.DialOption(nil), cfg.extra...)
	switch {
	case cfg.tls != nil:
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(cfg.tls)))
	case cfg.token != nil:
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(local.NewCredentials()))
	default:
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if cfg.token != nil {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(NewBearerCredentials(cfg.token, cfg.tls != nil)))
	}
	return grpc.NewClient(addr, dialOpts...)
}

// checkLoopback refuses a target that is plainly not on this host.
func checkLoopback(addr string) error {
	if strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "unix-abstract:") {
		return nil
	}
	target := addr
	if i := strings.Index(target, ":///"); i >= 0 { // dns:///host:port, passthrough:///host:port
		target = target[i+4:]
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
		return fmt.Errorf("refusing to send a bearer token over plaintext to %s: use TLS (WithRootCAFile or WithTLS), or a loopback address", addr)
	}
	return nil
}

// NewBearerCredentials is the per-RPC credentials Dial uses: `authorization:
// Bearer <token>` from src on every call. With requireTLS, grpc refuses to send
// it over a connection without transport security; set it false only for a
// connection that is otherwise kept local (grpc's credentials/local).
func NewBearerCredentials(src TokenSource, requireTLS bool) credentials.PerRPCCredentials {
	return bearer{src: src, requireTLS: requireTLS}
}

type bearer struct {
	src        TokenSource
	requireTLS bool
}

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := b.src(ctx)
	if err != nil {
		return nil, fmt.Errorf("bearer token: %w", err)
	}
	if token == "" {
		return nil, errors.New("bearer token: the token source returned an empty token")
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.requireTLS }

// TaskToken is a bearer token scoped to one task, as MintTaskToken returns it.
type TaskToken struct {
	Token     string
	ExpiresAt time.Time
}

// MintTaskToken asks the server (the caller needs the orchestrator role) for a
// token that may complete taskID's promised outputs and read them and
// inputAssetIDs. ttl is rounded down to whole seconds; 0 means the server's
// default (an hour).
func MintTaskToken(ctx context.Context, c assetv1.AssetServiceClient, taskID string, inputAssetIDs []string, ttl time.Duration) (*TaskToken, error) {
	resp, err := c.MintTaskToken(ctx, &assetv1.MintTaskTokenRequest{
		TaskId:        taskID,
		InputAssetIds: inputAssetIDs,
		TtlSeconds:    int64(ttl / time.Second),
	})
	if err != nil {
		return nil, err
	}
	return &TaskToken{Token: resp.GetToken(), ExpiresAt: resp.GetExpiresAt().AsTime()}, nil
}

// TaskTokenSource is a TokenSource for a worker: it mints a task token through c
// (a connection with the orchestrator role) on first use and again once less
// than a fifth of its lifetime is left, so that a long task keeps working.
func TaskTokenSource(c assetv1.AssetServiceClient, taskID string, inputAssetIDs []string, ttl time.Duration) TokenSource {
	var (
		mu      sync.Mutex
		current *TaskToken
		renewAt time.Time
	)
	return func(ctx context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if current != nil && time.Now().Before(renewAt) {
			return current.Token, nil
		}
		minted, err := MintTaskToken(ctx, c, taskID, inputAssetIDs, ttl)
		if err != nil {
			return "", fmt.Errorf("mint task token for %s: %w", taskID, err)
		}
		current = minted
		renewAt = minted.ExpiresAt.Add(-time.Until(minted.ExpiresAt) / 5)
		return current.Token, nil
	}
}
