package assetclient_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

func TestTypedErrors(t *testing.T) {
	ctx := testContext(t)
	c := client(t)

	_, err := c.GetAsset(ctx, unknownID)
	var e *assetclient.Error
	if !errors.As(err, &e) {
		t.Fatalf("GetAsset(unknown id): %T %v, want an *assetclient.Error", err, err)
	}
	if e.Code != codes.NotFound || e.Method != "GetAsset" || !strings.Contains(e.Message, unknownID) {
		t.Errorf("GetAsset(unknown id): code %v, method %q, message %q", e.Code, e.Method, e.Message)
	}
	if !errors.Is(err, assetclient.ErrNotFound) || errors.Is(err, assetclient.ErrInvalidArgument) {
		t.Errorf("errors.Is(%v): ErrNotFound %v, ErrInvalidArgument %v", err, errors.Is(err, assetclient.ErrNotFound), errors.Is(err, assetclient.ErrInvalidArgument))
	}
	if status.Code(err) != codes.NotFound || assetclient.Code(err) != codes.NotFound {
		t.Errorf("status.Code %v, assetclient.Code %v", status.Code(err), assetclient.Code(err))
	}
	if e.Temporary() {
		t.Error("NotFound is not temporary")
	}

	if _, err := c.GetAsset(ctx, "not-a-uuid"); !errors.Is(err, assetclient.ErrInvalidArgument) {
		t.Errorf("GetAsset(malformed id): %v, want ErrInvalidArgument", err)
	}
	if _, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: "../escape", Label: "x"}); !errors.Is(err, assetclient.ErrInvalidArgument) {
		t.Errorf("CreatePendingAsset(bad task id): %v, want ErrInvalidArgument", err)
	}
	if _, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: "t", Label: "x", Lease: -time.Second}); err == nil {
		t.Error("a negative lease was sent")
	}

	// A manifest over a PENDING and a FAILED input: FailedPrecondition, one
	// violation per input, each naming its asset and state.
	task := taskID(t)
	pending, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: "a", Type: assetv1.AssetType_ASSET_TYPE_VALUE})
	if err != nil {
		t.Fatal(err)
	}
	failed, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: "b", Type: assetv1.AssetType_ASSET_TYPE_VALUE})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FailAsset(ctx, failed.GetId(), "crashed"); err != nil {
		t.Fatal(err)
	}
	_, err = c.GetManifest(ctx, map[string]string{"a": pending.GetId(), "b": failed.GetId()}, assetclient.ManifestOptions{})
	if !errors.Is(err, assetclient.ErrFailedPrecondition) || !errors.As(err, &e) {
		t.Fatalf("GetManifest over PENDING and FAILED inputs: %v, want ErrFailedPrecondition", err)
	}
	states := map[string]string{}
	for _, v := range e.Violations {
		states[v.Subject] = v.Type
		if !strings.Contains(v.Description, "input ") {
			t.Errorf("violation %+v: description names no input", v)
		}
	}
	if states["assets/"+pending.GetId()] != "PENDING" || states["assets/"+failed.GetId()] != "FAILED" || len(states) != 2 {
		t.Errorf("violations %+v, want one PENDING and one FAILED", e.Violations)
	}

	// A wait that runs out: DeadlineExceeded, which is also context.DeadlineExceeded.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err = c.GetManifest(short, map[string]string{"a": pending.GetId()}, assetclient.ManifestOptions{Wait: true})
	if !errors.Is(err, assetclient.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GetManifest(wait) past its deadline: %v, want ErrDeadlineExceeded", err)
	}

	// Fulfilling a terminal asset.
	_, err = c.FulfillWithValue(ctx, failed.GetId(), assetclient.Text("late"))
	if !errors.Is(err, assetclient.ErrFailedPrecondition) || !strings.Contains(err.Error(), failed.GetId()) {
		t.Errorf("FulfillAsset of a FAILED asset: %v, want ErrFailedPrecondition naming it", err)
	}

	// WaitAvailable ends on the FAILED input with the asset that failed.
	_, err = c.WaitAvailable(ctx, failed.GetId())
	var na *assetclient.NotAvailableError
	if !errors.As(err, &na) || na.Asset.GetId() != failed.GetId() || !errors.Is(err, assetclient.ErrFailedPrecondition) || !strings.Contains(err.Error(), "crashed") {
		t.Errorf("WaitAvailable(FAILED asset): %v", err)
	}

	// A watch of an unknown asset ends with its error, not a hang.
	for _, err := range c.Watch(ctx, []string{unknownID}, assetclient.WatchOptions{}) {
		if !errors.Is(err, assetclient.ErrNotFound) {
			t.Errorf("Watch(unknown id): %v, want ErrNotFound", err)
		}
	}
}

