package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	"github.com/asset-service/asset-service/clients/go/internal/testserver"
	"github.com/asset-service/asset-service/clients/go/orchestrator"
)

// The server under test: ASSET_SERVICE_ADDR (with ASSET_SERVICE_IMPORT_ROOT, if the
// server has one), or else one that TestMain starts on port 0 (plaintext on
// loopback, with a tokens file and a task-token secret).
//
// How to reach ASSET_SERVICE_ADDR: ASSET_SERVICE_CA_FILE (PEM root CA: TLS),
// ASSET_SERVICE_CLIENT_CERT and ASSET_SERVICE_CLIENT_KEY (mTLS; the server must map
// the certificate to the reader role), ASSET_SERVICE_TOKEN (a bearer token with
// the orchestrator role; the server must also have --token-secret-file).
var (
	serverAddr string
	importRoot string
	token      string
	caFile     string
	clientCert string
	clientKey  string
)

func TestMain(m *testing.M) {
	serverAddr = os.Getenv("ASSET_SERVICE_ADDR")
	importRoot = os.Getenv("ASSET_SERVICE_IMPORT_ROOT")
	token = os.Getenv("ASSET_SERVICE_TOKEN")
	caFile = os.Getenv("ASSET_SERVICE_CA_FILE")
	clientCert = os.Getenv("ASSET_SERVICE_CLIENT_CERT")
	clientKey = os.Getenv("ASSET_SERVICE_CLIENT_KEY")
	stop := func() {}
	if serverAddr == "" {
		srv, err := testserver.Start(testserver.Options{Tokens: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, "cannot start asset-service:", err)
			os.Exit(1)
		}
		serverAddr, importRoot, token, stop = srv.Addr, srv.ImportRoot, srv.Token, srv.Close
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// transport is how the environment says to reach the server: TLS, and a client
// certificate, when given.
func transport() []orchestrator.Option {
	var opts []orchestrator.Option
	if caFile != "" {
		opts = append(opts, orchestrator.WithRootCAFile(caFile))
	}
	if clientCert != "" {
		opts = append(opts, orchestrator.WithClientCertificate(clientCert, clientKey))
	}
	return opts
}

// dial connects with the environment's transport plus extra options.
func dial(t *testing.T, extra ...orchestrator.Option) assetv1.AssetServiceClient {
	t.Helper()
	conn, err := orchestrator.Dial(serverAddr, append(transport(), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return assetv1.NewAssetServiceClient(conn)
}

// client is a connection with the orchestrator token, when there is one.
func client(t *testing.T) assetv1.AssetServiceClient {
	t.Helper()
	if token == "" {
		return dial(t)
	}
	return dial(t, orchestrator.WithToken(token))
}

func needToken(t *testing.T) {
	t.Helper()
	if token == "" {
		t.Skip("the server takes no bearer tokens: set ASSET_SERVICE_TOKEN (and give the server a tokens file)")
	}
}

const unknownID = "00000000-0000-4000-8000-000000000000"

func textValue(text string) *assetv1.FulfillAssetRequest_Value {
	return &assetv1.FulfillAssetRequest_Value{Value: &assetv1.Value{Kind: &assetv1.Value_Text{Text: text}}}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func taskID(t *testing.T) string {
	return fmt.Sprintf("go-%s-%d", strings.ToLower(t.Name()), time.Now().UnixNano())
}

func TestExampleFlow(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	var log strings.Builder
	res, err := orchestrator.RunExample(ctx, c, orchestrator.Config{
		TaskID: taskID(t), NextTaskID: "consume", ImportRoot: importRoot, Log: &log,
	})
	t.Log("\n" + log.String())
	if err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"metrics", "summary"}
	if importRoot != "" {
		wantKeys = append(wantKeys, "report")
	}
	if len(res.Assets) != len(wantKeys) {
		t.Fatalf("got %d outputs, want %v", len(res.Assets), wantKeys)
	}

	// Every asset is seen PENDING (the snapshot), then AVAILABLE, and nothing else;
	// revisions grow along the stream.
	seen := map[string][]assetv1.AssetStatus{}
	var lastRev int64
	for _, ev := range res.Events {
		seen[ev.GetAsset().GetId()] = append(seen[ev.GetAsset().GetId()], ev.GetAsset().GetStatus())
		if ev.GetType() == assetv1.WatchEventType_WATCH_EVENT_TYPE_CHANGED && ev.GetRevision() <= lastRev {
			t.Errorf("revision %d after %d", ev.GetRevision(), lastRev)
		}
		lastRev = max(lastRev, ev.GetRevision())
	}
	want := []assetv1.AssetStatus{assetv1.AssetStatus_ASSET_STATUS_PENDING, assetv1.AssetStatus_ASSET_STATUS_AVAILABLE}
	for _, key := range wantKeys {
		a := res.Assets[key]
		if a == nil {
			t.Fatalf("no output %q", key)
		}
		if got := seen[a.GetId()]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: statuses %v, want %v", key, got, want)
		}
	}

	// The manifest is a JSON file on the (same-host) server, mapping each key to an
	// existing absolute path with the produced content.
	path := res.Manifest.GetManifestPath()
	if !filepath.IsAbs(path) {
		t.Fatalf("manifest path %q is not absolute", path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var manifest struct {
		Inputs       map[string]string `json:"inputs"`
		ConfigParams map[string]any    `json:"config_params"`
	}
	if err := json.Unmarshal(raw, &manifest); err != nil {
		t.Fatalf("manifest is not JSON: %v\n%s", err, raw)
	}
	if len(manifest.Inputs) != len(wantKeys) {
		t.Errorf("manifest inputs %v, want keys %v", manifest.Inputs, wantKeys)
	}
	for _, key := range wantKeys {
		p := manifest.Inputs[key]
		if !filepath.IsAbs(p) {
			t.Errorf("input %q: %q is not an absolute path", key, p)
			continue
		}
		if p != res.Manifest.GetEntries()[key] {
			t.Errorf("input %q: file says %q, response says %q", key, p, res.Manifest.GetEntries()[key])
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("input %q: %v", key, err)
		}
	}
	if got, _ := os.ReadFile(manifest.Inputs["summary"]); string(got) != "3 scenes, 2 speakers" {
		t.Errorf("summary content %q", got)
	}
	var metrics map[string]int
	if got, _ := os.ReadFile(manifest.Inputs["metrics"]); json.Unmarshal(got, &metrics) != nil || metrics["scenes"] != 3 {
		t.Errorf("metrics content %q", got)
	}
	if manifest.ConfigParams["task_id"] != "consume" {
		t.Errorf("config_params %v", manifest.ConfigParams)
	}
}

func TestFailedOutputEndsWatchAndBlocksManifest(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	promised, err := orchestrator.Promise(ctx, c, taskID(t), []orchestrator.Output{
		{Key: "out", Label: "out.txt", MediaType: "text/plain", Type: assetv1.AssetType_ASSET_TYPE_VALUE},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := promised["out"].GetId()

	// While PENDING, the manifest names the blocking asset.
	_, err = c.GetManifest(ctx, &assetv1.GetManifestRequest{AssetMappings: map[string]string{"in": id}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), id) {
		t.Errorf("manifest over a PENDING asset: %v, want FailedPrecondition naming %s", err, id)
	}

	var statuses []assetv1.AssetStatus
	final, err := orchestrator.Watch(ctx, c, []string{id}, func(ev *assetv1.WatchAssetResponse) error {
		statuses = append(statuses, ev.GetAsset().GetStatus())
		if len(statuses) == 1 {
			_, err := c.FailAsset(ctx, &assetv1.FailAssetRequest{AssetId: id, Reason: "worker crashed"})
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []assetv1.AssetStatus{assetv1.AssetStatus_ASSET_STATUS_PENDING, assetv1.AssetStatus_ASSET_STATUS_FAILED}
	if fmt.Sprint(statuses) != fmt.Sprint(want) {
		t.Errorf("statuses %v, want %v", statuses, want)
	}
	if r := final[id].GetFailureReason(); r != "worker crashed" {
		t.Errorf("failure reason %q", r)
	}

	// A terminal asset cannot be fulfilled any more.
	_, err = c.FulfillAsset(ctx, &assetv1.FulfillAssetRequest{
		AssetId: id,
		Content: &assetv1.FulfillAssetRequest_Value{Value: &assetv1.Value{Kind: &assetv1.Value_Text{Text: "late"}}},
	})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("fulfill after FAILED: %v, want FailedPrecondition", err)
	}
}

func TestErrorCodes(t *testing.T) {
	ctx := testContext(t)
	c := client(t)
	_, err := c.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: "not-a-uuid"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetAsset(malformed id): %v, want InvalidArgument", err)
	}
	_, err = c.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: unknownID})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetAsset(unknown id): %v, want NotFound", err)
	}
	_, err = c.CreatePendingAsset(ctx, &assetv1.CreatePendingAssetRequest{TaskId: "../escape", Label: "x"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("CreatePendingAsset(bad task id): %v, want InvalidArgument", err)
	}
	// A watch on an unknown id fails rather than hanging.
	_, err = orchestrator.Watch(ctx, c, []string{"00000000-0000-4000-8000-000000000000"}, nil)
	if status.Code(err) != codes.NotFound {
		t.Errorf("WatchAsset(unknown id): %v, want NotFound", err)
	}
}

func TestBearerTokenIsChecked(t *testing.T) {
	needToken(t)
	ctx := testContext(t)

	// The token source is asked before every call.
	var asked atomic.Int32
	counted := dial(t, orchestrator.WithTokenSource(func(context.Context) (string, error) {
		asked.Add(1)
		return token, nil
	}))
	for range 3 {
		if _, err := counted.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: unknownID}); status.Code(err) != codes.NotFound {
			t.Fatalf("GetAsset(unknown id) with the token: %v, want NotFound", err)
		}
	}
	if n := asked.Load(); n != 3 {
		t.Errorf("token source asked %d times for 3 calls", n)
	}

	wrong := dial(t, orchestrator.WithToken("not-a-token-the-server-knows-0123456789abc"))
	if _, err := wrong.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: unknownID}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("GetAsset with a wrong token: %v, want Unauthenticated", err)
	}
	if _, err := wrong.CreatePendingAsset(ctx, &assetv1.CreatePendingAssetRequest{TaskId: taskID(t), Label: "x"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("CreatePendingAsset with a wrong token: %v, want Unauthenticated", err)
	}

	// A failing token source fails the call without sending it.
	broken := dial(t, orchestrator.WithTokenSource(func(context.Context) (string, error) { return "", errors.New("vault sealed") }))
	if _, err := broken.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: unknownID}); err == nil || !strings.Contains(err.Error(), "vault sealed") {
		t.Errorf("GetAsset with a failing token source: %v", err)
	}

	anonymous := dial(t)
	_, getErr := anonymous.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: unknownID})
	_, createErr := anonymous.CreatePendingAsset(ctx, &assetv1.CreatePendingAssetRequest{TaskId: taskID(t), Label: "x"})
	if clientCert == "" {
		if status.Code(getErr) != codes.Unauthenticated || status.Code(createErr) != codes.Unauthenticated {
			t.Errorf("without a token: %v / %v, want Unauthenticated", getErr, createErr)
		}
		return
	}
	// mTLS: the certificate alone authenticates, as a reader.
	if status.Code(getErr) != codes.NotFound {
		t.Errorf("GetAsset with the client certificate only: %v, want NotFound (reader role)", getErr)
	}
	if status.Code(createErr) != codes.PermissionDenied {
		t.Errorf("CreatePendingAsset with the client certificate only: %v, want PermissionDenied", createErr)
	}
	// Without the certificate, the handshake fails (UNAVAILABLE, which GetAsset would
	// retry for some 12 s before answering it).
	conn, err := orchestrator.Dial(serverAddr, orchestrator.WithRootCAFile(caFile), orchestrator.WithToken(token),
		orchestrator.WithDialOptions(grpc.WithDisableRetry()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = assetv1.NewAssetServiceClient(conn).GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: unknownID})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("GetAsset without the client certificate: %v, want Unavailable", err)
	}
}

