package assetclient

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// WatchOptions shape Watch and WatchSelector.
type WatchOptions struct {
	// AfterRevision starts after this revision: the last one a previous watch
	// delivered, or a ListAssets page's (WatchSelector). 0: from the start.
	AfterRevision int64
	// Follow keeps an id watch open after every asset is terminal.
	Follow bool
	// ResumeFor is how long the watch keeps trying to resume after its stream
	// broke (UNAVAILABLE: the server restarted, the connection dropped, the
	// server ended a stalled stream) without getting an event back:
	// DefaultResumeFor when 0; a negative value never resumes.
	ResumeFor time.Duration
	// OnResume, if set, is told each time the watch resumes: after which
	// revision, and the error that broke the stream.
	OnResume func(afterRevision int64, cause error)
}

// DefaultResumeFor is how long a watch tries to resume by default.
const DefaultResumeFor = 2 * time.Minute

// The waits between attempts to resume: doubling from the first, up to the last.
const (
	resumeFirstWait = 100 * time.Millisecond
	resumeMaxWait   = 2 * time.Second
)

// Watch yields the state of each of ids (SNAPSHOT events), then every change
// (CHANGED, DELETED) in revision order, and ends once every asset is terminal
// (AVAILABLE, FAILED or deleted) unless opts.Follow. When the stream breaks
// (ErrUnavailable) it resumes after the last revision it yielded, so nothing
// is lost or repeated (an asset that changed meanwhile comes as a SNAPSHOT of
// the new stream: act on the asset's state, not the event's type); an error
// it cannot resume from (or ctx's end) is yielded as the last element, with a
// nil event:
//
//	for ev, err := range c.Watch(ctx, ids, assetclient.WatchOptions{}) {
//		if err != nil { return err }
//		fmt.Println(ev.GetAsset().GetId(), ev.GetAsset().GetStatus())
//	}
func (c *Client) Watch(ctx context.Context, ids []string, opts WatchOptions) iter.Seq2[*assetv1.WatchAssetResponse, error] {
	return c.watch(ctx, &assetv1.WatchAssetRequest{AssetIds: ids, Follow: opts.Follow}, opts)
}

// WatchSelector yields every change (CHANGED, DELETED; no snapshot) after
// opts.AfterRevision of the assets sel picks, including ones created later,
// until ctx ends; it resumes like Watch. Records come without their inline
// VALUE content (GetAsset has it). A revision older than the server's change
// history (e.g. after a restart that missed changes) ends it with
// ErrOutOfRange: list again (ListAssets) and watch from the page's Revision.
func (c *Client) WatchSelector(ctx context.Context, sel *assetv1.AssetSelector, opts WatchOptions) iter.Seq2[*assetv1.WatchAssetResponse, error] {
	if sel == nil {
		sel = &assetv1.AssetSelector{}
	}
	return c.watch(ctx, &assetv1.WatchAssetRequest{Selector: sel}, opts)
}

