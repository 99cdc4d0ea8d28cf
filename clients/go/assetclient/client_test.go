package assetclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// recorder notes every method a connection calls.
type recorder struct {
	mu     sync.Mutex
	called map[string]bool
}

func (r *recorder) note(method string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.called[filepath.Base(method)] = true
}

func (r *recorder) options() assetclient.Option {
	return assetclient.WithDialOptions(
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			r.note(method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			r.note(method)
			return streamer(ctx, desc, cc, method, opts...)
		}),
	)
}

// serviceMethods is every RPC of the contract, from the generated descriptor.
func serviceMethods() []string {
	var all []string
	for _, m := range assetv1.AssetService_ServiceDesc.Methods {
		all = append(all, m.MethodName)
	}
	for _, s := range assetv1.AssetService_ServiceDesc.Streams {
		all = append(all, s.StreamName)
	}
	sort.Strings(all)
	return all
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestEveryRPCThroughTheClient calls each RPC of the contract through a typed
// method, and checks that none is left without one.
func TestEveryRPCThroughTheClient(t *testing.T) {
	ctx := testContext(t)
	rec := &recorder{called: map[string]bool{}}
	c := client(t, rec.options())
	task := taskID(t)

	note, err := c.CreateValueAsset(ctx, "note.txt", assetclient.Text("hello"), assetclient.Meta{Tags: []string{task}})
	if err != nil {
		t.Fatal(err)
	}
	if note.GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE || note.GetValue().GetText() != "hello" {
		t.Fatalf("CreateValueAsset: %v", note)
	}

	promise := func(label string, typ assetv1.AssetType, lease time.Duration) *assetv1.Asset {
		a, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: label, Type: typ, Lease: lease})
		if err != nil {
			t.Fatalf("CreatePendingAsset(%s): %v", label, err)
		}
		if a.GetStatus() != assetv1.AssetStatus_ASSET_STATUS_PENDING || a.GetCreatedByTask() != task {
			t.Fatalf("CreatePendingAsset(%s): %v", label, a)
		}
		return a
	}
	value := promise("summary.json", assetv1.AssetType_ASSET_TYPE_VALUE, time.Minute)
	file := promise("video.bin", assetv1.AssetType_ASSET_TYPE_FILE, 0)
	doomed := promise("doomed.txt", assetv1.AssetType_ASSET_TYPE_VALUE, 0)

	key := "go-client:" + task
	keyedTask := task + "-keyed" // not in the listing of `task` below
	produced, err := c.GetOrCreatePendingAsset(ctx, key, assetclient.Promise{TaskID: keyedTask, Label: "keyed.bin"})
	if err != nil || !produced.MustProduce() || produced.Asset.GetKey() != key {
		t.Fatalf("GetOrCreatePendingAsset: %v %v", produced, err)
	}
	joined, err := c.GetOrCreatePendingAsset(ctx, key, assetclient.Promise{TaskID: keyedTask, Label: "keyed.bin"})
	if err != nil || joined.Outcome != assetv1.GetOrCreateOutcome_GET_OR_CREATE_OUTCOME_JOIN || joined.Asset.GetId() != produced.Asset.GetId() {
		t.Fatalf("GetOrCreatePendingAsset again: %v %v, want JOIN of %s", joined, err, produced.Asset.GetId())
	}
	byKey, err := c.ListAssets(ctx, assetclient.Filter{Key: key}, 0, "")
	if err != nil || len(byKey.GetAssets()) != 1 || byKey.GetAssets()[0].GetId() != produced.Asset.GetId() {
		t.Fatalf("ListAssets(Key: %s): %v %v", key, byKey, err)
	}

	renewed, err := c.RenewLease(ctx, value.GetId(), 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(renewed.GetLeaseExpireTime().AsTime()); left < 90*time.Second {
		t.Errorf("RenewLease(2m): runs out in %v", left)
	}
	fulfilled, err := c.FulfillWithValue(ctx, value.GetId(), assetclient.JSON(`{"scenes": 3}`))
	if err != nil {
		t.Fatal(err)
	}
	// An identical repeat (what a retry sends) is answered with the same asset.
	if again, err := c.FulfillWithValue(ctx, value.GetId(), assetclient.JSON(`{"scenes": 3}`)); err != nil || again.GetRevision() != fulfilled.GetRevision() {
		t.Errorf("FulfillAsset repeated: %v %v, want the same asset", again, err)
	}
	content := randomBytes(t, 2*assetclient.ChunkSize+12345)
	uploaded, err := c.Upload(ctx, bytes.NewReader(content), assetclient.UploadOptions{Pending: file.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if uploaded.GetId() != file.GetId() || uploaded.GetSha256() != sha(content) || uploaded.GetSizeBytes() != int64(len(content)) {
		t.Fatalf("Upload into the promise: %v", uploaded)
	}
	if _, err := c.QueryUpload(ctx, assetclient.NewUploadID()); !errors.Is(err, assetclient.ErrNotFound) {
		t.Errorf("QueryUpload(unknown upload): %v, want ErrNotFound", err)
	}
	failed, err := c.FailAsset(ctx, doomed.GetId(), "the model ran out of memory")
	if err != nil || failed.GetFailureReason() != "the model ran out of memory" {
		t.Fatalf("FailAsset: %v %v", failed, err)
	}
	if again, err := c.FailAsset(ctx, doomed.GetId(), "the model ran out of memory"); err != nil || again.GetRevision() != failed.GetRevision() {
		t.Errorf("FailAsset repeated: %v %v, want the same asset", again, err)
	}

	got, err := c.GetAsset(ctx, file.GetId())
	if err != nil || got.GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
		t.Fatalf("GetAsset: %v %v", got, err)
	}
	batch, err := c.BatchGetAssets(ctx, []string{doomed.GetId(), value.GetId()})
	if err != nil || len(batch) != 2 || batch[0].GetId() != doomed.GetId() || batch[1].GetValue().GetJson() == "" {
		t.Fatalf("BatchGetAssets: %v %v", batch, err)
	}
	var listed []string
	for a, err := range c.ListAll(ctx, assetclient.Filter{CreatedByTask: task}) {
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, a.GetId())
	}
	if want := []string{value.GetId(), file.GetId(), doomed.GetId()}; !slices.Equal(listed, want) {
		t.Errorf("ListAll(task): %v, want %v (oldest first)", listed, want)
	}
	page, err := c.ListAssets(ctx, assetclient.Filter{Tags: []string{task}}, 10, "")
	if err != nil || len(page.GetAssets()) != 1 || page.GetAssets()[0].GetId() != note.GetId() || page.GetRevision() < note.GetRevision() {
		t.Fatalf("ListAssets(tag): %v %v", page, err)
	}

	final, err := c.WaitTerminal(ctx, []string{value.GetId(), file.GetId(), doomed.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if final[doomed.GetId()].GetStatus() != assetv1.AssetStatus_ASSET_STATUS_FAILED || final[file.GetId()].GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
		t.Errorf("WaitTerminal: %v", final)
	}

	var downloaded bytes.Buffer
	if _, err := c.Download(ctx, file.GetId(), &downloaded); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(downloaded.Bytes(), content) {
		t.Fatalf("Download: %d bytes back of %d, not the same", downloaded.Len(), len(content))
	}

	m, err := c.GetManifest(ctx, map[string]string{"video": file.GetId(), "summary": value.GetId()}, assetclient.ManifestOptions{
		ConfigParams: map[string]any{"threshold": 0.5},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.GetManifestPath() == "" || len(m.GetEntries()) != 2 {
		t.Errorf("GetManifest: %v", m)
	}

	if shared.importRoot != "" { // the server's import root is on this machine
		path := filepath.Join(shared.importRoot, task+"-registered.txt")
		if err := os.WriteFile(path, []byte("registered\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		reg, err := c.RegisterFile(ctx, path, assetclient.RegisterOptions{Move: true})
		if err != nil {
			t.Fatal(err)
		}
		if reg.GetLabel() != filepath.Base(path) || reg.GetSha256() != sha([]byte("registered\n")) {
			t.Errorf("RegisterFile: %v", reg)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("RegisterFile(move) left the file: %v", err)
		}
	} else {
		_, err := c.RegisterFile(ctx, "/nonexistent/import/root/file", assetclient.RegisterOptions{})
		if !errors.Is(err, assetclient.ErrPermissionDenied) && !errors.Is(err, assetclient.ErrNotFound) {
			t.Errorf("RegisterFile outside every import root: %v", err)
		}
	}

	tok, err := c.MintTaskToken(ctx, task, []string{note.GetId()}, time.Minute)
	switch {
	case shared.token != "" && err != nil:
		t.Errorf("MintTaskToken: %v", err)
	case shared.token != "" && time.Until(tok.ExpiresAt) <= 0:
		t.Errorf("MintTaskToken: expires at %v", tok.ExpiresAt)
	case shared.token == "" && !errors.Is(err, assetclient.ErrFailedPrecondition):
		t.Errorf("MintTaskToken on a server without a task-token secret: %v, want ErrFailedPrecondition", err)
	}

	// ScrubAssets and DeleteAsset need the admin role, which the suites' token does not have.
	admin := shared.token == "" && shared.clientCert == ""
	var scrubbed []*assetv1.ScrubAssetsResponse
	var scrubErr error
	for r, err := range c.ScrubAssets(ctx, []string{file.GetId()}, 0) {
		if err != nil {
			scrubErr = err
			break
		}
		scrubbed = append(scrubbed, r)
	}
	switch {
	case admin:
		if scrubErr != nil || len(scrubbed) != 1 || scrubbed[0].GetOutcome() != assetv1.ScrubOutcome_SCRUB_OUTCOME_OK || scrubbed[0].GetSizeBytes() != int64(len(content)) {
			t.Errorf("ScrubAssets: %v %v", scrubbed, scrubErr)
		}
	case !errors.Is(scrubErr, assetclient.ErrPermissionDenied):
		t.Errorf("ScrubAssets without the admin role: %v, want ErrPermissionDenied", scrubErr)
	}

	// Retention: an expiry, a hold placed and released, the usage by tag.
	if exp, err := c.SetExpiry(ctx, note.GetId(), time.Hour); err != nil || exp.GetExpiryRule() != "ttl" {
		t.Errorf("SetExpiry: %v %v", exp, err)
	}
	if held, err := c.PlaceHold(ctx, note.GetId(), "go-test", "checking"); err != nil || len(held.GetHolds()) != 1 || held.GetHolds()[0].GetReason() != "checking" {
		t.Errorf("PlaceHold: %v %v", held, err)
	}
	if released, err := c.ReleaseHold(ctx, note.GetId(), "go-test"); err != nil || len(released.GetHolds()) != 0 {
		t.Errorf("ReleaseHold: %v %v", released, err)
	}
	if usage, err := c.GetUsage(ctx, "tag", []string{task}, 0); err != nil || len(usage.GetRows()) != 1 || usage.GetRows()[0].GetCount() < 1 {
		t.Errorf("GetUsage: %v %v", usage, err)
	}

	deleted, err := c.DeleteAsset(ctx, note.GetId())
	switch {
	case admin:
		if err != nil || deleted.GetId() != note.GetId() {
			t.Errorf("DeleteAsset: %v %v", deleted, err)
		}
		if _, err := c.GetAsset(ctx, note.GetId()); !errors.Is(err, assetclient.ErrNotFound) {
			t.Errorf("GetAsset after DeleteAsset: %v, want ErrNotFound", err)
		}
	case !errors.Is(err, assetclient.ErrPermissionDenied):
		t.Errorf("DeleteAsset without the admin role: %v, want ErrPermissionDenied", err)
	}

	var missing []string
	for _, m := range serviceMethods() {
		if !rec.called[m] {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		t.Errorf("RPCs no typed method called: %v", missing)
	}
}