// countingMinter counts MintTaskToken calls.
type countingMinter struct {
	assetv1.AssetServiceClient
	mints atomic.Int32
}

func (m *countingMinter) MintTaskToken(ctx context.Context, in *assetv1.MintTaskTokenRequest, opts ...grpc.CallOption) (*assetv1.MintTaskTokenResponse, error) {
	m.mints.Add(1)
	return m.AssetServiceClient.MintTaskToken(ctx, in, opts...)
}

func TestTaskTokenRoundTrip(t *testing.T) {
	needToken(t)
	ctx := testContext(t)
	c := client(t)
	task, other := taskID(t), taskID(t)+"-other"
	promised, err := orchestrator.Promise(ctx, c, task, []orchestrator.Output{
		{Key: "out", Label: "out.txt", MediaType: "text/plain", Type: assetv1.AssetType_ASSET_TYPE_VALUE},
	})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := orchestrator.Promise(ctx, c, other, []orchestrator.Output{
		{Key: "out", Label: "out.txt", Type: assetv1.AssetType_ASSET_TYPE_VALUE},
	})
	if err != nil {
		t.Fatal(err)
	}
	id, foreignID := promised["out"].GetId(), foreign["out"].GetId()

	minted, err := orchestrator.MintTaskToken(ctx, c, task, nil, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(minted.Token, ".") != 2 {
		t.Errorf("task token %q is not a JWT", minted.Token)
	}
	if left := time.Until(minted.ExpiresAt); left <= time.Minute || left > 2*time.Minute+5*time.Second {
		t.Errorf("task token expires in %v, want about 2m", left)
	}

	// The worker's connection mints its own token once and reuses it.
	minter := &countingMinter{AssetServiceClient: c}
	worker := dial(t, orchestrator.WithTokenSource(orchestrator.TaskTokenSource(minter, task, nil, 2*time.Minute)))
	if _, err := worker.FulfillAsset(ctx, &assetv1.FulfillAssetRequest{AssetId: id, Content: textValue("done by the worker")}); err != nil {
		t.Fatalf("FulfillAsset with the task token: %v", err)
	}
	got, err := worker.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: id})
	if err != nil {
		t.Fatalf("GetAsset with the task token: %v", err)
	}
	if got.GetAsset().GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
		t.Errorf("status %v, want AVAILABLE", got.GetAsset().GetStatus())
	}
	stream, err := worker.ReadAsset(ctx, &assetv1.ReadAssetRequest{AssetId: id})
	if err != nil {
		t.Fatal(err)
	}
	var content []byte
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("ReadAsset with the task token: %v", err)
		}
		content = append(content, chunk.GetChunk()...)
	}
	if string(content) != "done by the worker" {
		t.Errorf("content %q", content)
	}

	// Outside its task the token may do nothing.
	_, err = worker.FulfillAsset(ctx, &assetv1.FulfillAssetRequest{AssetId: foreignID, Content: textValue("not mine")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("FulfillAsset of another task's output: %v, want PermissionDenied", err)
	}
	_, err = worker.CreatePendingAsset(ctx, &assetv1.CreatePendingAssetRequest{TaskId: task, Label: "more"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("CreatePendingAsset with a task token: %v, want PermissionDenied", err)
	}
	// It renews the leases of its own task's promises, and only those.
	leased, err := orchestrator.Promise(ctx, c, task, []orchestrator.Output{
		{Key: "leased", Label: "leased.txt", Type: assetv1.AssetType_ASSET_TYPE_VALUE, Lease: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	foreignLeased, err := orchestrator.Promise(ctx, c, other, []orchestrator.Output{
		{Key: "leased", Label: "leased.txt", Type: assetv1.AssetType_ASSET_TYPE_VALUE, Lease: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := orchestrator.RenewLease(ctx, worker, leased["leased"].GetId(), 2*time.Minute)
	if err != nil {
		t.Fatalf("RenewLease with the task token: %v", err)
	}
	if left := time.Until(renewed.GetLeaseExpireTime().AsTime()); left <= time.Minute || left > 2*time.Minute+5*time.Second {
		t.Errorf("renewed lease runs out in %v, want about 2m", left)
	}
	_, err = orchestrator.RenewLease(ctx, worker, foreignLeased["leased"].GetId(), 0)
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("RenewLease of another task's promise: %v, want PermissionDenied", err)
	}
	if n := minter.mints.Load(); n != 1 {
		t.Errorf("TaskTokenSource minted %d times for 7 calls, want 1", n)
	}
}

func TestPlaintextTokenOnlyToLoopback(t *testing.T) {
	// 192.0.2.0/24 is reserved for documentation; grpc.NewClient connects lazily, so
	// nothing is sent anywhere.
	if _, err := orchestrator.Dial("192.0.2.7:50051", orchestrator.WithToken("t")); err == nil || !strings.Contains(err.Error(), "plaintext") {
		t.Errorf("token over plaintext to a remote address: %v, want a refusal", err)
	}
	for _, addr := range []string{"127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:50051", "unix:/tmp/asset.sock"} {
		conn, err := orchestrator.Dial(addr, orchestrator.WithToken("t"))
		if err != nil {
			t.Errorf("token over plaintext to %s: %v", addr, err)
			continue
		}
		conn.Close()
	}
	conn, err := orchestrator.Dial("192.0.2.7:50051", orchestrator.WithTLS(), orchestrator.WithToken("t"))
	if err != nil {
		t.Errorf("token over TLS to a remote address: %v", err)
	} else {
		conn.Close()
	}
	if _, err := orchestrator.Dial("127.0.0.1:1", orchestrator.WithRootCAFile(filepath.Join(t.TempDir(), "missing.pem"))); err == nil {
		t.Error("a missing root CA file was accepted")
	}
}
