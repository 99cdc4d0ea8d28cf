package assetclient_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// breakingStream delivers `keep` messages of the real stream, then fails with
// err (UNAVAILABLE, as a dropped connection does); with flip, it changes a
// byte of every ReadAsset chunk instead (a lying server).
type breakingStream[T any] struct {
	grpc.ServerStreamingClient[T]
	keep int
	err  error
	flip bool
}

func (s *breakingStream[T]) Recv() (*T, error) {
	if s.err != nil && s.keep == 0 {
		return nil, s.err
	}
	s.keep--
	m, err := s.ServerStreamingClient.Recv()
	if r, ok := any(m).(*assetv1.ReadAssetResponse); ok && s.flip && err == nil && len(r.GetChunk()) > 0 {
		r.Chunk[0] ^= 0xff
	}
	return m, err
}

// faulty wraps the real stub: it breaks the first `breaks` streams of
// ReadAsset and WatchAsset after `keep` messages, and records what each call asked.
type faulty struct {
	assetv1.AssetServiceClient
	mu       sync.Mutex
	breaks   int
	keep     int
	flip     bool
	reads    []*assetv1.ReadAssetRequest
	watches  []*assetv1.WatchAssetRequest
	deadline map[string]time.Duration // what was left of each call's deadline, by method
}

func (f *faulty) breakNext() (bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.breaks == 0 {
		return false, 0
	}
	f.breaks--
	return true, f.keep
}

var dropped = status.Error(codes.Unavailable, "connection reset (injected)")

func (f *faulty) ReadAsset(ctx context.Context, in *assetv1.ReadAssetRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[assetv1.ReadAssetResponse], error) {
	return faultyStream(f, &f.reads, in, f.flip, func() (grpc.ServerStreamingClient[assetv1.ReadAssetResponse], error) {
		return f.AssetServiceClient.ReadAsset(ctx, in, opts...)
	})
}

func (f *faulty) WatchAsset(ctx context.Context, in *assetv1.WatchAssetRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[assetv1.WatchAssetResponse], error) {
	return faultyStream(f, &f.watches, in, false, func() (grpc.ServerStreamingClient[assetv1.WatchAssetResponse], error) {
		return f.AssetServiceClient.WatchAsset(ctx, in, opts...)
	})
}

// faultyStream records the request in asked, opens the real stream and hands it
// back with every chunk flipped (flip), or broken after f.keep messages while
// f.breaks lasts, or as it is.
func faultyStream[Req, Resp any](f *faulty, asked *[]*Req, in *Req, flip bool, open func() (grpc.ServerStreamingClient[Resp], error)) (grpc.ServerStreamingClient[Resp], error) {
	f.mu.Lock()
	*asked = append(*asked, in)
	f.mu.Unlock()
	s, err := open()
	if err != nil {
		return nil, err
	}
	if flip {
		return &breakingStream[Resp]{ServerStreamingClient: s, flip: true}, nil
	}
	if brk, keep := f.breakNext(); brk {
		return &breakingStream[Resp]{ServerStreamingClient: s, keep: keep, err: dropped}, nil
	}
	return s, nil
}

func (f *faulty) GetAsset(ctx context.Context, in *assetv1.GetAssetRequest, opts ...grpc.CallOption) (*assetv1.GetAssetResponse, error) {
	f.note(ctx, "GetAsset")
	return f.AssetServiceClient.GetAsset(ctx, in, opts...)
}

func (f *faulty) GetManifest(ctx context.Context, in *assetv1.GetManifestRequest, opts ...grpc.CallOption) (*assetv1.GetManifestResponse, error) {
	f.note(ctx, "GetManifest")
	return f.AssetServiceClient.GetManifest(ctx, in, opts...)
}

func (f *faulty) note(ctx context.Context, method string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deadline == nil {
		f.deadline = map[string]time.Duration{}
	}
	f.deadline[method] = -1 // none
	if d, ok := ctx.Deadline(); ok {
		f.deadline[method] = time.Until(d)
	}
}

