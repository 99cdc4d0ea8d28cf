package assetclient_test

// Tests named TestRestart* stop, kill and restart a server of their own (they
// need Python for it, see internal/testserver); the suite against the shared
// servers leaves them out with -skip Restart.

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	"github.com/asset-service/asset-service/clients/go/internal/testserver"
)

func TestRestartGetAssetIsRetried(t *testing.T) {
	ctx := testContext(t)
	srv := ownServer(t)
	c := dialOwn(t, srv)
	once := dialOwn(t, srv, assetclient.WithoutRetries())
	a, err := c.CreateValueAsset(ctx, "kept.txt", assetclient.Text("kept"), assetclient.Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := once.GetAsset(ctx, a.GetId()); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	// Without retries a call while the server is down fails at once.
	if _, err := once.GetAsset(ctx, a.GetId()); !errors.Is(err, assetclient.ErrUnavailable) {
		t.Fatalf("GetAsset without retries while the server is down: %v, want ErrUnavailable", err)
	}
	// A call that creates is never retried: it fails at once too.
	started := time.Now()
	_, err = c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: taskID(t), Label: "x"})
	if !errors.Is(err, assetclient.ErrUnavailable) || time.Since(started) > time.Second {
		t.Fatalf("CreatePendingAsset while the server is down: %v after %v, want ErrUnavailable at once", err, time.Since(started))
	}

	// GetAsset goes out while the server is down and comes back once it is up.
	restarted := make(chan error, 1)
	go func() { restarted <- srv.Restart() }()
	started = time.Now()
	got, err := c.GetAsset(ctx, a.GetId())
	took := time.Since(started)
	if rerr := <-restarted; rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatalf("GetAsset across a restart: %v (after %v)", err, took)
	}
	if got.GetValue().GetText() != "kept" {
		t.Errorf("GetAsset across a restart: %v", got)
	}
	t.Logf("GetAsset answered %v after it was sent to a stopped server", took)
}

// watchInBackground runs a watch and hands over its events and end.
func watchInBackground(t *testing.T, events func(yield func(*assetv1.WatchAssetResponse, error) bool)) (<-chan *assetv1.WatchAssetResponse, <-chan error) {
	t.Helper()
	out := make(chan *assetv1.WatchAssetResponse, 100)
	end := make(chan error, 1)
	go func() {
		defer close(out)
		for ev, err := range events {
			if err != nil {
				end <- err
				return
			}
			out <- ev
		}
		end <- nil
	}()
	return out, end
}

// backUp waits (a retried read) until c's connection is up again after a
// restart: calls that create or change are not retried, so they would fail
// while it reconnects.
func backUp(t *testing.T, c *assetclient.Client) {
	t.Helper()
	if _, err := c.GetAsset(testContext(t), unknownID); !errors.Is(err, assetclient.ErrNotFound) {
		t.Fatalf("GetAsset after the restart: %v", err)
	}
}

func next(t *testing.T, events <-chan *assetv1.WatchAssetResponse) *assetv1.WatchAssetResponse {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the watch ended early")
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no watch event within 30 s")
	}
	return nil
}

func TestRestartWatchResumes(t *testing.T) {
	for _, crash := range []bool{true, false} {
		name := map[bool]string{true: "SIGKILL", false: "SIGTERM"}[crash]
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			srv := ownServer(t)
			c := dialOwn(t, srv)
			p, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: taskID(t), Label: "out", Type: assetv1.AssetType_ASSET_TYPE_VALUE})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var resumes []int64
			events, end := watchInBackground(t, c.Watch(ctx, []string{p.GetId()}, assetclient.WatchOptions{
				OnResume: func(after int64, _ error) { mu.Lock(); resumes = append(resumes, after); mu.Unlock() },
			}))
			first := next(t, events)
			if first.GetType() != assetv1.WatchEventType_WATCH_EVENT_TYPE_SNAPSHOT || first.GetAsset().GetStatus() != assetv1.AssetStatus_ASSET_STATUS_PENDING {
				t.Fatalf("first event %v", first)
			}
			if crash {
				srv.Kill()
			} else {
				srv.Stop()
			}
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			backUp(t, c)
			if _, err := c.FulfillWithValue(ctx, p.GetId(), assetclient.Text("after the restart")); err != nil {
				t.Fatal(err)
			}
			second := next(t, events)
			if second.GetAsset().GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE || second.GetAsset().GetValue().GetText() != "after the restart" {
				t.Errorf("after the restart: %v", second)
			}
			if err := <-end; err != nil {
				t.Errorf("the watch ended with %v", err)
			}
			if ev, ok := <-events; ok {
				t.Errorf("an event after the last: %v", ev)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(resumes) == 0 || resumes[0] != first.GetRevision() {
				t.Errorf("resumed after %v, want after revision %d", resumes, first.GetRevision())
			}
		})
	}
}

