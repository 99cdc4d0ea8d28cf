package assetclient_test

// Tests named TestKeepalive* run on a server of their own, once (like the
// TestRestart* ones; the suite against the shared servers skips them).

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// silentProxy forwards TCP connections to a server; blackhole makes the ones
// it holds silent, as a NAT that forgot them: nothing is forwarded either way
// and no socket is closed, while connections made later pass.
type silentProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	held   []*proxied
}

type proxied struct {
	client, upstream net.Conn
	silent           atomic.Bool
}

func startSilentProxy(t *testing.T, target string) *silentProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silentProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *silentProxy) addr() string { return p.ln.Addr().String() }

func (p *silentProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		upstream, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxied{client: client, upstream: upstream}
		p.mu.Lock()
		p.held = append(p.held, c)
		p.mu.Unlock()
		go c.pump(client, upstream)
		go c.pump(upstream, client)
	}
}

// pump copies from one side to the other; once silent it reads on (the
// sender's writes succeed, as into a network that loses them) and forwards
// nothing, not even an end.
func (c *proxied) pump(from, to net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !c.silent.Load() {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !c.silent.Load() {
				to.Close()
			}
			return
		}
	}
}

// blackhole silences every connection the proxy holds now and returns how many.
func (p *silentProxy) blackhole() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.held {
		c.silent.Store(true)
	}
	n := len(p.held)
	p.held = nil
	return n
}

func (p *silentProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.held {
		c.client.Close()
		c.upstream.Close()
	}
}

// A watch whose connection goes silent (no FIN, no RST) must not wait
// forever: keepalive drops the connection, the watch resumes on a new one and
// delivers the change made meanwhile.
func TestKeepaliveResumesAWatchOnASilentConnection(t *testing.T) {
	// The shortest keepalive the server allows (it sends GOAWAY to pings less
	// than 10 s apart; grpc raises a shorter time to 10 s anyway).
	const every, timeout = 11 * time.Second, 2 * time.Second
	assetclient.SetKeepalive(t, every, timeout)
	ctx := testContext(t)
	srv := ownServer(t)
	direct := dialOwn(t, srv)
	proxy := startSilentProxy(t, srv.Addr)
	c, err := assetclient.Dial(proxy.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	promise := assetclient.Promise{TaskID: taskID(t), Label: "silent", Type: assetv1.AssetType_ASSET_TYPE_VALUE}
	p, err := direct.CreatePendingAsset(ctx, promise)
	if err != nil {
		t.Fatal(err)
	}
	resumed := make(chan error, 100) // why the watch resumed, each time
	onResume := func(_ int64, cause error) {
		select {
		case resumed <- cause:
		default:
		}
	}
	events, end := watchInBackground(t, c.Watch(ctx, []string{p.GetId()}, assetclient.WatchOptions{OnResume: onResume}))
	first := next(t, events)
	if first.GetAsset().GetStatus() != assetv1.AssetStatus_ASSET_STATUS_PENDING {
		t.Fatalf("first event %v", first)
	}
	if n := proxy.blackhole(); n != 1 {
		t.Fatalf("the proxy held %d connections, want the watch's 1", n)
	}
	silenced := time.Now()
	if _, err := direct.FulfillWithValue(ctx, p.GetId(), assetclient.Text("while the line was dead")); err != nil {
		t.Fatal(err)
	}

	bound := every + timeout + 25*time.Second
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatalf("the watch ended without the change: %v", <-end)
		}
		if ev.GetAsset().GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE || ev.GetAsset().GetValue().GetText() != "while the line was dead" {
			t.Fatalf("after the connection went silent: %v", ev)
		}
		t.Logf("the change arrived %v after the connection went silent", time.Since(silenced))
	case <-time.After(bound):
		t.Fatalf("no event %v after the watch's connection went silent: nothing noticed it was dead", bound)
	}
	if err := <-end; err != nil {
		t.Errorf("the watch ended with %v", err)
	}
	select {
	case cause := <-resumed:
		if !errors.Is(cause, assetclient.ErrUnavailable) {
			t.Errorf("resumed after %v, want after ErrUnavailable", cause)
		}
	default:
		t.Error("the watch never resumed")
	}
}
