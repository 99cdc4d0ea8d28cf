package assetclient

import (
	"testing"
	"time"

	"google.golang.org/grpc/keepalive"
)

// SetKeepalive lowers the keepalive Dial sets until t ends: a test of a dead
// connection cannot wait KeepaliveTime plus KeepaliveTimeout. grpc raises a
// time under 10 s to 10 s, and the server answers pings more frequent than
// every 10 s with GOAWAY, so keep time above that.
func SetKeepalive(t testing.TB, every, timeout time.Duration) {
	saved := keepaliveParams
	keepaliveParams = keepalive.ClientParameters{Time: every, Timeout: timeout}
	t.Cleanup(func() { keepaliveParams = saved })
}
