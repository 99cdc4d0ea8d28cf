package assetclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/keepalive"
)

// TokenSource returns the bearer token to send; it is called before every RPC,
// so a token that expires (a task token) can be replaced between calls.
type TokenSource func(ctx context.Context) (string, error)

// Option configures Dial, DialEnv or Wrap.
type Option func(*settings) error

type settings struct {
	tls           *tls.Config
	token         TokenSource
	extra         []grpc.DialOption
	callTimeout   time.Duration
	serviceConfig string
}

func defaults() settings {
	return settings{callTimeout: DefaultCallTimeout, serviceConfig: serviceConfig}
}

func (s *settings) apply(opts []Option) error {
	for _, o := range opts {
		if err := o(s); err != nil {
			return err
		}
	}
	return nil
}

func (s *settings) tlsConfig() *tls.Config {
	if s.tls == nil {
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return s.tls
}

// DefaultCallTimeout bounds a unary call whose context has no deadline (see
// WithCallTimeout).
const DefaultCallTimeout = 30 * time.Second

// WithCallTimeout sets the deadline a unary call gets when its context has
// none (DefaultCallTimeout when not given); 0 gives such calls no deadline.
// A context with a deadline always keeps its own, longer or shorter. Streams
// (watch, upload, download) and GetManifest with Wait get no default deadline.
func WithCallTimeout(d time.Duration) Option {
	return func(s *settings) error {
		if d < 0 {
			return fmt.Errorf("call timeout %v is negative", d)
		}
		s.callTimeout = d
		return nil
	}
}

// WithoutRetries turns off the service config's retries (ServiceConfig): every
// failed call is returned at once.
func WithoutRetries() Option {
	return func(s *settings) error {
		s.serviceConfig = ""
		return nil
	}
}

// WithTLS turns TLS on, trusting the system's root certificates (unless
// WithRootCAFile or WithTLSConfig names others).
func WithTLS() Option {
	return func(s *settings) error {
		s.tlsConfig()
		return nil
	}
}

// WithRootCAFile turns TLS on and trusts the PEM certificate(s) in path, and
// only those, to sign the server's certificate.
func WithRootCAFile(path string) Option {
	return func(s *settings) error {
		pem, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("root CA: %w", err)
		}
		cfg := s.tlsConfig()
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
	return func(s *settings) error {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
		cfg := s.tlsConfig()
		cfg.Certificates = append(cfg.Certificates, pair)
		return nil
	}
}

// WithTLSConfig turns TLS on with cfg (cloned) as the base of the other TLS options:
// for certificates held in memory, a server name override, or a custom verifier.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(s *settings) error {
		s.tls = cfg.Clone()
		return nil
	}
}

// WithToken sends `authorization: Bearer <token>` on every call.
func WithToken(token string) Option {
	return WithTokenSource(func(context.Context) (string, error) { return token, nil })
}

// WithTokenSource asks src for the bearer token before every call.
func WithTokenSource(src TokenSource) Option {
	return func(s *settings) error {
		if src == nil {
			return errors.New("token source is nil")
		}
		s.token = src
		return nil
	}
}

// WithDialOptions passes further options to grpc.NewClient (interceptors,
// keepalive, message sizes, ...); they come after Dial's own, so they win.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) error {
		s.extra = append(s.extra, opts...)
		return nil
	}
}

// connectBackoff is grpc's default reconnection backoff with a lower ceiling
// (5 s instead of 120 s, as the Python client's): after a long outage a
// retried call or a resumed watch would otherwise find the connection still
// waiting to try again though the server is back.
var connectBackoff = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
	MinConnectTimeout: 20 * time.Second,
}

// KeepaliveTime and KeepaliveTimeout are the keepalive every Dial sets: while
// a call is open (a watch idle for hours included) the client pings the
// server after KeepaliveTime without a read, and drops the connection when the
// ping is not answered within KeepaliveTimeout. A connection that died without
// a word (a NAT or firewall forgot it, a partition: no FIN or RST) then fails
// the call with ErrUnavailable within about 50 s, and a watch resumes on a new
// connection instead of waiting forever. No pings while no call is open, and
// none more often than every 10 s, which the server would answer with GOAWAY
// (too_many_pings). WithDialOptions(grpc.WithKeepaliveParams(...)) overrides.
const (
	KeepaliveTime    = 30 * time.Second
	KeepaliveTimeout = 20 * time.Second
)

// keepaliveParams is what Dial sets (a variable so that a test can lower it).
var keepaliveParams = keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}

// Dial connects to an Asset Service at addr ("host:port", or any grpc target
// such as "dns:///host:port" or "unix:/path").
//
// With no option it is plaintext and sends no credentials, as a server without
// security flags expects. WithTLS, WithRootCAFile, WithClientCertificate or
// WithTLSConfig make it TLS; WithToken or WithTokenSource add a bearer token to
// every call. Like the server, Dial sends a token over plaintext only to a
// loopback address: without TLS the connection uses grpc's local credentials,
// which refuse to connect anywhere else (an IP literal that is not loopback is
// refused here, a host name that resolves elsewhere when connecting).
//
// The connection retries the safe calls on UNAVAILABLE (ServiceConfig),
// pings a silent server while a call is open (KeepaliveTime) and connects
// lazily: an unreachable server shows in the first call's error.
func Dial(addr string, opts ...Option) (*Client, error) {
	s := defaults()
	if err := s.apply(opts); err != nil {
		return nil, err
	}
	conn, err := s.dial(addr)
	if err != nil {
		return nil, err
	}
	c := newClient(conn, &s)
	c.conn = conn
	return c, nil
}

func (s *settings) dial(addr string) (*grpc.ClientConn, error) {
	if strings.TrimSpace(addr) == "" {
		return nil, errors.New("no server address: pass host:port (or set ASSET_SERVICE_ADDR for DialEnv)")
	}
	if err := checkTarget(addr); err != nil {
		return nil, err
	}
	dialOpts := []grpc.DialOption{grpc.WithConnectParams(connectBackoff), grpc.WithKeepaliveParams(keepaliveParams)}
	if s.serviceConfig != "" {
		dialOpts = append(dialOpts, grpc.WithDefaultServiceConfig(s.serviceConfig))
	} else {
		dialOpts = append(dialOpts, grpc.WithDisableRetry())
	}
	switch {
	case s.tls != nil:
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(s.tls)))
	case s.token != nil:
		if err := checkLoopback(addr); err != nil {
			return nil, err
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(local.NewCredentials()))
	default:
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if s.token != nil {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(NewBearerCredentials(s.token, s.tls != nil)))
	}
	dialOpts = append(dialOpts, s.extra...)
	return grpc.NewClient(addr, dialOpts...)
}

// checkTarget refuses a URL (http://, https://), which grpc would take for a
// host name and retry for as long as a call may wait.
func checkTarget(addr string) error {
	scheme, rest, ok := strings.Cut(addr, "://")
	if !ok || (!strings.EqualFold(scheme, "http") && !strings.EqualFold(scheme, "https")) {
		return nil
	}
	return fmt.Errorf("%q is a URL, not a server address: give host:port (%s), and for TLS WithTLS or WithRootCAFile (ASSET_SERVICE_TLS, ASSET_SERVICE_CA_FILE)",
		addr, strings.TrimSuffix(rest, "/"))
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
