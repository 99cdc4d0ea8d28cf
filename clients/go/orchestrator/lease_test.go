package orchestrator_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	"github.com/asset-service/asset-service/clients/go/orchestrator"
)

// promiseOne promises a single VALUE output of a fresh task, with lease.
func promiseOne(t *testing.T, ctx context.Context, c assetv1.AssetServiceClient, lease time.Duration) *assetv1.Asset {
	t.Helper()
	promised, err := orchestrator.Promise(ctx, c, taskID(t), []orchestrator.Output{
		{Key: "out", Label: "out.txt", MediaType: "text/plain", Type: assetv1.AssetType_ASSET_TYPE_VALUE, Lease: lease},
	})
	if err != nil {
		t.Fatal(err)
	}
	return promised["out"]
}

// stopped reports whether k's goroutine has returned.
func stopped(k *orchestrator.LeaseKeeper) bool {
	select {
	case <-k.Done():
		return true
	default:
		return false
	}
}

func TestKeepLeaseHoldsThePromiseUntilFulfilled(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	p := promiseOne(t, ctx, c, time.Second)
	if p.GetLeaseSeconds() != 1 {
		t.Errorf("lease_seconds %d, want 1", p.GetLeaseSeconds())
	}
	first := p.GetLeaseExpireTime().AsTime()
	if left := time.Until(first); left <= 0 || left > 1100*time.Millisecond {
		t.Errorf("a 1 s lease runs out in %v", left)
	}

	// Well past the first lease's end (the server looks every 0.2 s).
	keeper := orchestrator.KeepLease(ctx, c, p.GetId(), 300*time.Millisecond)
	time.Sleep(2500 * time.Millisecond)
	if err := keeper.Err(); err != nil || stopped(keeper) {
		t.Fatalf("the keeper ended while the promise was PENDING: %v", err)
	}
	got, err := c.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: p.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	a := got.GetAsset()
	if a.GetStatus() != assetv1.AssetStatus_ASSET_STATUS_PENDING {
		t.Fatalf("after 2.5 s of renewals: %v (%s), want PENDING", a.GetStatus(), a.GetFailureReason())
	}
	if renewedBy := a.GetLeaseExpireTime().AsTime().Sub(first); renewedBy < 1500*time.Millisecond {
		t.Errorf("the lease was moved by %v in 2.5 s, want at least 1.5 s", renewedBy)
	}
	if err := keeper.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if !stopped(keeper) {
		t.Error("Stop returned before the keeper's goroutine")
	}

	resp, err := c.FulfillAsset(ctx, &assetv1.FulfillAssetRequest{AssetId: p.GetId(), Content: textValue("kept")})
	if err != nil {
		t.Fatalf("FulfillAsset after keeping the lease: %v", err)
	}
	if s := resp.GetAsset().GetStatus(); s != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
		t.Errorf("status %v, want AVAILABLE", s)
	}
}

func TestLeaseNobodyRenewsFailsThePromise(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	started := time.Now()
	p := promiseOne(t, ctx, c, time.Second)

	var statuses []assetv1.AssetStatus
	final, err := orchestrator.Watch(ctx, c, []string{p.GetId()}, func(ev *assetv1.WatchAssetResponse) error {
		statuses = append(statuses, ev.GetAsset().GetStatus())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(started)
	want := []assetv1.AssetStatus{assetv1.AssetStatus_ASSET_STATUS_PENDING, assetv1.AssetStatus_ASSET_STATUS_FAILED}
	if fmt.Sprint(statuses) != fmt.Sprint(want) {
		t.Errorf("statuses %v, want %v", statuses, want)
	}
	a := final[p.GetId()]
	if r := a.GetFailureReason(); !strings.HasPrefix(r, "lease expired") {
		t.Errorf("failure reason %q, want \"lease expired ...\"", r)
	}
	if a.GetUpdatedBy() != "lease" {
		t.Errorf("updated_by %q, want \"lease\"", a.GetUpdatedBy())
	}
	if took < 900*time.Millisecond {
		t.Errorf("FAILED after %v, before its 1 s lease ran out", took)
	}

	// Too late to renew; a keeper started now ends on that refusal by itself.
	if _, err := orchestrator.RenewLease(ctx, c, p.GetId(), 0); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("RenewLease of a FAILED promise: %v, want FailedPrecondition", err)
	}
	keeper := orchestrator.KeepLease(ctx, c, p.GetId(), 50*time.Millisecond)
	select {
	case <-keeper.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the keeper of a FAILED promise still runs after 5 s")
	}
	if err := keeper.Err(); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), p.GetId()) {
		t.Errorf("keeper's error %v, want FailedPrecondition naming %s", err, p.GetId())
	}
	if err := keeper.Stop(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Stop after the keeper failed: %v, want its FailedPrecondition", err)
	}
}

