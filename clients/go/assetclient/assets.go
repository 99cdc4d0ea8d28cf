package assetclient

import (
	"context"
	"fmt"
	"iter"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// Meta describes an asset being created: all optional.
type Meta struct {
	// MediaType, e.g. "video/mp4"; the server picks a default when empty.
	MediaType string
	Tags      []string
}

// CreateValueAsset stores an AVAILABLE VALUE asset (Text, JSON or Data).
// Not retried: a repeat would create a second asset.
func (c *Client) CreateValueAsset(ctx context.Context, label string, value *assetv1.Value, meta Meta) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "CreateValueAsset", c.raw.CreateValueAsset, &assetv1.CreateValueAssetRequest{
		Label: label, MediaType: meta.MediaType, Value: value, Tags: meta.Tags,
	})
	return resp.GetAsset(), err
}

// Promise is what CreatePendingAsset promises.
type Promise struct {
	// TaskID is the producing task (letters, digits, '.', '_', '-').
	TaskID string
	Label  string
	// Type is assetv1.AssetType_ASSET_TYPE_FILE (the default) or _VALUE.
	Type assetv1.AssetType
	Meta
	// Lease, when not 0, makes the promise hold only while the task renews it
	// (RenewLease, KeepLease); it is rounded up to whole seconds.
	Lease time.Duration
}

// CreatePendingAsset records the promise that a task will produce an asset,
// and returns it PENDING. Not retried: a repeat would make a second promise.
func (c *Client) CreatePendingAsset(ctx context.Context, p Promise) (*assetv1.Asset, error) {
	lease, err := leaseSeconds(p.Lease)
	if err != nil {
		return nil, err
	}
	resp, err := unary(ctx, c, "CreatePendingAsset", c.raw.CreatePendingAsset, &assetv1.CreatePendingAssetRequest{
		TaskId: p.TaskID, Label: p.Label, MediaType: p.MediaType, Type: p.Type, Tags: p.Tags, LeaseSeconds: lease,
	})
	return resp.GetAsset(), err
}

// Keyed is GetOrCreatePendingAsset's answer: the key's asset and what it is
// to the caller (HIT: use it; JOIN: watch it, another caller produces it;
// PRODUCE: a new promise this caller alone must produce).
type Keyed struct {
	Outcome assetv1.GetOrCreateOutcome
	Asset   *assetv1.Asset
}

// MustProduce says whether the caller got the promise to produce.
func (k Keyed) MustProduce() bool {
	return k.Outcome == assetv1.GetOrCreateOutcome_GET_OR_CREATE_OUTCOME_PRODUCE
}

// GetOrCreatePendingAsset finds or makes the asset for key (e.g. a hash of the
// task's code and inputs): exactly one of any number of concurrent callers, on
// any servers sharing a store, gets PRODUCE. A FAILED asset, one whose bytes
// are gone or corrupt, or a promise whose lease ran out does not block: the
// next call produces anew. Not retried: a lost PRODUCE would come back as
// JOIN, so give the promise a Lease (it is taken over once that runs out).
func (c *Client) GetOrCreatePendingAsset(ctx context.Context, key string, p Promise) (Keyed, error) {
	lease, err := leaseSeconds(p.Lease)
	if err != nil {
		return Keyed{}, err
	}
	resp, err := unary(ctx, c, "GetOrCreatePendingAsset", c.raw.GetOrCreatePendingAsset, &assetv1.GetOrCreatePendingAssetRequest{
		Key: key,
		Promise: &assetv1.CreatePendingAssetRequest{
			TaskId: p.TaskID, Label: p.Label, MediaType: p.MediaType, Type: p.Type, Tags: p.Tags, LeaseSeconds: lease,
		},
	})
	if err != nil {
		return Keyed{}, err
	}
	return Keyed{Outcome: resp.GetOutcome(), Asset: resp.GetAsset()}, nil
}

// FulfillWithValue turns a PENDING VALUE asset AVAILABLE with value. An
// identical repeat is answered with the same asset (so it is retried).
func (c *Client) FulfillWithValue(ctx context.Context, id string, value *assetv1.Value) (*assetv1.Asset, error) {
	return c.fulfill(ctx, &assetv1.FulfillAssetRequest{AssetId: id, Content: &assetv1.FulfillAssetRequest_Value{Value: value}})
}

// FulfillWithFile turns a PENDING FILE asset AVAILABLE with a file on the
// server's machine (an absolute path under one of its --import-root folders),
// which the server moves in. With expectedSHA256 (hex) it refuses other bytes.
// A worker without the server's disk uploads instead (Upload with Pending).
func (c *Client) FulfillWithFile(ctx context.Context, id, serverPath, expectedSHA256 string) (*assetv1.Asset, error) {
	return c.fulfill(ctx, &assetv1.FulfillAssetRequest{
		AssetId: id, Content: &assetv1.FulfillAssetRequest_SourcePath{SourcePath: serverPath}, ExpectedSha256: expectedSHA256,
	})
}

func (c *Client) fulfill(ctx context.Context, req *assetv1.FulfillAssetRequest) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "FulfillAsset", c.raw.FulfillAsset, req)
	return resp.GetAsset(), err
}