func TestTypedErrorsOfCredentials(t *testing.T) {
	live(t)
	if shared.token == "" {
		t.Skip("the server takes no bearer tokens: set ASSET_SERVICE_TOKEN (and give the server a tokens file)")
	}
	ctx := testContext(t)
	wrong := dial(t, assetclient.WithToken("not-a-token-the-server-knows-0123456789abc"))
	_, err := wrong.GetAsset(ctx, unknownID)
	if !errors.Is(err, assetclient.ErrUnauthenticated) {
		t.Errorf("GetAsset with a wrong token: %v, want ErrUnauthenticated", err)
	}
	c := client(t)
	task := taskID(t)
	p, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: task, Label: "out", Type: assetv1.AssetType_ASSET_TYPE_VALUE})
	if err != nil {
		t.Fatal(err)
	}
	worker := dial(t, assetclient.WithTokenSource(c.TaskTokenSource(task, nil, time.Minute)))
	if _, err := worker.CreateValueAsset(ctx, "x", assetclient.Text("x"), assetclient.Meta{}); !errors.Is(err, assetclient.ErrPermissionDenied) {
		t.Errorf("CreateValueAsset with a task token: %v, want ErrPermissionDenied", err)
	}
	if _, err := worker.FulfillWithValue(ctx, p.GetId(), assetclient.Text("done")); err != nil {
		t.Errorf("FulfillAsset with the task's token: %v", err)
	}
}

func TestErrorWrapsLocalFailures(t *testing.T) {
	// A token source that fails: the call is not sent and says why.
	live(t)
	broken := dial(t, assetclient.WithTokenSource(func(context.Context) (string, error) { return "", errors.New("vault sealed") }))
	if _, err := broken.GetAsset(testContext(t), unknownID); err == nil || !strings.Contains(err.Error(), "vault sealed") {
		t.Errorf("GetAsset with a failing token source: %v", err)
	}
	if assetclient.Code(nil) != codes.OK || assetclient.Code(errors.New("x")) != codes.Unknown {
		t.Error("Code of nil / a plain error")
	}
}

// The client's own errors carry the code they match, for Code and status.Code as
// for errors.Is: one switch on the code handles them with the server's.
func TestTheClientsOwnErrorsHaveTheirCodes(t *testing.T) {
	for _, tc := range []struct {
		err      error
		code     codes.Code
		sentinel error
	}{
		{&assetclient.DataLossError{AssetID: unknownID, WantSize: 3, GotSize: 2}, codes.DataLoss, assetclient.ErrDataLoss},
		{&assetclient.NotAvailableError{Asset: &assetv1.Asset{Id: unknownID, FailureReason: "boom"}}, codes.FailedPrecondition, assetclient.ErrFailedPrecondition},
	} {
		wrapped := fmt.Errorf("task 7: %w", tc.err)
		if got := assetclient.Code(wrapped); got != tc.code {
			t.Errorf("Code(%T) = %v, want %v", tc.err, got, tc.code)
		}
		if got := status.Code(wrapped); got != tc.code {
			t.Errorf("status.Code(%T) = %v, want %v", tc.err, got, tc.code)
		}
		if st, _ := status.FromError(tc.err); st.Message() != tc.err.Error() {
			t.Errorf("status of %T says %q, want %q", tc.err, st.Message(), tc.err.Error())
		}
		if !errors.Is(wrapped, tc.sentinel) {
			t.Errorf("%T does not match %v", tc.err, tc.sentinel)
		}
	}
}

// A token asked for with less than a second lives about that long, not the
// server's default hour (0 on the wire), and a negative lifetime is refused.
func TestMintTaskTokenRoundsAShortLifetimeUp(t *testing.T) {
	live(t)
	if shared.token == "" {
		t.Skip("the server takes no bearer tokens: set ASSET_SERVICE_TOKEN (and give the server a tokens file)")
	}
	c, ctx := client(t), testContext(t)
	tok, err := c.MintTaskToken(ctx, taskID(t), nil, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(tok.ExpiresAt); left > 10*time.Second {
		t.Errorf("a token minted for 0.5 s expires in %v", left)
	}
	if _, err := c.MintTaskToken(ctx, taskID(t), nil, -time.Second); err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Errorf("MintTaskToken with a negative ttl: %v", err)
	}
}
