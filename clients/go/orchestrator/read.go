package orchestrator

import (
	"context"
	"io"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// DataLossError says that the bytes a read received are not the asset's: their
// length or sha256 differs from its record. Test for it with errors.As (or
// errors.Is(err, assetclient.ErrDataLoss)).
type DataLossError = assetclient.DataLossError

// ReadOptions bound a read; the zero value reads the whole asset and checks it.
type ReadOptions struct {
	// Offset and Limit (0: to the end) select a range.
	Offset, Limit int64
	// SkipVerify turns off the sha256 check of whole reads (it costs one hash pass).
	SkipVerify bool
}

// ReadAsset streams an asset's bytes (or a range of them) into w and returns its
// record. A whole read (from offset 0, no limit) is checked against the record's
// size and sha256 unless opts.SkipVerify (assetclient.Client.Download): a
// mismatch is a *DataLossError, and w has then received bytes that must not be
// used. (The server already checks every block against the checksums kept since
// the bytes arrived; this check also covers the way from its disk to yours.)
func ReadAsset(ctx context.Context, c assetv1.AssetServiceClient, id string, w io.Writer, opts ReadOptions) (*assetv1.Asset, error) {
	tc := typed(c)
	if opts.Offset == 0 && opts.Limit == 0 && !opts.SkipVerify {
		return tc.Download(ctx, id, w)
	}
	asset, err := tc.GetAsset(ctx, id)
	if err != nil {
		return nil, err
	}
	if _, err := tc.ReadRange(ctx, id, opts.Offset, opts.Limit, w); err != nil {
		return nil, err
	}
	return asset, nil
}