// FailAsset turns a PENDING asset FAILED; every watcher sees reason. A repeat
// with the same reason is answered with the same asset (so it is retried).
func (c *Client) FailAsset(ctx context.Context, id, reason string) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "FailAsset", c.raw.FailAsset, &assetv1.FailAssetRequest{AssetId: id, Reason: reason})
	return resp.GetAsset(), err
}

// RegisterOptions describe a file RegisterFile adopts.
type RegisterOptions struct {
	// Label defaults to the file's name.
	Label string
	Meta
	// Move moves the file into the store instead of copying it.
	Move bool
}

// RegisterFile adopts a file already on the server's machine (an absolute
// path under one of its --import-root folders) as an AVAILABLE FILE asset.
func (c *Client) RegisterFile(ctx context.Context, serverPath string, opts RegisterOptions) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "RegisterFile", c.raw.RegisterFile, &assetv1.RegisterFileRequest{
		Path: serverPath, Label: opts.Label, MediaType: opts.MediaType, Tags: opts.Tags, Move: opts.Move,
	})
	return resp.GetAsset(), err
}

// GetAsset returns one asset's record.
func (c *Client) GetAsset(ctx context.Context, id string) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "GetAsset", c.raw.GetAsset, &assetv1.GetAssetRequest{AssetId: id})
	return resp.GetAsset(), err
}

// BatchGetAssets returns up to 1000 assets, in the order asked for; one
// unknown id fails the call (NotFound naming it).
func (c *Client) BatchGetAssets(ctx context.Context, ids []string) ([]*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "BatchGetAssets", c.raw.BatchGetAssets, &assetv1.BatchGetAssetsRequest{AssetIds: ids})
	return resp.GetAssets(), err
}

// Filter picks assets for ListAssets: every field set must match.
type Filter struct {
	Status        assetv1.AssetStatus
	Type          assetv1.AssetType
	Tags          []string // every one of them
	CreatedByTask string
	Label         string // exact
	Key           string // the GetOrCreatePendingAsset key
	SHA256        string // the content's, lower-case hex
}

func (f Filter) request(pageSize int32, token string) *assetv1.ListAssetsRequest {
	return &assetv1.ListAssetsRequest{
		Status: f.Status, Type: f.Type, Tags: f.Tags, CreatedByTask: f.CreatedByTask, Label: f.Label,
		Key: f.Key, Sha256: f.SHA256, PageSize: pageSize, PageToken: token,
	}
}

// ListAssets returns one page of the assets f picks, oldest first: pageSize
// 1 to 1000 (0: 100), pageToken "" for the first page, else the previous
// page's NextPageToken with the same filter. The page's Revision is where a
// watch of what was listed starts (WatchSelector's AfterRevision).
func (c *Client) ListAssets(ctx context.Context, f Filter, pageSize int32, pageToken string) (*assetv1.ListAssetsResponse, error) {
	return unary(ctx, c, "ListAssets", c.raw.ListAssets, f.request(pageSize, pageToken))
}

// ListAll yields every asset f picks, a page at a time (each page one call,
// with the default deadline); an error ends it as the last element.
func (c *Client) ListAll(ctx context.Context, f Filter) iter.Seq2[*assetv1.Asset, error] {
	return func(yield func(*assetv1.Asset, error) bool) {
		token := ""
		for {
			page, err := c.ListAssets(ctx, f, 1000, token)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, a := range page.GetAssets() {
				if !yield(a, nil) {
					return
				}
			}
			if token = page.GetNextPageToken(); token == "" {
				return
			}
		}
	}
}

// ManifestOptions shape GetManifest.
type ManifestOptions struct {
	// ConfigParams is copied into input_data.json as "config_params"
	// (values as structpb.NewStruct takes them).
	ConfigParams map[string]any
	// Wait waits until no input is PENDING instead of failing at once; it
	// waits as long as ctx allows (no default deadline).
	Wait bool
}

// GetManifest writes input_data.json for a task whose inputs are mappings
// (input key to asset id) and returns where. An input that is not AVAILABLE
// fails it with ErrFailedPrecondition whose Violations name each one.
func (c *Client) GetManifest(ctx context.Context, mappings map[string]string, opts ManifestOptions) (*assetv1.GetManifestResponse, error) {
	req := &assetv1.GetManifestRequest{AssetMappings: mappings, Wait: opts.Wait}
	if opts.ConfigParams != nil {
		params, err := structpb.NewStruct(opts.ConfigParams)
		if err != nil {
			return nil, fmt.Errorf("GetManifest: config params: %w", err)
		}
		req.ConfigParams = params
	}
	if opts.Wait {
		resp, err := c.raw.GetManifest(ctx, req)
		return resp, wrap("GetManifest", err)
	}
	return unary(ctx, c, "GetManifest", c.raw.GetManifest, req)
}

// DeleteAsset removes an asset's record and bytes, and returns its last state.
func (c *Client) DeleteAsset(ctx context.Context, id string) (*assetv1.Asset, error) {
	resp, err := unary(ctx, c, "DeleteAsset", c.raw.DeleteAsset, &assetv1.DeleteAssetRequest{AssetId: id})
	return resp.GetAsset(), err
}

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
