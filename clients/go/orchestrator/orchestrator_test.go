package orchestrator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	"github.com/asset-service/asset-service/clients/go/orchestrator"
)

// The server under test: ASSET_SERVICE_ADDR (with ASSET_SERVICE_IMPORT_ROOT, if the
// server has one), or else one that TestMain starts on port 0.
var (
	serverAddr string
	importRoot string
)

func TestMain(m *testing.M) {
	serverAddr = os.Getenv("ASSET_SERVICE_ADDR")
	importRoot = os.Getenv("ASSET_SERVICE_IMPORT_ROOT")
	stop := func() {}
	if serverAddr == "" {
		var err error
		serverAddr, importRoot, stop, err = startServer()
		if err != nil {
			fmt.Fprintln(os.Stderr, "cannot start asset-service:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

var listening = regexp.MustCompile(`asset-service listening on (\S+:\d+)`)

// startServer runs `python -m asset_service` on port 0 in a temporary folder
// (python: $ASSET_SERVICE_PYTHON, else the repository's .venv) and waits for
// the line that names its port.
func startServer() (addr, importRoot string, stop func(), err error) {
	goMod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", nil, err
	}
	repo := filepath.Join(filepath.Dir(strings.TrimSpace(string(goMod))), "..", "..")
	python := os.Getenv("ASSET_SERVICE_PYTHON")
	if python == "" {
		python = filepath.Join(repo, ".venv", "bin", "python")
	}
	dir, err := os.MkdirTemp("", "asset-service-go-test-")
	if err != nil {
		return "", "", nil, err
	}
	importRoot = filepath.Join(dir, "worker")
	if err := os.Mkdir(importRoot, 0o755); err != nil {
		return "", "", nil, err
	}
	data := filepath.Join(dir, "data")
	cmd := exec.Command(python, "-m", "asset_service",
		"--listen", "127.0.0.1:0",
		"--storage-root", data,
		"--database-url", "sqlite:///"+filepath.Join(dir, "assets.db"),
		"--import-root", importRoot,
		"--shutdown-grace", "2")
	cmd.Dir = repo
	for _, kv := range os.Environ() { // the server reads ASSET_SERVICE_* as settings
		if !strings.HasPrefix(kv, "ASSET_SERVICE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", "", nil, err
	}
	found := make(chan string, 1)
	var log strings.Builder
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
		close(found)
	}()
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = os.RemoveAll(dir)
	}
	select {
	case a, ok := <-found:
		if ok {
			go func() { // keep draining so the server never blocks on a full pipe
				for range found {
				}
			}()
			return a, importRoot, stop, nil
		}
		stop()
		<-logDone
		return "", "", nil, fmt.Errorf("server exited:\n%s", log.String())
	case <-time.After(30 * time.Second):
		stop()
		return "", "", nil, fmt.Errorf("no %q line within 30s", listening)
	}
}

func client(t *testing.T) assetv1.AssetServiceClient {
	t.Helper()
	conn, err := orchestrator.Dial(serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return assetv1.NewAssetServiceClient(conn)
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
	_, err = c.GetAsset(ctx, &assetv1.GetAssetRequest{AssetId: "00000000-0000-4000-8000-000000000000"})
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