func (c *Client) watch(ctx context.Context, req *assetv1.WatchAssetRequest, opts WatchOptions) iter.Seq2[*assetv1.WatchAssetResponse, error] {
	resumeFor := opts.ResumeFor
	if resumeFor == 0 {
		resumeFor = DefaultResumeFor
	}
	return func(yield func(*assetv1.WatchAssetResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		after := opts.AfterRevision
		var brokeAt time.Time // when the stream broke, if it has not delivered since
		wait := resumeFirstWait
		for {
			r := proto.CloneOf(req)
			r.AfterRevision = after
			err := c.stream(ctx, r, func(ev *assetv1.WatchAssetResponse) bool {
				brokeAt, wait = time.Time{}, resumeFirstWait
				after = max(after, ev.GetRevision())
				return yield(ev, nil)
			})
			if err == nil || errors.Is(err, errStopped) {
				return
			}
			if brokeAt.IsZero() {
				brokeAt = time.Now()
			}
			if !resumable(ctx, err) || resumeFor < 0 || time.Since(brokeAt)+wait > resumeFor {
				yield(nil, err)
				return
			}
			if opts.OnResume != nil {
				opts.OnResume(after, err)
			}
			if err := sleep(ctx, wait); err != nil {
				yield(nil, wrap("WatchAsset", err))
				return
			}
			wait = min(2*wait, resumeMaxWait)
		}
	}
}

// errStopped says the consumer of a watch stopped asking for events.
var errStopped = errors.New("watch stopped by its consumer")

// stream runs one WatchAsset stream: nil when the server ended it (every asset
// terminal), errStopped when deliver returned false, else the *Error.
func (c *Client) stream(ctx context.Context, req *assetv1.WatchAssetRequest, deliver func(*assetv1.WatchAssetResponse) bool) error {
	open := func(ctx context.Context) (grpc.ServerStreamingClient[assetv1.WatchAssetResponse], error) {
		return c.raw.WatchAsset(ctx, req)
	}
	for ev, err := range messages(ctx, "WatchAsset", open) {
		if err != nil {
			return err
		}
		if !deliver(ev) {
			return errStopped
		}
	}
	return nil
}

// resumable reports whether a stream that broke with err may be opened again:
// UNAVAILABLE is what a dropped connection, a server that stops (gracefully:
// "Cancelling all calls", or killed) and a stalled stream the server ended give.
func resumable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && Code(err) == codes.Unavailable
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// WaitTerminal watches ids until every one is terminal (AVAILABLE, FAILED or
// deleted: a deleted asset's last state) and returns each one's last state by
// id; it resumes like Watch.
func (c *Client) WaitTerminal(ctx context.Context, ids []string) (map[string]*assetv1.Asset, error) {
	last := make(map[string]*assetv1.Asset, len(ids))
	for ev, err := range c.Watch(ctx, ids, WatchOptions{}) {
		if err != nil {
			return nil, err
		}
		last[ev.GetAsset().GetId()] = ev.GetAsset()
	}
	return last, nil
}

// NotAvailableError says an asset that was waited for will never be AVAILABLE:
// it FAILED (Asset.FailureReason says why) or was deleted. It matches
// ErrFailedPrecondition.
type NotAvailableError struct {
	Asset   *assetv1.Asset
	Deleted bool
}

func (e *NotAvailableError) Error() string {
	a := e.Asset
	if e.Deleted {
		return fmt.Sprintf("asset %s (%q) was deleted", a.GetId(), a.GetLabel())
	}
	return fmt.Sprintf("asset %s (%q) FAILED: %s", a.GetId(), a.GetLabel(), a.GetFailureReason())
}

// Is matches ErrFailedPrecondition.
func (e *NotAvailableError) Is(target error) bool { return target == ErrFailedPrecondition }

// GRPCStatus is FAILED_PRECONDITION with e's message: Code and status.Code see the code it matches.
func (e *NotAvailableError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// WaitAvailable watches ids until every one is AVAILABLE and returns them in
// the order given; one that FAILED or was deleted ends the wait with a
// *NotAvailableError. Bound the wait with ctx.
func (c *Client) WaitAvailable(ctx context.Context, ids ...string) ([]*assetv1.Asset, error) {
	got := make(map[string]*assetv1.Asset, len(ids))
	for ev, err := range c.Watch(ctx, ids, WatchOptions{}) {
		if err != nil {
			return nil, err
		}
		a := ev.GetAsset()
		switch {
		case ev.GetType() == assetv1.WatchEventType_WATCH_EVENT_TYPE_DELETED:
			return nil, &NotAvailableError{Asset: a, Deleted: true}
		case a.GetStatus() == assetv1.AssetStatus_ASSET_STATUS_FAILED:
			return nil, &NotAvailableError{Asset: a}
		}
		got[a.GetId()] = a
	}
	out := make([]*assetv1.Asset, len(ids))
	for i, id := range ids {
		out[i] = got[id]
		if out[i].GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
			return nil, fmt.Errorf("the watch ended before asset %s was AVAILABLE", id)
		}
	}
	return out, nil
}
