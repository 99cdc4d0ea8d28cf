package orchestrator

import (
	"context"
	"time"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// LeaseKeeper renews one promise's lease in the background; see KeepLease.
type LeaseKeeper = assetclient.LeaseKeeper

// RenewLease extends the lease of a PENDING asset (promised with Output.Lease)
// to now + lease, rounded up to whole seconds; 0 renews it for the lease it was
// promised with. The server answers codes.FailedPrecondition when the asset is
// not PENDING, was promised without a lease or its lease already ran out, and
// codes.InvalidArgument past its --max-lease-seconds. The caller needs the
// worker role, or a task token of the asset's task.
func RenewLease(ctx context.Context, c assetv1.AssetServiceClient, assetID string, lease time.Duration) (*assetv1.Asset, error) {
	return typed(c).RenewLease(ctx, assetID, lease)
}

// KeepLease renews assetID's lease every `every` in a goroutine until Stop is
// called, ctx ends, or a renewal fails for good (assetclient.Client.KeepLease).
func KeepLease(ctx context.Context, c assetv1.AssetServiceClient, assetID string, every time.Duration) *LeaseKeeper {
	return typed(c).KeepLease(ctx, assetID, every)
}
