package assetclient

import (
	"context"
	"errors"
	"io"
	"iter"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// ScrubAssets has the server re-read stored bytes now and check every block
// against its checksum: one result per asset, in order (ids empty: every
// AVAILABLE FILE asset; rateMiBPerSecond 0: as fast as storage answers). A
// corrupt asset is marked (its CorruptReason) and refused with ErrDataLoss
// from then on; one restored from a copy is unmarked. Admin role. An error
// (or the end of ctx) is the last element, with a nil result.
func (c *Client) ScrubAssets(ctx context.Context, ids []string, rateMiBPerSecond float64) iter.Seq2[*assetv1.ScrubAssetsResponse, error] {
	return func(yield func(*assetv1.ScrubAssetsResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.raw.ScrubAssets(ctx, &assetv1.ScrubAssetsRequest{AssetIds: ids, RateMibPerSecond: rateMiBPerSecond})
		if err != nil {
			yield(nil, wrap("ScrubAssets", err))
			return
		}
		for {
			r, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, wrap("ScrubAssets", err))
				return
			}
			if !yield(r, nil) {
				return
			}
		}
	}
}