func TestRenewLeaseErrors(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	p := promiseOne(t, ctx, c, 0)
	if p.GetLeaseSeconds() != 0 || p.GetLeaseExpireTime() != nil {
		t.Errorf("a promise without a lease: lease_seconds %d, lease_expire_time %v", p.GetLeaseSeconds(), p.GetLeaseExpireTime())
	}
	_, err := orchestrator.RenewLease(ctx, c, p.GetId(), 10*time.Second)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), p.GetId()) {
		t.Errorf("RenewLease of a promise without a lease: %v, want FailedPrecondition naming it", err)
	}
	if _, err := orchestrator.RenewLease(ctx, c, unknownID, 0); status.Code(err) != codes.NotFound {
		t.Errorf("RenewLease(unknown id): %v, want NotFound", err)
	}
	leased := promiseOne(t, ctx, c, time.Minute)
	if _, err := orchestrator.RenewLease(ctx, c, leased.GetId(), 48*time.Hour); status.Code(err) != codes.InvalidArgument {
		t.Errorf("RenewLease past --max-lease-seconds: %v, want InvalidArgument", err)
	}
	if _, err := orchestrator.RenewLease(ctx, c, leased.GetId(), -time.Second); err == nil {
		t.Error("a negative lease was sent")
	}
	// A fraction of a second is a whole one, never "no lease".
	short := promiseOne(t, ctx, c, 10*time.Millisecond)
	if short.GetLeaseSeconds() != 1 {
		t.Errorf("a 10 ms lease became lease_seconds %d, want 1", short.GetLeaseSeconds())
	}

	// The keeper of a promise without a lease stops on the first refusal.
	keeper := orchestrator.KeepLease(ctx, c, p.GetId(), 50*time.Millisecond)
	select {
	case <-keeper.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the keeper of a promise without a lease still runs after 5 s")
	}
	if err := keeper.Stop(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("keeper of a promise without a lease: %v, want FailedPrecondition", err)
	}
	if err := orchestrator.KeepLease(ctx, c, p.GetId(), 0).Stop(); err == nil {
		t.Error("a keeper with a zero interval started")
	}
}

// flakyRenewer fails the first `failures` RenewLease calls with codes.Unavailable
// and counts every call.
type flakyRenewer struct {
	assetv1.AssetServiceClient
	failures int32
	calls    atomic.Int32
}

func (f *flakyRenewer) RenewLease(ctx context.Context, in *assetv1.RenewLeaseRequest, opts ...grpc.CallOption) (*assetv1.RenewLeaseResponse, error) {
	if f.calls.Add(1) <= f.failures {
		return nil, status.Error(codes.Unavailable, "connection reset (injected)")
	}
	return f.AssetServiceClient.RenewLease(ctx, in, opts...)
}

func TestKeepLeaseRetriesTransientErrorsAndStopsForGood(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	p := promiseOne(t, ctx, c, 5*time.Second)
	flaky := &flakyRenewer{AssetServiceClient: c, failures: 2}
	keeper := orchestrator.KeepLease(ctx, flaky, p.GetId(), 100*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for flaky.calls.Load() < 4 && time.Now().Before(deadline) && !stopped(keeper) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := keeper.Stop(); err != nil {
		t.Fatalf("two Unavailable renewals ended the keeping: %v", err)
	}
	calls := flaky.calls.Load()
	if calls < 4 {
		t.Fatalf("%d renewals in 5 s at 100 ms", calls)
	}
	got, err := c.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: p.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if !got.GetAsset().GetLeaseExpireTime().AsTime().After(p.GetLeaseExpireTime().AsTime()) {
		t.Error("the renewals after the transient errors did not move the lease")
	}
	// Nothing renews after Stop.
	time.Sleep(300 * time.Millisecond)
	if n := flaky.calls.Load(); n != calls {
		t.Errorf("%d renewals after Stop", n-calls)
	}

	// Ending ctx ends the keeping too, without an error.
	kctx, cancel := context.WithCancel(ctx)
	keeper = orchestrator.KeepLease(kctx, c, p.GetId(), 100*time.Millisecond)
	cancel()
	select {
	case <-keeper.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the keeper still runs 5 s after its context ended")
	}
	if err := keeper.Stop(); err != nil {
		t.Errorf("Stop after the context ended: %v", err)
	}
}
