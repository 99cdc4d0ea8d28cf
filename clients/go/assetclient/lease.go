package assetclient

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// RenewLease extends the lease of a PENDING asset (promised with a Lease) to
// now + lease, rounded up to whole seconds; 0 renews it for the lease it was
// promised with. It fails with ErrFailedPrecondition when the asset is not
// PENDING, was promised without a lease or its lease already ran out, and
// ErrInvalidArgument past the server's --max-lease-seconds. The caller needs
// the worker role, or a task token of the asset's task.
func (c *Client) RenewLease(ctx context.Context, id string, lease time.Duration) (*assetv1.Asset, error) {
	seconds, err := leaseSeconds(lease)
	if err != nil {
		return nil, err
	}
	resp, err := unary(ctx, c, "RenewLease", c.raw.RenewLease, &assetv1.RenewLeaseRequest{AssetId: id, LeaseSeconds: seconds})
	return resp.GetAsset(), err
}

// LeaseKeeper renews one promise's lease in the background; see KeepLease.
type LeaseKeeper struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done is closed
}

// KeepLease renews id's lease (RenewLease with 0: the lease it was promised
// with) every `every` in a goroutine, until Stop is called, ctx ends, or a
// renewal fails for good. Choose `every` well below the lease (a third of it,
// say): a renewal that fails with ErrUnavailable or ErrDeadlineExceeded (each
// call may take at most `every`) is tried again at the next tick; any other
// error (the asset is no longer PENDING, its lease ran out, permission denied,
// ...) ends the keeping and is what Err and Stop return. The first renewal is
// `every` after the call.
func (c *Client) KeepLease(ctx context.Context, id string, every time.Duration) *LeaseKeeper {
	ctx, cancel := context.WithCancel(ctx)
	k := &LeaseKeeper{cancel: cancel, done: make(chan struct{})}
	if every <= 0 {
		k.err = fmt.Errorf("keep lease of %s: the interval %v is not positive", id, every)
		close(k.done)
		return k
	}
	go k.run(ctx, c, id, every)
	return k
}

func (k *LeaseKeeper) run(ctx context.Context, c *Client, id string, every time.Duration) {
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
		_, err := c.RenewLease(callCtx, id, 0)
		cancel()
		switch Code(err) {
		case codes.OK, codes.Unavailable, codes.DeadlineExceeded:
			// Renewed, or try again at the next tick.
		default:
			if ctx.Err() != nil {
				return // stopped: the error is the cancellation
			}
			k.err = fmt.Errorf("renew lease of %s: %w", id, err)
			return
		}
	}
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

// TaskToken is a bearer token scoped to one task, as MintTaskToken returns it.
type TaskToken struct {
	Token     string
	ExpiresAt time.Time
}

// MintTaskToken asks the server (the caller needs the orchestrator role) for a
// token that may complete taskID's promised outputs and read them and
// inputIDs. ttl is rounded up to whole seconds (as leases are: below a second
// is one, not the 0 that means the server's default); 0 means the server's
// default (an hour). Hand the token to the worker (ASSET_SERVICE_TOKEN).
func (c *Client) MintTaskToken(ctx context.Context, taskID string, inputIDs []string, ttl time.Duration) (*TaskToken, error) {
	var seconds int64
	if ttl != 0 {
		s, err := ttlSeconds(ttl)
		if err != nil {
			return nil, fmt.Errorf("MintTaskToken: %w", err)
		}
		seconds = s
	}
	resp, err := unary(ctx, c, "MintTaskToken", c.raw.MintTaskToken, &assetv1.MintTaskTokenRequest{
		TaskId: taskID, InputAssetIds: inputIDs, TtlSeconds: seconds,
	})
	if err != nil {
		return nil, err
	}
	return &TaskToken{Token: resp.GetToken(), ExpiresAt: resp.GetExpiresAt().AsTime()}, nil
}

// TaskTokenSource is a TokenSource for a worker's connection (WithTokenSource):
// it mints a task token through c (a connection with the orchestrator role) on
// first use and again once less than a fifth of its lifetime is left, so that
// a long task keeps working.
func (c *Client) TaskTokenSource(taskID string, inputIDs []string, ttl time.Duration) TokenSource {
	var (
		mu      sync.Mutex
		current *TaskToken
		renewAt time.Time
	)
	return func(ctx context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if current != nil && time.Now().Before(renewAt) {
			return current.Token, nil
		}
		minted, err := c.MintTaskToken(ctx, taskID, inputIDs, ttl)
		if err != nil {
			return "", fmt.Errorf("mint task token for %s: %w", taskID, err)
		}
		current = minted
		renewAt = minted.ExpiresAt.Add(-time.Until(minted.ExpiresAt) / 5)
		return current.Token, nil
	}
}
