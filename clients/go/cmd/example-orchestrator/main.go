// Command example-orchestrator runs one task hand-off against an Asset Service:
// it promises a task's outputs, watches them, fulfills them, and prints the
// input manifest path of the next task.
//
//	go run ./cmd/example-orchestrator -addr 127.0.0.1:50051
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
	"github.com/asset-service/asset-service/clients/go/orchestrator"
)

func main() {
	addr := flag.String("addr", envOr("ASSET_SERVICE_ADDR", "127.0.0.1:50051"), "Asset Service host:port")
	task := flag.String("task", fmt.Sprintf("transcribe-%d", time.Now().Unix()), "id of the producing task")
	next := flag.String("next-task", "summarise", "id of the consuming task")
	importRoot := flag.String("import-root", "", "a server --import-root; if set, a FILE output is produced there too")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	conn, err := orchestrator.Dial(*addr)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	res, err := orchestrator.RunExample(ctx, assetv1.NewAssetServiceClient(conn), orchestrator.Config{
		TaskID: *task, NextTaskID: *next, ImportRoot: *importRoot, Log: os.Stderr,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Manifest.GetManifestPath())
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
