// Command example-pipeline runs one task through an Asset Service the way an
// orchestrator and a worker on another machine do, configured only by the
// environment (ASSET_SERVICE_ADDR, ASSET_SERVICE_TOKEN with the orchestrator
// role, ASSET_SERVICE_CA_FILE, ...). The orchestrator uploads an input,
// promises the task's output with a lease, and mints a task token for the
// worker (when the server has a task-token secret). The worker, with that
// token only, keeps the lease, downloads the input (sha256 checked), counts
// its words and uploads the result into the promise (resumably). The orchestrator watches
// the promise until it is AVAILABLE and reads it.
//
//	ASSET_SERVICE_ADDR=127.0.0.1:50051 go run ./cmd/example-pipeline
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/asset-service/asset-service/clients/go/assetclient"
	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

const text = "the quick brown fox jumps over the lazy dog\n"

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: example-pipeline\n\n"+
			"Runs one task through the Asset Service as an orchestrator and a worker do. It takes no\n"+
			"arguments: ASSET_SERVICE_ADDR (127.0.0.1:50051 when unset), ASSET_SERVICE_TOKEN (orchestrator\n"+
			"role), ASSET_SERVICE_CA_FILE and the client's other variables say where and how to connect.\n")
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "example-pipeline: unexpected argument %q: it is configured by the environment (-h)\n", flag.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer) error {
	orch, err := assetclient.DialEnv()
	if err != nil {
		return err
	}
	defer orch.Close()
	task := fmt.Sprintf("example-pipeline-%d", time.Now().UnixNano())

	input, err := orch.Upload(ctx, strings.NewReader(text), assetclient.UploadOptions{
		Label: "input.txt", Meta: assetclient.Meta{MediaType: "text/plain"},
	})
	if err != nil {
		return fmt.Errorf("upload the input: %w", err)
	}
	promised, err := orch.CreatePendingAsset(ctx, assetclient.Promise{
		TaskID: task, Label: "count.json", Meta: assetclient.Meta{MediaType: "application/json"}, Lease: 30 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("promise the output: %w", err)
	}
	fmt.Fprintf(out, "promised %s for task %s\n", promised.GetId(), task)

	// The worker's credentials: a token for this task only, when the server mints them.
	var workerOpts []assetclient.Option
	token, err := orch.MintTaskToken(ctx, task, []string{input.GetId()}, 10*time.Minute)
	switch {
	case err == nil:
		workerOpts = append(workerOpts, assetclient.WithToken(token.Token))
		fmt.Fprintln(out, "worker uses a task token")
	case errors.Is(err, assetclient.ErrFailedPrecondition): // no task-token secret: same credentials
		fmt.Fprintln(out, "worker uses the orchestrator's credentials")
	default:
		return fmt.Errorf("mint a task token: %w", err)
	}
	worker, err := assetclient.DialEnv(workerOpts...)
	if err != nil {
		return err
	}
	defer worker.Close()

	done := make(chan error, 1)
	go func() { done <- work(ctx, worker, input.GetId(), promised.GetId()) }()

	for ev, err := range orch.Watch(ctx, []string{promised.GetId()}, assetclient.WatchOptions{}) {
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		fmt.Fprintf(out, "event %s %s (revision %d)\n", ev.GetType(), ev.GetAsset().GetStatus(), ev.GetRevision())
	}
	if err := <-done; err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	var result bytes.Buffer
	a, err := orch.Download(ctx, promised.GetId(), &result)
	if err != nil {
		return err
	}
	if a.GetStatus() != assetv1.AssetStatus_ASSET_STATUS_AVAILABLE {
		return fmt.Errorf("output %s is %s: %s", a.GetId(), a.GetStatus(), a.GetFailureReason())
	}
	fmt.Fprintf(out, "result %s sha256 %s: %s\n", a.GetId(), a.GetSha256(), strings.TrimSpace(result.String()))
	return nil
}

// work is the worker: it needs nothing but its token and the two ids.
func work(ctx context.Context, c *assetclient.Client, inputID, outputID string) error {
	keeper := c.KeepLease(ctx, outputID, 10*time.Second)
	defer keeper.Stop()
	if _, err := c.WaitAvailable(ctx, inputID); err != nil {
		return err
	}
	var in bytes.Buffer
	if _, err := c.Download(ctx, inputID, &in); err != nil {
		_, _ = c.FailAsset(ctx, outputID, "cannot read the input: "+err.Error())
		return err
	}
	count := fmt.Sprintf("{\"words\": %d}\n", len(strings.Fields(in.String())))
	if err := keeper.Stop(); err != nil {
		return err // the lease was lost: the promise is FAILED already
	}
	// Resumable: a dropped connection or a server restart costs only what was not yet durable.
	_, err := c.UploadResumable(ctx, strings.NewReader(count), assetclient.UploadOptions{Pending: outputID})
	return err
}