func TestRestartWatchSelectorResumes(t *testing.T) {
	ctx := testContext(t)
	srv := ownServer(t)
	c := dialOwn(t, srv)
	task := taskID(t)
	page, err := c.ListAssets(ctx, assetclient.Filter{CreatedByTask: task}, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	events, end := watchInBackground(t, c.WatchSelector(ctx, &assetv1.AssetSelector{TaskId: task}, assetclient.WatchOptions{AfterRevision: page.GetRevision()}))
	before, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: "before"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.GetAsset().GetId() != before.GetId() {
		t.Fatalf("event %v", ev)
	}
	srv.Stop()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	backUp(t, c)
	after, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: "after"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.GetAsset().GetId() != after.GetId() || ev.GetType() != assetv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED {
		t.Errorf("after the restart: %v", ev)
	}
	select {
	case err := <-end:
		t.Errorf("the selector watch ended: %v", err)
	default:
	}
}

// stoppingReader stops the server (stop: Kill or Stop) once `after` bytes were
// read from it, and restarts it in the background. (Only Read and Seek: no
// WriteTo to go around it.)
type stoppingReader struct {
	r         *bytes.Reader
	srv       *testserver.Server
	stop      func()
	after     int64
	read      int64
	restarted chan error
}

func (k *stoppingReader) Read(p []byte) (int, error) {
	n, err := k.r.Read(p)
	k.read += int64(n)
	if k.restarted == nil && k.read >= k.after {
		k.stop()
		k.restarted = make(chan error, 1)
		go func() { k.restarted <- k.srv.Restart() }()
	}
	return n, err
}

func (k *stoppingReader) Seek(offset int64, whence int) (int64, error) {
	return k.r.Seek(offset, whence)
}

// An upload cut by a server that stops resumes once it is back: after SIGTERM
// from where the stream ended (the server makes that durable), after SIGKILL
// from its last checkpoint (0 here: it checkpoints every 64 MiB).
func TestRestartUploadResumes(t *testing.T) {
	for _, crash := range []bool{true, false} {
		t.Run(map[bool]string{true: "SIGKILL", false: "SIGTERM"}[crash], func(t *testing.T) {
			ctx := testContext(t)
			srv := ownServer(t)
			c := dialOwn(t, srv)
			content := randomBytes(t, 24*assetclient.ChunkSize+99)
			// The first pass over the reader hashes it; the stop comes 12 MiB into the upload.
			r := &stoppingReader{r: bytes.NewReader(content), srv: srv, stop: srv.Stop, after: int64(len(content)) + 12*assetclient.ChunkSize}
			if crash {
				r.stop = srv.Kill
			}
			var offsets []int64
			a, err := c.UploadResumable(ctx, r, assetclient.UploadOptions{
				Label:    "survivor.bin",
				OnResume: func(offset int64, _ error) { offsets = append(offsets, offset) },
			})
			if r.restarted == nil {
				t.Fatal("the server was never stopped")
			}
			if rerr := <-r.restarted; rerr != nil {
				t.Fatal(rerr)
			}
			if err != nil {
				t.Fatalf("UploadResumable across a restart: %v (resumed at %v)", err, offsets)
			}
			if a.GetSha256() != sha(content) || a.GetSizeBytes() != int64(len(content)) || len(offsets) == 0 {
				t.Fatalf("stored %d bytes, sha256 %s, resumed at %v", a.GetSizeBytes(), a.GetSha256(), offsets)
			}
			if !crash && offsets[len(offsets)-1] == 0 {
				t.Errorf("after a graceful stop the upload resumed at %v, want where its stream ended", offsets)
			}
			var back bytes.Buffer
			if _, err := c.Download(ctx, a.GetId(), &back); err != nil || !bytes.Equal(back.Bytes(), content) {
				t.Fatalf("Download after the resumed upload: %v", err)
			}
			t.Logf("resumed at %v of %d bytes", offsets, len(content))
		})
	}
}
