package assetclient_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// cuttingUploader cuts the first `cuts` UploadAsset streams after `keep` chunks
// each, as a dropped connection does: the stream is cancelled (the server keeps
// what it made durable) and the client sees UNAVAILABLE.
type cuttingUploader struct {
	assetv1.AssetServiceClient
	mu      sync.Mutex
	cuts    int
	keep    int
	headers []*assetv1.UploadHeader
}

type cutStream struct {
	grpc.ClientStreamingClient[assetv1.UploadAssetRequest, assetv1.UploadAssetResponse]
	cancel context.CancelFunc
	chunks int // left before the cut; -1: never
}

func (s *cutStream) Send(m *assetv1.UploadAssetRequest) error {
	if m.GetChunk() != nil && s.chunks >= 0 {
		if s.chunks == 0 {
			s.cancel()
			return io.EOF
		}
		s.chunks--
	}
	return s.ClientStreamingClient.Send(m)
}

func (s *cutStream) CloseAndRecv() (*assetv1.UploadAssetResponse, error) {
	if s.chunks == 0 {
		return nil, dropped
	}
	return s.ClientStreamingClient.CloseAndRecv()
}

func (u *cuttingUploader) UploadAsset(ctx context.Context, opts ...grpc.CallOption) (grpc.ClientStreamingClient[assetv1.UploadAssetRequest, assetv1.UploadAssetResponse], error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := u.AssetServiceClient.UploadAsset(ctx, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	keep := -1
	if u.cuts > 0 {
		u.cuts--
		keep = u.keep
	}
	return &recordingStream{cutStream{ClientStreamingClient: s, cancel: cancel, chunks: keep}, u}, nil
}

// recordingStream notes each stream's header.
type recordingStream struct {
	cutStream
	u *cuttingUploader
}

func (r *recordingStream) Send(m *assetv1.UploadAssetRequest) error {
	if h := m.GetHeader(); h != nil {
		r.u.mu.Lock()
		r.u.headers = append(r.u.headers, h)
		r.u.mu.Unlock()
	}
	return r.cutStream.Send(m)
}

func TestUploadResumesAfterCuts(t *testing.T) {
	ctx := testContext(t)
	real := client(t)
	content := randomBytes(t, 6*assetclient.ChunkSize+321)
	u := &cuttingUploader{AssetServiceClient: real.Raw(), cuts: 2, keep: 2}
	c, err := assetclient.Wrap(u)
	if err != nil {
		t.Fatal(err)
	}
	var offsets []int64
	a, err := c.UploadResumable(ctx, bytes.NewReader(content), assetclient.UploadOptions{
		Label:    "resumed.bin",
		OnResume: func(offset int64, cause error) { offsets = append(offsets, offset) },
	})
	if err != nil {
		t.Fatalf("UploadResumable over two cuts: %v", err)
	}
	if a.GetSha256() != sha(content) || a.GetSizeBytes() != int64(len(content)) {
		t.Fatalf("stored %d bytes, sha256 %s", a.GetSizeBytes(), a.GetSha256())
	}
	// Two cuts, so at least three streams; more when a stream raced the server's
	// handling of the cut before it (ABORTED, or "resume at committed_bytes=N").
	if len(u.headers) < 3 || len(offsets) != len(u.headers)-1 {
		t.Fatalf("%d streams, resumed at %v: want 3 or more streams, each after the first resumed", len(u.headers), offsets)
	}
	id := u.headers[0].GetUploadId()
	for i, h := range u.headers {
		if h.GetUploadId() != id || h.GetExpectedSha256() != sha(content) || h.GetExpectedSizeBytes() != int64(len(content)) {
			t.Errorf("stream %d: header %v", i, h)
		}
		if i > 0 && h.GetWriteOffset() != offsets[i-1] {
			t.Errorf("stream %d starts at %d, QueryUpload said %d", i, h.GetWriteOffset(), offsets[i-1])
		}
	}
	var back bytes.Buffer
	if _, err := real.Download(ctx, a.GetId(), &back); err != nil || !bytes.Equal(back.Bytes(), content) {
		t.Fatalf("Download of the resumed upload: %v", err)
	}
	// QueryUpload knows the completed upload and its asset; resuming it stores nothing twice.
	q, err := real.QueryUpload(ctx, id)
	if err != nil || q.GetAsset().GetId() != a.GetId() || q.GetCommittedBytes() != int64(len(content)) {
		t.Errorf("QueryUpload of the completed upload: %v %v", q, err)
	}
	again, err := real.UploadResumable(ctx, bytes.NewReader(content), assetclient.UploadOptions{Label: "resumed.bin", UploadID: id})
	if err != nil || again.GetId() != a.GetId() {
		t.Errorf("the same upload id again: %v %v, want asset %s", again, err, a.GetId())
	}
	if _, err := real.QueryUpload(ctx, assetclient.NewUploadID()); !errors.Is(err, assetclient.ErrNotFound) {
		t.Errorf("QueryUpload(unknown id): %v, want ErrNotFound", err)
	}

	// Told not to resume, the first cut is the end.
	u2 := &cuttingUploader{AssetServiceClient: real.Raw(), cuts: 1, keep: 1}
	c2, _ := assetclient.Wrap(u2)
	_, err = c2.UploadResumable(ctx, bytes.NewReader(content), assetclient.UploadOptions{Label: "x", ResumeFor: -1})
	if !errors.Is(err, assetclient.ErrUnavailable) || len(u2.headers) != 1 {
		t.Errorf("UploadResumable with ResumeFor < 0: %v after %d streams", err, len(u2.headers))
	}
}
