package assetclient

import (
	"context"
	"iter"

	"google.golang.org/grpc"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// ScrubAssets has the server re-read stored bytes now and check every block
// against its checksum: one result per asset, in order (ids empty: every
// AVAILABLE FILE asset; rateMiBPerSecond 0: as fast as storage answers). A
// corrupt asset is marked (its CorruptReason) and refused with ErrDataLoss
// from then on; one restored from a copy is unmarked. Admin role. An error
// (or the end of ctx) is the last element, with a nil result.
func (c *Client) ScrubAssets(ctx context.Context, ids []string, rateMiBPerSecond float64) iter.Seq2[*assetv1.ScrubAssetsResponse, error] {
	req := &assetv1.ScrubAssetsRequest{AssetIds: ids, RateMibPerSecond: rateMiBPerSecond}
	return messages(ctx, "ScrubAssets", func(ctx context.Context) (grpc.ServerStreamingClient[assetv1.ScrubAssetsResponse], error) {
		return c.raw.ScrubAssets(ctx, req)
	})
}
