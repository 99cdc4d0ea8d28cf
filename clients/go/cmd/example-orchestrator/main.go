// Command example-orchestrator runs one task hand-off against an Asset Service:
// it promises a task's outputs, watches them, fulfills them, and prints the
// input manifest path of the next task.
//
//	go run ./cmd/example-orchestrator -addr 127.0.0.1:50051
//	ASSET_SERVICE_TOKEN=... go run ./cmd/example-orchestrator -addr host:50051 -ca ca.pem [-cert client.pem -key client.key]
//
// The bearer token is read from $ASSET_SERVICE_TOKEN, never from a flag (a
// command line is visible to every user of the machine).
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
	ca := flag.String("ca", "", "PEM root CA file: connect with TLS, trusting it")
	cert := flag.String("cert", "", "PEM client certificate (mTLS; with -key)")
	key := flag.String("key", "", "PEM client key (mTLS; with -cert)")
	useTLS := flag.Bool("tls", false, "connect with TLS, trusting the system roots (implied by -ca and -cert)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "example-orchestrator: unexpected argument %q: it takes only options (-h lists them)\n", flag.Arg(0))
		os.Exit(2)
	}

	var opts []orchestrator.Option
	if *useTLS {
		opts = append(opts, orchestrator.WithTLS())
	}
	if *ca != "" {
		opts = append(opts, orchestrator.WithRootCAFile(*ca))
	}
	if *cert != "" || *key != "" {
		opts = append(opts, orchestrator.WithClientCertificate(*cert, *key))
	}
	if token := os.Getenv("ASSET_SERVICE_TOKEN"); token != "" {
		opts = append(opts, orchestrator.WithToken(token))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	conn, err := orchestrator.Dial(*addr, opts...)
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
