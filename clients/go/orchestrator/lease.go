package orchestrator

import (
	"context"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// leaseSeconds is d in whole seconds for the wire, rounded up: a lease of a
// fraction of a second is one second, never none (0 means no lease).
func leaseSeconds(d time.Duration) (uint32, error) {
	if d < 0 {
		return 0, fmt.Errorf("lease %v is negative", d)
	}
	s := (d + time.Second - 1) / time.Second
	if s > math.MaxUint32 {
		return 0, fmt.Errorf("lease %v is too long", d)
	}
	return uint32(s), nil
}

// RenewLease extends the lease of a PENDING asset (promised with Output.Lease)
// to now + lease, rounded up to whole seconds; 0 renews it for the lease it was
// promised with. The server answers codes.FailedPrecondition when the asset is
// not PENDING, was promised without a lease or its lease already ran out, and
// codes.InvalidArgument past its --max-lease-seconds. The caller needs the
// worker role, or a task token of the asset's task.
func RenewLease(ctx context.Context, c assetv1.AssetServiceClient, assetID string, lease time.Duration) (*assetv1.Asset, error) {
	seconds, err := leaseSeconds(lease)
	if err != nil {
		return nil, err
	}
	resp, err := c.RenewLease(ctx, &assetv1.RenewLeaseRequest{AssetId: assetID, LeaseSeconds: seconds})
	if err != nil {
		return nil, err
	}
	return resp.GetAsset(), nil
}

// LeaseKeeper renews one promise's lease in the background; see KeepLease.
type LeaseKeeper struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
}

// KeepLease renews assetID's lease (RenewLease with 0: the lease it was promised
// with) every `every` in a goroutine, until Stop is called, ctx ends, or a
// renewal fails for good. Choose `every` well below the lease (a third of it,
// say): a renewal that fails with codes.Unavailable or codes.DeadlineExceeded
// (each call may take at most `every`) is tried again at the next tick; any
// other error (the asset is no longer PENDING, its lease ran out, permission
// denied, ...) ends the keeping and is what Err and Stop return. The first
// renewal is `every` after the call.
func KeepLease(ctx context.Context, c assetv1.AssetServiceClient, assetID string, every time.Duration) *LeaseKeeper {
	ctx, cancel := context.WithCancel(ctx)
	k := &LeaseKeeper{cancel: cancel, done: make(chan struct{})}
	if every <= 0 {
		k.err = fmt.Errorf("keep lease of %s: the interval %v is not positive", assetID, every)
		close(k.done)
		return k
	}
	go k.run(ctx, c, assetID, every)
	return k
}

func (k *LeaseKeeper) run(ctx context.Context, c assetv1.AssetServiceClient, assetID string, every time.Duration) {
	defer close(k.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		callCtx, cancel := context.WithTimeout(ctx, every)
		_, err := c.RenewLease(callCtx, &assetv1.RenewLeaseRequest{AssetId: assetID})
		cancel()
		switch {
		case err == nil, ctx.Err() != nil, isTransient(err):
			// Renewed; or stopped (the error is the cancellation); or try again.
		default:
			k.err = fmt.Errorf("renew lease of %s: %w", assetID, err)
			return
		}
	}
}

// isTransient reports whether a failed renewal is worth trying again.
func isTransient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// Stop ends the keeping and waits for its goroutine to return (a renewal in
// flight is cancelled). It returns the error that had ended the keeping, if
// one did; nil when it was still renewing, or ctx had ended it. Calling Stop
// again returns the same.
func (k *LeaseKeeper) Stop() error {
	k.cancel()
	<-k.done
	return k.err
}

// Done is closed once the keeper has stopped renewing: after Stop, when ctx
// ended, or on an error that Err then returns.
func (k *LeaseKeeper) Done() <-chan struct{} { return k.done }

// Err is the error that ended the keeping (nil while it runs, and after Stop
// or the end of ctx without one).
func (k *LeaseKeeper) Err() error {
	select {
	case <-k.done:
		return k.err
	default:
		return nil
	}
}
