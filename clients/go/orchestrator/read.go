package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// DataLossError says that the bytes a read received are not the asset's: their
// length or sha256 differs from its record. Test for it with errors.As.
type DataLossError struct {
	AssetID string
	// What the record says, and what arrived.
	WantSize, GotSize     int64
	WantSHA256, GotSHA256 string
}

func (e *DataLossError) Error() string {
	if e.WantSize != e.GotSize {
		return fmt.Sprintf("asset %s: received %d bytes, the record says %d", e.AssetID, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("asset %s: received bytes hash to %s, the record says %s", e.AssetID, e.GotSHA256, e.WantSHA256)
}

// ReadOptions bound a read; the zero value reads the whole asset and checks it.
type ReadOptions struct {
	// Offset and Limit (0: to the end) select a range.
	Offset, Limit int64
	// SkipVerify turns off the sha256 check of whole reads (it costs one hash pass).
	SkipVerify bool
}

// ReadAsset streams an asset's bytes (or a range of them) into w and returns its
// record. A whole read (from offset 0, no limit) is checked against the record's
// size and sha256 unless opts.SkipVerify: a mismatch is a *DataLossError, and w
// has then received bytes that must not be used. (The server already checks every
// block against the checksums kept since the bytes arrived; this check also covers
// the way from its disk to yours.)
func ReadAsset(ctx context.Context, c assetv1.AssetServiceClient, id string, w io.Writer, opts ReadOptions) (*assetv1.Asset, error) {
	got, err := c.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: id})
	if err != nil {
		return nil, err
	}
	asset := got.GetAsset()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.ReadAsset(ctx, &assetv1.ReadAssetRequest{AssetId: id, Offset: opts.Offset, Limit: opts.Limit})
	if err != nil {
		return nil, err
	}
	whole := opts.Offset == 0 && opts.Limit == 0 && !opts.SkipVerify
	hash := sha256.New()
	var received int64
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if msg.GetOffset() != opts.Offset+received {
			return nil, fmt.Errorf("asset %s: chunk at offset %d, expected %d", id, msg.GetOffset(), opts.Offset+received)
		}
		chunk := msg.GetChunk()
		if whole {
			hash.Write(chunk)
		}
		if _, err := w.Write(chunk); err != nil {
			return nil, err
		}
		received += int64(len(chunk))
	}
	if !whole {
		return asset, nil
	}
	sum := hex.EncodeToString(hash.Sum(nil))
	if received != asset.GetSizeBytes() || (asset.GetSha256() != "" && sum != asset.GetSha256()) {
		return nil, &DataLossError{
			AssetID: id, WantSize: asset.GetSizeBytes(), GotSize: received,
			WantSHA256: asset.GetSha256(), GotSHA256: sum,
		}
	}
	return asset, nil
}
