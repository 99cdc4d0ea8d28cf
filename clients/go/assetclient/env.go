package assetclient

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The environment variables DialEnv reads: the ones the Python and TypeScript
// clients and the `asset` CLI read (ASSET_SERVICE_TLS: the CLI's --tls).
const (
	// EnvAddr is the server's address, host:port (DefaultAddr when unset).
	EnvAddr = "ASSET_SERVICE_ADDR"
	// EnvToken is a bearer token (a tokens-file token or a task token).
	EnvToken = "ASSET_SERVICE_TOKEN"
	// EnvTokenFile is a file holding the bearer token, read again before every
	// call (so a refreshed file is used at once); not with EnvToken.
	EnvTokenFile = "ASSET_SERVICE_TOKEN_FILE"
	// EnvTimeout is the default deadline of unary calls, in seconds (WithCallTimeout).
	EnvTimeout = "ASSET_SERVICE_TIMEOUT"
	// EnvCAFile is a PEM root CA file: connect with TLS, trusting only it.
	EnvCAFile = "ASSET_SERVICE_CA_FILE"
	// EnvClientCert and EnvClientKey are a PEM client certificate and its key (mTLS).
	EnvClientCert = "ASSET_SERVICE_CLIENT_CERT"
	EnvClientKey  = "ASSET_SERVICE_CLIENT_KEY"
	// EnvTLS set to 1 (true, yes, on, ...) connects with TLS and the system's
	// roots when no CA file is given (the `asset` CLI's --tls).
	EnvTLS = "ASSET_SERVICE_TLS"
)

// DefaultAddr is where DialEnv connects without ASSET_SERVICE_ADDR: the
// server's own default --listen address.
const DefaultAddr = "127.0.0.1:50051"

// FromEnv reads the ASSET_SERVICE_* variables (see EnvAddr, ...) into the
// address and options DialEnv uses. An empty variable counts as unset; one
// that cannot be used (a timeout that is not a number, a certificate without
// its key, a token file that cannot be read) is an error naming it.
func FromEnv() (addr string, opts []Option, err error) {
	addr = env(EnvAddr)
	if addr == "" {
		addr = DefaultAddr
	}
	if err := checkTarget(addr); err != nil {
		return "", nil, fmt.Errorf("%s=%s: %w", EnvAddr, addr, err)
	}
	if v := env(EnvTLS); v != "" {
		on, err := parseBool(v)
		if err != nil {
			return "", nil, fmt.Errorf("%s=%q: %w", EnvTLS, v, err)
		}
		if on {
			opts = append(opts, WithTLS())
		}
	}
	if ca := env(EnvCAFile); ca != "" {
		opts = append(opts, WithRootCAFile(ca))
	}
	cert, key := env(EnvClientCert), env(EnvClientKey)
	switch {
	case cert != "" && key != "":
		opts = append(opts, WithClientCertificate(cert, key))
	case cert != "" || key != "":
		return "", nil, fmt.Errorf("set both %s and %s (a client certificate and its key), or neither", EnvClientCert, EnvClientKey)
	}
	token, tokenFile := env(EnvToken), env(EnvTokenFile)
	switch {
	case token != "" && tokenFile != "":
		return "", nil, fmt.Errorf("both %s and %s are set: unset one of them", EnvToken, EnvTokenFile)
	case token != "":
		opts = append(opts, WithToken(token))
	case tokenFile != "":
		src, err := TokenFile(tokenFile)
		if err != nil {
			return "", nil, fmt.Errorf("%s=%s: %w", EnvTokenFile, tokenFile, err)
		}
		opts = append(opts, WithTokenSource(src))
	}
	if v := env(EnvTimeout); v != "" {
		seconds, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(seconds) || math.IsInf(seconds, 0) || seconds <= 0 {
			return "", nil, fmt.Errorf("%s=%q: want a number of seconds above 0", EnvTimeout, v)
		}
		opts = append(opts, WithCallTimeout(time.Duration(seconds*float64(time.Second))))
	}
	return addr, opts, nil
}

// TokenFile is a TokenSource reading the token in path before every call, so
// that a file that is refreshed (a task token replaced before it expires) is
// used at once. A missing or empty file is an error now; if a later read
// fails (between the steps of a replacement, say) the last token read is sent.
func TokenFile(path string) (TokenSource, error) {
	read := func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		token := strings.TrimSpace(string(b))
		if token == "" {
			return "", errors.New("the file is empty")
		}
		return token, nil
	}
	last, err := read()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	return func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if token, err := read(); err == nil {
			last = token
		}
		return last, nil
	}, nil
}

// DialEnv is Dial with the address and credentials from the environment
// (FromEnv); opts come after them, so they add to or override what it says.
func DialEnv(opts ...Option) (*Client, error) {
	addr, envOpts, err := FromEnv()
	if err != nil {
		return nil, err
	}
	return Dial(addr, append(envOpts, opts...)...)
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) { // the words click's BOOL takes
	case "1", "true", "t", "yes", "y", "on":
		return true, nil
	case "0", "false", "f", "no", "n", "off":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean (1/0, true/false, yes/no, on/off)")
}

// env is a variable without surrounding blanks ("" when unset).
func env(name string) string { return strings.TrimSpace(os.Getenv(name)) }
