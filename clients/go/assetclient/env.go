package assetclient

import (
	"fmt"
	"os"
	"strings"
)

// The environment variables DialEnv reads; the Python and TypeScript clients
// and the `asset` CLI read the same ones.
const (
	// EnvAddr is the server's address, host:port (DefaultAddr when unset).
	EnvAddr = "ASSET_SERVICE_ADDR"
	// EnvToken is a bearer token (a tokens-file token or a task token).
	EnvToken = "ASSET_SERVICE_TOKEN"
	// EnvCAFile is a PEM root CA file: connect with TLS, trusting only it.
	EnvCAFile = "ASSET_SERVICE_CA_FILE"
	// EnvClientCert and EnvClientKey are a PEM client certificate and its key (mTLS).
	EnvClientCert = "ASSET_SERVICE_CLIENT_CERT"
	EnvClientKey  = "ASSET_SERVICE_CLIENT_KEY"
	// EnvTLS set to 1 (true, yes, on) connects with TLS and the system's roots
	// when no CA file is given.
	EnvTLS = "ASSET_SERVICE_TLS"
)

// DefaultAddr is where DialEnv connects without ASSET_SERVICE_ADDR: the
// server's own default --listen address.
const DefaultAddr = "127.0.0.1:50051"

// FromEnv reads the ASSET_SERVICE_* variables (see EnvAddr, ...) into the
// address and options DialEnv uses. An empty variable counts as unset.
func FromEnv() (addr string, opts []Option, err error) {
	addr = strings.TrimSpace(os.Getenv(EnvAddr))
	if addr == "" {
		addr = DefaultAddr
	}
	if v := os.Getenv(EnvTLS); v != "" {
		on, err := parseBool(v)
		if err != nil {
			return "", nil, fmt.Errorf("%s=%q: %w", EnvTLS, v, err)
		}
		if on {
			opts = append(opts, WithTLS())
		}
	}
	if ca := os.Getenv(EnvCAFile); ca != "" {
		opts = append(opts, WithRootCAFile(ca))
	}
	cert, key := os.Getenv(EnvClientCert), os.Getenv(EnvClientKey)
	switch {
	case cert != "" && key != "":
		opts = append(opts, WithClientCertificate(cert, key))
	case cert != "" || key != "":
		return "", nil, fmt.Errorf("set both %s and %s (a client certificate and its key), or neither", EnvClientCert, EnvClientKey)
	}
	if token := strings.TrimSpace(os.Getenv(EnvToken)); token != "" {
		opts = append(opts, WithToken(token))
	}
	return addr, opts, nil
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
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("not a boolean (1/0, true/false, yes/no, on/off)")
}
