// Package orchestrator shows how a task orchestrator drives the Asset Service:
// it promises a task's outputs as PENDING assets, watches them until they are
// terminal, and asks for the next task's input manifest once they are AVAILABLE.
// Its functions take the generated stub; package assetclient has the typed
// client they are built on.
package orchestrator

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// Output is one asset a task promises to produce.
type Output struct {
	// Key is the name under which the next task receives the asset.
	Key       string
	Label     string
	MediaType string
	Type      assetv1.AssetType
	// Lease, when not 0, promises the asset with a lease (rounded up to whole
	// seconds): unless the producing task renews it (RenewLease, KeepLease)
	// before it runs out, the server fails the asset ("lease expired ...").
	Lease time.Duration
}

// Promise creates one PENDING asset per output of taskID (with a lease for an
// output that has one) and returns them by key.
func Promise(ctx context.Context, c assetv1.AssetServiceClient, taskID string, outputs []Output) (map[string]*assetv1.Asset, error) {
	tc := typed(c)
	assets := make(map[string]*assetv1.Asset, len(outputs))
	for _, o := range outputs {
		a, err := tc.CreatePendingAsset(ctx, assetclient.Promise{
			TaskID: taskID, Label: o.Label, Type: o.Type, Meta: assetclient.Meta{MediaType: o.MediaType}, Lease: o.Lease,
		})
		if err != nil {
			return nil, fmt.Errorf("promise %q: %w", o.Key, err)
		}
		assets[o.Key] = a
	}
	return assets, nil
}

// Watch follows WatchAsset for ids until every asset is terminal, resuming
// after the last revision when the stream breaks (assetclient.Client.Watch).
// onEvent (optional) sees every event in order; an error from it stops the
// watch. Watch returns each asset's last state.
func Watch(ctx context.Context, c assetv1.AssetServiceClient, ids []string, onEvent func(*assetv1.WatchAssetResponse) error) (map[string]*assetv1.Asset, error) {
	last := make(map[string]*assetv1.Asset, len(ids))
	for ev, err := range typed(c).Watch(ctx, ids, assetclient.WatchOptions{}) {
		if err != nil {
			return nil, err
		}
		last[ev.GetAsset().GetId()] = ev.GetAsset()
		if onEvent != nil {
			if err := onEvent(ev); err != nil {
				return nil, err
			}
		}
	}
	return last, nil
}

// Config parameterises RunExample.
type Config struct {
	// TaskID produces the outputs; NextTaskID consumes them through a manifest.
	TaskID, NextTaskID string
	// ImportRoot, when set, is a folder the server accepts FulfillAsset(source_path)
	// from (its --import-root): the example then also produces a FILE output there.
	ImportRoot string
	// Log receives a line per event (nil: discard).
	Log io.Writer
}

// Result is what RunExample observed.
type Result struct {
	// Assets holds the final state of each output, by key.
	Assets map[string]*assetv1.Asset
	// Events is every WatchAsset event, in the order received.
	Events []*assetv1.WatchAssetResponse
	// Manifest is the next task's input manifest.
	Manifest *assetv1.GetManifestResponse
}