func wrapped(t *testing.T, f *faulty, opts ...assetclient.Option) *assetclient.Client {
	t.Helper()
	f.AssetServiceClient = client(t).Raw()
	c, err := assetclient.Wrap(f, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDownloadResumesWhereTheStreamBroke(t *testing.T) {
	ctx := testContext(t)
	content := randomBytes(t, 3*assetclient.ChunkSize+777)
	up, err := client(t).Upload(ctx, bytes.NewReader(content), assetclient.UploadOptions{Label: "big.bin"})
	if err != nil {
		t.Fatal(err)
	}
	f := &faulty{breaks: 2, keep: 1} // two streams break, each after one chunk
	c := wrapped(t, f)
	var got bytes.Buffer
	a, err := c.Download(ctx, up.GetId(), &got)
	if err != nil {
		t.Fatalf("Download over a connection that drops twice: %v", err)
	}
	if !bytes.Equal(got.Bytes(), content) || a.GetSha256() != sha(content) {
		t.Fatalf("%d bytes back of %d, not the same", got.Len(), len(content))
	}
	var offsets []int64
	for _, r := range f.reads {
		offsets = append(offsets, r.GetOffset())
	}
	if len(offsets) != 3 || offsets[0] != 0 || offsets[1] <= 0 || offsets[2] <= offsets[1] {
		t.Errorf("ReadAsset offsets %v: want 0, then where each broken stream stopped", offsets)
	}

	// A range, resumed the same way, stops at its limit.
	f2 := &faulty{breaks: 1, keep: 1}
	var part bytes.Buffer
	n, err := wrapped(t, f2).ReadRange(ctx, up.GetId(), 100, int64(2*assetclient.ChunkSize), &part)
	if err != nil || n != int64(2*assetclient.ChunkSize) || !bytes.Equal(part.Bytes(), content[100:100+2*assetclient.ChunkSize]) {
		t.Errorf("ReadRange: %d bytes, %v", n, err)
	}

	// A connection that never stops dropping: the download gives up with ErrUnavailable.
	f3 := &faulty{breaks: 100, keep: 0}
	if _, err := wrapped(t, f3).Download(ctx, up.GetId(), &bytes.Buffer{}); !errors.Is(err, assetclient.ErrUnavailable) {
		t.Errorf("Download that never gets a byte: %v, want ErrUnavailable", err)
	}
}

func TestDownloadCatchesBytesThatAreNotTheRecords(t *testing.T) {
	ctx := testContext(t)
	content := randomBytes(t, 5000)
	up, err := client(t).Upload(ctx, bytes.NewReader(content), assetclient.UploadOptions{Label: "small.bin"})
	if err != nil {
		t.Fatal(err)
	}
	c := wrapped(t, &faulty{flip: true})
	_, err = c.Download(ctx, up.GetId(), &bytes.Buffer{})
	var dl *assetclient.DataLossError
	if !errors.As(err, &dl) || !errors.Is(err, assetclient.ErrDataLoss) || dl.WantSHA256 != sha(content) || dl.GotSHA256 == dl.WantSHA256 {
		t.Fatalf("Download from a server that changes bytes: %v, want a *DataLossError", err)
	}
	// DownloadFile leaves nothing behind then.
	dir := t.TempDir()
	if _, err := c.DownloadFile(ctx, up.GetId(), filepath.Join(dir, "out.bin")); !errors.Is(err, assetclient.ErrDataLoss) {
		t.Errorf("DownloadFile: %v, want ErrDataLoss", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("DownloadFile left %v", left)
	}
	// An honest one writes the file.
	path := filepath.Join(dir, "ok.bin")
	if _, err := client(t).DownloadFile(ctx, up.GetId(), path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, content) {
		t.Error("DownloadFile wrote other bytes")
	}
	// UploadFile sends the size and sha256 it read first.
	up2, err := client(t).UploadFile(ctx, path, assetclient.UploadOptions{})
	if err != nil || up2.GetLabel() != "ok.bin" || up2.GetSha256() != sha(content) {
		t.Errorf("UploadFile: %v %v", up2, err)
	}
	_, err = client(t).UploadFile(ctx, path, assetclient.UploadOptions{SHA256: sha([]byte("other")), Size: int64(len(content))})
	if !errors.Is(err, assetclient.ErrDataLoss) {
		t.Errorf("UploadFile with the wrong sha256: %v, want ErrDataLoss", err)
	}
}

func TestWatchResumesAfterTheLastRevision(t *testing.T) {
	ctx := testContext(t)
	real := client(t)
	task := taskID(t)
	var ids []string
	for _, label := range []string{"a", "b"} {
		p, err := real.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: label, Type: assetv1.AssetType_ASSET_TYPE_VALUE})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, p.GetId())
	}
	f := &faulty{breaks: 1, keep: 3} // the first stream breaks after three events
	c := wrapped(t, f)
	var resumed []int64
	type seen struct {
		id  string
		typ assetv1.WatchEventType
		st  assetv1.AssetStatus
		rev int64
	}
	var events []seen
	for ev, err := range c.Watch(ctx, ids, assetclient.WatchOptions{OnResume: func(after int64, cause error) {
		resumed = append(resumed, after)
		if !errors.Is(cause, assetclient.ErrUnavailable) {
			t.Errorf("resumed after %v", cause)
		}
	}}) {
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, seen{ev.GetAsset().GetId(), ev.GetType(), ev.GetAsset().GetStatus(), ev.GetRevision()})
		switch len(events) {
		case 2: // both snapshots seen: complete the first
			if _, err := real.FulfillWithValue(ctx, ids[0], assetclient.Text("one")); err != nil {
				t.Fatal(err)
			}
		case 3: // the stream breaks now; the second changes meanwhile
			if _, err := real.FailAsset(ctx, ids[1], "gone"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(events) != 4 {
		t.Fatalf("events %+v, want 2 snapshots, then AVAILABLE and FAILED once each", events)
	}
	if events[2].id != ids[0] || events[2].st != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE ||
		events[3].id != ids[1] || events[3].st != assetv1.AssetStatus_ASSET_STATUS_FAILED {
		t.Errorf("events %+v", events)
	}
	if len(f.watches) != 2 || f.watches[0].GetAfterRevision() != 0 || f.watches[1].GetAfterRevision() != events[2].rev {
		t.Errorf("watch requests %v: want the second after revision %d", f.watches, events[2].rev)
	}
	if len(resumed) != 1 || resumed[0] != events[2].rev {
		t.Errorf("OnResume %v", resumed)
	}

	// ResumeFor < 0: the break is the watch's end.
	f2 := &faulty{breaks: 1, keep: 1}
	var last error
	n := 0
	for _, err := range wrapped(t, f2).Watch(ctx, ids, assetclient.WatchOptions{ResumeFor: -1}) {
		n++
		last = err
	}
	if n != 2 || !errors.Is(last, assetclient.ErrUnavailable) {
		t.Errorf("a watch that may not resume: %d elements, last error %v", n, last)
	}
}

func TestDefaultDeadlines(t *testing.T) {
	ctx := context.Background()
	f := &faulty{}
	c := wrapped(t, f)
	if _, err := c.GetAsset(ctx, unknownID); !errors.Is(err, assetclient.ErrNotFound) {
		t.Fatal(err)
	}
	if d := f.deadline["GetAsset"]; d < 29*time.Second || d > assetclient.DefaultCallTimeout {
		t.Errorf("a call without a deadline got %v, want DefaultCallTimeout", d)
	}
	long, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	_, _ = c.GetAsset(long, unknownID)
	if d := f.deadline["GetAsset"]; d < 59*time.Minute {
		t.Errorf("a call with an hour's deadline got %v", d)
	}
	_, _ = c.GetManifest(ctx, map[string]string{"x": unknownID}, assetclient.ManifestOptions{Wait: true})
	if d := f.deadline["GetManifest"]; d != -1 {
		t.Errorf("GetManifest(wait) got a deadline of %v, want none", d)
	}
	_, _ = c.GetManifest(ctx, map[string]string{"x": unknownID}, assetclient.ManifestOptions{})
	if d := f.deadline["GetManifest"]; d < 29*time.Second {
		t.Errorf("GetManifest got %v, want DefaultCallTimeout", d)
	}

	f2 := &faulty{}
	c2 := wrapped(t, f2, assetclient.WithCallTimeout(2*time.Second))
	_, _ = c2.GetAsset(ctx, unknownID)
	if d := f2.deadline["GetAsset"]; d <= 0 || d > 2*time.Second {
		t.Errorf("WithCallTimeout(2s): %v", d)
	}
	f3 := &faulty{}
	_, _ = wrapped(t, f3, assetclient.WithCallTimeout(0)).GetAsset(ctx, unknownID)
	if d := f3.deadline["GetAsset"]; d != -1 {
		t.Errorf("WithCallTimeout(0): %v, want no deadline", d)
	}
	if _, err := assetclient.Wrap(f3, assetclient.WithCallTimeout(-time.Second)); err == nil {
		t.Error("a negative call timeout was taken")
	}
}

// lyingUpload reports a stored sha256 that is not the one of what was sent.
type lyingUpload struct {
	grpc.ClientStreamingClient[assetv1.UploadAssetRequest, assetv1.UploadAssetResponse]
}

func (u lyingUpload) CloseAndRecv() (*assetv1.UploadAssetResponse, error) {
	resp, err := u.ClientStreamingClient.CloseAndRecv()
	if err == nil {
		resp.Asset.Sha256 = sha([]byte("something else"))
	}
	return resp, err
}

type lyingUploader struct{ assetv1.AssetServiceClient }

func (l lyingUploader) UploadAsset(ctx context.Context, opts ...grpc.CallOption) (grpc.ClientStreamingClient[assetv1.UploadAssetRequest, assetv1.UploadAssetResponse], error) {
	s, err := l.AssetServiceClient.UploadAsset(ctx, opts...)
	return lyingUpload{s}, err
}

func TestUploadChecksWhatTheServerStored(t *testing.T) {
	ctx := testContext(t)
	c, err := assetclient.Wrap(lyingUploader{client(t).Raw()})
	if err != nil {
		t.Fatal(err)
	}
	content := randomBytes(t, 1000)
	a, err := c.Upload(ctx, bytes.NewReader(content), assetclient.UploadOptions{Label: "x.bin"})
	var dl *assetclient.DataLossError
	if !errors.As(err, &dl) || !dl.Upload || dl.WantSHA256 != sha(content) || a.GetId() == "" || !strings.Contains(err.Error(), "were sent") {
		t.Fatalf("Upload whose stored sha256 differs: %v, want a *DataLossError naming the asset", err)
	}
	// Reading the content fails: nothing is stored, and the error says why.
	_, err = client(t).Upload(ctx, failingReader{}, assetclient.UploadOptions{Label: "never.bin"})
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Upload from a failing reader: %v", err)
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }
