package orchestrator_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	"github.com/asset-service/asset-service/clients/go/orchestrator"
)

func TestReadAssetReadsWholeAndRanges(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	created, err := c.CreateValueAsset(ctx, &assetv1.CreateValueAssetRequest{
		Label: "read.txt", Value: &assetv1.Value{Kind: &assetv1.Value_Text{Text: "hello, reader"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := created.GetAsset().GetId()
	var whole bytes.Buffer
	asset, err := orchestrator.ReadAsset(ctx, c, id, &whole, orchestrator.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if whole.String() != "hello, reader" || asset.GetId() != id {
		t.Errorf("read %q of %s", whole.String(), asset.GetId())
	}
	var part bytes.Buffer
	if _, err := orchestrator.ReadAsset(ctx, c, id, &part, orchestrator.ReadOptions{Offset: 7, Limit: 4}); err != nil {
		t.Fatal(err)
	}
	if part.String() != "read" {
		t.Errorf("range read %q, want %q", part.String(), "read")
	}
}

// lyingServer answers GetAsset with the record of `real` and ReadAsset with `sent`.
type lyingServer struct {
	assetv1.UnimplementedAssetServiceServer
	real, sent []byte
}

func (s *lyingServer) GetAsset(ctx context.Context, req *assetv1.GetAssetRequest) (*assetv1.GetAssetResponse, error) {
	sum := sha256.Sum256(s.real)
	return &assetv1.GetAssetResponse{Asset: &assetv1.Asset{
		Id: req.GetAssetId(), Status: assetv1.AssetStatus_ASSET_STATUS_AVAILABLE,
		Type: assetv1.AssetType_ASSET_TYPE_FILE, SizeBytes: int64(len(s.real)),
		Sha256: hex.EncodeToString(sum[:]),
	}}, nil
}

func (s *lyingServer) ReadAsset(req *assetv1.ReadAssetRequest, stream grpc.ServerStreamingServer[assetv1.ReadAssetResponse]) error {
	return stream.Send(&assetv1.ReadAssetResponse{Chunk: s.sent})
}

func lyingClient(t *testing.T, real, sent []byte) assetv1.AssetServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	assetv1.RegisterAssetServiceServer(srv, &lyingServer{real: real, sent: sent})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return assetv1.NewAssetServiceClient(conn)
}

func TestReadAssetCatchesBytesThatAreNotTheRecords(t *testing.T) {
	ctx := testContext(t)
	const id = "11111111-2222-4333-8444-555555555555"
	for name, sent := range map[string][]byte{
		"same size, other bytes": []byte("the fake bytes"),
		"short":                  []byte("the real"),
	} {
		c := lyingClient(t, []byte("the real bytes"), sent)
		_, err := orchestrator.ReadAsset(ctx, c, id, &bytes.Buffer{}, orchestrator.ReadOptions{})
		var loss *orchestrator.DataLossError
		if !errors.As(err, &loss) || loss.AssetID != id {
			t.Fatalf("%s: err %v, want a *DataLossError for %s", name, err, id)
		}
		// Asked not to verify, the caller gets what was sent.
		var got bytes.Buffer
		if _, err := orchestrator.ReadAsset(ctx, c, id, &got, orchestrator.ReadOptions{SkipVerify: true}); err != nil || !bytes.Equal(got.Bytes(), sent) {
			t.Fatalf("%s: SkipVerify read %q, %v", name, got.Bytes(), err)
		}
	}
}