// RunExample plays one hand-off: it promises the outputs of cfg.TaskID, watches
// them, fulfills them itself (standing in for the worker) once the watch has
// reported them PENDING, waits until they are AVAILABLE, then writes the input
// manifest of cfg.NextTaskID and returns everything it saw.
func RunExample(ctx context.Context, c assetv1.AssetServiceClient, cfg Config) (*Result, error) {
	logw := cfg.Log
	if logw == nil {
		logw = io.Discard
	}
	outputs := []Output{
		{Key: "summary", Label: "summary.txt", MediaType: "text/plain", Type: assetv1.AssetType_ASSET_TYPE_VALUE},
		{Key: "metrics", Label: "metrics.json", MediaType: "application/json", Type: assetv1.AssetType_ASSET_TYPE_VALUE},
	}
	if cfg.ImportRoot != "" {
		outputs = append(outputs, Output{Key: "report", Label: "report.txt", MediaType: "text/plain", Type: assetv1.AssetType_ASSET_TYPE_FILE})
	}
	promised, err := Promise(ctx, c, cfg.TaskID, outputs)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(outputs))
	keyOf := make(map[string]string, len(outputs))
	for _, o := range outputs {
		id := promised[o.Key].GetId()
		ids = append(ids, id)
		keyOf[id] = o.Key
		fmt.Fprintf(logw, "promised %-8s %s (%s)\n", o.Key, id, promised[o.Key].GetStatus())
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := &Result{}
	workerErr := make(chan error, 1)
	snapshots := 0
	final, err := Watch(ctx, c, ids, func(ev *assetv1.WatchAssetResponse) error {
		res.Events = append(res.Events, ev)
		a := ev.GetAsset()
		fmt.Fprintf(logw, "event %-8s %s %s -> %s (revision %d)\n", keyOf[a.GetId()], ev.GetType(), a.GetId(), a.GetStatus(), ev.GetRevision())
		if ev.GetType() == assetv1.WatchEventType_WATCH_EVENT_TYPE_SNAPSHOT {
			if snapshots++; snapshots == len(ids) {
				// Every promise is on the stream: now the "worker" may deliver.
				go func() {
					err := fulfill(ctx, c, cfg, promised)
					if err != nil {
						cancel()
					}
					workerErr <- err
				}()
			}
		}
		return nil
	})
	if snapshots == len(ids) {
		if werr := <-workerErr; werr != nil {
			return nil, fmt.Errorf("worker: %w", werr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}

	res.Assets = make(map[string]*assetv1.Asset, len(ids))
	var blocked []string
	for _, id := range ids {
		a := final[id]
		res.Assets[keyOf[id]] = a
		if a.GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
			blocked = append(blocked, fmt.Sprintf("%s is %s %s", keyOf[id], a.GetStatus(), a.GetFailureReason()))
		}
	}
	if len(blocked) > 0 {
		sort.Strings(blocked)
		return res, fmt.Errorf("outputs not available: %s", strings.Join(blocked, "; "))
	}

	mappings := make(map[string]string, len(ids))
	for key, a := range res.Assets {
		mappings[key] = a.GetId()
	}
	params, err := structpb.NewStruct(map[string]any{"task_id": cfg.NextTaskID, "threshold": 0.5})
	if err != nil {
		return nil, err
	}
	res.Manifest, err = c.GetManifest(ctx, &assetv1.GetManifestRequest{AssetMappings: mappings, ConfigParams: params})
	if err != nil {
		return nil, fmt.Errorf("manifest for %s: %w", cfg.NextTaskID, err)
	}
	fmt.Fprintf(logw, "manifest for %s: %s\n", cfg.NextTaskID, res.Manifest.GetManifestPath())
	return res, nil
}

// fulfill delivers every promised output, as the producing task's worker would.
func fulfill(ctx context.Context, c assetv1.AssetServiceClient, cfg Config, promised map[string]*assetv1.Asset) error {
	for key, a := range promised {
		req := &assetv1.FulfillAssetRequest{AssetId: a.GetId()}
		switch key {
		case "summary":
			req.Content = &assetv1.FulfillAssetRequest_Value{Value: &assetv1.Value{Kind: &assetv1.Value_Text{Text: "3 scenes, 2 speakers"}}}
		case "metrics":
			req.Content = &assetv1.FulfillAssetRequest_Value{Value: &assetv1.Value{Kind: &assetv1.Value_Json{Json: `{"scenes": 3, "speakers": 2}`}}}
		default: // a FILE output: write it under the import root, the server moves it in.
			path := filepath.Join(cfg.ImportRoot, fmt.Sprintf("%s-%s.txt", cfg.TaskID, a.GetId()))
			if err := os.WriteFile(path, []byte("report of "+cfg.TaskID+"\n"), 0o644); err != nil {
				return err
			}
			req.Content = &assetv1.FulfillAssetRequest_SourcePath{SourcePath: path}
		}
		if _, err := c.FulfillAsset(ctx, req); err != nil {
			return fmt.Errorf("fulfill %q: %w", key, err)
		}
	}
	return nil
}
