package assetclient

import (
	"context"
	"fmt"
	"math"
	"time"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// ttlSeconds is d in whole seconds for the wire, rounded up; it must be above 0.
func ttlSeconds(d time.Duration) (int64, error) {
	if d <= 0 {
		return 0, fmt.Errorf("ttl %v is not above 0", d)
	}
	s := (d + time.Second - 1) / time.Second
	if s > math.MaxInt64/2 {
		return 0, fmt.Errorf("ttl %v is too long", d)
	}
	return int64(s), nil
}

// SetExpiry makes the asset expire ttl from now (whole seconds, rounded up),
// or never with ttl 0. The server's --expiry-rule defaults never replace it.
// An expired asset is removed once nothing holds it.
func (c *Client) SetExpiry(ctx context.Context, id string, ttl time.Duration) (*assetv1.Asset, error) {
	req := &assetv1.SetExpiryRequest{AssetId: id, Clear: ttl == 0}
	if ttl != 0 {
		s, err := ttlSeconds(ttl)
		if err != nil {
			return nil, fmt.Errorf("SetExpiry: %w", err)
		}
		req.TtlSeconds = s
	}
	resp, err := unary(ctx, c, "SetExpiry", c.raw.SetExpiry, req)
	return resp.GetAsset(), err
}

// PlaceHold keeps the asset from expiring, and from DeleteAsset without
// force, until owner releases it; placing it again replaces the reason.
func (c *Client) PlaceHold(ctx context.Context, id, owner, reason string) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "PlaceHold", c.raw.PlaceHold, &assetv1.PlaceHoldRequest{
		AssetId: id, Owner: owner, Reason: reason,
	})
	return resp.GetAsset(), err
}

// ReleaseHold removes owner's hold (ErrNotFound if it has none). Not retried:
// a repeat of an applied release would answer NOT_FOUND.
func (c *Client) ReleaseHold(ctx context.Context, id, owner string) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "ReleaseHold", c.raw.ReleaseHold, &assetv1.ReleaseHoldRequest{
		AssetId: id, Owner: owner,
	})
	return resp.GetAsset(), err
}

// GetUsage says how many assets and bytes the store holds, by status and by
// group ("status", "type", "tag" or "task"): of keys, or of the limit largest
// (0: 100).
func (c *Client) GetUsage(ctx context.Context, group string, keys []string, limit int32) (*assetv1.GetUsageResponse, error) {
	return unary(ctx, c, "GetUsage", c.raw.GetUsage, &assetv1.GetUsageRequest{
		Group: group, Keys: keys, Limit: limit,
	})
}

// DeleteAssetForce removes an asset's record and bytes even though something
// holds it (admin role), and returns its last state.
func (c *Client) DeleteAssetForce(ctx context.Context, id string) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "DeleteAsset", c.raw.DeleteAsset, &assetv1.DeleteAssetRequest{AssetId: id, Force: true})
	return resp.GetAsset(), err
}
